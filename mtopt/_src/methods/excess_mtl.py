r"""ExcessMTL: robust task weights from an AdaGrad estimate of each task's excess risk."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options, tree_buffers

__all__ = ["ExcessMTLState", "excess_mtl"]


class ExcessMTLState(NamedTuple):
    """The state of :func:`excess_mtl`.

    Attributes:
      grad_sq_sum: the AdaGrad accumulators :math:`\\sum_{s \\le t} g_{i,s}^2`
        (per coordinate), a pytree shaped like the parameters with a leading
        task axis T on every leaf (float32, or float64 for float64 parameters).
      log_weights: (T,) the logarithm of the current task weights (which sum to T).
      initial_excess: (T,) the excess-risk proxies of the first step, which
        normalise the later ones.
      step: () int32, the number of updates done.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> state = mtopt.excess_mtl().init(2, {"w": jnp.zeros(3)})
      >>> state.grad_sq_sum["w"].shape, state.log_weights.shape
      ((2, 3), (2,))
    """

    grad_sq_sum: base.PyTree
    log_weights: base.Array
    initial_excess: base.Array
    step: base.Array


def excess_mtl(robust_step_size: float = 1e-2, *, eps: float = 1e-7) -> base.Weighting:
    r"""ExcessMTL: multiplicative weights driven by each task's estimated excess risk.

    At every step the per-coordinate AdaGrad accumulator of each task's squared
    gradients gives a diagonal preconditioner, and the task's *excess-risk
    proxy* is its preconditioned squared gradient norm:

    .. math::

        h_i &\leftarrow h_i + g_i \odot g_i, \\
        e_i &= \big\langle g_i,\; g_i \oslash \sqrt{h_i + \epsilon}\big\rangle .

    The first step only records :math:`e^{(1)}` and keeps the weights at 1. From
    the second step on, the proxies are normalised by the first ones and the
    weights take an exponentiated-gradient step, renormalised to sum to T:

    .. math::

        \lambda_i \leftarrow \lambda_i \exp\!\big(\eta\, e_i / e^{(1)}_i\big),
        \qquad \lambda \leftarrow T \lambda / \textstyle\sum_j \lambda_j ,

    and the direction is :math:`\sum_i \lambda_i g_i`. The accumulator is per
    coordinate, so ExcessMTL needs the Jacobian (``needs=Needs.JACOBIAN``) and
    keeps T gradient-shaped accumulators in its state
    (``init(num_tasks, params)`` needs a template of the parameters the
    Jacobian is taken over); the direction itself is a weighted sum of the
    current raw gradients (no ``combine``).

    Conventions pinned:

    - The weights multiply the raw gradients and losses and **sum to T**; the
      weights returned by a step are the ones updated with that step's
      gradients (LibMTL).
    - The update is done on the log-weights (``T * softmax``), which is the
      same arithmetic without overflow of :math:`\exp`.
    - A task whose first-step proxy is 0 (zero gradient at the first step)
      gets a normalised proxy of 0 afterwards (the reference divides by 0).
    - ``eps`` is the reference's ``1e-7`` inside the square root, in absolute
      units (kept for fidelity: it makes the proxy depend on the gradient
      scale when gradients are tiny).
    - Defaults are LibMTL's (``robust_step_size=1e-2``).

    Reference: He, Zhou, Zhao and Han, "Robust Multi-Task Learning with Excess
    Risks", ICML 2024.

    Args:
      robust_step_size: the step size :math:`\eta` of the weight update.
      eps: the constant added to the accumulator inside the square root.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.JACOBIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import excess_mtl
      >>> params = {"w": jnp.zeros(2)}
      >>> jac = {"w": jnp.array([[3.0, 4.0], [0.0, -2.0]])}
      >>> method = excess_mtl(robust_step_size=1.0)
      >>> state = method.init(2, params)
      >>> w, state = method.update(state, jnp.ones(2), jacobian=jac)
      >>> w.tolist()   # the first step only records the proxies
      [1.0, 1.0]
      >>> jac2 = {"w": jnp.array([[3.0, 4.0], [0.0, -6.0]])}
      >>> w, state = method.update(state, jnp.ones(2), jacobian=jac2)
      >>> [round(float(x), 4) for x in w]   # the second task's proxy grew more
      [0.2107, 1.7893]
    """
    robust_step_size = options.real(
        robust_step_size, "robust_step_size", "excess_mtl", nonnegative=True
    )
    eps = options.real(eps, "eps", "excess_mtl", nonnegative=True)

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> ExcessMTLState:
        base.check_num_tasks(num_tasks)
        return ExcessMTLState(
            grad_sq_sum=tree_buffers.zero_buffers(num_tasks, params, "excess_mtl"),
            log_weights=jnp.zeros((num_tasks,), base.state_dtype()),
            initial_excess=jnp.zeros((num_tasks,), base.state_dtype()),
            step=jnp.zeros((), jnp.int32),
        )

    def update(
        state: ExcessMTLState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, ExcessMTLState]:
        del gramian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "excess_mtl", ExcessMTLState)
        base.check_state_tasks(state.log_weights.shape[0], num_tasks, "excess_mtl")
        treedef, jac_leaves, buf_leaves = tree_buffers.pair_with_buffers(
            jacobian, state.grad_sq_sum, num_tasks, "excess_mtl"
        )
        active = [b for j, b in zip(jac_leaves, buf_leaves) if j is not None]
        dtype = base.compute_dtype(losses, *active)

        new_leaves = []
        excess = jnp.zeros((num_tasks,), dtype)
        for j, b in zip(jac_leaves, buf_leaves):
            if j is None:
                new_leaves.append(b)
                continue
            grad = jnp.reshape(j, (num_tasks, -1)).astype(dtype)
            sq = grad * grad
            acc = jnp.reshape(b, (num_tasks, -1)).astype(dtype) + sq
            excess = excess + jnp.sum(sq / jnp.sqrt(acc + eps), axis=1)
            new_leaves.append(jnp.reshape(acc, jnp.shape(b)).astype(b.dtype))

        first = state.step == 0
        initial = jnp.where(first, excess, state.initial_excess.astype(dtype))
        positive = initial > 0
        ratio = jnp.where(positive, excess / jnp.where(positive, initial, 1.0), 0.0)
        log_weights = state.log_weights.astype(dtype)
        stepped = jax.nn.log_softmax(log_weights + robust_step_size * ratio)
        stepped = stepped + jnp.log(jnp.asarray(num_tasks, dtype))
        log_weights = jnp.where(first, log_weights, stepped)
        new_state = ExcessMTLState(
            grad_sq_sum=treedef.unflatten(new_leaves),
            log_weights=log_weights.astype(state.log_weights.dtype),
            initial_excess=initial.astype(state.initial_excess.dtype),
            step=state.step + 1,
        )
        return jnp.exp(log_weights), new_state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.JACOBIAN, name="excess_mtl",
        stateful=True,
    )
