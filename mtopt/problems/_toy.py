"""The two-objective toy problem of the CAGrad, Nash-MTL and FAMO papers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtopt.problems._problem import Problem, as_array, check_n_points, check_x

Array = jax.Array

_LOWER = 5e-6
# x2 of the segment plotted as the Pareto set in the papers (an approximation, see toy()).
FRONT_X2 = -8.3552
_START_POINTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))


def _relu_like_torch(t: Array, lower: float = 0.0) -> Array:
    """``max(t, lower)`` with torch ``clamp``'s gradient: 1 when ``t >= lower``.

    ``jnp.maximum`` / ``jnp.clip`` split the gradient at a tie (1/2 each), which halves
    the toy's gradient at x = (0, 0) compared with the reference (torch) implementation.
    """
    return jnp.where(t >= lower, t, lower)


def _objectives(x: Array, scale: float) -> Array:
    x1, x2 = x[0], x[1]
    h1 = jnp.log(_relu_like_torch(jnp.abs(0.5 * (-x1 - 7.0) - jnp.tanh(-x2)), _LOWER)) + 6.0
    h2 = jnp.log(_relu_like_torch(jnp.abs(0.5 * (-x1 + 3.0) + jnp.tanh(-x2) + 2.0), _LOWER)) + 6.0
    c1 = _relu_like_torch(jnp.tanh(0.5 * x2))
    c2 = _relu_like_torch(jnp.tanh(-0.5 * x2))
    q1 = ((-x1 + 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    q2 = ((-x1 - 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    f1 = scale * (h1 * c1 + q1 * c2)
    f2 = h2 * c1 + q2 * c2
    return jnp.stack([f1, f2])


def toy(scale: float = 0.1) -> Problem:
    r"""The two-objective toy problem of CAGrad, Nash-MTL and FAMO (``x in R^2``).

    With ``c_1 = max(tanh(x_2/2), 0)``, ``c_2 = max(tanh(-x_2/2), 0)`` and
    ``L = 5 \cdot 10^{-6}``:

    .. math::
        h_1 = \log\max(|\tfrac12(-x_1 - 7) - \tanh(-x_2)|, L) + 6, \quad
        h_2 = \log\max(|\tfrac12(-x_1 + 3) + \tanh(-x_2) + 2|, L) + 6,

    .. math::
        q_1 = \frac{(7 - x_1)^2 + 0.1 (x_2 + 8)^2}{10} - 20, \quad
        q_2 = \frac{(x_1 + 7)^2 + 0.1 (x_2 + 8)^2}{10} - 20,

    .. math::
        f_1 = s\,(h_1 c_1 + q_1 c_2), \qquad f_2 = h_2 c_1 + q_2 c_2.

    Conventions pinned:

    - ``scale = s`` multiplies ``f_1`` only. Default 0.1, the Nash-MTL and FAMO
      experiments (``--scale 0.1``); the CAGrad script uses 1. The torch code also has a
      ``scale_both_losses`` factor (default 1), which is left out.
    - The clamps use torch's gradient convention (``max(t, 0)`` passes the full gradient
      at ``t = 0``), written ``jnp.where(t >= 0, t, 0)``: at ``x = (0, 0)`` both gradients
      are ``(0, 10.856381)`` (``s = 1``), as in torch; ``jnp.clip`` would give half.
    - ``start_points`` are the five of Nash-MTL and FAMO: (-8.5, 7.5), (0, 0), (9, 9),
      (-7.5, -0.5), (9, -1). CAGrad uses (-8.5, 7.5), (-8.5, -5), (9, 9).
    - ``bounds`` are the plotting window [-10, 10]^2; the papers optimise without bounds.
    - ``pareto_front(n)`` evaluates ``f`` on the segment the papers plot as the Pareto
      set, ``x_1 = linspace(7, -7, n)``, ``x_2 = -8.3552`` (``FRONT_X2``), sorted by
      increasing ``f_1``. This is an approximation: the true per-task minima at
      ``x_1 = 7`` and ``x_1 = -7`` lie at ``x_2 ≈ -8.434`` (``f_2 = -19.98943`` against
      ``-19.98933`` on the segment), and the segment is exactly Pareto optimal only
      where it crosses the true set (``argmin_{x_2} (f_1 + f_2) = -8.3551`` at
      ``x_1 = 0`` for ``s = 1``). Minimisers of weighted sums ``w f_1 + (1 - w) f_2``
      (scipy, 200 weights) all lie within 0.01 of the segment's image in objective
      space, for ``s = 1`` and ``s = 0.1``.
    - Reference point (0, 0): the whole front is negative in both objectives.

    References: Liu et al., "Conflict-averse gradient descent for multi-task learning"
    (CAGrad), NeurIPS 2021; Navon et al., "Multi-task learning as a bargaining game"
    (Nash-MTL), ICML 2022; Liu et al., "FAMO: Fast adaptive multitask optimization",
    NeurIPS 2023.

    Args:
      scale: the factor ``s > 0`` on ``f_1``.

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.toy(scale=1.0)
      >>> [round(v, 6) for v in p.f(jnp.array([9.0, 9.0])).tolist()]
      [7.943949, 6.691495]
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}.")
    name = "toy"

    def f(x: Array) -> Array:
        return _objectives(check_x(x, 2, name), scale)

    def front(n_points: int) -> Array:
        x1 = np.linspace(7.0, -7.0, check_n_points(n_points))
        segment = as_array(np.stack([x1, np.full_like(x1, FRONT_X2)], axis=1))
        return jax.vmap(f)(segment)

    return Problem(
        name=name,
        n_var=2,
        n_obj=2,
        bounds=(as_array(np.full(2, -10.0)), as_array(np.full(2, 10.0))),
        f=f,
        pareto_front=front,
        ref_point=as_array(np.zeros(2)),
        start_points=as_array(np.asarray(_START_POINTS)),
    )
