"""From per-task gradients and a weighting to one update direction."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from mtopt._src import base, gramian as gramian_lib

Array = jax.Array
PyTree = Any
SharedSpec = Union[None, PyTree, Callable[[Any, Array], bool]]


def shared_mask(params: PyTree, shared: SharedSpec) -> PyTree:
    """Resolve ``shared`` into a pytree of Python bools shaped like ``params``.

    ``None`` marks every leaf as shared; a callable is called as
    ``shared(path, leaf)`` for each leaf (``path`` as in
    ``jax.tree_util.tree_map_with_path``); a pytree of bools is checked against
    the structure of ``params``.
    """
    if shared is None:
        return jax.tree.map(lambda _: True, params)
    if callable(shared):
        return jax.tree_util.tree_map_with_path(lambda p, x: bool(shared(p, x)), params)
    try:
        mask = jax.tree.map(bool, shared)
        jax.tree.map(lambda _a, _b: None, mask, params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "shared must be None, a callable (path, leaf) -> bool, or a pytree of bools "
            f"with the structure of the parameters: {err}"
        ) from None
    if not any(jax.tree.leaves(mask)):
        raise ValueError("shared selects no parameter leaf: the Gramian would be empty.")
    return mask


def select(tree: PyTree, mask: PyTree, keep: bool) -> PyTree:
    """Leaves of ``tree`` where ``mask == keep``; the others become ``None``."""
    return jax.tree.map(lambda m, x: x if m == keep else None, mask, tree)


def merge(first: PyTree, second: PyTree, mask: PyTree) -> PyTree:
    """Leaves of ``first`` where ``mask`` is True and of ``second`` elsewhere."""
    return jax.tree.map(
        lambda m, a, b: a if m else b, mask, first, second, is_leaf=lambda x: x is None
    )


class Aggregation(NamedTuple):
    """What :func:`aggregate` returns."""

    direction: PyTree
    weights: Array
    gramian: Optional[Array]
    state: Any


def aggregate(
    method: base.Weighting,
    state: Any,
    losses: Array,
    jacobian: PyTree,
    *,
    mask: PyTree,
    key: Optional[Array] = None,
    preference: Optional[Array] = None,
) -> Aggregation:
    """Run ``method`` on a Jacobian pytree and combine the task gradients.

    The Gramian (and, for Jacobian methods, the Jacobian the method sees) covers
    the leaves where ``mask`` is True; elsewhere (task-specific parameters) the
    direction is ``sum_i w_i J_i``, so each head receives its own task's weighted
    gradient.
    """
    losses = jax.lax.stop_gradient(base.check_losses(losses))
    key_update, key_combine = jax.random.split(key) if key is not None else (None, None)
    jac_shared = select(jacobian, mask, True)
    gram = None
    if method.needs in (base.Needs.GRAMIAN, base.Needs.JACOBIAN):
        gram = gramian_lib.gramian(jac_shared)
    weights, new_state = method.update(
        state,
        losses,
        gramian=gram,
        jacobian=jac_shared if method.needs is base.Needs.JACOBIAN else None,
        key=key_update,
        preference=preference,
    )
    weights = jnp.asarray(weights)
    if method.combine is None:
        direction = gramian_lib.combine(jacobian, weights)
    else:
        shared_dir = method.combine(jac_shared, weights, new_state, key=key_combine)
        rest = select(jacobian, mask, False)
        rest_dir = (
            gramian_lib.combine(rest, weights)
            if jax.tree.leaves(rest)
            else jax.tree.map(lambda _: None, rest, is_leaf=lambda x: x is None)
        )
        direction = merge(shared_dir, rest_dir, mask)
    return Aggregation(direction=direction, weights=weights, gramian=gram, state=new_state)
