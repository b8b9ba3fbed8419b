"""Gradient-shaped state buffers for methods that remember past task gradients (MoCo, DB-MTL, ExcessMTL)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtopt._src import base


def is_none(x: object) -> bool:
    """``is_leaf`` predicate that keeps ``None`` placeholders as leaves."""
    return x is None


def buffer_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def zero_buffers(num_tasks: int, params: Optional[base.PyTree], method: str) -> base.PyTree:
    """One zero buffer per task and parameter leaf: leaves of shape (T, *leaf.shape)."""
    if params is None:
        raise ValueError(
            f"{method} keeps one gradient-shaped buffer per task: call "
            "init(num_tasks, params) with a template of the parameters the Jacobian is "
            "taken over (arrays or jax.ShapeDtypeStruct)."
        )

    def zeros(leaf):
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            leaf = jnp.asarray(leaf)
        return jnp.zeros((num_tasks,) + tuple(leaf.shape), buffer_dtype(leaf.dtype))

    buffers = jax.tree.map(zeros, params)
    if not jax.tree.leaves(buffers):
        raise ValueError(f"{method}: the params template has no array leaves.")
    return buffers


def pair_with_buffers(
    jacobian: Optional[base.PyTree], buffers: base.PyTree, num_tasks: int, method: str
):
    """Check the Jacobian against the state's buffers; return (treedef, jac leaves, buffers).

    The Jacobian may hold ``None`` where the template had a leaf (parameters the
    Jacobian is not taken over, e.g. task heads): those buffers are left alone.
    """
    if jacobian is None:
        raise ValueError(
            f"{method} needs the Jacobian of the task gradients: pass jacobian=, or use "
            "mtopt.value_and_grad, which computes it."
        )
    jac_leaves, treedef = jax.tree.flatten(jacobian, is_leaf=is_none)
    try:
        buf_leaves = treedef.flatten_up_to(buffers)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{method}: the Jacobian's structure does not match the buffers made by "
            f"init(num_tasks, params); build the state from the same parameters: {err}"
        ) from None
    if all(j is None for j in jac_leaves):
        raise ValueError(f"{method}: the Jacobian has no array leaves.")
    for j, b in zip(jac_leaves, buf_leaves):
        if j is None:
            continue
        j_shape = jnp.shape(j)
        expected = None if b is None else jnp.shape(b)
        if expected != j_shape or j_shape[:1] != (num_tasks,):
            raise ValueError(
                f"{method}: expected a Jacobian leaf of shape {expected} (T={num_tasks} "
                f"tasks, then the parameter's shape), got shape {j_shape}."
            )
        if not jnp.issubdtype(jnp.asarray(j).dtype, jnp.floating):
            raise TypeError(
                f"{method}: Jacobian leaves must be floating, got {jnp.asarray(j).dtype}."
            )
    return treedef, jac_leaves, buf_leaves
