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


def check_shared_spec(shared: SharedSpec) -> None:
    """Check a callable ``shared`` takes ``(path, leaf)``, at set-up, with a clear message."""
    if shared is None or not callable(shared):
        return
    import inspect

    try:
        sig = inspect.signature(shared)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError:
        raise TypeError(
            f"shared must be a callable (path, leaf) -> bool taking two arguments, got "
            f"{getattr(shared, '__name__', shared)!r} with signature {sig}. For example "
            "shared=lambda path, leaf: path[0].key == 'trunk'."
        ) from None


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


def split_key(key: Optional[Array]) -> tuple[Optional[Array], Optional[Array]]:
    """The one key split of every step: ``(key for update, key for combine)``.

    Every driver (the step's paths, representation mode, :func:`aggregate`,
    the optax aggregator) splits the step key this way, so a stochastic
    method draws the same numbers for the same key whichever path runs it.
    """
    if key is None:
        return None, None
    first, second = jax.random.split(key)
    return first, second


def check_weights(weights: Any, num_tasks: int, method: str) -> Array:
    """A method's weights as an array of shape (T,), or a clear error."""
    weights = jnp.asarray(weights)
    if weights.shape != (num_tasks,):
        raise ValueError(
            f"{method} returned weights of shape {weights.shape}, expected ({num_tasks},) "
            "(one weight per task)."
        )
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise TypeError(f"{method} returned weights of dtype {weights.dtype}, expected a float.")
    return weights


def run_update(
    method: base.Weighting,
    state: Any,
    losses: Array,
    *,
    gramian: Optional[Array],
    jacobian: Optional[PyTree],
    key: Optional[Array],
    preference: Optional[Array],
) -> tuple[Array, Any, Optional[Array], Optional[Array]]:
    """The method's update with the step's one key split and one weights check.

    Returns ``(weights, new_state, shared_weights, key_combine)``: the weights
    on the raw task gradients (checked, shape (T,)), the next state, the
    weights for the shared leaves (``shared_scale(new_state) * weights`` for a
    method that rescales the shared gradient, else the same array object as
    ``weights``) and the key for ``method.combine``.
    """
    base.check_preference_use(method, preference)
    key_update, key_combine = split_key(key)
    weights, new_state = method.update(
        state,
        losses,
        gramian=gramian if method.needs is not base.Needs.LOSSES else None,
        jacobian=jacobian if method.needs is base.Needs.JACOBIAN else None,
        key=key_update,
        preference=preference,
    )
    weights = check_weights(weights, losses.shape[0], method.name)
    shared_weights = weights
    if method.shared_scale is not None:
        scale = jnp.asarray(method.shared_scale(new_state)).astype(weights.dtype)
        shared_weights = scale * weights
    return weights, new_state, shared_weights, key_combine


def weighted_sum(jacobian: PyTree, mask: PyTree, weights: Array, shared_weights: Array) -> PyTree:
    """``sum_i w_i J_i`` with ``shared_weights`` on the leaves where ``mask`` is True."""
    if shared_weights is weights:
        return gramian_lib.combine(jacobian, weights)
    shared = select(jacobian, mask, True)
    rest = select(jacobian, mask, False)
    none_tree = lambda t: jax.tree.map(lambda _: None, t, is_leaf=lambda x: x is None)  # noqa: E731
    shared_dir = gramian_lib.combine(shared, shared_weights) if jax.tree.leaves(shared) else none_tree(shared)
    rest_dir = gramian_lib.combine(rest, weights) if jax.tree.leaves(rest) else none_tree(rest)
    return merge(shared_dir, rest_dir, mask)


def jacobian_direction(
    method: base.Weighting,
    jacobian: PyTree,
    mask: PyTree,
    weights: Array,
    shared_weights: Array,
    new_state: Any,
    key_combine: Optional[Array],
) -> PyTree:
    """The combined gradient from a Jacobian pytree: the method's ``combine`` on the
    shared leaves (per-coordinate methods), else :func:`weighted_sum`; task-specific
    leaves always get ``sum_i w_i J_i``."""
    if method.combine is None:
        return weighted_sum(jacobian, mask, weights, shared_weights)
    jac_shared = select(jacobian, mask, True)
    shared_dir = method.combine(jac_shared, weights, new_state, key=key_combine)
    rest = select(jacobian, mask, False)
    rest_dir = (
        gramian_lib.combine(rest, weights)
        if jax.tree.leaves(rest)
        else jax.tree.map(lambda _: None, rest, is_leaf=lambda x: x is None)
    )
    return merge(shared_dir, rest_dir, mask)


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
    gradient. Same key split, weights check and shared-leaf rescaling as
    :func:`mtopt.value_and_grad`.
    """
    losses = jax.lax.stop_gradient(base.check_losses(losses))
    jac_shared = select(jacobian, mask, True)
    gram = None
    if method.needs in (base.Needs.GRAMIAN, base.Needs.JACOBIAN):
        gram = gramian_lib.gramian(jac_shared)
    weights, new_state, shared_weights, key_combine = run_update(
        method, state, losses, gramian=gram, jacobian=jac_shared, key=key,
        preference=preference,
    )
    direction = jacobian_direction(
        method, jacobian, mask, weights, shared_weights, new_state, key_combine
    )
    return Aggregation(direction=direction, weights=weights, gramian=gram, state=new_state)
