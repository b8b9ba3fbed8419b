"""Nash-MTL: multi-task learning as a bargaining game (Navon et al. 2022)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import alpha_fair, base, options, rule

Array = jax.Array


class NashMTLState(NamedTuple):
    """State of :func:`nash_mtl`.

    Attributes:
      alpha: (T,) the last bargaining solution on the raw gradients, before the
        ``max_norm`` rescaling: the warm start of the next solve and the weights
        reused between updates (``update_weights_every > 1``). Starts at ones.
      step: () int32, the number of ``update`` calls so far.
      shared_scale: () the factor ``min(1, max_norm / ||d||)`` of the last
        step, applied to the gradient of the shared parameters only.
      solver: the :class:`mtopt.SolverInfo` of the last solve (its residual is
        ``max_i |alpha_i (G alpha)_i - 1|``; not converged when the
        bargaining equation has no solution, e.g. opposite gradients).

    Example:
      >>> import mtopt
      >>> state = mtopt.nash_mtl().init(2)
      >>> state.alpha.shape, int(state.step)
      ((2,), 0)
    """

    alpha: Array
    step: Array
    shared_scale: Array
    solver: base.SolverInfo


def nash_mtl_weights(
    gramian: Array,
    start: Optional[Array] = None,
    *,
    optim_niter: int = 20,
    tol: float = 1e-6,
) -> tuple[Array, base.SolverInfo]:
    r"""The Nash-MTL rule on a Gramian: the :math:`\alpha > 0` with
    :math:`(G\alpha)_i = 1/\alpha_i` for every task (Navon et al. 2022).

    Newton's method from ``start`` (default: the solution for orthogonal
    gradients), at most ``optim_niter`` iterations; the solution is unique, so
    ``start`` changes the iterations, not the answer. :func:`mtopt.nash_mtl`
    calls this with its previous weights and adds the ``max_norm`` clip and
    ``update_weights_every``; the math and the conventions are its.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      start: optional (T,) positive warm start.
      optim_niter, tol: as in :func:`mtopt.nash_mtl`.

    Returns:
      ``(alpha, solver_info)`` (residual :math:`\max_i |\alpha_i (G\alpha)_i - 1|`).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import nash_mtl_weights
      >>> alpha, info = nash_mtl_weights(jnp.diag(jnp.array([1.0, 4.0])))
      >>> [round(float(x), 4) for x in alpha], bool(info.converged)  # 1 / ||g_i||
      ([1.0, 0.5], True)
    """
    optim_niter = options.integer(optim_niter, "optim_niter", "nash_mtl")
    tol = options.real(tol, "tol", "nash_mtl", nonnegative=True)
    g = rule.check_gramian(gramian, "nash_mtl", (start,))
    if start is not None:
        start = jnp.asarray(start).astype(g.dtype)
    alpha, fair = alpha_fair.solve_alpha_fair(g, 1.0, start, max_iter=optim_niter, tol=tol)
    return alpha, base.solver_info(fair.iterations, fair.residual, tol)


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
    :math:`\|d\|^2 = \alpha^\top G \alpha = T`.

    ``max_norm``, as the reference: the loss :math:`\sum_i \alpha_i L_i` is
    back-propagated, then the gradient of the **shared** parameters is clipped
    to norm ``max_norm`` (``clip_grad_norm_(shared_parameters, max_norm)``);
    task-specific parameters (heads) keep :math:`\alpha_i \nabla L_i`. Here
    the shared gradient's norm is :math:`\sqrt{\alpha^\top G \alpha}` from the
    Gramian (taken over the ``shared`` leaves), the factor
    :math:`s = \min(1, \texttt{max\_norm}/\|d\|)` is kept in the state and
    the step multiplies the shared leaves' combined gradient by it
    (:attr:`mtopt.Weighting.shared_scale`). ``info.weights`` are
    :math:`\alpha` (what the heads get); the shared leaves get :math:`s\alpha`.
    With ``shared=None`` every leaf is shared and every leaf is clipped.

    Solver: Newton's method on the equivalent convex problem
    :math:`\min_{\alpha>0} \tfrac12 \alpha^\top G \alpha - \sum_i \log \alpha_i`
    (:func:`mtopt.rules.nash_mtl_weights`, FairGrad's solver at ``alpha = 1``), at
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
      They do not sum to a constant. ``update`` returns :math:`\alpha`; a
      caller that combines the gradients itself multiplies the shared part by
      ``new_state.shared_scale`` (the optax aggregator does).
    - Between updates (``update_weights_every > 1``) the stored solution is
      reused and rescaled to ``max_norm`` for the current Gramian, as in the
      reference. Under ``vmap`` both branches are evaluated (``lax.cond``).
    - The equation has no solution when no direction improves every task
      (e.g. two opposite gradients); the reference's solver then fails and
      keeps the previous weights. Here the iterate stays finite (a ridge at
      rounding level keeps the Newton iterate bounded) and the direction
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
    max_norm = 0.0 if max_norm is None else options.real(
        max_norm, "max_norm", "nash_mtl", nonnegative=True)
    update_weights_every = options.integer(update_weights_every, "update_weights_every", "nash_mtl")
    optim_niter = options.integer(optim_niter, "optim_niter", "nash_mtl")
    tol = options.real(tol, "tol", "nash_mtl", nonnegative=True)

    def init(num_tasks: int, params=None) -> NashMTLState:
        del params
        base.check_num_tasks(num_tasks)
        dtype = base.state_dtype()
        return NashMTLState(
            alpha=jnp.ones((num_tasks,), dtype), step=jnp.zeros((), jnp.int32),
            shared_scale=jnp.ones((), dtype), solver=base.exact_solver_info(),
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "nash_mtl", NashMTLState)
        base.check_state_tasks(state.alpha.shape[0], num_tasks, "nash_mtl")
        gramian = base.check_gramian(gramian, num_tasks, "nash_mtl")
        dtype = base.compute_dtype(gramian, losses)
        g = gramian.astype(dtype)
        previous = state.alpha.astype(dtype)

        def solve(previous: Array) -> tuple[Array, base.SolverInfo]:
            return nash_mtl_weights(g, previous, optim_niter=optim_niter, tol=tol)

        if update_weights_every == 1:
            alpha, solver = solve(previous)
        else:
            due = state.step % update_weights_every == 0
            alpha, solver = jax.lax.cond(
                due, solve, lambda a: (a, state.solver), previous
            )
        scale = jnp.ones((), dtype)
        if max_norm > 0:
            norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
            shrink = norm > max_norm
            scale = jnp.where(shrink, max_norm / jnp.where(shrink, norm, 1.0), 1.0).astype(dtype)
        new_state = NashMTLState(
            alpha=alpha.astype(state.alpha.dtype), step=state.step + 1,
            shared_scale=scale.astype(state.shared_scale.dtype), solver=solver,
        )
        return alpha, new_state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.GRAMIAN, name="nash_mtl",
        shared_scale=lambda state: state.shared_scale,
        # The state is a warm start (it changes the iterations, not the unique solution)
        # unless the weights are reused between updates.
        stateful=update_weights_every > 1,
    )
