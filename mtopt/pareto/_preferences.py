"""Preference vectors on the probability simplex: evenly spaced, Das-Dennis, Dirichlet."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def uniform_preferences(
    n_points: int, *, margin: float = 0.0, dtype: jnp.dtype = jnp.float32
) -> Array:
    r"""Evenly spaced preference vectors for two objectives.

    .. math::
        r_i = (t_i, 1 - t_i), \qquad t_i = \mathrm{linspace}(\varepsilon, 1 - \varepsilon, n)_i,

    ordered by increasing first component. ``margin = ε > 0`` keeps every component at
    least ``ε`` away from zero (methods that divide by the preference, such as EPO or
    ``1/r`` Tchebycheff, need that; LibMOON's ``get_uniform_pref(..., clip_eps)`` plays the
    same role). For three or more objectives use :func:`das_dennis` or
    :func:`dirichlet`.

    Args:
      n_points: number of vectors, at least 1 (a single vector is ``(1/2, 1/2)``).
      margin: ``ε`` in ``[0, 1/2]``.
      dtype: floating dtype of the result.

    Returns:
      Array of shape ``(n_points, 2)`` whose rows sum to 1.

    Example:
      >>> from mtopt import pareto
      >>> pareto.uniform_preferences(3).tolist()
      [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    """
    _check_count(n_points, "n_points", 1)
    if not 0.0 <= margin <= 0.5:
        raise ValueError(f"margin must lie in [0, 0.5], got {margin!r}.")
    if n_points == 1:
        first = np.array([0.5])
    else:
        first = np.linspace(margin, 1.0 - margin, n_points)
    return jnp.asarray(np.stack([first, 1.0 - first], axis=1), dtype=dtype)


def _compositions(total: int, parts: int) -> list[list[int]]:
    """All lists of ``parts`` non-negative ints summing to ``total``, first entry ascending."""
    if parts == 1:
        return [[total]]
    out = []
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            out.append([first] + rest)
    return out


def das_dennis(n_partitions: int, n_obj: int, *, dtype: jnp.dtype = jnp.float32) -> Array:
    r"""Das-Dennis structured grid of preference vectors on the simplex.

    All vectors whose components are multiples of ``1/H`` and sum to 1 (Das and Dennis,
    "Normal-boundary intersection", SIAM J. Optim. 1998; the reference directions of
    NSGA-III and MOEA/D):

    .. math::
        \Big\{ \tfrac{1}{H}(k_1, \dots, k_m) : k_j \in \mathbb{N},\ \textstyle\sum_j k_j = H \Big\},
        \qquad \binom{H + m - 1}{m - 1} \text{ vectors}.

    Rows come in the order of pymoo's ``get_reference_directions("das-dennis", ...)``
    (first component ascending, then the second, ...). Generated on the host; call it
    outside ``jax.jit`` (its output shape depends on the arguments).

    Args:
      n_partitions: ``H >= 1``, the number of divisions of each axis.
      n_obj: ``m >= 1``, the number of objectives.
      dtype: floating dtype of the result.

    Returns:
      Array of shape ``(C(H + m - 1, m - 1), m)``.

    Example:
      >>> from mtopt import pareto
      >>> pareto.das_dennis(2, 3).tolist()[:3]
      [[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]
      >>> pareto.das_dennis(12, 3).shape
      (91, 3)
    """
    _check_count(n_partitions, "n_partitions", 1)
    _check_count(n_obj, "n_obj", 1)
    count = math.comb(n_partitions + n_obj - 1, n_obj - 1)
    if count > 10_000_000:
        raise ValueError(
            f"das_dennis({n_partitions}, {n_obj}) would create {count} vectors; choose fewer "
            "partitions."
        )
    grid = np.asarray(_compositions(n_partitions, n_obj), dtype=np.float64) / n_partitions
    return jnp.asarray(grid, dtype=dtype)


def dirichlet(
    key: Array,
    alpha: Union[float, Array],
    n: int,
    n_obj: int,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    r"""Random preference vectors drawn from a Dirichlet distribution.

    .. math::
        r_i \sim \mathrm{Dir}(\alpha_1, \dots, \alpha_m), \qquad i = 1..n.

    ``alpha = 1`` is uniform on the simplex (what LibMOON's Pareto set learning samples
    every step); ``alpha < 1`` favours the corners, ``alpha > 1`` the centre. Works under
    ``jax.jit`` (``n`` and ``n_obj`` static) and ``jax.vmap`` over keys.

    Args:
      key: a PRNG key.
      alpha: concentration, a positive scalar (symmetric) or an array of shape
        ``(n_obj,)``.
      n: number of vectors.
      n_obj: number of objectives (at least 1).
      dtype: floating dtype of the result.

    Returns:
      Array of shape ``(n, n_obj)``; rows are non-negative and sum to 1.

    Example:
      >>> import jax
      >>> from mtopt import pareto
      >>> r = pareto.dirichlet(jax.random.key(0), 1.0, 4, 3)
      >>> r.shape
      (4, 3)
    """
    _check_count(n, "n", 0)
    _check_count(n_obj, "n_obj", 1)
    alpha = jnp.asarray(alpha, dtype=dtype)
    if alpha.ndim == 0:
        alpha = jnp.full((n_obj,), alpha, dtype=dtype)
    elif alpha.shape != (n_obj,):
        raise ValueError(
            f"alpha must be a scalar or have shape (n_obj,) = ({n_obj},), got {alpha.shape}."
        )
    return _sample_dirichlet(key, alpha, n)


@functools.partial(jax.jit, static_argnames="n")
def _sample_dirichlet(key: Array, alpha: Array, n: int) -> Array:
    return jax.random.dirichlet(key, alpha, shape=(n,), dtype=alpha.dtype)


def check_driver_preferences(
    method: Any,
    preferences: Optional[Any],
    caller: str,
    *,
    name: str = "preferences",
) -> None:
    r"""What a driver checks before it runs a method with concrete preferences.

    The drivers (:func:`mtopt.pareto.sweep`, :func:`mtopt.runner.train`, the
    ``mtopt-bench`` CLI) know the preference values before anything is traced,
    so they check them eagerly, where a clear error is still possible (inside
    the compiled step an invalid preference can only give NaN weights):

    - a preference given to a method that reads none (``method.preference ==
      "none"``) is an error: every run would be the same; a method whose
      preference is ``"required"`` without one is an error too;
    - for ``"required"`` methods (the Pareto methods, on the simplex) every row
      must be finite, non-negative and sum to 1 within 1e-3; for
      ``"optional"`` ones (UPGrad's per-task weights, ConFIG's targets...) every
      row must be finite (each method checks its own further rules).

    The message names the bad row (``preferences[k]``). Traced values (a driver
    called under ``jax.jit``) are not checked here; the method then gives NaN
    weights for an invalid row.

    Args:
      method: the :class:`mtopt.Weighting` the preferences are for.
      preferences: ``None``, one preference ``(T,)`` or a batch ``(K, T)``.
      caller: the driver's name, for the message.
      name: what the caller calls the argument (``"preferences"``, ``"preference"``).

    Raises:
      ValueError: as above.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> from mtopt.pareto._preferences import check_driver_preferences
      >>> check_driver_preferences(mtopt.epo(), jnp.array([[0.3, 0.7]]), "sweep")
      >>> try:
      ...     check_driver_preferences(mtopt.epo(), jnp.array([[0.3, 0.7], [-0.2, 1.2]]),
      ...                              "sweep")
      ... except ValueError as err:
      ...     print(str(err).split(": the")[0])
      sweep: preferences[1] is not a valid preference for epo
    """
    from mtopt._src import base
    from mtopt._src.methods.scalarization import preference_problem

    try:
        base.check_preference_use(method, preferences)
    except ValueError as err:
        raise ValueError(f"{caller} ({name}=): {err}") from None
    if preferences is None:
        return
    try:
        values = np.asarray(preferences, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    except (TypeError, ValueError) as err:
        raise ValueError(f"{caller}: {name} must be an array of numbers ({err}).") from None
    rows = values.reshape(1, -1) if values.ndim <= 1 else values.reshape(-1, values.shape[-1])
    for k, row in enumerate(rows):
        if method.preference == "required":
            problem = preference_problem(row)
        elif not np.all(np.isfinite(row)):
            problem = f"every entry must be finite, got {row}"
        else:
            problem = None
        if problem is not None:
            label = name if values.ndim <= 1 else f"{name}[{k}]"
            raise ValueError(
                f"{caller}: {label} is not a valid preference for {method.name}: {problem}."
            )
