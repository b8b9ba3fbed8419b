"""VLMOP2 (Van Veldhuizen and Lamont, 1999): two Gaussian wells, a concave front."""

from __future__ import annotations

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


def vlmop2(n_var: int = 10) -> Problem:
    r"""VLMOP2: two objectives, each one minus a Gaussian, on ``[-1, 1]^n``.

    .. math::
        f_1 = 1 - \exp\big(-\lVert x - \tfrac{1}{\sqrt n}\mathbf 1 \rVert^2\big), \qquad
        f_2 = 1 - \exp\big(-\lVert x + \tfrac{1}{\sqrt n}\mathbf 1 \rVert^2\big).

    Pareto set: the diagonal segment ``x = t / sqrt(n) 1``, ``t in [-1, 1]``; front
    ``(1 - e^{-(t-1)^2}, 1 - e^{-(t+1)^2})``, concave. ``pareto_front(n)`` samples ``t``
    evenly, sorted by increasing ``f_1``. Box and ``n = 10`` as in LibMOON (pymoo uses
    ``[-2, 2]^2``; the front does not depend on the box as long as it contains the
    segment).

    Reference point (1, 1): every objective is below 1 everywhere. LibMOON's
    ``get_hv_ref`` lists (1, 1) and (4, 4) under the names "VLMOP1" and "VLMOP2", and its
    VLMOP classes swap those name strings, so pass ``ref_point`` explicitly when comparing
    with published numbers.

    Reference: Van Veldhuizen and Lamont, "Multiobjective evolutionary algorithm test
    suites", ACM SAC 1999.

    Args:
      n_var: number of variables, at least 1.

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.vlmop2(n_var=4)
      >>> [round(v, 6) for v in p.f(jnp.full(4, 0.5)).tolist()]
      [0.0, 0.981684]
    """
    check_dimension(n_var, "n_var", 1)
    name = "vlmop2"
    shift = 1.0 / np.sqrt(n_var)

    def f(x: Array) -> Array:
        x = check_x(x, n_var, name)
        f1 = 1.0 - jnp.exp(-jnp.sum((x - shift) ** 2))
        f2 = 1.0 - jnp.exp(-jnp.sum((x + shift) ** 2))
        return jnp.stack([f1, f2])

    def front(n_points: int) -> Array:
        t = np.linspace(1.0, -1.0, check_n_points(n_points))
        return as_array(np.stack([1 - np.exp(-((t - 1) ** 2)), 1 - np.exp(-((t + 1) ** 2))], 1))

    return Problem(
        name=name,
        n_var=n_var,
        n_obj=2,
        bounds=box(-1.0, 1.0, n_var),
        f=f,
        pareto_front=front,
        ref_point=as_array(np.ones(2)),
    )
