"""Euclidean projection onto the probability simplex."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def projection_simplex(v: Array, scale: float = 1.0) -> Array:
    r"""Project a vector onto ``{w >= 0, sum_i w_i = scale}`` in the Euclidean norm.

    .. math::
        \Pi(v) = \max(v - \tau, 0), \quad \tau \text{ such that } \textstyle\sum_i \Pi(v)_i = s,

    with :math:`\tau` found by sorting (Held, Wolfe & Crowder 1974; Duchi et al.
    2008). Same result as :func:`optax.projections.projection_simplex` for a
    vector, written to pass under ``jax_numpy_dtype_promotion="strict"`` and to
    ``vmap`` over a batch of vectors.

    Args:
      v: (T,) vector.
      scale: the sum of the projection (positive).

    Returns:
      (T,) projection, in the dtype of ``v``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.simplex import projection_simplex
      >>> projection_simplex(jnp.array([2.0, 0.0, -1.0])).tolist()
      [1.0, 0.0, 0.0]
    """
    v = jnp.asarray(v)
    if v.ndim != 1:
        raise ValueError(f"projection_simplex expects a vector (T,), got shape {v.shape}.")
    dtype = v.dtype
    u = jnp.sort(v)[::-1]
    cumsum = jnp.cumsum(u) - jnp.asarray(scale, dtype)
    index = jnp.arange(1, v.shape[0] + 1, dtype=dtype)
    cond = u - cumsum / index > 0
    rho = jnp.sum(cond.astype(jnp.int32))
    tau = cumsum[rho - 1] / rho.astype(dtype)
    return jnp.maximum(v - tau, jnp.zeros((), dtype))
