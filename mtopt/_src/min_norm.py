"""The min-norm point of a convex hull, from the Gramian alone.

Solves the simplex-constrained quadratic program behind MGDA (and PMTL)

    min_w  w^T G w    subject to  w >= 0,  sum_i w_i = 1,

where ``G = J J^T`` is the Gramian of the task gradients. ``w^T G w`` is the
squared norm of ``sum_i w_i g_i``, so the solution is the point of the convex
hull of the gradients closest to the origin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from mtopt._src import base
from mtopt._src.simplex import projection_simplex

Array = jax.Array


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
    """
    denom = g11 + g22 - 2.0 * g12
    # Relative test: the gradients coincide up to rounding.
    same = denom <= 1e-12 * jnp.maximum(g11 + g22, jnp.finfo(denom.dtype).tiny)
    gamma = (g22 - g12) / jnp.where(same, 1.0, denom)
    return jnp.where(same, 0.5, jnp.clip(gamma, 0.0, 1.0))


def min_norm_simplex(
    gramian: Array, *, max_iter: int = 1000, tol: float = 1e-7
) -> Array:
    r"""Weights of the min-norm point of the convex hull of the task gradients.

    .. math::
        w^* = \arg\min_{w \in \Delta_T} w^\top G w,
        \qquad \Delta_T = \{w \ge 0, \textstyle\sum_i w_i = 1\}.

    ``T = 1`` returns ``[1]``; ``T = 2`` uses the exact closed form
    (:func:`min_norm_two`); ``T > 2`` runs accelerated projected gradient
    (FISTA with adaptive restart, sort-based Euclidean projection onto the
    simplex) on ``G / max_i G_ii`` with step
    ``1 / lambda_max``, inside a ``lax.while_loop`` that stops after
    ``max_iter`` iterations or when an iteration moves the weights by less than
    ``max(tol, 4 T eps)`` in the l1 norm (``eps`` of the computation dtype: smaller
    changes are rounding noise). The problem is solved on the normalised Gramian, so
    the result does not depend on the scale of the gradients (1e-10 .. 1e10
    give the same weights), and a zero Gramian returns uniform weights.

    Args:
      gramian: (T, T) symmetric positive semi-definite matrix ``J J^T``.
      max_iter: bound on the number of iterations (T > 2 only).
      tol: l1 change of the weights below which the iteration stops.

    Returns:
      (T,) weights on the simplex, in the dtype of the computation (float32, or
      float64 for a float64 Gramian).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import min_norm_simplex
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w = min_norm_simplex(jac @ jac.T)
      >>> [round(float(x), 4) + 0.0 for x in w @ jac]
      [0.0, 1.0, 1.0]
    """
    gramian = jnp.asarray(gramian)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"gramian must be a square (T, T) matrix, got shape {gramian.shape}.")
    num_tasks = gramian.shape[0]
    dtype = base.compute_dtype(gramian)
    g = gramian.astype(dtype)
    if num_tasks == 1:
        return jnp.ones((1,), dtype)
    if num_tasks == 2:
        gamma = min_norm_two(g[0, 0], g[0, 1], g[1, 1])
        return jnp.stack([gamma, 1.0 - gamma])

    scale = jnp.max(jnp.diagonal(g))
    is_zero = scale <= jnp.finfo(dtype).tiny
    g = g / jnp.where(is_zero, 1.0, scale)
    g = 0.5 * (g + g.T)
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(g)[-1], jnp.finfo(dtype).eps)
    step = 1.0 / lipschitz
    project = projection_simplex

    def objective(w: Array) -> Array:
        return w @ g @ w

    def body(carry):
        it, w, y, t, _ = carry
        w_next = project(y - step * (g @ y))
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        # Adaptive restart (O'Donoghue & Candes 2015): drop momentum when the
        # objective goes up.
        restart = objective(w_next) > objective(w)
        momentum = jnp.where(restart, 0.0, (t - 1.0) / t_next)
        y_next = w_next + momentum * (w_next - w)
        t_next = jnp.where(restart, 1.0, t_next)
        delta = jnp.sum(jnp.abs(w_next - w))
        return it + 1, w_next, y_next, t_next, delta

    # An l1 change below a few T * eps is rounding noise: stop there even if a
    # smaller tol was asked for (float32 would otherwise always hit max_iter).
    stop_below = jnp.maximum(tol, 4.0 * num_tasks * jnp.finfo(dtype).eps)

    def cond(carry):
        it, _, _, _, delta = carry
        return (it < max_iter) & (delta > stop_below)

    w0 = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    init = (jnp.zeros((), jnp.int32), w0, w0, jnp.ones((), dtype), jnp.full((), jnp.inf, dtype))
    _, w, _, _, _ = jax.lax.while_loop(cond, body, init)
    return jnp.where(is_zero, w0, w)
