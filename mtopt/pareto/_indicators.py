"""Distance-based quality indicators of an approximation front: GD, IGD, IGD+, spacing, lmin.

Definitions follow pymoo (``pymoo.indicators``) without normalisation: Euclidean distances in
objective space, minimisation convention.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtopt._src import base
from mtopt.pareto._dominance import check_points

Array = jax.Array


def _check_pair(points: Array, front: Array) -> tuple[Array, Array]:
    points = check_points(points)
    front = check_points(front, name="front")
    if points.shape[1] != front.shape[1]:
        raise ValueError(
            f"points and front must have the same number of objectives, got points of shape "
            f"{points.shape} and front of shape {front.shape}."
        )
    if points.shape[0] == 0 or front.shape[0] == 0:
        raise ValueError(
            f"points and front must be non-empty, got shapes {points.shape} and {front.shape}."
        )
    dtype = base.compute_dtype(points, front)
    return points.astype(dtype), front.astype(dtype)


def _safe_norm(diff: Array) -> Array:
    """Euclidean norm over the last axis with a finite gradient at zero; NaN stays NaN."""
    squared = jnp.sum(diff * diff, axis=-1)
    zero = squared == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, squared)))


@functools.partial(jax.jit, static_argnames="plus")
def _mean_min_distance(sources: Array, targets: Array, plus: bool) -> Array:
    """Mean over targets of :func:`_min_distances` (compiled once per shape)."""
    return jnp.mean(_min_distances(sources, targets, plus))


def _min_distances(sources: Array, targets: Array, plus: bool) -> Array:
    """For each target row: the distance to the nearest source row.

    With ``plus``, the distance from a target ``z`` to a source ``a`` is the IGD+ one,
    ``|max(a - z, 0)|`` (only the objectives where ``a`` is worse than ``z`` count).
    """
    diff = sources[None, :, :] - targets[:, None, :]
    if plus:
        diff = jnp.maximum(diff, 0.0)
    return jnp.min(_safe_norm(diff), axis=1)


def gd(points: Array, front: Array) -> Array:
    r"""Generational distance: mean distance from each point to the nearest front point.

    .. math::
        \mathrm{GD}(A; Z) = \frac{1}{|A|} \sum_{a \in A} \min_{z \in Z} \lVert a - z \rVert_2

    (Van Veldhuizen and Lamont, 1998; pymoo's ``GD``, the mean rather than the root of the
    sum of squares). ``O(|A| |Z| n_obj)`` time and memory.

    Args:
      points: approximation set ``A``, shape ``(n, n_obj)``.
      front: reference (true) front ``Z``, shape ``(p, n_obj)``.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> float(pareto.gd(jnp.array([[0.0, 2.0]]), z))
      1.0
    """
    points, front = _check_pair(points, front)
    return _mean_min_distance(front, points, plus=False)


def igd(points: Array, front: Array) -> Array:
    r"""Inverted generational distance: mean distance from each front point to the set.

    .. math::
        \mathrm{IGD}(A; Z) = \frac{1}{|Z|} \sum_{z \in Z} \min_{a \in A} \lVert a - z \rVert_2

    (Coello Coello and Reyes Sierra, 2004; pymoo's ``IGD``). Small when the set is both
    close to the front and spread along it. ``O(|A| |Z| n_obj)`` time and memory.

    Args:
      points: approximation set ``A``, shape ``(n, n_obj)``.
      front: reference (true) front ``Z``, shape ``(p, n_obj)``.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> float(pareto.igd(jnp.array([[0.0, 1.0]]), z))
      0.7071067690849304
    """
    points, front = _check_pair(points, front)
    return _mean_min_distance(points, front, plus=False)


def igd_plus(points: Array, front: Array) -> Array:
    r"""IGD+: IGD with the dominance-compliant distance of Ishibuchi et al. (EMO 2015).

    .. math::
        \mathrm{IGD^+}(A; Z) = \frac{1}{|Z|} \sum_{z \in Z} \min_{a \in A}
        \big\lVert \max(a - z, 0) \big\rVert_2

    Only the objectives in which ``a`` is worse than ``z`` count, which makes the
    indicator weakly Pareto compliant (pymoo's ``IGDPlus``).

    Args:
      points: approximation set ``A``, shape ``(n, n_obj)``.
      front: reference (true) front ``Z``, shape ``(p, n_obj)``.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> float(pareto.igd_plus(jnp.array([[0.0, 0.0]]), z))
      0.0
    """
    points, front = _check_pair(points, front)
    return _mean_min_distance(points, front, plus=True)


def _pairwise_distances(points: Array, manhattan: bool) -> Array:
    diff = points[:, None, :] - points[None, :, :]
    if manhattan:
        return jnp.sum(jnp.abs(diff), axis=-1)
    return _safe_norm(diff)


def _check_at_least_two(points: Array, name: str) -> Array:
    points = check_points(points)
    if points.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points, got shape {points.shape}.")
    return points.astype(base.compute_dtype(points))


def _nearest_neighbour_distances(points: Array, manhattan: bool) -> Array:
    distances = _pairwise_distances(points, manhattan)
    n = points.shape[0]
    inf = jnp.asarray(jnp.inf, distances.dtype)
    return jnp.min(jnp.where(jnp.eye(n, dtype=bool), inf, distances), axis=1)


def spacing(points: Array) -> Array:
    r"""Spacing: the spread of nearest-neighbour distances (0 for an evenly spaced set).

    pymoo's ``SpacingIndicator`` (after Schott, 1995): with ``d_i`` the Manhattan
    (city-block) distance from point ``i`` to its nearest other point and ``\bar d`` their
    mean,

    .. math::
        S = \sqrt{\frac{1}{n} \sum_i (d_i - \bar d)^2}.

    Conventions pinned (pymoo's, not Schott's): Manhattan distance, ``1/n`` rather than
    ``1/(n-1)``, no normalisation of the objectives, and a duplicated point has ``d_i = 0``.
    LibMOON's ``spacing`` differs (Euclidean distances, times 100).

    Args:
      points: the set, shape ``(n, n_obj)`` with ``n >= 2``.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> f = jnp.array([[0.0, 1.0], [0.25, 0.5], [1.0, 0.0]])
      >>> round(float(pareto.spacing(f)), 6)
      0.235702
    """
    return _spacing(_check_at_least_two(points, "spacing"))


@jax.jit
def _spacing(points: Array) -> Array:
    d = _nearest_neighbour_distances(points, manhattan=True)
    return jnp.sqrt(jnp.mean(jnp.square(d - jnp.mean(d))))


def lmin(points: Array) -> Array:
    r"""Smallest Euclidean distance between two points of the set (LibMOON's ``lmin``).

    .. math::
        l_{\min} = \min_{i \ne j} \lVert f_i - f_j \rVert_2.

    Larger is better spread; 0 when two points coincide.

    Args:
      points: the set, shape ``(n, n_obj)`` with ``n >= 2``.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> float(pareto.lmin(jnp.array([[0.0, 1.0], [0.0, 0.5], [1.0, 0.0]])))
      0.5
    """
    return _lmin(_check_at_least_two(points, "lmin"))


@jax.jit
def _lmin(points: Array) -> Array:
    return jnp.min(_nearest_neighbour_distances(points, manhattan=False))
