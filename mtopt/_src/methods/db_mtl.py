r"""DB-MTL: dual balancing of loss scales (log losses) and gradient magnitudes."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options, tree_buffers

__all__ = ["DBMTLState", "db_mtl"]

# The reference takes log(L_i + 1e-8).
_LOG_EPS = 1e-8


class DBMTLState(NamedTuple):
    """The state of :func:`db_mtl`.

    Attributes:
      grad_buffer: the EMA :math:`\\hat g_i` of the log-loss gradients, a pytree
        shaped like the parameters with a leading task axis T on every leaf
        (float32, or float64 for float64 parameters).
      step: () int32, the number of updates done.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> state = mtopt.db_mtl().init(2, {"w": jnp.zeros(3)})
      >>> state.grad_buffer["w"].shape, int(state.step)
      ((2, 3), 0)
    """

    grad_buffer: base.PyTree
    step: base.Array


def _task_axis(array: base.Array, ndim: int) -> base.Array:
    """Reshape a (T,) vector to broadcast against a (T, ...) leaf of rank ``ndim``."""
    return jnp.reshape(array, array.shape + (1,) * (ndim - 1))


def _row_norms(rows: list[base.Array], num_tasks: int, dtype: jnp.dtype) -> base.Array:
    """Per-task Euclidean norms of (T, n_k) blocks, without overflow or underflow.

    Each task's rows are divided by their largest magnitude before squaring,
    so a norm is finite whenever every entry is: log-loss gradients reach
    1e20 in float32 (a gradient of 1e12 over a loss of 1e-8), whose squares
    overflow.
    """
    if not rows:
        return jnp.zeros((num_tasks,), dtype)
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(r), axis=1, initial=0.0) for r in rows]), axis=0)
    safe = jnp.where(scale > 0, scale, 1.0)
    sq = sum(jnp.sum(jnp.square(r / safe[:, None]), axis=1) for r in rows)
    return scale * jnp.sqrt(sq)


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0) -> base.Weighting:
    r"""DB-MTL: balance loss scales with log losses and gradient norms with the largest one.

    At step :math:`t = 1, 2, \dots`, DB-MTL takes the gradients of the log
    losses, keeps their exponential moving average per task, and rescales every
    averaged gradient to the largest averaged norm:

    .. math::

        g^{\log}_i &= \nabla \log(L_i + 10^{-8}) = g_i / (L_i + 10^{-8}), \\
        \hat g_i &\leftarrow g^{\log}_i + \beta_t\,(\hat g_i - g^{\log}_i),
            \qquad \beta_t = \beta / t^{\sigma_\beta}, \\
        \alpha_i &= \max_j \|\hat g_j\| / \|\hat g_i\|,
            \qquad d = \sum_i \alpha_i \hat g_i ,

    with :math:`\hat g_i = 0` initially (no bias correction, as in the
    reference). Every :math:`\alpha_i \hat g_i` has the largest norm.

    **Why not from the Gramian.** Without the moving average (:math:`\beta=0`)
    the direction is :math:`\sum_i w_i g_i` with :math:`w_i = \alpha_i / (L_i +
    10^{-8})` and :math:`\alpha` read off the Gramian exactly. With it,
    :math:`\|\hat g_i\|` involves inner products of gradients of *different*
    steps, which no single-step Gramian holds; so DB-MTL needs the Jacobian
    and keeps T gradient-shaped buffers in its state
    (``init(num_tasks, params)`` needs a template of the parameters the
    Jacobian is taken over).

    Conventions pinned:

    - ``update`` returns :math:`\alpha` as the weights. They weight the
      **buffers** :math:`\hat g_i`, not the raw gradients: the direction is
      ``combine(jacobian, weights, new_state)`` = :math:`\sum_i \alpha_i \hat
      g_i`. They are at least 1 (the largest buffer gets 1) and do not sum to
      a constant. Task-specific heads (outside the Jacobian) receive
      :math:`\alpha_i \nabla L_i`; LibMTL gives them the gradient of
      :math:`\sum_i \log L_i`.
    - Losses are assumed non-negative (DB-MTL takes their logarithm);
      negative values are treated as 0. An all-zero buffer gets weight 0 (the
      reference divides by :math:`\|\hat g_i\| + 10^{-8}`; the two differ only
      for buffers of norm near :math:`10^{-8}`).
    - Defaults are LibMTL's (``DB_beta=0.9``, ``DB_beta_sigma=0``).
    - Norms are accumulated leaf by leaf in float32 (float64 for float64
      parameters), each task's buffer scaled by its largest entry first, so
      they neither overflow nor underflow (log-loss gradients reach 1e20 in
      float32); the direction is cast back to each Jacobian leaf's dtype.
    - A weight that would exceed the dtype's largest finite value (two
      buffer norms more than about 1e38 apart in float32) is capped there.

    Reference: Lin, Ye, Chen, Zhang, Kwok and Zhang, "Dual-Balancing for
    Multi-Task Learning", arXiv:2308.12029, 2023.

    Args:
      beta: EMA factor of the buffered log-loss gradients, in [0, 1].
      beta_sigma: decay exponent of ``beta`` over the steps.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.JACOBIAN``
      and a ``combine`` function.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import db_mtl
      >>> params = {"w": jnp.zeros(2)}
      >>> jac = {"w": jnp.array([[3.0, 4.0], [0.0, -2.0]])}
      >>> method = db_mtl(beta=0.0)
      >>> state = method.init(2, params)
      >>> w, state = method.update(state, jnp.array([1.0, 2.0]), jacobian=jac)
      >>> [round(float(x), 4) for x in w]   # log-gradient norms 5 and 1
      [1.0, 5.0]
      >>> [round(float(x), 4) for x in method.combine(jac, w, state)["w"]]
      [3.0, -1.0]
    """
    beta = options.probability(beta, "beta", "db_mtl")
    beta_sigma = options.real(beta_sigma, "beta_sigma", "db_mtl", nonnegative=True)

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> DBMTLState:
        base.check_num_tasks(num_tasks)
        return DBMTLState(
            grad_buffer=tree_buffers.zero_buffers(num_tasks, params, "db_mtl"),
            step=jnp.zeros((), jnp.int32),
        )

    def update(
        state: DBMTLState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, DBMTLState]:
        del gramian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "db_mtl", DBMTLState)
        state_tasks = jnp.shape(jax.tree.leaves(state.grad_buffer)[0])[0]
        base.check_state_tasks(state_tasks, num_tasks, "db_mtl")
        treedef, jac_leaves, buf_leaves = tree_buffers.pair_with_buffers(
            jacobian, state.grad_buffer, num_tasks, "db_mtl"
        )
        active = [b for j, b in zip(jac_leaves, buf_leaves) if j is not None]
        dtype = base.compute_dtype(losses, *active)
        log_scale = 1.0 / (jnp.maximum(losses.astype(dtype), 0.0) + _LOG_EPS)

        step = state.step + 1
        beta_t = beta / step.astype(dtype) ** beta_sigma

        new_leaves = []
        active_buffers = []
        for j, b in zip(jac_leaves, buf_leaves):
            if j is None:
                new_leaves.append(b)
                continue
            log_grad = j.astype(dtype) * _task_axis(log_scale, j.ndim)
            buffer = log_grad + beta_t * (b.astype(dtype) - log_grad)
            active_buffers.append(jnp.reshape(buffer, (num_tasks, -1)))
            new_leaves.append(buffer.astype(b.dtype))

        norms = _row_norms(active_buffers, num_tasks, dtype)
        nonzero = norms > 0
        # max/norm overflows only when two norms differ by more than the
        # dtype's range (about 1e38 in float32); such weights are capped.
        ratio = jnp.max(norms) / jnp.where(nonzero, norms, 1.0)
        weights = jnp.where(nonzero, jnp.minimum(ratio, jnp.finfo(dtype).max), 0.0)
        return weights, DBMTLState(grad_buffer=treedef.unflatten(new_leaves), step=step)

    def combine(
        jacobian: base.PyTree,
        weights: base.Array,
        state: DBMTLState,
        *,
        key: Optional[base.Array] = None,
    ) -> base.PyTree:
        del key
        weights = base.check_losses(weights, "weights")
        treedef, jac_leaves, buf_leaves = tree_buffers.pair_with_buffers(
            jacobian, state.grad_buffer, weights.shape[0], "db_mtl"
        )
        out = []
        for j, b in zip(jac_leaves, buf_leaves):
            if j is None:
                out.append(None)
                continue
            dtype = base.compute_dtype(b, weights)
            direction = jnp.tensordot(weights.astype(dtype), b.astype(dtype), axes=(0, 0))
            out.append(direction.astype(jnp.asarray(j).dtype))
        return treedef.unflatten(out)

    return base.Weighting(
        init=init, update=update, needs=base.Needs.JACOBIAN, name="db_mtl", combine=combine,
        stateful=True,
    )
