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
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.scipy import linalg as jsp_linalg

from mtopt._src import base

Array = jax.Array

# Iterations between two evaluations of the stopping test.
_CHECK_EVERY = 10
# Active-set refinements after the first-order iterations.
_POLISH_ROUNDS = 3


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
    overflow nor underflow. ``C`` is symmetrised, clipped to [-1, 1] and
    projected onto the positive semi-definite cone (its negative eigenvalues, which
    only rounding creates, e.g. in a Gramian accumulated in bfloat16, are set to
    zero), so a quadratic program on it is never unbounded.

    Args:
      gramian: (T, T) Gramian ``J J^T`` (any floating dtype; computed in float32,
        or float64 for a float64 input).

    Returns:
      A :class:`ScaledGramian`.
    """
    gramian = check_square(gramian)
    dtype = base.compute_dtype(gramian)
    g = gramian.astype(dtype)
    g = 0.5 * (g + g.T)
    tiny = jnp.finfo(dtype).tiny
    scale = jnp.max(jnp.diagonal(g))
    all_zero = ~(scale > tiny)
    scale = jnp.where(all_zero, 1.0, scale).astype(dtype)
    g = g / scale
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
    eigenvalues = jnp.maximum(eigenvalues, 0.0)
    corr = (vectors * eigenvalues[None, :]) @ vectors.T
    corr = 0.5 * (corr + corr.T)
    return ScaledGramian(corr, norms, is_zero, scale, eigenvalues[-1])


def ridge(num_tasks: int, dtype: jnp.dtype) -> float:
    """The rounding-level ridge added to a unit-diagonal PSD matrix: ``4 T eps``.

    It keeps the systems solved on it positive definite despite rounding; its
    effect on a solution is of the order of the float precision.
    """
    return 4.0 * num_tasks * float(jnp.finfo(dtype).eps)


def _kkt_residual(corr: Array, y: Array, lower: Array) -> Array:
    """Relative norm of the projected-gradient map ``y - max(y - C y, l)``."""
    step = y - jnp.maximum(y - corr @ y, lower)
    size = jnp.maximum(jnp.max(jnp.abs(y)), jnp.max(jnp.abs(lower)))
    return jnp.max(jnp.abs(step)) / jnp.maximum(size, jnp.finfo(y.dtype).tiny)


def _polish(corr: Array, y: Array, lower: Array, step: Array) -> Array:
    """One active-set refinement: solve the stationarity system on the free set.

    The active set is where a projected-gradient step would land on the bound.
    The candidate is kept only if it is finite, feasible and has a smaller KKT
    residual than ``y``.
    """
    active = y - step * (corr @ y) <= lower
    free = ~active
    both_free = free[:, None] & free[None, :]
    eye = jnp.eye(y.shape[0], dtype=y.dtype)
    system = jnp.where(both_free, corr, 0.0) + jnp.where(free, 0.0, 1.0)[:, None] * eye
    fixed = jnp.where(active, lower, 0.0)
    rhs = jnp.where(free, -(corr @ fixed), lower)
    factor = jsp_linalg.cho_factor(system, lower=True)
    candidate = jsp_linalg.cho_solve(factor, rhs)
    slack = 1e3 * jnp.finfo(y.dtype).eps * jnp.maximum(jnp.max(jnp.abs(candidate)), 1e-30)
    feasible = jnp.all(candidate >= lower - slack) & jnp.all(jnp.isfinite(candidate))
    candidate = jnp.maximum(jnp.where(feasible, candidate, y), lower)
    better = _kkt_residual(corr, candidate, lower) <= _kkt_residual(corr, y, lower)
    return jnp.where(feasible & better, candidate, y)


def solve_scaled(
    scaled: ScaledGramian, u: Array, *, max_iter: int = 1000, tol: float = 1e-6
) -> tuple[Array, QPInfo]:
    """:func:`project_to_dual_cone` on an already scaled Gramian (see there)."""
    corr0, norms, is_zero, _, lam_max = scaled
    num_tasks = corr0.shape[0]
    dtype = corr0.dtype
    u = jnp.asarray(u).astype(dtype)
    if u.shape != (num_tasks,):
        raise ValueError(
            f"u must have shape ({num_tasks},) to match the ({num_tasks}, {num_tasks}) "
            f"Gramian, got shape {u.shape}."
        )
    rho = ridge(num_tasks, dtype)
    corr = corr0 + rho * jnp.eye(num_tasks, dtype=dtype)
    step = 1.0 / (lam_max + rho)
    lower = norms * u

    def iteration(_, carry):
        y, z, t = carry
        y_next = jnp.maximum(z - step * (corr @ z), lower)
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        # Gradient-based adaptive restart (O'Donoghue & Candes 2015).
        restart = jnp.dot(z - y_next, y_next - y) > 0
        momentum = jnp.where(restart, 0.0, (t - 1.0) / t_next)
        z_next = y_next + momentum * (y_next - y)
        return y_next, z_next, jnp.where(restart, 1.0, t_next).astype(dtype)

    def chunk(carry):
        it, y, z, t, _ = carry
        y, z, t = jax.lax.fori_loop(0, _CHECK_EVERY, iteration, (y, z, t))
        return it + _CHECK_EVERY, y, z, t, _kkt_residual(corr, y, lower)

    def not_done(carry):
        it, _, _, _, res = carry
        return (it < max_iter) & (res > tol)

    y0 = jnp.maximum(lower, 0.0)
    init = (
        jnp.zeros((), jnp.int32),
        y0,
        y0,
        jnp.ones((), dtype),
        _kkt_residual(corr, y0, lower),
    )
    iterations, y, _, _, _ = jax.lax.while_loop(not_done, chunk, init)
    y = jax.lax.fori_loop(0, _POLISH_ROUNDS, lambda _, y: _polish(corr, y, lower, step), y)
    residual = _kkt_residual(corr, y, lower)
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
    ``max|y - max(y - C y, l)| / max(|y|, |l|)`` falls below ``tol``, then three
    active-set refinements (one Cholesky solve each on the free set, kept only
    when they lower the residual), which make the result exact whenever the
    iterations identified the active set. Pure JAX: runs under ``jax.jit``;
    vmap it over ``u`` with the Gramian unbatched (``in_axes=(None, 0)``) to
    solve several problems on one Gramian (the eigendecomposition is then
    computed once), or over a batch of Gramians.

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


def check_nonnegative(value: float, name: str, method: str) -> float:
    """Check a non-negative float option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{method}: {name} must be a non-negative float, got {value!r}.")
    return float(value)


def normalize_and_regularize(gramian: Array, norm_eps: float, reg_eps: float) -> Array:
    """TorchJD's preprocessing: ``G / trace(G)`` (zero when the trace is below
    ``norm_eps``), plus ``reg_eps * I``. With both at 0 only the scale changes."""
    dtype = base.compute_dtype(gramian)
    g = gramian.astype(dtype)
    trace = jnp.trace(g)
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
    """Validate the options UPGrad and DualProj share; return them."""
    norm_eps = check_nonnegative(norm_eps, "norm_eps", method)
    reg_eps = check_nonnegative(reg_eps, "reg_eps", method)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{method}: max_iter must be a positive int, got {max_iter!r}.")
    tol = check_nonnegative(tol, "tol", method)
    return norm_eps, reg_eps, max_iter, tol


def prepare_dual_cone_problem(
    gramian: Array,
    losses: Array,
    preference: Optional[Array],
    norm_eps: float,
    reg_eps: float,
    method: str,
) -> tuple[ScaledGramian, Array]:
    """Checked, normalised, scaled Gramian and the (T,) preference (default 1/T)."""
    losses = base.check_losses(losses)
    num_tasks = losses.shape[0]
    gramian = base.check_gramian(gramian, num_tasks, method)
    dtype = base.compute_dtype(gramian, losses)
    g = normalize_and_regularize(gramian.astype(dtype), norm_eps, reg_eps)
    pref = preference_or_mean(preference, num_tasks, method, dtype)
    return scale_gramian(g), pref

