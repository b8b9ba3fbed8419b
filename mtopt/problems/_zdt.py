"""ZDT1, ZDT2 and ZDT3 (Zitzler, Deb and Thiele, 2000): two objectives on [0, 1]^n."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtopt.problems._problem import (
    Problem,
    as_array,
    box,
    check_dimension,
    check_n_points,
    check_x,
)

Array = jax.Array

# ZDT3's front is the part of f2 = 1 - sqrt(f1) - f1 sin(10 pi f1) that no smaller f1 beats:
# five intervals of f1. Right ends are local minima of that curve; left ends (after the
# first) are where the curve comes back down to the previous minimum. Computed with
# scipy (bounded minimisation and brentq, tolerance 1e-14) for this module.
_ZDT3_REGIONS = (
    (0.0, 0.083001535589),
    (0.182228728029, 0.257762363396),
    (0.409313674809, 0.453882106943),
    (0.618396794439, 0.652511704354),
    (0.823331798327, 0.851832865542),
)


def _g(x: Array) -> Array:
    """ZDT distance function, ``1 + 9 mean(x_2..x_n)``: equal to 1 on the Pareto set."""
    return 1.0 + 9.0 * jnp.mean(x[1:])


def _zdt(
    name: str,
    n_var: int,
    second: Callable[[Array, Array], Array],
    front: Callable[[int], np.ndarray],
) -> Problem:
    check_dimension(n_var, "n_var", 2)

    def f(x: Array) -> Array:
        x = check_x(x, n_var, name)
        f1 = x[0]
        return jnp.stack([f1, second(f1, _g(x))])

    return Problem(
        name=name,
        n_var=n_var,
        n_obj=2,
        bounds=box(0.0, 1.0, n_var),
        f=f,
        pareto_front=lambda n_points: as_array(front(check_n_points(n_points))),
        ref_point=as_array(np.full(2, 1.2)),
    )


def _linear_f1(n_points: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_points)


def zdt1(n_var: int = 30) -> Problem:
    r"""ZDT1: a convex front.

    .. math::
        f_1 = x_1, \quad g = 1 + \tfrac{9}{n-1}\textstyle\sum_{i \ge 2} x_i, \quad
        f_2 = g\,\big(1 - \sqrt{f_1 / g}\big), \qquad x \in [0, 1]^n.

    Pareto set: ``x_1 in [0, 1]``, all other ``x_i = 0`` (``g = 1``); front
    ``f_2 = 1 - sqrt(f_1)``, ``pareto_front(n)`` samples ``f_1 = linspace(0, 1, n)``
    (pymoo's sampling; its 100-point front has hypervolume 0.661409 for ref (1, 1), the
    continuous front 2/3). ``f_2`` is written ``g - sqrt(f_1) sqrt(g)`` so that the only
    infinite derivative is the true one, ``df_2/dx_1 = -inf`` at ``x_1 = 0``. LibMOON's
    NumPy evaluation drops the factor ``g`` (a bug); this follows the paper and LibMOON's
    torch version. Reference point (1.2, 1.2), LibMOON's default ``1.2 * ones``.

    Reference: Zitzler, Deb and Thiele, "Comparison of multiobjective evolutionary
    algorithms: empirical results", Evolutionary Computation 8(2), 2000.

    Args:
      n_var: number of variables (30 in the paper), at least 2.

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.zdt1()
      >>> p.f(jnp.zeros(30).at[0].set(0.25)).tolist()
      [0.25, 0.5]
    """

    def second(f1: Array, g: Array) -> Array:
        return g - jnp.sqrt(f1) * jnp.sqrt(g)

    return _zdt(
        "zdt1", n_var, second, lambda n: np.stack([_linear_f1(n), 1 - np.sqrt(_linear_f1(n))], 1)
    )


def zdt2(n_var: int = 30) -> Problem:
    r"""ZDT2: a concave front.

    .. math::
        f_1 = x_1, \quad g = 1 + \tfrac{9}{n-1}\textstyle\sum_{i \ge 2} x_i, \quad
        f_2 = g\,\big(1 - (f_1 / g)^2\big), \qquad x \in [0, 1]^n.

    Pareto set ``x_{2..n} = 0``; front ``f_2 = 1 - f_1^2`` sampled at
    ``f_1 = linspace(0, 1, n)`` (hypervolume 1/3 for ref (1, 1) in the limit). Reference
    point (1.2, 1.2).

    Reference: Zitzler, Deb and Thiele, Evolutionary Computation 8(2), 2000.

    Args:
      n_var: number of variables (30 in the paper), at least 2.

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> problems.zdt2().f(jnp.zeros(30).at[0].set(0.5)).tolist()
      [0.5, 0.75]
    """

    def second(f1: Array, g: Array) -> Array:
        return g - f1 * f1 / g

    return _zdt(
        "zdt2", n_var, second, lambda n: np.stack([_linear_f1(n), 1 - _linear_f1(n) ** 2], 1)
    )


def _zdt3_front(n_points: int) -> np.ndarray:
    lengths = np.array([b - a for a, b in _ZDT3_REGIONS])
    share = n_points * lengths / lengths.sum()
    counts = np.floor(share).astype(int)
    # Hand the remaining points to the regions with the largest remainders.
    for k in np.argsort(-(share - counts))[: n_points - counts.sum()]:
        counts[k] += 1
    pieces = []
    for k, ((a, b), c) in enumerate(zip(_ZDT3_REGIONS, counts)):
        if c == 0:
            continue
        if k == 0:
            f1 = np.linspace(a, b, c)
        else:
            # The left end ties in f2 with the previous region's right end, which then
            # dominates it: sample the half-open interval (a, b].
            f1 = a + (b - a) * np.arange(1, c + 1) / c
        pieces.append(f1)
    f1 = np.concatenate(pieces)
    return np.stack([f1, 1 - np.sqrt(f1) - f1 * np.sin(10 * np.pi * f1)], 1)


def zdt3(n_var: int = 30) -> Problem:
    r"""ZDT3: a disconnected front of five pieces.

    .. math::
        f_1 = x_1, \quad g = 1 + \tfrac{9}{n-1}\textstyle\sum_{i \ge 2} x_i, \quad
        f_2 = g\,\Big(1 - \sqrt{f_1 / g} - \tfrac{f_1}{g}\sin(10 \pi f_1)\Big),
        \qquad x \in [0, 1]^n.

    On ``g = 1`` the curve ``1 - sqrt(f_1) - f_1 sin(10 pi f_1)`` is only partly
    non-dominated: the front is its restriction to five intervals of ``f_1`` (from about
    [0, 0.0830] to [0.8233, 0.8518], the same as pymoo's). ``pareto_front(n)`` returns
    exactly ``n`` non-dominated points spread over the intervals in proportion to their
    lengths (the left end of intervals 2 to 5 is left out: it ties in ``f_2`` with the
    previous interval's right end, which dominates it). Reference point (1.2, 1.2).

    Reference: Zitzler, Deb and Thiele, Evolutionary Computation 8(2), 2000.

    Args:
      n_var: number of variables (30 in the paper), at least 2.

    Returns:
      The :class:`Problem`.

    Example:
      >>> from mtopt import problems
      >>> problems.zdt3().pareto_front(10).shape
      (10, 2)
    """

    def second(f1: Array, g: Array) -> Array:
        return g - jnp.sqrt(f1) * jnp.sqrt(g) - f1 * jnp.sin(10.0 * jnp.pi * f1)

    return _zdt("zdt3", n_var, second, _zdt3_front)
