"""Nash-MTL: multi-task learning as a bargaining game (Navon et al. 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtopt._src import alpha_fair, base

Array = jax.Array


class NashMTLState(NamedTuple):
    """State of :func:`nash_mtl`.

    Attributes:
      alpha: (T,) the last bargaining solution on the raw gradients, before the
        ``max_norm`` rescaling: the warm start of the next solve and the weights
        reused between updates (``update_weights_every > 1``). Starts at ones.
      step: () int32, the number of ``update`` calls so far.

    Example:
      >>> import mtopt
      >>> state = mtopt.nash_mtl().init(2)
      >>> state.alpha.shape, int(state.step)
      ((2,), 0)
    """

    alpha: Array
    step: Array


def nash_mtl(
    max_norm: float | None = 1.0,
    update_weights_every: int = 1,
    optim_niter: int = 20,
    *,
    tol: float = 1e-6,
) -> base.Weighting:
    r"""Nash-MTL: the Nash bargaining solution of the tasks, ``G alpha = 1 / alpha``.

    The weights :math:`\alpha > 0` solve

    .. math::
        (G \alpha)_i = \frac{1}{\alpha_i} \quad \forall i,
        \qquad d = \sum_i \alpha_i g_i ,

    so every task's directional derivative :math:`\langle g_i, d\rangle =
    1/\alpha_i` is positive (non-conflicting) and the bargaining utilities
    :math:`\sum_i \log \langle g_i, d\rangle` are maximised under
    :math:`\|d\|^2 = \alpha^\top G \alpha = T`. When :math:`\|d\| >`
    ``max_norm`` the weights are rescaled so that :math:`\|d\| =` ``max_norm``
    (:math:`\|d\| = \sqrt{\alpha^\top G \alpha}` from the Gramian; the reference
    code clips the gradient norm of the shared parameters after the backward
    pass, which is the same when the Gramian is taken over them).

    Solver: Newton's method on the equivalent convex problem
    :math:`\min_{\alpha>0} \tfrac12 \alpha^\top G \alpha - \sum_i \log \alpha_i`
    (:func:`mtopt._src.alpha_fair.solve_alpha_fair` with ``alpha = 1``), at
    most ``optim_niter`` iterations, warm-started from the previous step's
    solution held in the state. The reference code solves the same equation by
    a sequence of convex programs in cvxpy/ECOS (also ``optim_niter = 20``
    iterations, warm-started); both return the solution of the *raw* equation,
    independent of how the Gramian is normalised.

    Reference: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya,
    "Multi-Task Learning as a Bargaining Game", ICML 2022 (code:
    AvivNavon/nash-mtl; defaults ``max_norm=1.0``, ``update_weights_every=1``,
    ``optim_niter=20``, as LibMTL and TorchJD).

    Conventions pinned:

    - Weights multiply the raw gradients and scale like ``1 / ||g||``: large
      for small gradients, small for large ones (nash-mtl issues #7, #13).
      They do not sum to a constant.
    - Between updates (``update_weights_every > 1``) the stored solution is
      reused and rescaled to ``max_norm`` for the current Gramian, as in the
      reference. Under ``vmap`` both branches are evaluated (``lax.cond``).
    - The equation has no solution when no direction improves every task
      (e.g. two opposite gradients); the reference's solver then fails and
      keeps the previous weights. Here the iterate stays finite (a ridge at
      rounding level, see :mod:`mtopt._src.alpha_fair`) and the direction
      vanishes. Tasks whose gradient is zero get weight 0.

    Args:
      max_norm: the largest norm of the combined gradient; ``None`` or 0
        disables the rescaling.
      update_weights_every: solve every this many steps; reuse the weights in
        between.
      optim_niter: bound on the Newton iterations per solve.
      tol: relative residual ``max_i |alpha_i (G alpha)_i - 1|`` at which the
        iterations stop.

    Returns:
      A stateful :class:`mtopt.Weighting` (state :class:`NashMTLState`) with
      ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import nash_mtl
      >>> jac = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-0.5, 0.5, 1.0]])
      >>> method = nash_mtl(max_norm=None)
      >>> alpha, state = method.update(method.init(3), jnp.ones(3), gramian=jac @ jac.T)
      >>> [round(float(a), 4) for a in alpha]
      [1.2483, 0.4005, 0.8944]
      >>> [round(float(x), 4) for x in alpha * (jac @ jac.T @ alpha)]  # alpha_i (G alpha)_i
      [1.0, 1.0, 1.0]
    """
    if max_norm is None:
        max_norm = 0.0
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm >= 0:
        raise ValueError(
            f"nash_mtl: max_norm must be a non-negative float or None, got {max_norm!r}."
        )
    for name, value in (
        ("update_weights_every", update_weights_every),
        ("optim_niter", optim_niter),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"nash_mtl: {name} must be a positive int, got {value!r}.")
    if not tol >= 0:
        raise ValueError(f"nash_mtl: tol must be non-negative, got {tol!r}.")
    max_norm = float(max_norm)

    def init(num_tasks: int, params=None) -> NashMTLState:
        del params
        base.check_num_tasks(num_tasks)
        return NashMTLState(
            alpha=jnp.ones((num_tasks,), jnp.float32), step=jnp.zeros((), jnp.int32)
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state_tasks(state.alpha.shape[0], num_tasks, "nash_mtl")
        gramian = base.check_gramian(gramian, num_tasks, "nash_mtl")
        dtype = base.compute_dtype(gramian, losses)
        g = gramian.astype(dtype)
        previous = state.alpha.astype(dtype)

        def solve(previous: Array) -> Array:
            return alpha_fair.solve_alpha_fair(g, 1.0, previous, max_iter=optim_niter, tol=tol)[0]

        if update_weights_every == 1:
            alpha = solve(previous)
        else:
            due = state.step % update_weights_every == 0
            alpha = jax.lax.cond(due, solve, lambda a: a, previous)
        weights = alpha
        if max_norm > 0:
            norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
            shrink = norm > max_norm
            weights = jnp.where(shrink, alpha * (max_norm / jnp.where(shrink, norm, 1.0)), alpha)
        new_state = NashMTLState(alpha=alpha.astype(state.alpha.dtype), step=state.step + 1)
        return weights, new_state

    return base.Weighting(init=init, update=update, needs=base.Needs.GRAMIAN, name="nash_mtl")
