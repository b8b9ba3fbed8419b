"""What a multi-task loss function returns, and how mtopt reads it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

Array = jax.Array


class Objectives(NamedTuple):
    """Task losses plus a penalty that stays outside the weighting.

    Return this from a loss function when it has regularisation terms (weight
    decay, activity regularisers, ...). The step then reports and
    differentiates ``total = sum_i w_i L_i + penalty``: the penalty's gradient is
    added to the combined gradient *after* the weighting, with coefficient 1, and
    no method ever sees or rescales it.

    Attributes:
      losses: a (T,) vector of task losses, a sequence of T scalars, or a dict
        ``{name: scalar}``. A dict's tasks are ordered by **sorted name**,
        whatever its insertion order: ``jax.jit``, ``jax.checkpoint`` and
        ``jax.tree.map`` return dicts with sorted keys, so this is the only
        order that survives every transform (see :func:`parse_losses`).
      penalty: a scalar, or ``None`` for no penalty.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> def loss_fn(params):
      ...     l1, l2 = jnp.sum(params ** 2), jnp.sum((params - 1) ** 2)
      ...     return mtopt.Objectives({"a": l1, "b": l2}, penalty=1e-4 * jnp.sum(params ** 2))
    """

    losses: Union[Array, Sequence[Array], Mapping[str, Array]]
    penalty: Optional[Array] = None


class ParsedLosses(NamedTuple):
    """What :func:`parse_losses` read: the (T,) vector and the task names.

    Attributes:
      losses: (T,) task losses.
      names: task names (sorted) for a dict, else ``None``.
      given_order: the dict's keys in the order the function produced them, when
        it differs from the sorted order (so positional per-task options can be
        refused: they would land on other tasks than written); else ``None``.
    """

    losses: Array
    names: Optional[tuple[str, ...]]
    given_order: Optional[tuple[str, ...]] = None


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with keys {list(value)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _scalar(value: Any, label: str) -> Array:
    """A task loss as a 0-d array, or a clear error saying what was expected."""
    if isinstance(value, (Mapping, list, tuple)) or value is None:
        raise TypeError(
            f"Task loss {label} is {_describe(value)}, not a scalar. If the loss function "
            "returns (losses, aux), pass has_aux=True; otherwise return one scalar per task."
        )
    try:
        value = jnp.asarray(value)
    except TypeError:
        raise TypeError(
            f"Task loss {label} is a {type(value).__name__}, not an array: expected one "
            "floating scalar per task."
        ) from None
    if value.ndim != 0:
        raise ValueError(
            f"Task loss {label} must be a scalar (shape ()), got shape {value.shape}. "
            "Reduce it over the batch (e.g. jnp.mean) before returning it."
        )
    return value


def parse_losses(
    losses: Union[Array, Sequence[Array], Mapping[str, Array]],
) -> ParsedLosses:
    """Turn a loss vector, a sequence of scalars or a dict of scalars into (T,) and names.

    A dict's tasks are ordered by sorted key (JAX's pytree order), so the task
    order is the same whether or not the function went through ``jax.jit``,
    ``jax.checkpoint`` or ``jax.tree.map``. A pair ``(loss, x)`` whose second
    element is not a floating scalar (an int, an array, a dict) is refused with
    a hint to pass ``has_aux=True``; a pair of two floating scalars is two tasks.
    """
    if isinstance(losses, Mapping):
        if not losses:
            raise ValueError("The loss dict is empty: expected at least one named task loss.")
        keys = list(losses)
        try:
            ordered = sorted(keys)
        except TypeError:
            raise TypeError(
                f"The loss dict's keys must be sortable (strings), got {keys!r}."
            ) from None
        names = tuple(str(k) for k in ordered)
        given = tuple(str(k) for k in keys)
        scalars = [_scalar(losses[k], repr(str(k))) for k in ordered]
        return ParsedLosses(_stack(scalars), names, given if given != names else None)
    if isinstance(losses, (list, tuple)):
        if not losses:
            raise ValueError("The loss sequence is empty: expected at least one task loss.")
        if isinstance(losses, tuple) and len(losses) == 2:
            _check_not_aux_pair(losses)
        scalars = [_scalar(v, repr(str(i))) for i, v in enumerate(losses)]
        return ParsedLosses(_stack(scalars), None)
    if losses is None:
        raise TypeError("The loss function returned None: expected the task losses.")
    try:
        vector = jnp.asarray(losses)
    except TypeError:
        raise TypeError(
            f"The loss function returned a {type(losses).__name__}: expected a (T,) vector "
            "of task losses, a sequence of T scalars or a dict of T named scalars."
        ) from None
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise ValueError(
            "The loss function must return a (T,) vector of task losses, a sequence "
            f"of T scalars or a dict of T named scalars; got an array of shape "
            f"{vector.shape}."
        )
    _check_float(vector.dtype)
    return ParsedLosses(vector, None)


def _check_not_aux_pair(pair: tuple) -> None:
    """Refuse a pair that looks like ``(losses, aux)`` returned without ``has_aux=True``.

    A pair of two floating scalars is two task losses; anything else (losses as a
    vector, sequence or dict first, or a second element that is not a floating
    scalar: an int accuracy, predictions, a dict) is a forgotten ``has_aux``.
    """
    first, second = pair
    first_is_losses = isinstance(first, (Mapping, list, tuple)) or (
        hasattr(first, "ndim") and getattr(first, "ndim") >= 1
    )
    second_ok = hasattr(second, "dtype") and jnp.ndim(second) == 0 and jnp.issubdtype(
        jnp.asarray(second).dtype, jnp.floating
    )
    if first_is_losses or not second_ok:
        raise TypeError(
            f"The loss function returned a pair ({_describe_value(first)}, "
            f"{_describe_value(second)}), which is not two scalar task losses. If it returns "
            "(losses, aux), pass has_aux=True."
        )


def _describe_value(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, float):
        return "float"
    return _describe(value)


def _stack(scalars: list[Array]) -> Array:
    dtypes = {v.dtype for v in scalars}
    dtype = jnp.result_type(*dtypes) if len(dtypes) > 1 else scalars[0].dtype
    _check_float(dtype)
    return jnp.stack([v.astype(dtype) for v in scalars])


def _check_float(dtype: Any) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"Task losses must have a floating dtype, got {dtype}.")


def parse_objectives(out: Any) -> tuple[ParsedLosses, Optional[Array]]:
    """Read a loss function's output: (the parsed losses, the penalty or None)."""
    if isinstance(out, Objectives):
        parsed = parse_losses(out.losses)
        penalty = out.penalty
        if penalty is not None:
            penalty = jnp.asarray(penalty)
            if penalty.ndim != 0:
                raise ValueError(f"The penalty must be a scalar, got shape {penalty.shape}.")
            penalty = penalty.astype(parsed.losses.dtype)
        return parsed, penalty
    return parse_losses(out), None
