"""Pareto dominance, the non-dominated mask and non-dominated sorting (minimisation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Rows of the point set compared at once against all points: bounds the memory of the
# pairwise comparison to about _ROW_BLOCK * n * n_obj booleans.
_ROW_BLOCK = 256


def check_points(points: Array, name: str = "points") -> Array:
    """Check an ``(n, n_obj)`` floating array of objective vectors; return it as an array."""
    points = jnp.asarray(points)
    if points.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n_points, n_obj), one objective vector per row, got "
            f"shape {points.shape}. For a single point use points[None]; for a batch of "
            "point sets use jax.vmap."
        )
    if not jnp.issubdtype(points.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {points.dtype}.")
    return points


def dominates(a: Array, b: Array) -> Array:
    r"""Whether objective vector ``a`` Pareto-dominates ``b`` (minimisation).

    .. math::
        a \prec b \iff a_k \le b_k \ \forall k \ \text{and}\ a_k < b_k \ \text{for some}\ k.

    Equal vectors do not dominate each other. Written for one pair; ``jax.vmap`` it for
    many.

    Args:
      a: objective vector, shape ``(n_obj,)``.
      b: objective vector, shape ``(n_obj,)``.

    Returns:
      A boolean scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> bool(pareto.dominates(jnp.array([0.0, 1.0]), jnp.array([0.0, 2.0])))
      True
      >>> bool(pareto.dominates(jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0])))
      False
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            "dominates compares two objective vectors of the same shape (n_obj,), got "
            f"shapes {a.shape} and {b.shape}; use jax.vmap for batches."
        )
    return jnp.all(a <= b) & jnp.any(a < b)


def _dominated_by_any(points: Array, candidates: Array) -> Array:
    """For each row i: is it dominated by some row j with ``candidates[j]`` True?"""

    def one_row(p: Array) -> Array:
        weakly_better = jnp.all(points <= p[None, :], axis=1)
        strictly_somewhere = jnp.any(points < p[None, :], axis=1)
        return jnp.any(candidates & weakly_better & strictly_somewhere)

    n = points.shape[0]
    return lax.map(one_row, points, batch_size=min(n, _ROW_BLOCK))


def non_dominated_mask(points: Array) -> Array:
    r"""Mask of the points that no other point of the set dominates (minimisation).

    ``mask[i]`` is True when no ``j`` has ``points[j]`` :func:`dominates` ``points[i]``.
    Duplicated non-dominated points are all kept (equal vectors do not dominate each
    other), as in pymoo's ``NonDominatedSorting``. A row containing NaN (a diverged
    run) is never reported non-dominated; it does not dominate any other row.

    A mask keeps the output shape static under ``jax.jit``; select the points outside
    jit with ``points[mask]``. Cost: O(n^2 n_obj) time, O(256 n n_obj) memory (rows
    are compared in blocks of 256).

    Args:
      points: objective vectors, shape ``(n, n_obj)``.

    Returns:
      Boolean mask of shape ``(n,)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> f = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
      >>> pareto.non_dominated_mask(f).tolist()
      [True, True, False, True]
    """
    points = check_points(points)
    if points.shape[0] == 0:
        return jnp.zeros((0,), dtype=bool)
    return _non_dominated_mask(points)


@jax.jit
def _non_dominated_mask(points: Array) -> Array:
    everyone = jnp.ones(points.shape[0], dtype=bool)
    finite_rows = ~jnp.any(jnp.isnan(points), axis=1)
    return ~_dominated_by_any(points, everyone) & finite_rows


def non_dominated_rank(points: Array) -> Array:
    r"""Non-dominated sorting: the index of the Pareto front each point belongs to.

    Front 0 holds the non-dominated points (:func:`non_dominated_mask`); front ``k`` holds
    the points that are non-dominated once fronts ``0..k-1`` are removed (Deb et al.,
    "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEVC 2002).
    Equal points share a front.

    Fronts are peeled one at a time in a ``lax.while_loop`` (at most ``n`` iterations,
    one per front), each an O(n^2 n_obj) comparison done in row blocks.

    Args:
      points: objective vectors, shape ``(n, n_obj)``.

    Returns:
      ``int32`` ranks of shape ``(n,)``, 0 for the first front.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> f = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> pareto.non_dominated_rank(f).tolist()
      [0, 0, 1, 2]
    """
    points = check_points(points)
    if points.shape[0] == 0:
        return jnp.zeros((0,), dtype=jnp.int32)
    return _non_dominated_rank(points)


@jax.jit
def _non_dominated_rank(points: Array) -> Array:
    n = points.shape[0]

    def cond(carry: tuple[Array, Array, Array]) -> Array:
        remaining, _, _ = carry
        return jnp.any(remaining)

    def body(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        remaining, rank, front_index = carry
        front = remaining & ~_dominated_by_any(points, remaining)
        rank = jnp.where(front, front_index, rank)
        return remaining & ~front, rank, front_index + 1

    init = (jnp.ones(n, dtype=bool), jnp.zeros(n, dtype=jnp.int32), jnp.zeros((), jnp.int32))
    _, rank, _ = lax.while_loop(cond, body, init)
    return rank
