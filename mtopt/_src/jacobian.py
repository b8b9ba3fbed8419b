"""Per-task gradients: the Jacobian of the task-loss vector as a pytree."""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import data_parallel, objectives

Array = jax.Array
PyTree = Any
Strategy = Literal["batched", "sequential"]
STRATEGIES = ("batched", "sequential")


class Forward(NamedTuple):
    """One forward pass of a multi-task loss function, ready for any backward pass.

    Attributes:
      losses: (T,) task losses (differentiable values, not stop-gradiented).
      penalty: the scalar penalty, or ``None`` when the function has none.
      names: task names (sorted) when the losses came as a dict, else ``None``.
      aux: the auxiliary output (``None`` without ``has_aux``).
      pullback: ``pullback(loss_cotangent (T,), penalty_cotangent ()) -> grads``,
        one reverse pass; linear in its arguments.
      given_order: a loss dict's keys in the order the function produced them,
        when that is not the sorted order; else ``None``.
    """

    losses: Array
    penalty: Optional[Array]
    names: Optional[tuple[str, ...]]
    aux: Any
    pullback: Callable[[Array, Array], PyTree]
    given_order: Optional[tuple[str, ...]] = None


def check_strategy(strategy: str, chunk_size: Optional[int]) -> None:
    """Validate the Jacobian strategy options."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")


def parsed_objective(
    fn: Callable[..., Any],
    args: tuple,
    has_aux: bool,
    meta: dict[str, Any],
    kwargs: Optional[dict[str, Any]] = None,
) -> Callable[[PyTree], tuple[tuple[Array, Array], Any]]:
    """``p -> ((losses, penalty), aux)`` for ``fn(p, *args)`` in any accepted form.

    A missing penalty becomes a zero scalar (so both outputs always exist);
    ``meta`` receives ``names``, ``given_order`` and ``has_penalty`` when the
    function is traced.
    """

    kwargs = kwargs or {}

    def wrapped(p: PyTree):
        out = fn(p, *args, **kwargs)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(
                    "With has_aux=True the loss function must return a pair (losses, aux), "
                    f"got {type(out).__name__}."
                )
            out, aux = out
        parsed, penalty = objectives.parse_objectives(out)
        meta["names"] = parsed.names
        meta["given_order"] = parsed.given_order
        meta["has_penalty"] = penalty is not None
        losses = parsed.losses
        if penalty is None:
            penalty = jnp.zeros((), losses.dtype)
        return (losses, penalty), aux

    return wrapped


def make_pullback(
    vjp_fn: Callable[[tuple[Array, Array]], tuple[PyTree]], losses: Array, penalty: Array
) -> Callable[[Array, Array], PyTree]:
    """``(loss_cotangent, penalty_cotangent) -> grads`` from a VJP of ``parsed_objective``.

    Cotangents are cast to the outputs' dtypes and, inside ``shard_map``, to
    their device-varying axes.
    """

    def pullback(loss_cot: Array, penalty_cot: Array) -> PyTree:
        loss_cot = data_parallel.match_varying(loss_cot.astype(losses.dtype), losses)
        penalty_cot = data_parallel.match_varying(penalty_cot.astype(penalty.dtype), penalty)
        return vjp_fn((loss_cot, penalty_cot))[0]

    return pullback


Trainable = Optional[Callable[[Any], bool]]


def is_array_or_float(leaf: Any) -> bool:
    """The default ``trainable``: every array leaf and Python float is differentiated;
    other leaves (callables, strings, Python ints, as in an equinox module) pass
    through to the loss function unchanged."""
    return hasattr(leaf, "dtype") or isinstance(leaf, float)


def split_trainable(
    params: PyTree, trainable: Trainable = None
) -> tuple[PyTree, Optional[Callable[[PyTree], PyTree]]]:
    """Split ``params`` into the leaves to differentiate and the rest.

    Returns ``(diff, merge)``: ``diff`` is ``params`` with ``None`` in place of
    every leaf for which ``trainable(leaf)`` (default :func:`is_array_or_float`)
    is False, and ``merge(diff)`` puts those leaves back (``merge`` is ``None``
    when every leaf is trainable: nothing to split). Gradients then have
    ``None`` at the other leaves, as ``equinox.filter_grad`` returns them.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keep = [bool((trainable or is_array_or_float)(leaf)) for leaf in leaves]
    if all(keep):
        return params, None
    if not any(keep):
        raise ValueError(
            "no leaf of params is trainable: value_and_grad differentiates the array leaves "
            "(or those selected by trainable=); got only "
            f"{sorted({type(leaf).__name__ for leaf in leaves})}."
        )
    diff = treedef.unflatten([leaf if k else None for leaf, k in zip(leaves, keep)])

    def merge(d: PyTree) -> PyTree:
        d_leaves = jax.tree_util.tree_flatten(d, is_leaf=lambda x: x is None)[0]
        return treedef.unflatten([a if k else b for a, b, k in zip(d_leaves, leaves, keep)])

    return diff, merge


def check_float_params(params: PyTree, what: str = "params") -> None:
    """Raise when a differentiated leaf of ``params`` is not a floating array, naming it.

    An integer or boolean array (a step counter, a mask) has no gradient: mtopt
    refuses it with the path of the leaf rather than returning ``float0``
    gradients or failing deep in the Gramian code. Select the leaves to train
    with ``trainable=`` (e.g. ``eqx.is_inexact_array``), or pass only
    ``variables["params"]`` of a linen model.
    """
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, float):
            continue
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            label = jax.tree_util.keystr(path) or "<root>"
            kind = f"dtype {dtype}" if dtype is not None else f"type {type(leaf).__name__}"
            bad.append(f"{label} ({kind})")
    if bad:
        raise TypeError(
            f"mtopt differentiates every array leaf of {what}, but these are not floating "
            f"arrays: {', '.join(bad)}. Select the leaves to train with trainable= (e.g. "
            "trainable=eqx.is_inexact_array), or use variables['params'] of a flax.linen "
            "model, and close over the rest."
        )


def forward(
    fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    kwargs: Optional[dict[str, Any]] = None,
) -> Forward:
    """Run ``fn(params, *args, **kwargs)`` once under ``jax.vjp`` and parse what it returned.

    ``fn`` returns the task losses (a (T,) vector, a sequence of scalars, a dict of
    named scalars, or :class:`mtopt.Objectives` with a penalty), or with
    ``has_aux=True`` a pair ``(losses, aux)``.
    """
    meta: dict[str, Any] = {}
    (losses, penalty), vjp_fn, aux = jax.vjp(
        parsed_objective(fn, args, has_aux, meta, kwargs), params, has_aux=True
    )
    return Forward(
        losses=losses,
        penalty=penalty if meta["has_penalty"] else None,
        names=meta["names"],
        aux=aux,
        pullback=make_pullback(vjp_fn, losses, penalty),
        given_order=meta["given_order"],
    )


def pull_rows(
    pullback: Callable[[Array, Array], PyTree],
    loss_cots: Array,
    penalty_cots: Array,
    *,
    strategy: Strategy = "batched",
    chunk_size: Optional[int] = None,
) -> PyTree:
    """Apply ``pullback`` to each row of the cotangents; stack the results.

    ``"batched"`` vmaps the reverse pass over all rows at once (fastest, holds
    every row's backward intermediates together); ``"sequential"`` runs
    ``lax.map`` over the rows, ``chunk_size`` rows at a time (default 1), so the
    working memory of the backward pass is that of ``chunk_size`` rows.
    """
    check_strategy(strategy, chunk_size)
    if strategy == "batched" and chunk_size is None:
        return jax.vmap(pullback)(loss_cots, penalty_cots)
    batch = 1 if chunk_size is None else chunk_size
    return jax.lax.map(lambda c: pullback(*c), (loss_cots, penalty_cots), batch_size=batch)


def task_jacobian(
    fn: Callable[..., Any],
    *,
    has_aux: bool = False,
    strategy: Strategy = "batched",
    chunk_size: Optional[int] = None,
) -> Callable[..., tuple[Array, PyTree, Any]]:
    r"""Transform a multi-task loss function into one returning its per-task gradients.

    .. math::
        J[k]_{i} = \frac{\partial L_i}{\partial p_k}, \qquad
        \sum_i J_i = \nabla \Big(\sum_i L_i\Big).

    One forward pass is shared by all tasks; the backward pass runs once per
    task, batched with ``vmap`` (``strategy="batched"``, like ``jax.jacrev``) or
    one task (or ``chunk_size`` tasks) at a time with ``lax.map``
    (``strategy="sequential"``: backward working memory O(P) instead of O(T P);
    the returned Jacobian itself is always T x P). A penalty returned through
    :class:`mtopt.Objectives` is not part of the Jacobian.

    Args:
      fn: ``fn(params, *args)`` returning the task losses (see
        :class:`mtopt.Objectives` for the accepted forms), or
        ``(losses, aux)`` with ``has_aux=True``.
      has_aux: whether ``fn`` returns auxiliary output.
      strategy: ``"batched"`` or ``"sequential"``.
      chunk_size: tasks per reverse pass in ``"sequential"`` mode (or to bound
        ``"batched"`` mode to chunks).

    Returns:
      A function ``(params, *args, **kwargs) -> (losses (T,), jacobian, aux)``
      (keyword arguments reach ``fn``) where every
      leaf of ``jacobian`` has shape ``(T, *param_leaf.shape)`` (``aux`` is
      ``None`` without ``has_aux``).

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum(3.0 * p)])
      >>> losses, jac, _ = mtopt.task_jacobian(fn)(jnp.array([1.0, 2.0]))
      >>> jac.tolist()
      [[2.0, 4.0], [3.0, 3.0]]
    """
    check_strategy(strategy, chunk_size)

    def jac_fn(params: PyTree, *args: Any, **kwargs: Any) -> tuple[Array, PyTree, Any]:
        check_float_params(params)
        fwd = forward(fn, params, *args, has_aux=has_aux, kwargs=kwargs)
        num_tasks = fwd.losses.shape[0]
        eye = jnp.eye(num_tasks, dtype=fwd.losses.dtype)
        zeros = jnp.zeros((num_tasks,), fwd.losses.dtype)
        jac = pull_rows(fwd.pullback, eye, zeros, strategy=strategy, chunk_size=chunk_size)
        return fwd.losses, jac, fwd.aux

    return jac_fn
