r"""Projection onto the dual cone of the task gradients, from the Gramian alone.

The dual cone of the task gradients ``g_1 .. g_T`` (the rows of ``J``) is the set
of directions that conflict with none of them, ``{d : J d >= 0}``. Projecting a
combination ``J^T u`` onto it is, by Proposition 1 of Quinton & Rey (2024), the
lower-bounded quadratic program

.. math::
    v^* = \arg\min_{v} \; v^\top G v \quad \text{subject to} \quad v \ge u,
    \qquad \Pi(J^\top u) = J^\top v^*,

which reads only the Gramian ``G = J J^T``. UPGrad solves it for ``u = e_i / T``
(every task), DualProj for ``u = 1 / T``.

The solver works on the *correlation* matrix ``C = D^{-1} G D^{-1}`` (``D`` the
task-gradient norms), in the variable ``y = D v``. This diagonal (Jacobi)
rescaling makes it independent of the scale of each task's gradient, so
gradients from 1e-10 to 1e10, even mixed in one Gramian, give the same
iteration counts and the same accuracy. Tasks whose gradient is zero do not
enter the objective: any ``v_i >= u_i`` is optimal and ``max(u_i, 0)`` (the
limit of a vanishing ridge, i.e. the least-norm choice) is returned.

Float32 accuracy. The T x T problem is tiny, so its final linear solves are
refined (iterative refinement) with residuals accumulated in double-float
arithmetic (``mtopt._src.linalg``: exact products by splitting every float32
into two 12-bit halves, Knuth's TwoSum for the sums), which works under the
default JAX config (no ``jax_enable_x64``) and on every backend. The solver is
then exact for the problem it is given, the cosine matrix ``C`` of the
Gramian plus a ridge of ``4 T eps`` (:func:`ridge`), up to the rounding of the
returned weights; ``C`` itself is formed entry by entry, so a permutation of the
tasks permutes it exactly. What remains in float32 is (i) the Gramian's own
rounding and (ii) the ridge's bias, both bounded in :func:`project_to_dual_cone`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.scipy import linalg as jsp_linalg

from mtopt._src import base, options, rule
from mtopt._src.linalg import accurate_matvec, compensated_sum

Array = jax.Array

# First-order iterations between two evaluations of the stopping test (each
# evaluation is followed by the active-set finish, :func:`_finish`).
_CHECK_EVERY = 10
# Steps of iterative refinement in one active-set solve.
_REFINE_STEPS = 4


class ScaledGramian(NamedTuple):
    """A Gramian split into per-task scales and a positive semi-definite correlation.

    Attributes:
      correlation: (T, T) the cosine matrix ``G_ij / (||g_i|| ||g_j||)`` with its
        negative eigenvalues (rounding) clipped to zero; a zero task's row and
        column are those of the identity.
      norms: (T,) ``||g_i|| / max_j ||g_j||``, in [0, 1]; 0 for a zero task.
      is_zero: (T,) True for a task whose gradient is zero (its squared norm,
        relative to the largest, is below the smallest normal number).
      scale: () ``max_i G_ii``, or 1 when the Gramian is zero.
      max_eigenvalue: () the largest eigenvalue of ``correlation``.
    """

    correlation: Array
    norms: Array
    is_zero: Array
    scale: Array
    max_eigenvalue: Array


class QPInfo(NamedTuple):
    """Diagnostics of :func:`project_to_dual_cone`.

    Attributes:
      iterations: first-order iterations run (a multiple of 10, at most
        ``max_iter`` rounded up).
      residual: the final relative KKT residual (see :func:`project_to_dual_cone`).
    """

    iterations: Array
    residual: Array


def check_square(gramian: Array, name: str = "gramian") -> Array:
    """Check that ``gramian`` is a square (T, T) matrix with T >= 1."""
    gramian = jnp.asarray(gramian)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(
            f"{name} must be a square (T, T) matrix with T >= 1, got shape {gramian.shape}."
        )
    return gramian


def scale_gramian(gramian: Array) -> ScaledGramian:
    r"""Split a Gramian into task-gradient norms and a PSD cosine matrix.

    ``G = s \, \mathrm{diag}(n) \, C \, \mathrm{diag}(n)`` with ``s = max_i G_ii``,
    ``n_i = \sqrt{G_ii / s}`` and ``C`` the cosine matrix. The division is done
    factor by factor, so Gramians of gradients from 1e-10 to 1e10 neither
    overflow nor underflow. ``C`` is symmetrised and clipped to [-1, 1], entry
    by entry (so a permutation of the tasks permutes it exactly). When rounding
    made it indefinite by more than half the ridge (:func:`ridge`) that the
    solvers add, e.g. in a Gramian accumulated in bfloat16 or over very many
    parameters, it is projected onto the positive semi-definite cone (its
    negative eigenvalues set to zero) instead, so a quadratic program on
    ``C + ridge I`` is never unbounded; that projection costs a rounding of
    ``T eps`` relative and is not exactly permutation equivariant.

    Args:
      gramian: (T, T) Gramian ``J J^T`` (any floating dtype; computed in float32,
        or float64 for a float64 input).

    Returns:
      A :class:`ScaledGramian`.
    """
    gramian = check_square(gramian)
    dtype = base.compute_dtype(gramian)
    tiny = jnp.finfo(dtype).tiny
    g, scale = rule.unit_diagonal_scale(gramian.astype(dtype))
    scale = jnp.where(scale > tiny, scale, 1.0).astype(dtype)
    sq_norms = jnp.diagonal(g)
    is_zero = ~(sq_norms > tiny)
    norms = jnp.where(is_zero, 0.0, jnp.sqrt(jnp.where(is_zero, 1.0, sq_norms)))
    safe = jnp.where(is_zero, 1.0, norms)
    corr = jnp.clip(g / safe[:, None] / safe[None, :], -1.0, 1.0)
    either_zero = is_zero[:, None] | is_zero[None, :]
    eye = jnp.eye(g.shape[0], dtype=dtype)
    corr = jnp.where(either_zero, 0.0, corr)
    corr = jnp.where(eye > 0, 1.0, corr)
    eigenvalues, vectors = jnp.linalg.eigh(corr)
    clipped = jnp.maximum(eigenvalues, 0.0)
    projected = (vectors * clipped[None, :]) @ vectors.T
    projected = 0.5 * (projected + projected.T)
    nearly_psd = eigenvalues[0] >= -0.5 * ridge(g.shape[0], dtype)
    corr = jnp.where(nearly_psd, corr, projected)
    return ScaledGramian(corr, norms, is_zero, scale, clipped[-1])


def ridge(num_tasks: int, dtype: jnp.dtype) -> float:
    """The rounding-level ridge added to a unit-diagonal PSD matrix: ``4 T eps``.

    It keeps the systems solved on it positive definite despite rounding
    (9.5e-6 at T = 20 in float32, 1.8e-14 in float64). For the dual-cone QP its
    bias on the direction is at most ``sqrt(4 T eps) ||diag(||g_i||) v||`` (see
    :func:`project_to_dual_cone`), and of order ``4 T eps / lambda_min(C)``
    relative when the cosine matrix is well conditioned.
    """
    return 4.0 * num_tasks * float(jnp.finfo(dtype).eps)


def _kkt_residual(corr: Array, y: Array, lower: Array, step: Array) -> Array:
    """Relative norm of the projected-gradient map ``y - max(y - step C y, l)``.

    ``step = 1 / lambda_max`` (the gradient step), so the measure is
    dimensionless and its rounding floor is about eps (the product is formed with
    :func:`accurate_matvec`), whatever the number of tasks.
    """
    move = y - jnp.maximum(y - step * accurate_matvec(corr, y), lower)
    size = jnp.maximum(jnp.max(jnp.abs(y)), jnp.max(jnp.abs(lower)))
    return jnp.max(jnp.abs(move)) / jnp.maximum(size, jnp.finfo(y.dtype).tiny)


def _solve_on_free_set(corr: Array, y: Array, lower: Array, active: Array) -> Array:
    """The stationary point ``(C x)_f = 0``, ``x_a = l_a`` of the active set ``active``.

    A Cholesky factorisation of the free block and :data:`_REFINE_STEPS` steps of
    iterative refinement whose residuals come from :func:`accurate_matvec`, so in
    float32 the result is exact for the stored ``C`` up to its own rounding even
    at a condition number of ``1 / (4 eps)`` (the ridge). Not clipped to ``l``.
    """
    free = ~active
    both_free = free[:, None] & free[None, :]
    eye = jnp.eye(y.shape[0], dtype=y.dtype)
    system = jnp.where(both_free, corr, 0.0) + jnp.where(free, 0.0, 1.0)[:, None] * eye
    factor = jsp_linalg.cho_factor(system, lower=True)

    def refine(_, x: Array) -> Array:
        residual = jnp.where(free, -accurate_matvec(corr, x), 0.0)
        return x + jsp_linalg.cho_solve(factor, residual)

    # A loop rather than unrolled steps: the same arithmetic, a quarter of the program.
    return jax.lax.fori_loop(0, _REFINE_STEPS, refine, jnp.where(free, y, lower))


def _finish(corr: Array, y: Array, res_y: Array, lower: Array, step: Array) -> tuple[Array, Array]:
    """A primal active-set method from the feasible ``y`` to the exact solution.

    The working set starts as the bounds ``y`` sits on. Each step jumps to the
    stationary point of the working set (:func:`_solve_on_free_set`); when that
    point violates a bound the step stops at the first bound it meets, which
    joins the working set (ratio test), otherwise it is taken and the bound with
    the most negative multiplier ``(C y)_i`` leaves the set. The iterates stay
    feasible and the objective never increases, so it cannot cycle; it ends
    when every multiplier is non-negative to rounding, after at most
    ``2 T + 8`` steps. Returns the better (by KKT residual) of
    the result and ``y``, and its residual.
    """
    num_tasks = y.shape[0]
    dtype = y.dtype
    eps = jnp.finfo(dtype).eps

    def body(carry):
        k, x, working, _ = carry
        target = _solve_on_free_set(corr, x, lower, working)
        target = jnp.where(jnp.isfinite(target), target, x)
        direction = jnp.where(working, 0.0, target - x)
        blocking = ~working & (direction < 0)
        ratios = jnp.where(
            blocking, (x - lower) / jnp.where(blocking, -direction, 1.0), jnp.inf
        )
        first = jnp.argmin(ratios)
        alpha = jnp.minimum(ratios[first], 1.0)
        blocked = ratios[first] < 1.0
        x_new = jnp.maximum(x + alpha * direction, lower)
        x_new = jnp.where(blocked, x_new.at[first].set(lower[first]), x_new)
        gradient = accurate_matvec(corr, x_new)
        multipliers = jnp.where(working, gradient, jnp.inf)
        release = jnp.argmin(multipliers)
        floor = -16.0 * eps * jnp.max(jnp.abs(gradient)) - jnp.finfo(dtype).tiny
        optimal = ~blocked & (multipliers[release] >= floor)
        onehot = jnp.arange(num_tasks) == release
        working = jnp.where(
            blocked,
            working | (jnp.arange(num_tasks) == first),
            jnp.where(optimal, working, working & ~onehot),
        )
        return k + 1, x_new, working, optimal

    def not_done(carry):
        k, _, _, optimal = carry
        return (k < 2 * num_tasks + 8) & ~optimal

    init = (jnp.zeros((), jnp.int32), y, y <= lower, jnp.zeros((), bool))
    _, x, _, _ = jax.lax.while_loop(not_done, body, init)
    res_x = _kkt_residual(corr, x, lower, step)
    better = res_x <= res_y
    return jnp.where(better, x, y), jnp.where(better, res_x, res_y)


def accelerated_iteration(project, step: Array, corr: Array):
    """One step of accelerated projected gradient on ``y^T C y / 2``, for ``lax.fori_loop``.

    FISTA with gradient-based adaptive restart (O'Donoghue & Candes 2015) on the
    carry ``(y, z, t)``: ``y' = project(z - step C z)``, momentum reset when the step
    goes against the last move. Shared by this module's dual-cone QP and
    :mod:`mtopt._src.min_norm` (which projects onto a scaled simplex).
    """

    def iteration(_, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        y, z, t = carry
        y_next = project(z - step * (corr @ z))
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = jnp.dot(z - y_next, y_next - y) > 0
        momentum = jnp.where(restart, 0.0, (t - 1.0) / t_next)
        z_next = y_next + momentum * (y_next - y)
        return y_next, z_next, jnp.where(restart, 1.0, t_next).astype(t.dtype)

    return iteration


def solve_scaled(
    scaled: ScaledGramian, u: Array, *, max_iter: int = 1000, tol: float = 1e-6
) -> tuple[Array, QPInfo]:
    """:func:`project_to_dual_cone` on an already scaled Gramian (see there)."""
    num_tasks = scaled.correlation.shape[0]
    dtype = scaled.correlation.dtype
    u = jnp.asarray(u).astype(dtype)
    if u.shape != (num_tasks,):
        raise ValueError(
            f"u must have shape ({num_tasks},) to match the ({num_tasks}, {num_tasks}) "
            f"Gramian, got shape {u.shape}."
        )
    return _solve_scaled(scaled, u, jnp.asarray(max_iter, jnp.int32), jnp.asarray(tol, dtype))


@jax.jit
def _solve_scaled(
    scaled: ScaledGramian, u: Array, max_iter: Array, tol: Array
) -> tuple[Array, QPInfo]:
    """The solve of :func:`solve_scaled`, jitted as a whole with its options traced: one
    compilation per shape and dtype, also for eager calls (which would otherwise
    compile the solver's loops again at every call)."""
    corr0, norms, is_zero, _, lam_max = scaled
    num_tasks = corr0.shape[0]
    dtype = corr0.dtype
    rho = ridge(num_tasks, dtype)
    corr = corr0 + rho * jnp.eye(num_tasks, dtype=dtype)
    step = (1.0 / (lam_max + rho)).astype(dtype)
    lower = norms * u
    iteration = accelerated_iteration(lambda x: jnp.maximum(x, lower), step, corr)

    def chunk(carry):
        it, y, z, t, _ = carry
        y, z, t = jax.lax.fori_loop(0, _CHECK_EVERY, iteration, (y, z, t))
        # The active-set finish after every chunk: exact as soon as the iterations
        # are close enough for it to end within its step bound; otherwise the
        # iterations go on from its (better) point. One call site of the free-set
        # solve in the program (it was two, with separate primal-dual steps: a
        # quarter more to compile, and more iterations).
        res = _kkt_residual(corr, y, lower, step)
        finished, res = _finish(corr, y, res, lower, step)
        moved = jnp.any(finished != y)
        z = jnp.where(moved, finished, z)
        t = jnp.where(moved, 1.0, t).astype(dtype)
        return it + _CHECK_EVERY, finished, z, t, res

    def not_done(carry):
        it, _, _, _, res = carry
        return (it < max_iter) & (res > tol)

    y0 = jnp.maximum(lower, 0.0)
    init = (
        jnp.zeros((), jnp.int32),
        y0,
        y0,
        jnp.ones((), dtype),
        _kkt_residual(corr, y0, lower, step),
    )
    iterations, y, _, _, residual = jax.lax.while_loop(not_done, chunk, init)
    safe = jnp.where(is_zero, 1.0, norms)
    # max(., u): dividing y_i = n_i u_i back by n_i may land one ulp below u_i.
    v = jnp.where(is_zero, jnp.maximum(u, 0.0), jnp.maximum(y / safe, u))
    return v, QPInfo(iterations, residual)


def project_to_dual_cone(
    gramian: Array,
    u: Array,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[Array, QPInfo]:
    r"""Weights of the projection of ``J^T u`` onto the dual cone of the rows of ``J``.

    Solves, exactly up to the tolerance (no regularisation beyond a ridge of
    ``4 T eps`` on the unit-diagonal cosine matrix, i.e. at the level of
    rounding),

    .. math::
        \min_v \; v^\top G v \quad \text{s.t.} \quad v \ge u .

    The solution satisfies the KKT conditions ``v >= u``, ``G v >= 0`` and
    ``(v - u)_i (G v)_i = 0``; the direction ``d = J^T v`` is then
    non-conflicting (``J d = G v >= 0``). When ``G`` is singular the weights are
    not unique (the direction is); the solver returns one solution.

    Algorithm: Jacobi rescaling to the cosine matrix (:func:`scale_gramian`),
    accelerated projected gradient (FISTA with adaptive restart, step
    ``1 / lambda_max``) inside a ``lax.while_loop`` that stops after ``max_iter``
    iterations or when the relative KKT residual
    ``max|y - max(y - C y, l)| / max(|y|, |l|)`` falls below ``tol``; after
    every 10 iterations a primal active-set method (:func:`_finish`: at most
    ``2 T + 8`` Cholesky solves on the free set, kept only when it lowers the
    residual) jumps to the exact solution as soon as the iterations are close
    enough to it, which is usually after the first 10. Pure JAX: runs under
    ``jax.jit``; vmap it over ``u`` with the Gramian unbatched (``in_axes=(None,
    0)``) to solve several problems on one Gramian (the eigendecomposition is
    then computed once), or over a batch of Gramians.

    Args:
      gramian: (T, T) Gramian ``J J^T``.
      u: (T,) the lower bound (the weights of the combination to project).
      max_iter: bound on the first-order iterations.
      tol: relative KKT residual at which the iterations stop.

    Returns:
      ``(v, info)``: the (T,) weights (float32, or float64 for a float64
      Gramian) and a :class:`QPInfo`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.nonneg_qp import project_to_dual_cone
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> v, _ = project_to_dual_cone(jac @ jac.T, jnp.array([0.5, 0.5]))
      >>> [round(float(x), 4) for x in v]  # exact: (11/18, 1/2)
      [0.6111, 0.5]
      >>> [round(float(x), 4) for x in v @ jac]
      [0.5556, 1.1111, 1.1111]
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol!r}.")
    return solve_scaled(scale_gramian(gramian), u, max_iter=max_iter, tol=tol)


def normalize_and_regularize(gramian: Array, norm_eps: float, reg_eps: float) -> Array:
    """TorchJD's preprocessing: ``G / trace(G)`` (zero when the trace is below
    ``norm_eps``), plus ``reg_eps * I``.

    With both at 0 only the scale would change, which the solver removes anyway
    (:func:`scale_gramian`), so the Gramian is returned as it is: dividing by a
    trace summed in another order would perturb every entry by an ulp, which
    the ridged float32 problem (condition number up to ``1 / (4 eps)``) turns
    into a visible change of the weights under a permutation of the tasks.
    Otherwise the trace is summed with :func:`compensated_sum` (correctly
    rounded, so independent of the task order).
    """
    dtype = base.compute_dtype(gramian)
    g = gramian.astype(dtype)
    if norm_eps == 0 and reg_eps == 0:
        return g
    trace = compensated_sum(jnp.diagonal(g))
    keep = (trace >= norm_eps) & (trace > 0)
    g = jnp.where(keep, g / jnp.where(keep, trace, 1.0), 0.0)
    return g + reg_eps * jnp.eye(g.shape[0], dtype=dtype)


def preference_or_mean(
    preference: Array | None, num_tasks: int, method: str, dtype: jnp.dtype
) -> Array:
    """The (T,) combination weights: ``preference`` if given, else ``1/T``."""
    return base.optional_task_vector(
        preference, num_tasks, method, default=1.0 / num_tasks, dtype=dtype,
        meaning="one weight per task", nonnegative=True,
    )


def check_solver_options(
    norm_eps: float, reg_eps: float, max_iter: int, tol: float, method: str
) -> tuple[float, float, int, float]:
    """Validate the options UPGrad and DualProj share (:mod:`mtopt._src.options`); return them."""
    norm_eps = options.real(norm_eps, "norm_eps", method, nonnegative=True)
    reg_eps = options.real(reg_eps, "reg_eps", method, nonnegative=True)
    max_iter = options.integer(max_iter, "max_iter", method)
    tol = options.real(tol, "tol", method, nonnegative=True)
    return norm_eps, reg_eps, max_iter, tol


def prepare_dual_cone_problem(
    gramian: Array,
    preference: Optional[Array],
    norm_eps: float,
    reg_eps: float,
    method: str,
) -> tuple[ScaledGramian, Array]:
    """Normalised, scaled Gramian (checked by the rule) and the (T,) preference (default 1/T)."""
    g = normalize_and_regularize(gramian, norm_eps, reg_eps)
    pref = preference_or_mean(preference, gramian.shape[0], method, g.dtype)
    return scale_gramian(g), pref
