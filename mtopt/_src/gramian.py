"""The Gramian of the task gradients, and what can be read off it.

A *Jacobian pytree* is a pytree shaped like the parameters whose every leaf has
a leading task axis of length T: leaf ``J[k]`` of shape ``(T, *p_k.shape)``
holds the gradient of each task loss with respect to parameter leaf ``p_k``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base

Array = jax.Array
PyTree = Any


def _task_leaves(jacobian: PyTree) -> list[Array]:
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError("The Jacobian pytree has no array leaves.")
    num_tasks = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
    for leaf in leaves:
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != num_tasks:
            shapes = [jnp.shape(x) for x in leaves]
            raise ValueError(
                "Every Jacobian leaf must have the same leading task axis T; got leaf "
                f"shapes {shapes}."
            )
    return leaves


def num_tasks_of(jacobian: PyTree) -> int:
    """The length T of the leading task axis of a Jacobian pytree."""
    return int(jnp.shape(_task_leaves(jacobian)[0])[0])


def _accumulation_dtype(leaves: list[Array]) -> jnp.dtype:
    return base.compute_dtype(*leaves)


def gramian(jacobian: PyTree) -> Array:
    r"""The Gramian ``G = J J^T`` of the task gradients, summed over leaves.

    .. math::
        G_{ij} = \langle g_i, g_j \rangle = \sum_k \langle J[k]_i, J[k]_j \rangle .

    Each leaf is flattened to ``(T, -1)`` and multiplied with its transpose,
    accumulating in float32 whatever the leaf dtype (float64 when a leaf is
    float64), so bfloat16 gradients give a float32 Gramian. On CPU, large leaves
    are multiplied in column blocks of about 2 MB inside a ``lax.fori_loop``,
    which XLA's CPU backend runs several times faster than one thin product.

    Args:
      jacobian: pytree whose leaves have shape ``(T, ...)``.

    Returns:
      (T, T) symmetric positive semi-definite matrix, float32 or float64.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> jac = {"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}
      >>> mtopt.gramian(jac).tolist()
      [[1.0, 1.0], [1.0, 2.0]]
    """
    leaves = _task_leaves(jacobian)
    dtype = _accumulation_dtype(leaves)
    num_tasks = jnp.shape(leaves[0])[0]
    total = jnp.zeros((num_tasks, num_tasks), dtype)
    for leaf in leaves:
        if _explicitly_sharded(leaf):
            total = total + _sharded_leaf_gramian(leaf, dtype)
        else:
            total = total + _leaf_gramian(jnp.reshape(leaf, (num_tasks, -1)), dtype)
    return total


def _explicitly_sharded(leaf: Array) -> bool:
    """Whether ``leaf`` is split over an Explicit mesh axis (sharding in types)."""
    sharding = jax.typeof(leaf).sharding
    mesh = getattr(sharding, "mesh", None)
    explicit = {name for name, kind in zip(getattr(mesh, "axis_names", ()),
                                             getattr(mesh, "axis_types", ()))
                if kind == jax.sharding.AxisType.Explicit}
    spec = getattr(sharding, "spec", ())
    used = {a for entry in spec if entry is not None
            for a in (entry if isinstance(entry, tuple) else (entry,))}
    return bool(explicit & used)


def _sharded_leaf_gramian(leaf: Array, dtype: jnp.dtype) -> Array:
    """``J_k J_k^T`` contracting every non-task axis in place: no reshape of sharded
    axes; the (T, T) result is replicated (an all-reduce of the partial products)."""
    dims = tuple(range(1, leaf.ndim))
    out = jax.lax.dot_general(leaf, leaf, ((dims, dims), ((), ())),
                              preferred_element_type=dtype, out_sharding=jax.P())
    return out.astype(dtype)


# Column block of the Gramian product on CPU, in bytes. XLA's CPU backend runs a
# (T x P) @ (P x T) product with P in the millions at a few GFLOP/s; summing the
# products of ~2 MB column blocks runs at matmul speed (measured 5-9x faster at
# T = 8..16, P = 2e6 by benchmarks/step_benchmark.py's investigation).
_CPU_BLOCK_BYTES = 1 << 21


def _leaf_gramian(flat: Array, dtype: jnp.dtype, other: Optional[Array] = None) -> Array:
    """``flat @ other.T`` (default ``other = flat``) for (T, n) blocks, accumulated in
    ``dtype``."""
    other = flat if other is None else other

    def gram(x: Array, y: Array) -> Array:
        return jnp.matmul(x, y.T, preferred_element_type=dtype).astype(dtype)

    num_tasks, n = flat.shape
    block = max(1, _CPU_BLOCK_BYTES // (num_tasks * flat.dtype.itemsize))
    if jax.default_backend() != "cpu" or n <= 2 * block:
        return gram(flat, other)
    num_blocks = n // block

    def body(i: Array, acc: Array) -> Array:
        cols = lambda a: jax.lax.dynamic_slice_in_dim(a, i * block, block, axis=1)  # noqa: E731
        return acc + gram(cols(flat), cols(other))

    total = jax.lax.fori_loop(0, num_blocks, body, jnp.zeros((num_tasks, other.shape[0]), dtype))
    if n > num_blocks * block:
        total = total + gram(flat[:, num_blocks * block :], other[:, num_blocks * block :])
    return total


def cross_gramian(a: Array, b: Array, dtype: jnp.dtype) -> Array:
    """``a_flat @ b_flat.T`` for two (T, ...) arrays of the same shape, by the same
    blocked product as :func:`gramian` (the structured engine's kernel blocks)."""
    num_tasks = a.shape[0]
    return _leaf_gramian(a.reshape(num_tasks, -1), dtype, b.reshape(num_tasks, -1))


def combine(jacobian: PyTree, weights: Array) -> PyTree:
    r"""The weighted sum ``sum_i w_i J_i`` of the task gradients.

    Accumulates in float32 (or float64) and casts each leaf back to its own dtype.

    Args:
      jacobian: pytree whose leaves have shape ``(T, ...)``.
      weights: (T,) weights on the raw task gradients.

    Returns:
      A pytree shaped like one task gradient (leaves without the task axis).

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> jac = {"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}
      >>> mtopt.combine(jac, jnp.array([1.0, 0.2]))["w"].tolist()
      [1.2000000476837158, 0.20000000298023224]
    """
    leaves = _task_leaves(jacobian)
    weights = jnp.asarray(weights)
    if weights.shape != (jnp.shape(leaves[0])[0],):
        raise ValueError(
            f"weights must have shape ({jnp.shape(leaves[0])[0]},), one per task of the "
            f"Jacobian, got shape {weights.shape}."
        )

    def leaf_sum(leaf: Array) -> Array:
        dtype = base.compute_dtype(leaf, weights)
        out = jnp.tensordot(weights.astype(dtype), leaf.astype(dtype), axes=(0, 0))
        return out.astype(leaf.dtype)

    return jax.tree.map(leaf_sum, jacobian)


def task_norms(gramian_matrix: Array) -> Array:
    """Per-task gradient norms ``||g_i|| = sqrt(G_ii)``, shape (T,).

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> mtopt.task_norms(jnp.array([[9.0, 0.0], [0.0, 16.0]])).tolist()
      [3.0, 4.0]
    """
    return jnp.sqrt(jnp.maximum(jnp.diagonal(gramian_matrix), 0.0))


def cosine_matrix(gramian_matrix: Array) -> Array:
    r"""Pairwise cosines ``G_ij / (||g_i|| ||g_j||)``, shape (T, T).

    A zero gradient has cosine 0 with every task, itself included, instead of
    0/0. Values are clipped to [-1, 1] against rounding.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> mtopt.cosine_matrix(jnp.array([[1.0, -1.0], [-1.0, 4.0]])).tolist()
      [[1.0, -0.5], [-0.5, 1.0]]
    """
    norms = task_norms(gramian_matrix)
    outer = norms[:, None] * norms[None, :]
    positive = outer > 0
    cos = gramian_matrix / jnp.where(positive, outer, 1.0)
    return jnp.where(positive, jnp.clip(cos, -1.0, 1.0), 0.0)


def num_conflicts(gramian_matrix: Array) -> Array:
    """Number of unordered task pairs whose gradients conflict (``G_ij < 0``, i < j).

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> int(mtopt.num_conflicts(jnp.array([[1.0, -1.0], [-1.0, 4.0]])))
      1
    """
    upper = jnp.triu(gramian_matrix < 0, k=1)
    return jnp.sum(upper.astype(jnp.int32))
