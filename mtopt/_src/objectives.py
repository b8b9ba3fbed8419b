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
        ``{name: scalar}`` (its insertion order is the task order and its names
        are kept for reports).
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


def parse_losses(
    losses: Union[Array, Sequence[Array], Mapping[str, Array]],
) -> tuple[Array, Optional[tuple[str, ...]]]:
    """Turn a loss vector, a sequence of scalars or a dict of scalars into (T,) and names."""
    names: Optional[tuple[str, ...]] = None
    if isinstance(losses, Mapping):
        if not losses:
            raise ValueError("The loss dict is empty: expected at least one named task loss.")
        names = tuple(str(k) for k in losses)
        values = list(losses.values())
    elif isinstance(losses, (list, tuple)):
        if not losses:
            raise ValueError("The loss sequence is empty: expected at least one task loss.")
        values = list(losses)
    else:
        vector = jnp.asarray(losses)
        if vector.ndim != 1 or vector.shape[0] == 0:
            raise ValueError(
                "The loss function must return a (T,) vector of task losses, a sequence "
                f"of T scalars or a dict of T named scalars; got an array of shape "
                f"{vector.shape}."
            )
        _check_float(vector.dtype)
        return vector, None
    scalars = [jnp.asarray(v) for v in values]
    for i, value in enumerate(scalars):
        if value.ndim != 0:
            label = names[i] if names else str(i)
            raise ValueError(
                f"Task loss {label!r} must be a scalar (shape ()), got shape {value.shape}. "
                "Reduce it over the batch (e.g. jnp.mean) before returning it."
            )
    dtypes = {v.dtype for v in scalars}
    dtype = jnp.result_type(*dtypes) if len(dtypes) > 1 else scalars[0].dtype
    _check_float(dtype)
    return jnp.stack([v.astype(dtype) for v in scalars]), names


def _check_float(dtype: Any) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"Task losses must have a floating dtype, got {dtype}.")


def parse_objectives(
    out: Any,
) -> tuple[Array, Optional[Array], Optional[tuple[str, ...]]]:
    """Read a loss function's output: (losses (T,), penalty or None, names or None)."""
    if isinstance(out, Objectives):
        losses, names = parse_losses(out.losses)
        penalty = out.penalty
        if penalty is not None:
            penalty = jnp.asarray(penalty)
            if penalty.ndim != 0:
                raise ValueError(f"The penalty must be a scalar, got shape {penalty.shape}.")
            penalty = penalty.astype(losses.dtype)
        return losses, penalty, names
    losses, names = parse_losses(out)
    return losses, None, names
