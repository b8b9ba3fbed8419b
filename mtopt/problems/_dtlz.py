"""DTLZ1 and DTLZ2 (Deb, Thiele, Laumanns and Zitzler, 2002): scalable in the objectives."""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtopt.pareto._preferences import _compositions
from mtopt.problems._problem import (
    Problem,
    as_array,
    box,
    check_dimension,
    check_n_points,
    check_x,
)

Array = jax.Array


def _simplex_grid(n_points: int, n_obj: int) -> np.ndarray:
    """The largest Das-Dennis grid with at most ``n_points`` points (at least 1 partition)."""
    check_n_points(n_points, minimum=n_obj)
    partitions = 1
    while math.comb(partitions + 1 + n_obj - 1, n_obj - 1) <= n_points:
        partitions += 1
    return np.asarray(_compositions(partitions, n_obj), dtype=np.float64) / partitions


def _objectives(
    position: Array,
    factor: Array,
    n_obj: int,
    first: Callable[[Array], Array],
    last: Callable[[Array], Array],
) -> Array:
    """``f_j = factor * prod_{i < n_obj - 1 - j} first(x_i) * last(x_{n_obj - 1 - j})``.

    (The last factor is absent for ``j = 0``.) ``first`` and ``last`` are the per-variable
    terms: (x, 1 - x) for DTLZ1, (cos, sin) of ``x pi / 2`` for DTLZ2.
    """
    objectives = []
    for j in range(n_obj):
        k = n_obj - 1 - j
        value = factor * jnp.prod(first(position[:k]))
        if j > 0:
            value = value * last(position[k])
        objectives.append(value)
    return jnp.stack(objectives)


def dtlz1(n_obj: int = 3, n_var: Optional[int] = None) -> Problem:
    r"""DTLZ1: a linear front (the simplex ``sum_j f_j = 1/2``) behind many local fronts.

    With ``M`` objectives, position variables ``x_1..x_{M-1}`` and distance variables
    ``x_M..x_n`` (``k = n - M + 1`` of them):

    .. math::
        g = 100\Big[k + \sum_{i \ge M} (x_i - \tfrac12)^2
            - \cos\big(20\pi(x_i - \tfrac12)\big)\Big],

    .. math::
        f_1 = \tfrac12 (1 + g) \prod_{i=1}^{M-1} x_i, \quad
        f_j = \tfrac12 (1 + g) \Big(\prod_{i=1}^{M-j} x_i\Big)(1 - x_{M-j+1}), \quad
        f_M = \tfrac12 (1 + g)(1 - x_1),

    on ``[0, 1]^n``. Pareto set: distance variables equal to 1/2 (``g = 0``). The front is
    ``{f >= 0, sum_j f_j = 1/2}``; ``pareto_front(n_points)`` returns ``1/2`` times the
    largest Das-Dennis grid with at most ``n_points`` points (pymoo's front; 91 points for
    ``n_points = 100`` and 3 objectives; needs ``n_points >= n_obj``). Reference point
    ``1.2 * ones`` (LibMOON's default); the continuous front then has hypervolume
    ``1.2^M - 0.5^M / M!``.

    Reference: Deb, Thiele, Laumanns and Zitzler, "Scalable multi-objective optimization
    test problems", CEC 2002.

    Args:
      n_obj: number of objectives ``M >= 2``.
      n_var: number of variables, at least ``n_obj``; default ``n_obj + 4`` (``k = 5``,
        the paper's and pymoo's).

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.dtlz1()
      >>> x = jnp.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
      >>> p.f(x).tolist()
      [0.125, 0.125, 0.25]
    """
    check_dimension(n_obj, "n_obj", 2)
    n_var = n_obj + 4 if n_var is None else check_dimension(n_var, "n_var", n_obj)
    name = "dtlz1"

    def f(x: Array) -> Array:
        x = check_x(x, n_var, name)
        distance = x[n_obj - 1 :] - 0.5
        g = 100.0 * (
            distance.shape[0] + jnp.sum(distance**2 - jnp.cos(20.0 * jnp.pi * distance))
        )
        return _objectives(x[: n_obj - 1], 0.5 * (1.0 + g), n_obj, lambda t: t, lambda t: 1.0 - t)

    return Problem(
        name=name,
        n_var=n_var,
        n_obj=n_obj,
        bounds=box(0.0, 1.0, n_var),
        f=f,
        pareto_front=lambda n_points: as_array(0.5 * _simplex_grid(n_points, n_obj)),
        ref_point=as_array(np.full(n_obj, 1.2)),
    )


def dtlz2(n_obj: int = 3, n_var: Optional[int] = None) -> Problem:
    r"""DTLZ2: a spherical front (the positive part of the unit sphere).

    With ``M`` objectives and ``g = sum_{i >= M} (x_i - 1/2)^2`` over the distance
    variables,

    .. math::
        f_j = (1 + g) \Big(\prod_{i=1}^{M-j} \cos\tfrac{\pi x_i}{2}\Big)
        \sin\tfrac{\pi x_{M-j+1}}{2} \quad (j > 1), \qquad
        f_1 = (1 + g) \prod_{i=1}^{M-1} \cos\tfrac{\pi x_i}{2},

    on ``[0, 1]^n``. Pareto set: distance variables equal to 1/2. Front
    ``{f >= 0, |f|_2 = 1}``; ``pareto_front(n_points)`` returns the largest Das-Dennis
    grid with at most ``n_points`` points, normalised to unit length (pymoo's front;
    needs ``n_points >= n_obj``). Reference point ``1.2 * ones`` (LibMOON's default); the
    continuous front then has hypervolume ``1.2^M`` minus the volume of the positive
    part of the unit ball (``1.2^3 - pi/6`` for three objectives).

    Reference: Deb, Thiele, Laumanns and Zitzler, "Scalable multi-objective optimization
    test problems", CEC 2002.

    Args:
      n_obj: number of objectives ``M >= 2``.
      n_var: number of variables, at least ``n_obj``; default ``n_obj + 9`` (``k = 10``,
        the paper's and pymoo's).

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.dtlz2()
      >>> [round(v, 6) for v in p.f(jnp.full(12, 0.5)).tolist()]
      [0.5, 0.5, 0.707107]
    """
    check_dimension(n_obj, "n_obj", 2)
    n_var = n_obj + 9 if n_var is None else check_dimension(n_var, "n_var", n_obj)
    name = "dtlz2"

    def f(x: Array) -> Array:
        x = check_x(x, n_var, name)
        g = jnp.sum((x[n_obj - 1 :] - 0.5) ** 2)
        angle = 0.5 * jnp.pi * x[: n_obj - 1]
        return _objectives(angle, 1.0 + g, n_obj, jnp.cos, jnp.sin)

    def front(n_points: int) -> Array:
        grid = _simplex_grid(n_points, n_obj)
        return as_array(grid / np.linalg.norm(grid, axis=1, keepdims=True))

    return Problem(
        name=name,
        n_var=n_var,
        n_obj=n_obj,
        bounds=box(0.0, 1.0, n_var),
        f=f,
        pareto_front=front,
        ref_point=as_array(np.full(n_obj, 1.2)),
    )
