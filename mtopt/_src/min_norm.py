r"""The min-norm point of a convex hull, from the Gramian alone.

Solves the simplex-constrained quadratic program behind MGDA (and PMTL)

.. math::
    \min_w \; w^\top G w \quad \text{subject to} \quad w \ge 0, \ \textstyle\sum_i w_i = 1,

where ``G = J J^T`` is the Gramian of the task gradients. ``w^T G w`` is the
squared norm of ``d = sum_i w_i g_i``, so the solution is the point of the convex
hull of the gradients closest to the origin.

**Scaling.** Gradient norms that differ by many orders of magnitude make the
problem hopeless for a first-order method on ``G`` itself (its Hessian is
``G``, with eigenvalues as far apart as the squared norms). The solver works on
the Jacobi-scaled problem instead: with ``s = max_i G_ii``, ``n_i = ||g_i|| /
sqrt(s)`` in (0, 1] and the cosine matrix ``C_ij = G_ij / (s n_i n_j)``, the
variable ``y_i = n_i w_i`` turns the problem into

.. math::
    \min_y \; y^\top C y \quad \text{s.t.} \quad y \ge 0, \
    \textstyle\sum_i y_i / n_i = 1,

whose Hessian ``C`` has a unit diagonal whatever the norms, and whose feasible
set lies in the unit ball (vertex ``i`` is ``n_i e_i``).

**Certificate.** With ``h = n * (C y)`` (that is ``(G w)_i / s``) and
``lambda = y^T C y`` (``= w^T G w / s = sum_i w_i h_i``), the Frank-Wolfe gap
of the problem is ``2 s (lambda - min_i h_i)``; it bounds the error of the
objective, ``w^T G w - min <= 2 s (lambda - min_i h_i)``, and it is zero exactly
at the solution (the KKT conditions: ``(G w)_i >= w^T G w`` for every i, with
equality where ``w_i > 0``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtopt._src import base, nonneg_qp, options, rule

Array = jax.Array

# First-order iterations between two evaluations of the certificate.
_CHECK_EVERY = 10
# The rounding bound of the certificate is this many T * eps times the size of its terms.
_ROUNDING = 8.0


def min_norm_two(g11: Array, g12: Array, g22: Array) -> Array:
    r"""Closed-form weight of the first of two vectors in their min-norm point.

    For ``d(γ) = γ g_1 + (1 - γ) g_2`` the norm is minimised at

    .. math::
        γ^* = \mathrm{clip}\Big(\frac{g_{22} - g_{12}}{g_{11} + g_{22} - 2 g_{12}}, 0, 1\Big),

    and at ``γ = 1/2`` when ``g_1 = g_2`` (the denominator is ``|g_1 - g_2|^2``).

    Args:
      g11: ``<g_1, g_1>``.
      g12: ``<g_1, g_2>``.
      g22: ``<g_2, g_2>``.

    Returns:
      ``γ^*`` in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.min_norm import min_norm_two
      >>> round(float(min_norm_two(jnp.array(1.0), jnp.array(0.0), jnp.array(4.0))), 6)
      0.8
    """
    denom = g11 + g22 - 2.0 * g12
    # Relative test: the gradients coincide up to rounding.
    same = denom <= 1e-12 * jnp.maximum(g11 + g22, jnp.finfo(denom.dtype).tiny)
    gamma = (g22 - g12) / jnp.where(same, 1.0, denom)
    return jnp.where(same, 0.5, jnp.clip(gamma, 0.0, 1.0))


class _Problem(NamedTuple):
    """The Jacobi-scaled problem ``min y^T C y, y >= 0, a^T y = rhs`` (see the module doc)."""

    corr: Array  # (T, T) cosine matrix C; identity rows and columns for zero tasks
    norms: Array  # (T,) n_i = ||g_i|| / max_j ||g_j||; 1 for a zero task (never used)
    a: Array  # (T,) n_min / n_i in (0, 1]: the constraint a^T y = n_min is sum_i w_i = 1
    rhs: Array  # () n_min, the smallest norm of a non-zero task
    is_zero: Array  # (T,) bool, a zero gradient (squared norm below tiny, relative)
    step: Array  # () 1 / lambda_max(C), the first-order step


def _scale(gramian: Array) -> _Problem:
    """Split the Gramian into norms and cosines, factor by factor (no overflow)."""
    dtype = gramian.dtype
    num_tasks = gramian.shape[0]
    tiny = jnp.finfo(dtype).tiny
    g, _ = rule.unit_diagonal_scale(gramian)
    sq = jnp.diagonal(g)
    is_zero = sq <= tiny  # NaN is not zero: it propagates and is reported unconverged
    norms = jnp.where(is_zero, 1.0, jnp.sqrt(jnp.where(is_zero, 1.0, sq)))
    corr = jnp.clip(g / norms[:, None] / norms[None, :], -1.0, 1.0)
    eye = jnp.eye(num_tasks, dtype=dtype)
    either = is_zero[:, None] | is_zero[None, :]
    corr = jnp.where(eye > 0, 1.0, jnp.where(either, 0.0, corr))
    n_min = jnp.min(norms)
    a = n_min / norms
    lam_max = jnp.linalg.eigvalsh(corr)[-1]
    step = 1.0 / jnp.maximum(lam_max, 1.0)  # unit diagonal: lambda_max >= 1
    return _Problem(corr, norms, a, n_min, is_zero, step.astype(dtype))


def _project(v: Array, a: Array, rhs: Array) -> Array:
    r"""Euclidean projection of ``v`` onto ``{y >= 0, a^T y = rhs}`` (``a > 0``).

    ``y = max(v - τ a, 0)`` with ``τ`` found by sorting the breakpoints ``v_i / a_i``
    (the weighted form of the sort-based simplex projection).
    """
    ratio = v / a
    order = jnp.argsort(-ratio)
    a_s, v_s, r_s = a[order], v[order], ratio[order]
    tau = (jnp.cumsum(a_s * v_s) - rhs) / jnp.cumsum(a_s * a_s)
    count = jnp.maximum(jnp.sum((r_s > tau).astype(jnp.int32)), 1)
    return jnp.maximum(v - tau[count - 1] * a, 0.0)


class _Certificate(NamedTuple):
    residual: Array  # max(gap - rounding, 0) / max(lambda, rounding)
    value: Array  # lambda = y^T C y
    gap: Array  # lambda - min_i h_i
    vertex: Array  # argmin_i h_i, the Frank-Wolfe vertex


def _certificate(p: _Problem, y: Array) -> _Certificate:
    r"""The Frank-Wolfe gap of ``y``, less its own rounding bound, relative to ``y^T C y``.

    ``gap = lambda - min_i h_i`` with ``h = n * (C y)``. Its rounding error is at most
    about ``T eps`` times the size of the terms it is made of,
    ``rounding = 8 T eps (y^T |C| y + n_k (|C| y)_k)`` (``k`` the minimising task).
    The residual ``max(gap - rounding, 0) / max(lambda, rounding)`` is 0 when the gap
    is rounding, and otherwise bounds the relative error of the objective,
    ``(f(w) - f^*) / f(w) <= 2 (residual + rounding / lambda)``.
    """
    dtype = y.dtype
    num_tasks = y.shape[0]
    cy = p.corr @ y
    value = jnp.dot(y, cy)
    h = p.norms * cy
    k = jnp.argmin(h)
    abs_cy = jnp.abs(p.corr) @ y
    rounding = (_ROUNDING * num_tasks * jnp.finfo(dtype).eps) * (
        jnp.dot(y, abs_cy) + p.norms[k] * abs_cy[k]
    )
    gap = value - h[k]
    denom = jnp.maximum(jnp.maximum(value, rounding), jnp.finfo(dtype).tiny)
    residual = jnp.maximum(gap - rounding, 0.0) / denom
    return _Certificate(residual, value, gap, k)


def _first_order(p: _Problem, y0: Array, max_iter: int, tol: float) -> tuple[Array, Array]:
    """FISTA with gradient-based restart on the scaled problem; returns ``(iterations, y)``."""
    dtype = y0.dtype
    iteration = nonneg_qp.accelerated_iteration(
        lambda x: _project(x, p.a, p.rhs), p.step, p.corr
    )

    def chunk(carry):
        it, y, z, t, _ = carry
        y, z, t = jax.lax.fori_loop(0, _CHECK_EVERY, iteration, (y, z, t))
        return it + _CHECK_EVERY, y, z, t, _certificate(p, y).residual

    def not_done(carry):
        it, _, _, _, residual = carry
        return (it < max_iter) & (residual > tol)

    init = (jnp.zeros((), jnp.int32), y0, y0, jnp.ones((), dtype), _certificate(p, y0).residual)
    iterations, y, _, _, _ = jax.lax.while_loop(not_done, chunk, init)
    return iterations, y


def _affine_minimizer(p: _Problem, support: Array) -> Array:
    r"""``argmin y^T C y`` s.t. ``a^T y = rhs`` and ``y_i = 0`` off ``support`` (signs free).

    The stationarity system ``C_SS y_S = mu a_S`` is solved with an eigendecomposition
    of ``C_SS`` (completed by the identity off the support); eigenvalues below
    ``T eps lambda_max`` are raised to that floor, so a singular ``C_SS`` (duplicated
    or affinely dependent gradients, 0 in the affine hull) gives the least-norm
    solution of the null space instead of a division by zero.
    """
    dtype = p.corr.dtype
    num_tasks = p.corr.shape[0]
    both = support[:, None] & support[None, :]
    system = jnp.where(both, p.corr, 0.0) + jnp.diag(jnp.where(support, 0.0, 1.0))
    eigenvalues, vectors = jnp.linalg.eigh(system)
    floor = num_tasks * jnp.finfo(dtype).eps * jnp.maximum(eigenvalues[-1], 1.0)
    a_s = jnp.where(support, p.a, 0.0)
    x = vectors @ ((vectors.T @ a_s) / jnp.maximum(eigenvalues, floor))
    x = jnp.where(support, x, 0.0)
    ax = jnp.dot(p.a, x)
    return x * (p.rhs / jnp.where(ax > 0, ax, 1.0))


def _active_set(p: _Problem, y: Array, max_rounds: int) -> tuple[Array, Array]:
    r"""Finish with Wolfe's min-norm-point active-set method (Wolfe 1976) from ``y``.

    One round is one affine solve (:func:`_affine_minimizer`) on a working set ``S``:
    the support of the current point, plus, once the point minimises ``y^T C y`` on its
    support, the task of smallest ``h_i`` (the Frank-Wolfe vertex, the most violated
    KKT condition). If the affine minimiser is non-negative it becomes the point;
    otherwise the point moves towards it until a coordinate reaches zero, which leaves
    the working set. Every round lowers the objective (it is convex on the segment);
    in exact arithmetic the method ends at the solution in finitely many rounds. The
    rounds stop when the point minimises the objective on its support and its
    certificate is at rounding level, or after ``max_rounds``; the point with the
    best certificate met (the later one on ties) is returned with the rounds used.
    """
    dtype = y.dtype
    num_tasks = y.shape[0]

    def not_done(carry):
        rounds, _, at_minimum, cert, _, _ = carry
        return (rounds < max_rounds) & ~(at_minimum & (cert.residual <= 0))

    def one_round(carry):
        rounds, y, at_minimum, cert, best, best_residual = carry
        vertex = jnp.arange(num_tasks) == cert.vertex
        support = (y > 0) | (at_minimum & (cert.residual > 0) & vertex)
        target = _affine_minimizer(p, support)
        blocked = support & (target < 0)
        ratios = jnp.where(blocked, y / jnp.where(blocked, y - target, 1.0), jnp.inf)
        first = jnp.argmin(ratios)
        theta = jnp.minimum(ratios[first], 1.0)
        full = theta >= 1.0
        moved = y + theta * (target - y)
        moved = jnp.where(full | (jnp.arange(num_tasks) != first), moved, 0.0)
        moved = jnp.where(support, jnp.maximum(moved, 0.0), 0.0)
        total = jnp.dot(p.a, moved)
        ok = (total > 0) & jnp.all(jnp.isfinite(moved))
        y_new = jnp.where(ok, moved * (p.rhs / jnp.where(ok, total, 1.0)), y)
        cert = _certificate(p, y_new)
        better = cert.residual <= best_residual
        best = jnp.where(better, y_new, best)
        best_residual = jnp.where(better, cert.residual, best_residual)
        return rounds + 1, y_new, full & ok, cert, best, best_residual

    # One projected-gradient step first: it zeroes the coordinates the gradient pushes
    # out of the support (first-order iterates keep tiny positive values there).
    start = _project(y - p.step * (p.corr @ y), p.a, p.rhs)
    init = (
        jnp.zeros((), jnp.int32),
        start,
        jnp.zeros((), bool),
        _certificate(p, start),
        y,
        _certificate(p, y).residual.astype(dtype),
    )
    rounds, _, _, _, best, _ = jax.lax.while_loop(not_done, one_round, init)
    return best, rounds


def simplex_certificate(gramian: Array, weights: Array) -> Array:
    """The certificate (``SolverInfo.residual``) of any weights on the simplex.

    0 means the Frank-Wolfe gap of ``weights`` is at rounding level (they are the
    solution up to rounding); a positive value bounds the relative error of the
    objective (see :func:`_certificate`). For Gramians without a zero row (T >= 2).
    """
    dtype = base.compute_dtype(gramian, weights)
    p = _scale(jnp.asarray(gramian).astype(dtype))
    w = jnp.asarray(weights).astype(dtype)
    return _certificate(p, p.norms * w / jnp.sum(w)).residual


def min_norm_simplex_with_info(
    gramian: Array, *, max_iter: int = 1000, tol: float = 1e-7
) -> tuple[Array, base.SolverInfo]:
    r""":func:`min_norm_simplex` and the :class:`mtopt.SolverInfo` of the solve.

    ``info.residual`` is the certificate of :func:`_certificate`: the Frank-Wolfe
    gap of the Jacobi-scaled problem in excess of its own rounding bound, relative
    to the objective ``w^T G w`` (0: the gap is rounding). ``info.iterations``
    counts the first-order iterations plus the active-set rounds;
    ``info.converged`` is ``residual <= tol``. T = 1, T = 2 (closed form) and a
    Gramian with a zero row are exact: 0 iterations, residual 0.
    """
    gramian = jnp.asarray(gramian)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(
            f"gramian must be a square (T, T) matrix with T >= 1, got shape {gramian.shape}."
        )
    num_tasks = gramian.shape[0]
    dtype = base.compute_dtype(gramian)
    g = gramian.astype(dtype)
    if num_tasks == 1:
        return jnp.ones((1,), dtype), base.exact_solver_info()
    if num_tasks == 2:
        gamma = min_norm_two(g[0, 0], g[0, 1], g[1, 1])
        return jnp.stack([gamma, 1.0 - gamma]), base.exact_solver_info()

    w, iterations, residual = _solve(g, max_iter, tol)
    return w, base.solver_info(iterations, residual, tol)


@jax.jit
def _solve(g: Array, max_iter: Array, tol: Array) -> tuple[Array, Array, Array]:
    """The T > 2 solve, jitted as a whole (one compilation per shape and dtype, also when
    called eagerly; ``max_iter`` and ``tol`` are traced, so new values do not recompile)."""
    num_tasks = g.shape[0]
    dtype = g.dtype
    p = _scale(g)
    # Start at the vertex of the shortest gradient (the best vertex: vertex i has
    # objective n_i^2), where the solution tends to be when the norms differ widely.
    shortest = jnp.argmin(p.norms)
    y0 = jax.nn.one_hot(shortest, num_tasks, dtype=dtype) * p.rhs
    first_order, y = _first_order(p, y0, max_iter, tol)
    y, rounds = _active_set(p, y, max_rounds=2 * num_tasks + 4)
    residual = _certificate(p, y).residual
    w = y / p.norms
    w = w / jnp.sum(w)

    # A zero gradient is a solution by itself (d = 0): the weight is spread evenly over
    # the zero tasks.
    any_zero = jnp.any(p.is_zero)
    zeros = p.is_zero.astype(dtype)
    w = jnp.where(any_zero, zeros / jnp.maximum(jnp.sum(zeros), 1.0), w)
    residual = jnp.where(any_zero, 0.0, residual)
    iterations = jnp.where(any_zero, 0, first_order + rounds)
    return w, iterations, residual


def min_norm_simplex(
    gramian: Array, *, max_iter: int = 1000, tol: float = 1e-7
) -> Array:
    r"""Weights of the min-norm point of the convex hull of the task gradients.

    .. math::
        w^* = \arg\min_{w \in \Delta_T} w^\top G w,
        \qquad \Delta_T = \{w \ge 0, \textstyle\sum_i w_i = 1\}.

    ``T = 1`` returns ``[1]``; ``T = 2`` uses the exact closed form
    (:func:`min_norm_two`). For ``T > 2``:

    1. Jacobi scaling (module doc): the problem is solved on the cosine matrix in
       ``y_i = w_i ||g_i|| / max_j ||g_j||``, so gradient norms 1e-10 .. 1e10
       and spreads of norms up to 1e8 within one Gramian give the same
       accuracy as unit norms.
    2. Accelerated projected gradient on it (FISTA with adaptive restart, a
       sort-based projection onto the weighted simplex, step
       ``1 / lambda_max``), from the vertex of the shortest gradient, in a
       ``lax.while_loop`` that stops after ``max_iter`` iterations or when the
       certificate (below) is at most ``tol``.
    3. An exact finish: Wolfe's active-set method for the min-norm point
       (at most ``2 T + 4`` rounds of one ``T x T`` eigendecomposition each),
       which ends when the certificate is at rounding level; the point with the
       best certificate is kept.

    The certificate is the Frank-Wolfe (duality) gap ``w^T G w - min_i (G w)_i``
    (half the gap of the objective's gradient), computed on the scaled problem,
    less its own rounding bound, relative to ``w^T G w``: it bounds the relative
    error of the objective; it is not "the weights moved less than ``tol``".
    :func:`min_norm_simplex_with_info` returns it with the iteration count and
    the ``converged`` flag.

    A zero gradient (squared norm below the smallest normal number, relative to the
    largest) is a solution on its own: the weight is spread evenly over the zero
    tasks (uniform weights for a zero Gramian). Duplicated, collinear and
    rank-deficient Gramians are handled by the active-set solve (a singular
    system gets the least-norm solution); when the minimiser is not unique the
    direction is (``d = J^T w`` is the unique min-norm point), the weights are
    one solution.

    Measured accuracy (``benchmarks/min_norm_accuracy.py``, 288 cases: T in
    {3, 4, 8, 16}, norm spreads 1e0 .. 1e8, orthogonal, random, nearly collinear
    and conflicting gradients, against the exact optimum computed in rational
    arithmetic): relative error of ``d``, ``|d|`` and the objective at most
    2.5e-14 in float64; in float32 at most 1.8 ``eps`` times the condition
    number of the cosine matrix on the support (``|d|`` and the objective to
    3e-7), i.e. float32 rounding. Every case converged (residual 0).

    Args:
      gramian: (T, T) symmetric positive semi-definite matrix ``J J^T``.
      max_iter: bound on the first-order iterations (T > 2 only; a positive int).
      tol: certificate at which the first-order iterations stop, and below which
        the solve counts as converged (non-negative).

    Returns:
      (T,) weights on the simplex, in the dtype of the computation (float32, or
      float64 for a float64 Gramian).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import min_norm_simplex
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = min_norm_simplex(jac @ jac.T)
      >>> [round(float(x), 4) + 0.0 for x in w @ jac]
      [0.0, 1.0, 1.0]
      >>> jac = jnp.diag(jnp.array([1.0, 1e-3, 1e-6]))  # norms 1e6 apart
      >>> [float(f"{x:.3g}") for x in min_norm_simplex(jac @ jac.T)]
      [1e-12, 1e-06, 1.0]
    """
    max_iter = options.integer(max_iter, "max_iter", "min_norm_simplex")
    tol = options.real(tol, "tol", "min_norm_simplex", nonnegative=True)
    return min_norm_simplex_with_info(gramian, max_iter=max_iter, tol=tol)[0]
