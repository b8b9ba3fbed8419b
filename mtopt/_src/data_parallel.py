"""Averaging over a data-parallel mesh axis before the weighting.

A weighting is a nonlinear function of the task gradients, so the average over
devices of the directions each device would combine from its own shard is not
the direction of the averaged gradients. The training step therefore averages
what the weighting reads (losses, per-task gradients, Gramian rows) over the
``axis_name`` of the surrounding ``jax.shard_map`` first; every device then
computes the same weights and the same method state.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

PyTree = Any


def varying_axes(leaf: Any) -> frozenset:
    """The mesh axes ``leaf`` varies over inside ``shard_map`` (empty outside)."""
    aval = jax.typeof(leaf)
    if hasattr(aval, "vma"):  # jax < 0.9
        return frozenset(aval.vma)
    mat = getattr(aval, "mat", None)
    return frozenset(getattr(mat, "varying", ()))


def make_local(params: PyTree, axis_name: Optional[str]) -> PyTree:
    """Mark device-invariant parameters as varying over ``axis_name``.

    Inside ``jax.shard_map`` (with the default ``check_vma=True``) the
    derivative with respect to a replicated parameter is summed over the axis
    implicitly. Casting the parameters to "varying" first keeps every
    derivative local to the device's shard, so that :func:`mean_over` is the
    one and only reduction.
    """
    if axis_name is None:
        return params

    def cast(leaf: Any) -> Any:
        if axis_name in varying_axes(leaf):
            return leaf
        return jax.lax.pcast(leaf, axis_name, to="varying")

    return jax.tree.map(cast, params)


def match_varying(x: Any, like: Any) -> Any:
    """Cast ``x`` to vary over the same mesh axes as ``like`` (a cotangent for it).

    Outside ``shard_map`` (no varying axes) this is the identity.
    """
    return vary(x, varying_axes(like))


def vary(x: Any, axes: frozenset) -> Any:
    """Cast ``x`` to vary over the mesh ``axes`` it does not vary over yet."""
    missing = frozenset(axes) - varying_axes(x)
    if not missing:
        return x
    return jax.lax.pcast(x, tuple(sorted(missing)), to="varying")


def check_axis_name(axis_name: Optional[str]) -> None:
    """Raise a clear error when ``axis_name`` is not a mesh axis of the enclosing
    ``shard_map`` (or when there is none), naming the axes that exist."""
    if axis_name is None:
        return
    if not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a mesh axis name (str) or None, got {axis_name!r}.")
    try:
        jax.lax.axis_size(axis_name)
    except NameError:
        try:
            axes = tuple(jax.sharding.get_abstract_mesh().axis_names)
        except Exception:  # noqa: BLE001 - only used to word the message
            axes = ()
        where = (f"the enclosing mesh has axes {axes}" if axes
                 else "no shard_map (or pmap) axis is bound here")
        raise ValueError(
            f"axis_name={axis_name!r} is not a mesh axis of the enclosing jax.shard_map: "
            f"{where}. Pass the name of the axis the batch is split over, and call the step "
            "inside jax.shard_map (or drop axis_name on one device)."
        ) from None


def mean_over(axis_name: Optional[str]) -> Optional[Callable[[PyTree], PyTree]]:
    """``pmean`` over ``axis_name`` as a pytree function, or ``None`` without an axis."""
    if axis_name is None:
        return None
    return lambda tree: jax.lax.pmean(tree, axis_name)
