"""The container of a benchmark problem: objectives, box, true front, reference point."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A differentiable multi-objective benchmark problem (minimise every objective).

    Not a pytree: close over it (or pass it as a static argument, it hashes by identity)
    inside ``jax.jit``.

    Attributes:
      name: short name, e.g. ``"zdt1"``.
      n_var: number of decision variables.
      n_obj: number of objectives.
      bounds: ``(lower, upper)``, arrays of shape ``(n_var,)``: the decision box of the
        reference definition (clip or sigmoid-map into it; ``f`` itself does not clip).
      f: ``f(x) -> objectives``, a pure function of one point ``x`` of shape ``(n_var,)``
        returning shape ``(n_obj,)``; ``jax.vmap`` it for batches. Computes in float32
        (float64 for float64 inputs).
      pareto_front: ``pareto_front(n_points) -> (k, n_obj)`` array of points on the true
        Pareto front, sorted by the first objective for two objectives. Host-side (call
        it outside ``jax.jit``); ``k == n_points`` except where the docstring of the
        problem says otherwise.
      ref_point: reference point for the hypervolume, shape ``(n_obj,)``.
      start_points: ``(k, n_var)`` standard initial points of the literature, or
        ``None`` where the literature samples them at random in ``bounds``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> zdt1 = problems.zdt1(n_var=3)
      >>> zdt1.n_obj, zdt1.f(jnp.full(3, 0.5)).shape, zdt1.pareto_front(5).shape
      (2, (2,), (5, 2))
    """

    name: str
    n_var: int
    n_obj: int
    bounds: tuple[Array, Array]
    f: Callable[[Array], Array]
    pareto_front: Callable[[int], Array]
    ref_point: Array
    start_points: Optional[Array] = None

    def __call__(self, x: Array) -> Array:
        """Same as ``self.f(x)``."""
        return self.f(x)


def default_float() -> jnp.dtype:
    """float32, or float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_array(values: np.ndarray) -> Array:
    """A host-side (NumPy, float64) result as a JAX array of the default float dtype."""
    return jnp.asarray(np.asarray(values, dtype=np.float64), dtype=default_float())


def check_x(x: Array, n_var: int, name: str) -> Array:
    """Check one decision vector of shape ``(n_var,)``; return it in its compute dtype."""
    x = jnp.asarray(x)
    if x.shape != (n_var,):
        raise ValueError(
            f"{name}.f takes one decision vector of shape ({n_var},), got shape {x.shape}; "
            "use jax.vmap(problem.f) for a batch."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}.f needs a floating x, got dtype {x.dtype}.")
    return x.astype(base.compute_dtype(x))


def check_n_points(n_points: int, minimum: int = 1) -> int:
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < minimum:
        raise ValueError(f"n_points must be an int >= {minimum}, got {n_points!r}.")
    return n_points


def check_dimension(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def box(lower: float, upper: float, n_var: int) -> tuple[Array, Array]:
    return as_array(np.full(n_var, lower)), as_array(np.full(n_var, upper))
