r"""The alpha-fair bargaining equation ``G x = x^{-1/alpha}``, from the Gramian alone.

Nash-MTL (``alpha = 1``: ``G x = 1 / x``) and FairGrad (any ``alpha > 0``) look
for positive task weights ``x`` such that every task's directional derivative
along ``d = J^T x`` is ``(G x)_i = x_i^{-1/alpha}``. The equation is the
stationarity condition of the strictly convex problem

.. math::
    \min_{x > 0} \; \tfrac12 x^\top G x + \sum_i h(x_i), \qquad
    h(x) = -\log x \ (\alpha = 1), \qquad
    h(x) = -\frac{x^{p}}{p}, \ p = 1 - \frac1\alpha \ (\alpha \ne 1),

(``h`` is convex for every ``alpha > 0``), which this module minimises by
Newton's method. The solution is unique when it exists; it does not exist when
no direction improves every task (e.g. two opposite gradients): a ridge of
``4 T eps`` on the unit-diagonal cosine matrix then keeps it finite (large
weights on a vanishing direction).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import linalg as jsp_linalg

from mtopt._src import nonneg_qp

Array = jax.Array

# Bound on the step halvings of the backtracking line search.
_MAX_HALVINGS = 40


class FairInfo(NamedTuple):
    """Diagnostics of :func:`solve_alpha_fair`.

    Attributes:
      iterations: Newton iterations run.
      residual: ``max_i |x_i (G x)_i / x_i^{1 - 1/alpha} - 1|`` over the tasks
        with a non-zero gradient (0 at the exact solution; scale free).
    """

    iterations: Array
    residual: Array


def solve_alpha_fair(
    gramian: Array,
    alpha: float = 1.0,
    init: Array | None = None,
    *,
    max_iter: int = 20,
    tol: float = 1e-6,
) -> tuple[Array, FairInfo]:
    r"""Positive weights ``x`` with ``G x = x^{-1/alpha}`` (Nash-MTL for ``alpha = 1``).

    Algorithm: the Gramian is split into task norms and a cosine matrix
    (:func:`mtopt._src.nonneg_qp.scale_gramian`); the equation is solved for
    ``y = n * x`` (Jacobi rescaling, so mixed gradient scales are harmless) by
    Newton's method on the convex objective of the module docstring, with a
    step kept inside ``y > 0`` (at most 95% of the way to the boundary) and an
    Armijo backtracking line search while the squared Newton decrement exceeds
    1e-2 (full steps after that), inside a ``lax.while_loop`` bounded by
    ``max_iter`` that stops when the relative residual is below ``tol``. The
    start (``init``, or ones) is first rescaled by the factor that minimises
    the objective along it, which is exact when only the scale changed, so a
    warm start from the previous training step needs few iterations; the
    default start (the solution for orthogonal gradients, also rescaled) is
    used instead when its objective is lower.

    Tasks with a zero gradient cannot satisfy their equation (``0 = x^{-1/alpha}``);
    they are left out of the problem and get weight 0.

    Args:
      gramian: (T, T) Gramian ``J J^T``.
      alpha: the fairness parameter, a positive Python float.
      init: optional (T,) positive starting weights (raw scale, e.g. the last
        step's solution). Non-positive or non-finite entries take the default
        start (``x_i = ||g_i||^{-2 alpha / (alpha + 1)}`` up to a common factor:
        the solution for orthogonal gradients).
      max_iter: bound on the Newton iterations.
      tol: relative residual at which the iterations stop.

    Returns:
      ``(x, info)``: the (T,) weights (float32, or float64 for a float64 Gramian)
      on the raw gradients and a :class:`FairInfo`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.alpha_fair import solve_alpha_fair
      >>> x, _ = solve_alpha_fair(jnp.diag(jnp.array([1.0, 4.0])))
      >>> [round(float(v), 4) for v in x]
      [1.0, 0.5]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive float, got {alpha!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
    init = None if init is None else jnp.asarray(init)
    return _solve_alpha_fair(
        nonneg_qp.check_square(gramian), init, alpha=float(alpha), max_iter=max_iter,
        tol=float(tol),
    )


@functools.partial(jax.jit, static_argnames=("alpha", "max_iter", "tol"))
def _solve_alpha_fair(
    gramian: Array, init: Array | None, *, alpha: float, max_iter: int, tol: float
) -> tuple[Array, FairInfo]:
    """The solve of :func:`solve_alpha_fair`, jitted as a whole: one compilation per
    shape, dtype and options, also for eager calls."""
    scaled = nonneg_qp.scale_gramian(gramian)
    corr, norms, is_zero, scale, _ = scaled
    num_tasks = corr.shape[0]
    dtype = corr.dtype
    p = 1.0 - 1.0 / float(alpha)
    rho = nonneg_qp.ridge(num_tasks, dtype)
    corr = corr + rho * jnp.eye(num_tasks, dtype=dtype)
    safe_norms = jnp.where(is_zero, 1.0, norms)
    log_norms = jnp.log(safe_norms)
    # Equation in y = n * x (normalised Gramian): C y = coef * y^(p - 1), coef = n^-p.
    # Zero tasks: coef = 1, decoupled row of C, so y_i = 1; their weight is set to 0.
    log_limit = 0.25 * math.log(float(jnp.finfo(dtype).max))
    coef = jnp.exp(jnp.clip(-p * log_norms, -log_limit, log_limit))
    # Raw weights: x = kappa * y / n with kappa = s^(-1 / (2 - p)).
    log_kappa = -jnp.log(scale) / (2.0 - p)

    def power(y: Array, exponent: float) -> Array:
        return jnp.exp(exponent * jnp.log(y))

    def objective(y: Array) -> Array:
        barrier = -jnp.log(y) if p == 0.0 else -power(y, p) / p
        return 0.5 * y @ corr @ y + jnp.sum(coef * barrier)

    def residual(y: Array) -> Array:
        ratio = y * (corr @ y) / (coef * power(y, p))
        return jnp.max(jnp.where(is_zero, 0.0, jnp.abs(ratio - 1.0)))

    def newton_step(carry):
        it, y, _ = carry
        grad = corr @ y - coef * power(y, p - 1.0)
        hessian = corr + jnp.diag(coef * (1.0 - p) * power(y, p - 2.0))
        factor = jsp_linalg.cho_factor(hessian, lower=True)
        delta = -jsp_linalg.cho_solve(factor, grad)
        delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
        to_boundary = jnp.where(delta < 0, y / jnp.where(delta < 0, -delta, 1.0), jnp.inf)
        t0 = jnp.minimum(1.0, 0.95 * jnp.min(to_boundary)).astype(dtype)
        f0 = objective(y)
        slope = grad @ delta

        # Close to the solution (squared Newton decrement below 1e-2) the full
        # step is taken: Newton converges quadratically there, and an Armijo
        # test would only see rounding in the objective.
        far = -slope > 1e-2

        def too_long(c):
            k, t = c
            f = objective(y + t * delta)
            return (k < _MAX_HALVINGS) & far & ~(f <= f0 + 0.25 * t * slope)

        _, t = jax.lax.while_loop(too_long, lambda c: (c[0] + 1, 0.5 * c[1]), (0, t0))
        y_next = y + t * delta
        y_next = jnp.where(jnp.all(jnp.isfinite(y_next)) & jnp.all(y_next > 0), y_next, y)
        return it + 1, y_next, residual(y_next)

    def not_done(carry):
        it, _, res = carry
        return (it < max_iter) & (res > tol)

    # Default start: the solution for orthogonal gradients (C = I), y_i = coef_i^(1 / (2 - p)).
    diagonal_start = jnp.exp(jnp.log(coef) / (2.0 - p))
    if init is None:
        y0 = diagonal_start
    else:
        init = jnp.asarray(init).astype(dtype)
        if init.shape != (num_tasks,):
            raise ValueError(
                f"init must have shape ({num_tasks},) to match the ({num_tasks}, {num_tasks}) "
                f"Gramian, got shape {init.shape}."
            )
        y0 = init * safe_norms * jnp.exp(-log_kappa)
        y0 = jnp.where(jnp.isfinite(y0) & (y0 > 0) & ~is_zero, y0, diagonal_start)

    def rescaled(y: Array) -> Array:
        # The multiple of y (zero tasks left at their solution 1) that minimises the objective.
        y = jnp.where(is_zero, 0.0, y)
        quad = jnp.maximum(y @ corr @ y, jnp.finfo(dtype).tiny)
        lin = jnp.maximum(
            jnp.sum(jnp.where(is_zero, 0.0, coef * power(y, p))), jnp.finfo(dtype).tiny
        )
        return jnp.where(is_zero, 1.0, y * jnp.exp((jnp.log(lin) - jnp.log(quad)) / (2.0 - p)))

    # Start from the better (after rescaling) of the given start and the default one.
    y0, y_default = rescaled(y0), rescaled(diagonal_start)
    y0 = jnp.where(objective(y0) <= objective(y_default), y0, y_default)
    init_carry = (jnp.zeros((), jnp.int32), y0, residual(y0))
    iterations, y, res = jax.lax.while_loop(not_done, newton_step, init_carry)
    x = jnp.where(is_zero, 0.0, y / safe_norms * jnp.exp(log_kappa))
    return x, FairInfo(iterations, res)
