"""Exact hypervolume of a point set (minimisation) and its gradient with respect to the points."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mtopt._src import base
from mtopt.pareto._dominance import check_points

Array = jax.Array

_METHODS = ("auto", "sweep", "inclusion_exclusion")
# inclusion-exclusion enumerates 2^n - 1 subsets: refuse beyond this many points, and let
# "auto" use it only up to the size where float32 cancellation stays near rounding.
_MAX_INCLUSION_EXCLUSION_POINTS = 20
_AUTO_INCLUSION_EXCLUSION_POINTS = 12
# Elements (slabs x points) processed at once by the innermost slicing level.
_SLAB_BLOCK_ELEMENTS = 1 << 20


def _check_inputs(points: Array, ref_point: Array, method: str) -> tuple[Array, Array]:
    points = check_points(points)
    ref_point = jnp.asarray(ref_point)
    n_obj = points.shape[1]
    if ref_point.shape != (n_obj,):
        raise ValueError(
            f"ref_point must have shape (n_obj,) = ({n_obj},) to match points of shape "
            f"{points.shape}, got shape {ref_point.shape}."
        )
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if n_obj == 0:
        raise ValueError("points must have at least one objective (n_obj >= 1).")
    dtype = base.compute_dtype(points, ref_point)
    return points.astype(dtype), ref_point.astype(dtype)


def _inside_or_ref(points: Array, ref_point: Array) -> Array:
    """Replace every point not strictly inside the reference box by the reference point.

    Such points dominate no volume (pymoo ignores them); as the reference point they
    contribute exactly zero to every formula below. NaN rows are treated the same way.
    """
    inside = jnp.all(points < ref_point[None, :], axis=1, keepdims=True)
    return jnp.where(inside, points, ref_point[None, :])


def _sweep_2d(x: Array, y: Array, ref_point: Array) -> Array:
    """Area dominated by points sorted by ascending ``x`` (ties in any order).

    Walking right, point i adds the strip ``[x_i, r_x] x [y_i, m_i)`` where ``m_i`` is the
    lowest ``y`` seen so far (``r_y`` at the start). A point with ``y = r_y`` adds nothing,
    which is how inactive points are masked out.
    """
    running_min = lax.cummin(y)
    previous_min = jnp.concatenate([ref_point[1:2], running_min[:-1]])
    height = jnp.where(previous_min > y, previous_min - y, 0.0)
    return jnp.sum((ref_point[0] - x) * height)


def _sweep(points: Array, ref_point: Array, active: Array) -> Array:
    """Dimension sweep (HSO slicing) over the last objective, down to the 2-D sweep.

    ``points`` must be sorted by ascending first objective and inside the reference box
    (or equal to it). Only rows with ``active`` True count.
    """
    n, n_obj = points.shape
    if n_obj == 1:
        lowest = jnp.min(jnp.where(active, points[:, 0], ref_point[0]))
        return ref_point[0] - lowest
    if n_obj == 2:
        y = jnp.where(active, points[:, 1], ref_point[1])
        return _sweep_2d(points[:, 0], y, ref_point)

    # Slab k lies between the k-th and (k+1)-th smallest last coordinate of the active
    # points; its cross-section is the (n_obj-1)-D volume of the first k+1 of them.
    last = jnp.where(active, points[:, -1], ref_point[-1])
    order = jnp.argsort(last, stable=True)
    sorted_last = last[order]
    thickness = jnp.concatenate([sorted_last[1:], ref_point[-1:]]) - sorted_last
    position = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    lower_points = points[:, :-1]
    lower_ref = ref_point[:-1]

    @jax.checkpoint
    def slab(k: Array, dz: Array) -> Array:
        in_slab = active & (position <= k)
        return dz * _sweep(lower_points, lower_ref, in_slab)

    # Vectorise blocks of slabs at the level whose cross-sections are 2-D sweeps; the
    # levels above loop one slab at a time, so memory stays O(block * n).
    batch = max(1, min(n, _SLAB_BLOCK_ELEMENTS // n)) if n_obj == 3 else None
    volumes = lax.map(
        lambda args: slab(*args), (jnp.arange(n, dtype=jnp.int32), thickness), batch_size=batch
    )
    return jnp.sum(volumes)


def _hypervolume_sweep(points: Array, ref_point: Array) -> Array:
    points = _inside_or_ref(points, ref_point)
    n_obj = points.shape[1]
    if n_obj >= 2:
        # Sort once by the first objective (ties by the second); every slice keeps it.
        order = jnp.lexsort((points[:, 1], points[:, 0]))
        points = points[order]
    active = jnp.ones(points.shape[0], dtype=bool)
    return _sweep(points, ref_point, active)


def _hypervolume_inclusion_exclusion(points: Array, ref_point: Array) -> Array:
    """Sum over non-empty subsets S of (-1)^(|S|+1) vol(box of the componentwise max of S)."""
    points = _inside_or_ref(points, ref_point)
    n = points.shape[0]
    # corners[s] = componentwise max of subset s; built by doubling, one point at a time.
    corners = points[:1]
    signs = jnp.ones((1,), points.dtype)
    for i in range(1, n):
        p = points[i : i + 1]
        corners = jnp.concatenate([corners, jnp.maximum(corners, p), p], axis=0)
        signs = jnp.concatenate([signs, -signs, jnp.ones((1,), points.dtype)])
    volumes = jnp.prod(ref_point[None, :] - corners, axis=1)
    return jnp.sum(signs * volumes)


def _choose_method(n: int, n_obj: int) -> str:
    if n_obj <= 3 or n > _AUTO_INCLUSION_EXCLUSION_POINTS:
        return "sweep"
    # sweep: about n^(n_obj - 1) operations; inclusion-exclusion: 2^n n_obj.
    sweep_cost = float(n) ** (n_obj - 1)
    return "inclusion_exclusion" if 2.0**n * n_obj < sweep_cost else "sweep"


def hypervolume(points: Array, ref_point: Array, *, method: str = "auto") -> Array:
    r"""Exact hypervolume dominated by a point set, minimisation convention.

    .. math::
        \mathrm{HV}(P; r) = \lambda\Big(\bigcup_{p \in P,\ p < r} [p_1, r_1] \times \dots
        \times [p_m, r_m]\Big),

    the Lebesgue measure of the region dominated by the points and bounded by the
    reference point ``r``. Points not strictly inside the reference box contribute
    nothing (pymoo's ``HV`` semantics: ``HV(ref=[1, 1])([[.5, .5], [2, 0]]) = 0.25``);
    dominated and duplicated points change nothing; NaN rows are ignored. The order of
    the points does not matter.

    Algorithms (all exact, static shapes, differentiable almost everywhere):

    - ``n_obj = 2``: sort by the first objective and sweep with a running minimum of the
      second, O(n log n) time, O(n) memory.
    - ``n_obj >= 3``, ``"sweep"``: dimension sweep (HSO slicing; While et al., "A faster
      algorithm for calculating hypervolume", IEEE TEVC 2006): slice along the last
      objective into ``n`` slabs whose cross-sections are the hypervolumes of the points
      below them, down to the 2-D sweep. For 3 objectives: O(n^2) time and O(n) memory
      (slabs are evaluated in vectorised blocks), 10,000 points take seconds on a CPU;
      for ``m`` objectives O(n^(m-1)) time.
    - ``"inclusion_exclusion"``: sum over the ``2^n - 1`` non-empty subsets of the signed
      volume of the box of their componentwise maximum; O(2^n n_obj) time and memory,
      for at most 20 points. The alternating sum cancels: in float32 the relative error
      is about 1e-7 up to 12 points but about 1e-4 for 16 to 20 points.
    - ``"auto"``: the sweep for 1 to 3 objectives; for 4 or more, inclusion-exclusion
      when ``n <= 12`` and it costs fewer operations than the sweep, else the sweep.

    ``jax.grad`` through this function gives the hypervolume gradient
    (:func:`hypervolume_gradient`).

    Args:
      points: objective vectors, shape ``(n, n_obj)``; float32 (bfloat16 and float16 are
        computed in float32) or float64.
      ref_point: reference point, shape ``(n_obj,)``.
      method: ``"auto"``, ``"sweep"`` or ``"inclusion_exclusion"``.

    Returns:
      The hypervolume, a scalar (float32, or float64 for float64 inputs).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> f = jnp.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
      >>> float(pareto.hypervolume(f, jnp.array([2.0, 2.0])))
      3.25
    """
    points, ref_point = _check_inputs(points, ref_point, method)
    n, n_obj = points.shape
    if n == 0:
        return jnp.zeros((), points.dtype)
    if method == "auto":
        method = _choose_method(n, n_obj)
    if method == "inclusion_exclusion" and n > _MAX_INCLUSION_EXCLUSION_POINTS:
        raise ValueError(
            f"method='inclusion_exclusion' enumerates 2^n - 1 subsets and accepts at "
            f"most {_MAX_INCLUSION_EXCLUSION_POINTS} points, got {n}; use method='sweep'."
        )
    return _hypervolume(points, ref_point, method)


@functools.partial(jax.jit, static_argnames="method")
def _hypervolume(points: Array, ref_point: Array, method: str) -> Array:
    # Compiled once per shape and method, so that calls outside jit are fast too.
    if method == "inclusion_exclusion":
        return _hypervolume_inclusion_exclusion(points, ref_point)
    return _hypervolume_sweep(points, ref_point)


def hypervolume_gradient(points: Array, ref_point: Array, *, method: str = "auto") -> Array:
    r"""Gradient of the hypervolume with respect to every coordinate of every point.

    ``jax.grad`` of :func:`hypervolume`. For a non-dominated point ``p_i`` strictly inside
    the reference box, ``-dHV/dp_ik`` is the (m-1)-dimensional measure of the face of
    the region dominated by ``p_i`` alone that is orthogonal to objective ``k`` (its
    exclusive contribution on that face); in 2-D,
    ``dHV/dx_i = -(y_{i-1} - y_i)`` and ``dHV/dy_i = -(x_{i+1} - x_i)`` along the sorted
    front (with ``y_0 = r_y`` and ``x_{n+1} = r_x``). Dominated points and points outside
    the reference box get zero rows. Where the hypervolume is not differentiable
    (two points sharing a coordinate), the result is one of the one-sided derivatives.
    Used by hypervolume-gradient methods (Wang et al., "Hypervolume indicator gradient
    ascent multi-objective optimization", EMO 2017; Deist et al., "Multi-objective
    learning to predict Pareto fronts using hypervolume maximization", 2021).

    Args:
      points: objective vectors, shape ``(n, n_obj)``.
      ref_point: reference point, shape ``(n_obj,)``.
      method: as in :func:`hypervolume`.

    Returns:
      The gradient, shape ``(n, n_obj)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> f = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> pareto.hypervolume_gradient(f, jnp.array([2.0, 2.0])).tolist()
      [[-1.0, -1.0], [-1.0, -1.0]]
    """
    points, ref_point = _check_inputs(points, ref_point, method)
    return jax.grad(lambda p: hypervolume(p, ref_point, method=method))(points)

