"""FairGrad: alpha-fair resource allocation between tasks (Ban & Ji 2024)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtopt._src import alpha_fair, base, options

Array = jax.Array


def fairgrad(alpha: float = 1.0, *, max_iter: int = 100, tol: float = 1e-6) -> base.Weighting:
    r"""FairGrad: the update that allocates descent to the tasks alpha-fairly.

    The weights :math:`x > 0` solve

    .. math::
        (G x)_i = x_i^{-1/\alpha} \quad \forall i, \qquad d = \sum_i x_i g_i ,

    the optimality condition of maximising the alpha-fair utility
    :math:`\sum_i \frac{\langle g_i, d\rangle^{1-\alpha}}{1-\alpha}` of the
    tasks' descent rates under a norm budget. :math:`\alpha = 1` is
    proportional fairness (Nash-MTL's bargaining equation, without its norm
    clipping), :math:`\alpha \to \infty` approaches max-min fairness (MGDA-like)
    and :math:`\alpha = 0` is linear scalarisation. Every task's directional
    derivative :math:`x_i^{-1/\alpha}` is positive.

    Solver: Newton's method on the equivalent strictly convex problem
    (:func:`mtopt._src.alpha_fair.solve_alpha_fair`), at most ``max_iter``
    iterations, stopping at relative residual ``tol``. The reference code calls
    ``scipy.optimize.least_squares`` on :math:`G x - x^{-1/\alpha}` with
    :math:`x \ge 0`, started from :math:`1/T`; the solution is the same (it is
    unique). Stateless: every step starts from the solution for orthogonal
    gradients.

    Reference: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning",
    ICML 2024 (code: OptMN-Lab/fairgrad; LibMTL ``FairGrad_alpha=1.0``; TorchJD
    ``FairGrad``).

    Conventions pinned: the weights multiply the raw gradients and losses and
    do not sum to a constant (they scale like :math:`\|g\|^{-2\alpha/(\alpha+1)}`).
    ``alpha = 0`` returns :math:`1/T` for every task, as TorchJD. A task with a
    zero gradient cannot satisfy its equation and gets weight 0. When no
    direction improves every task (e.g. opposite gradients) the equation has
    no solution; the weights then stay finite (see
    :mod:`mtopt._src.alpha_fair`) and the direction vanishes.

    Float32 (``python benchmarks/float32_accuracy.py``): with linearly
    independent gradients the float32 direction is within 3.5e-5
    :math:`\max_i \|g_i\|` of the float64 one (9 x 11 normal matrix, :math:`\|d\| = 2.2`);
    on rank-deficient Gramians
    (TorchJD's rank-1 and stationarity matrices) the equation is ill-posed and
    the answer is set by rounding: a float64 solve on the float32-rounded
    Gramian is itself up to 12.7 :math:`\max_i \|g_i\|` from the exact one's,
    and the float32 direction up to 3.4 away. No float32 refinement can fix an
    ill-posed problem; use float64 Gramians there.

    Args:
      alpha: the fairness parameter, a non-negative float.
      max_iter: bound on the Newton iterations.
      tol: relative residual ``max_i |x_i (G x)_i / x_i^{1 - 1/alpha} - 1|`` at
        which the iterations stop.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``; its
      :class:`mtopt._src.base.SolverState` carries the Newton solve's
      iterations and relative residual (``converged`` when it is at most
      ``tol``; ``alpha = 0`` is closed form).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import fairgrad
      >>> jac = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> method = fairgrad(alpha=2.0)
      >>> x, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(v), 3) for v in x]  # x_i = ||g_i||^(-4/3) for orthogonal tasks
      [1.0, 0.397]
    """
    alpha = options.real(alpha, "alpha", "fairgrad", nonnegative=True)
    max_iter = options.integer(max_iter, "max_iter", "fairgrad")
    tol = options.real(tol, "tol", "fairgrad", nonnegative=True)

    def update(
        state: base.SolverState,
        losses: Array,
        *,
        gramian: Optional[Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
    ) -> tuple[Array, base.SolverState]:
        del jacobian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "fairgrad", base.SolverState)
        gramian = base.check_gramian(gramian, num_tasks, "fairgrad")
        dtype = base.compute_dtype(gramian, losses)
        if alpha == 0.0:
            weights = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
            return weights, base.SolverState(state.num_tasks, base.exact_solver_info())
        x, fair = alpha_fair.solve_alpha_fair(
            gramian.astype(dtype), alpha, max_iter=max_iter, tol=tol
        )
        info = base.solver_info(fair.iterations, fair.residual, tol)
        return x, base.SolverState(state.num_tasks, info)

    return base.Weighting(
        init=base.init_solver_state, update=update, needs=base.Needs.GRAMIAN, name="fairgrad"
    )
