r"""MoCo: multi-objective gradient correction with tracked task gradients."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options, tree_buffers

__all__ = ["MoCoState", "moco"]


class MoCoState(NamedTuple):
    """The state of :func:`moco`.

    Attributes:
      tracked: the tracking variables :math:`y_i`, a pytree shaped like the
        parameters with a leading task axis T on every leaf (float32, or
        float64 for float64 parameters).
      task_weights: (T,) :math:`\\lambda`, on the simplex (created in
        ``base.state_dtype()``: float64 under x64, else float32).
      step: () int32, the number of updates done.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> state = mtopt.moco().init(2, {"w": jnp.zeros(3)})
      >>> state.tracked["w"].shape, state.task_weights.tolist()
      ((2, 3), [0.5, 0.5])
    """

    tracked: base.PyTree
    task_weights: base.Array
    step: base.Array


def _task_axis(array: base.Array, ndim: int) -> base.Array:
    """Reshape a (T,) vector to broadcast against a (T, ...) leaf of rank ``ndim``."""
    return jnp.reshape(array, array.shape + (1,) * (ndim - 1))


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
) -> base.Weighting:
    r"""MoCo: track each task's gradient, then step along the min-norm-seeking mix of the tracks.

    At step :math:`t = 1, 2, \dots`, with raw task gradients :math:`g_i` and losses
    :math:`L_i`, MoCo normalises the gradients, updates one tracking variable
    per task and a weight vector on the simplex (LibMTL's form of the
    algorithm):

    .. math::

        \tilde g_i &= L_i\, g_i / \|g_i\|, \\
        y_i &\leftarrow y_i - \beta_t\,(y_i - \tilde g_i),
            \qquad \beta_t = \beta / t^{\sigma_\beta}, \\
        \lambda &\leftarrow \mathrm{softmax}\big(\lambda - \gamma_t\,(Y Y^\top + \rho I)\,
            \lambda\big), \qquad \gamma_t = \gamma / t^{\sigma_\gamma}, \\
        d &= Y^\top \lambda = \textstyle\sum_i \lambda_i y_i ,

    with :math:`y_i = 0` and :math:`\lambda = \mathbf 1/T` initially. The
    direction is built from the tracked buffers, not from the current
    gradients alone, so MoCo needs the Jacobian (``needs=Needs.JACOBIAN``) and
    keeps T gradient-shaped buffers in its state:
    ``init(num_tasks, params)`` needs a template of the parameters the Jacobian
    is taken over.

    Conventions pinned:

    - ``update`` returns the new :math:`\lambda` as the weights (they sum to
      1). They weight the **tracked buffers** :math:`y_i`, not the raw
      gradients: the direction is ``combine(jacobian, weights, new_state)`` =
      :math:`\sum_i \lambda_i y_i`, and ``info.total`` (:math:`\sum_i
      \lambda_i L_i`) is not the loss whose gradient that is. Task-specific
      heads (outside the Jacobian) receive :math:`\lambda_i \nabla L_i`.
    - Gradient normalisation :math:`L_i g_i / \|g_i\|` as in LibMTL (from the
      authors' code); a zero gradient stays 0 (LibMTL divides by
      :math:`\|g_i\| + 10^{-8}`, which only differs for tiny gradients).
    - Defaults are LibMTL's (``MoCo_beta=0.5``, ``MoCo_beta_sigma=0.5``,
      ``MoCo_gamma=0.1``, ``MoCo_gamma_sigma=0.5``, ``MoCo_rho=0``).
    - Norms and :math:`Y Y^\top` are accumulated leaf by leaf in float32
      (float64 for float64 parameters); the direction is cast back to each
      Jacobian leaf's dtype.

    Reference: Fernando, Shen, Liu, Chaudhury, Murugesan and Chen, "Mitigating
    Gradient Bias in Multi-objective Learning: A Provably Convergent
    Approach", ICLR 2023.

    Args:
      beta: step size of the tracking variables.
      beta_sigma: decay exponent of ``beta`` over the steps.
      gamma: step size of :math:`\lambda`.
      gamma_sigma: decay exponent of ``gamma``.
      rho: :math:`\ell_2` regularisation of the :math:`\lambda` update.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.JACOBIAN``
      and a ``combine`` function.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import moco
      >>> params = {"w": jnp.zeros(2)}
      >>> jac = {"w": jnp.array([[3.0, 4.0], [0.0, -2.0]])}
      >>> method = moco()
      >>> state = method.init(2, params)
      >>> w, state = method.update(state, jnp.array([1.0, 2.0]), jacobian=jac)
      >>> state.tracked["w"].tolist()   # 0.5 * L_i * g_i / |g_i|
      [[0.30000001192092896, 0.4000000059604645], [0.0, -1.0]]
      >>> method.combine(jac, w, state)["w"].shape
      (2,)
    """
    beta, beta_sigma, gamma, gamma_sigma, rho = (
        options.real(value, name, "moco", nonnegative=True)
        for name, value in (("beta", beta), ("beta_sigma", beta_sigma), ("gamma", gamma),
                            ("gamma_sigma", gamma_sigma), ("rho", rho))
    )

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> MoCoState:
        base.check_num_tasks(num_tasks)
        return MoCoState(
            tracked=tree_buffers.zero_buffers(num_tasks, params, "moco"),
            task_weights=jnp.full((num_tasks,), 1.0 / num_tasks, base.state_dtype()),
            step=jnp.zeros((), jnp.int32),
        )

    def update(
        state: MoCoState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, MoCoState]:
        del gramian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "moco", MoCoState)
        base.check_state_tasks(state.task_weights.shape[0], num_tasks, "moco")
        treedef, jac_leaves, buf_leaves = tree_buffers.pair_with_buffers(
            jacobian, state.tracked, num_tasks, "moco"
        )
        active = [(j, b) for j, b in zip(jac_leaves, buf_leaves) if j is not None]
        dtype = base.compute_dtype(losses, *[b for _, b in active])

        sq_norms = jnp.zeros((num_tasks,), dtype)
        for j, _ in active:
            flat = jnp.reshape(j, (num_tasks, -1)).astype(dtype)
            sq_norms = sq_norms + jnp.sum(flat * flat, axis=1)
        norms = jnp.sqrt(sq_norms)
        nonzero = norms > 0
        scale = jnp.where(nonzero, losses.astype(dtype) / jnp.where(nonzero, norms, 1.0), 0.0)

        step = state.step + 1
        t = step.astype(dtype)
        beta_t = beta / t**beta_sigma
        gamma_t = gamma / t**gamma_sigma

        new_leaves = []
        tracked_gram = jnp.zeros((num_tasks, num_tasks), dtype)
        for j, b in zip(jac_leaves, buf_leaves):
            if j is None:
                new_leaves.append(b)
                continue
            target = j.astype(dtype) * _task_axis(scale, j.ndim)
            y = b.astype(dtype)
            y = y - beta_t * (y - target)
            flat = jnp.reshape(y, (num_tasks, -1))
            tracked_gram = tracked_gram + jnp.matmul(flat, flat.T)
            new_leaves.append(y.astype(b.dtype))

        lam = state.task_weights.astype(dtype)
        reg = tracked_gram + rho * jnp.eye(num_tasks, dtype=dtype)
        lam = jax.nn.softmax(lam - gamma_t * (reg @ lam))
        new_state = MoCoState(
            tracked=treedef.unflatten(new_leaves),
            task_weights=lam.astype(state.task_weights.dtype),
            step=step,
        )
        return lam, new_state

    def combine(
        jacobian: base.PyTree,
        weights: base.Array,
        state: MoCoState,
        *,
        key: Optional[base.Array] = None,
    ) -> base.PyTree:
        del key
        weights = base.check_losses(weights, "weights")
        num_tasks = weights.shape[0]
        treedef, jac_leaves, buf_leaves = tree_buffers.pair_with_buffers(
            jacobian, state.tracked, num_tasks, "moco"
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
        init=init, update=update, needs=base.Needs.JACOBIAN, name="moco", combine=combine,
        stateful=True,
    )
