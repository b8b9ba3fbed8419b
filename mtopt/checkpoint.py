"""Save and restore training state (parameters, optimizer and method states, keys).

A thin layer over `orbax-checkpoint <https://orbax.readthedocs.io>`_, the
standard JAX checkpointing library (install it with
``pip install "mtopt[checkpoint]"``). One checkpoint is one *step* directory,
``directory/<step>``, written atomically (a crash mid-save never leaves a
half-written step behind) and synchronously (the functions return once the data
is on disk).

What it adds to orbax:

- Any pytree round-trips bit for bit: arrays of every dtype (including
  ``bfloat16`` and zero-size arrays), Python and NumPy scalars, typed PRNG keys
  (``jax.random.key``; stored as their ``key_data`` plus the implementation name)
  and raw ``uint32`` keys, ``flax.nnx.State``, optax states and every mtopt method
  state (NamedTuples, including empty ones).
- :func:`restore` returns the *target's* structure (NamedTuple types,
  ``nnx.State`` and its variable types) and checks every leaf against it first: a
  leaf whose path, shape or dtype differs raises a ``ValueError`` naming the leaf,
  the expected and the found shape and dtype. Nothing is ever broadcast or cast,
  so e.g. a method state saved for 3 tasks cannot be loaded into a 2-task run.

Leaves are gathered to the host (``numpy``) to be written, and restored onto the
device (and sharding) of the corresponding target leaf; this module targets
single-process training.

Example:
  >>> import tempfile
  >>> import jax, jax.numpy as jnp, optax
  >>> import mtopt, mtopt.checkpoint
  >>> params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
  >>> opt_state = optax.adam(1e-3).init(params)
  >>> state = mtopt.nash_mtl().init(2)
  >>> tree = (params, opt_state, state, jax.random.key(0))
  >>> with tempfile.TemporaryDirectory() as d:
  ...     _ = mtopt.checkpoint.save(d, 10, tree)
  ...     restored = mtopt.checkpoint.restore(d, tree)  # latest step
  ...     mtopt.checkpoint.latest_step(d)
  10
  >>> jax.tree.structure(restored) == jax.tree.structure(tree)
  True
"""

from __future__ import annotations

import operator
import os
import pathlib
import shutil
from typing import Any, Optional, Union

import jax
import numpy as np

__all__ = ("latest_step", "restore", "save")

PyTree = Any
PathLike = Union[str, "os.PathLike[str]"]

_FORMAT = "mtopt.checkpoint"
_VERSION = 1
_STATE_ITEM = "state"  # orbax item holding the arrays
_META_ITEM = "meta"  # orbax JSON item describing every leaf


def _orbax() -> Any:
    """Import orbax-checkpoint lazily, with an actionable message if it is missing."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "mtopt.checkpoint needs the optional dependency orbax-checkpoint: "
            'pip install "mtopt[checkpoint]"'
        ) from e
    return ocp


# ----------------------------------------------------------------------------- leaves


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _describe(shape: Any, dtype: Any) -> str:
    return f"shape {tuple(shape)} and dtype {dtype}"


def _leaf_spec(x: Any) -> dict[str, Any]:
    """What restore needs to know about a leaf: kind, shape, dtype (and key impl)."""
    if _is_typed_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return {
            "kind": "key",
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "key_impl": str(jax.random.key_impl(x)),
            "data_shape": list(data.shape),
            "data_dtype": str(data.dtype),
        }
    if isinstance(x, (bool, int, float, complex)):
        return {"kind": type(x).__name__, "shape": [], "dtype": str(np.asarray(x).dtype)}
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"cannot checkpoint a leaf of type {type(x).__name__}: leaves must be arrays, "
            "PRNG keys or Python/NumPy numeric scalars."
        )
    dtype = np.dtype(dtype)
    if dtype.kind in "OSUMm" or dtype.names is not None:  # objects, strings, float0, ...
        raise TypeError(f"cannot checkpoint a leaf of dtype {dtype}: it is not numeric.")
    return {"kind": "array", "shape": [int(s) for s in shape], "dtype": str(dtype)}


def _to_host(x: Any) -> np.ndarray:
    if _is_typed_key(x):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def _from_host(value: np.ndarray, target: Any, spec: dict[str, Any]) -> Any:
    """Turn a restored host array back into the target leaf's type, on its device."""
    if isinstance(target, (bool, int, float, complex)):
        return type(target)(value.item())
    if isinstance(target, np.generic):
        return value[()]
    if isinstance(target, np.ndarray):
        return value
    if _is_typed_key(target) or spec["kind"] == "key":
        data = jax.numpy.asarray(value)
        if isinstance(target, jax.Array):
            data = jax.device_put(data, target.sharding)
        return jax.random.wrap_key_data(data, impl=spec["key_impl"])
    out = jax.numpy.asarray(value)
    sharding = getattr(target, "sharding", None)
    if isinstance(target, (jax.Array, jax.ShapeDtypeStruct)) and sharding is not None:
        out = jax.device_put(out, sharding)
    return out


def _flatten(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [_path_name(p) for p, _ in leaves_with_paths]
    return names, [leaf for _, leaf in leaves_with_paths], treedef


def _task_counts(tree: PyTree) -> dict[str, int]:
    """``{path: num_tasks}`` of the mtopt states in ``tree`` whose task count is static
    (:class:`mtopt.EmptyState`, :class:`mtopt.SolverState`): it is in the pytree
    structure, not in a leaf, so the checkpoint records it next to the leaves."""
    from mtopt._src import base

    kinds = (base.EmptyState, base.SolverState)
    found = {}
    for path, node in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, kinds)
    )[0]:
        if isinstance(node, kinds):
            found[_path_name(path) or "<root>"] = int(node.num_tasks)
    return found


def _array_key(i: int) -> str:
    return f"leaf_{i:06d}"


# ----------------------------------------------------------------------------- steps


def _check_step(step: Any) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be a non-negative int, got {step!r}.")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be a non-negative int, got {step!r}.") from None
    if step < 0:
        raise ValueError(f"step must be a non-negative int, got {step}.")
    return step


def _steps(directory: pathlib.Path) -> list[int]:
    """Finished steps: orbax writes to a temporary name and renames on success."""
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()
    )


def latest_step(directory: PathLike) -> Optional[int]:
    """The largest step saved in ``directory``, or ``None`` if there is none.

    Args:
      directory: the checkpoint directory given to :func:`save`. A directory that
        does not exist holds no step.

    Returns:
      The latest complete step (steps still being written are ignored), or ``None``.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> import mtopt.checkpoint
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(mtopt.checkpoint.latest_step(d))
      ...     for step in (5, 20, 10):
      ...         _ = mtopt.checkpoint.save(d, step, {"x": jnp.zeros(2)})
      ...     print(mtopt.checkpoint.latest_step(d))
      None
      20
    """
    steps = _steps(pathlib.Path(directory).expanduser())
    return steps[-1] if steps else None


# ----------------------------------------------------------------------------- save


def save(directory: PathLike, step: int, tree: PyTree, *, overwrite: bool = False) -> pathlib.Path:
    """Write ``tree`` as checkpoint ``step`` under ``directory``.

    The write is atomic and finished when the function returns (orbax's
    asynchronous machinery is waited for).

    Args:
      directory: the checkpoint directory; created if missing. The step is
        written to ``directory/<step>``.
      step: a non-negative int, e.g. the number of training steps taken.
      tree: any pytree whose leaves are arrays (any dtype, any shape, including
        zero-size), typed or raw PRNG keys, or Python/NumPy numeric scalars, e.g.
        ``(params, opt_state, method_state, key)``.
      overwrite: replace an existing checkpoint of the same step (the new one is
        written first, then swapped in: a failed save keeps the old one). Without
        it, saving a step twice is an error.

    Returns:
      The step directory.

    Raises:
      FileExistsError: the step exists and ``overwrite`` is False.
      TypeError: a leaf is not numeric (e.g. a string) or is a tracer (``save`` runs
        outside ``jit``), or ``step`` is not an int.
      ImportError: orbax-checkpoint is not installed.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> import mtopt.checkpoint
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = mtopt.checkpoint.save(d, 3, {"w": jnp.ones(2)})
      ...     path.name
      ...     try:
      ...         mtopt.checkpoint.save(d, 3, {"w": jnp.zeros(2)})
      ...     except FileExistsError:
      ...         print("refused")
      ...     _ = mtopt.checkpoint.save(d, 3, {"w": jnp.zeros(2)}, overwrite=True)
      '3'
      refused
    """
    ocp = _orbax()
    step = _check_step(step)
    directory = pathlib.Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"checkpoint directory {directory} is a file.")
    path = directory / str(step)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"checkpoint step {step} already exists at {path}; pass overwrite=True to "
            "replace it."
        )
    names, leaves, _ = _flatten(tree)
    for name, x in zip(names, leaves):
        if isinstance(x, jax.core.Tracer):
            raise TypeError(
                f"cannot checkpoint leaf {name}: it is a traced value. Call save outside "
                "jax.jit / jax.vmap, on concrete arrays."
            )
    specs = [dict(_leaf_spec(x), path=name) for name, x in zip(names, leaves)]
    arrays = {}
    for i, (spec, x) in enumerate(zip(specs, leaves)):
        # orbax refuses zero-size arrays: their shape and dtype in the metadata suffice.
        if int(np.prod(spec["shape"], dtype=np.int64)) > 0:
            arrays[_array_key(i)] = _to_host(x)
    meta = {"format": _FORMAT, "version": _VERSION, "leaves": specs,
            "task_counts": _task_counts(tree)}
    items = {_META_ITEM: ocp.args.JsonSave(meta)}
    if arrays:
        items[_STATE_ITEM] = ocp.args.PyTreeSave(arrays)
    directory.mkdir(parents=True, exist_ok=True)
    replace = path.exists()
    # When overwriting, write next to the old step and swap, so that a failed save
    # leaves the old checkpoint in place (names that are not digits are not steps).
    target = directory / f".{step}.mtopt-new" if replace else path
    if replace and target.exists():
        shutil.rmtree(target)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(target, args=ocp.args.Composite(**items))
    if replace:
        old = directory / f".{step}.mtopt-old"
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
        target.rename(path)
        shutil.rmtree(old)
    return path


# ----------------------------------------------------------------------------- restore


def _target_spec(x: Any) -> tuple[Any, str]:
    """(shape, dtype string) a target leaf expects; ShapeDtypeStruct allowed."""
    if isinstance(x, (bool, int, float, complex)):
        return (), str(np.asarray(x).dtype)
    if _is_typed_key(x):
        return tuple(x.shape), str(x.dtype)
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"cannot restore into a target leaf of type {type(x).__name__}: target leaves "
            "must be arrays, jax.ShapeDtypeStruct, PRNG keys or numeric scalars."
        )
    return tuple(shape), str(np.dtype(dtype))


def _check_against_target(
    specs: list[dict[str, Any]], names: list[str], leaves: list[Any], where: str
) -> None:
    saved = [s["path"] for s in specs]
    if saved != names:
        only_saved = [n for n in saved if n not in set(names)]
        only_target = [n for n in names if n not in set(saved)]
        detail = []
        if only_target:
            detail.append(f"leaves in the target but not in the checkpoint: {only_target}")
        if only_saved:
            detail.append(f"leaves in the checkpoint but not in the target: {only_saved}")
        if not detail:
            detail.append(f"leaf order differs: checkpoint {saved}, target {names}")
        raise ValueError(
            f"checkpoint {where} does not have the target's structure; " + "; ".join(detail)
            + "."
        )
    for spec, name, leaf in zip(specs, names, leaves):
        shape, dtype = _target_spec(leaf)
        if tuple(spec["shape"]) != shape or spec["dtype"] != dtype:
            raise ValueError(
                f"checkpoint {where}: leaf {name} does not match the target: expected "
                f"{_describe(shape, dtype)} (from the target), found "
                f"{_describe(spec['shape'], spec['dtype'])} in the checkpoint."
            )


def restore(directory: PathLike, target: PyTree, step: Optional[int] = None) -> PyTree:
    """Read checkpoint ``step`` from ``directory`` into the structure of ``target``.

    Args:
      directory: the checkpoint directory given to :func:`save`.
      target: a pytree with the structure, shapes and dtypes to restore, e.g. a
        freshly initialised ``(params, opt_state, method_state, key)``. Its leaves
        may be arrays, ``jax.ShapeDtypeStruct`` or scalars; their values are not
        read. The result has the target's pytree structure (NamedTuple types,
        ``nnx.State``), and each leaf the target leaf's type, shape, dtype and
        sharding.
      step: the step to read; ``None`` reads :func:`latest_step`.

    Returns:
      The restored pytree, bit-identical to the tree that was saved.

    Raises:
      ValueError: the checkpoint and the target differ in structure, or a leaf
        differs in shape or dtype (the message names the leaf path, the expected
        and the found shape and dtype). Nothing is ever broadcast or cast.
      FileNotFoundError: no such step (or no step at all) in ``directory``.
      ImportError: orbax-checkpoint is not installed.

    Example:
      >>> import tempfile
      >>> import jax.numpy as jnp
      >>> import mtopt, mtopt.checkpoint
      >>> with tempfile.TemporaryDirectory() as d:
      ...     _ = mtopt.checkpoint.save(d, 0, mtopt.uncertainty().init(3))
      ...     mtopt.checkpoint.restore(d, mtopt.uncertainty().init(3)).log_vars.shape
      ...     try:
      ...         mtopt.checkpoint.restore(d, mtopt.uncertainty().init(2))
      ...     except ValueError as e:
      ...         print("mismatch")
      (3,)
      mismatch
    """
    ocp = _orbax()
    directory = pathlib.Path(directory).expanduser().absolute()
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}.")
    step = _check_step(step)
    path = directory / str(step)
    if not path.is_dir():
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {directory}; saved steps: {_steps(directory)}."
        )
    where = f"step {step} in {directory}"
    names, leaves, treedef = _flatten(target)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        if not (path / _META_ITEM).is_dir():
            raise ValueError(f"{path} was not written by mtopt.checkpoint.save.")
        meta = checkpointer.restore(path, args=ocp.args.Composite(
            **{_META_ITEM: ocp.args.JsonRestore()}))[_META_ITEM]
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} was not written by mtopt.checkpoint.save.")
        specs = meta["leaves"]
        _check_against_target(specs, names, leaves, where)
        saved_counts = meta.get("task_counts", {})
        for name, count in _task_counts(target).items():
            if name in saved_counts and saved_counts[name] != count:
                raise ValueError(
                    f"checkpoint {where}: the method state at {name} was made for "
                    f"{saved_counts[name]} tasks, the target for {count} tasks."
                )
        stored = [
            i for i, s in enumerate(specs) if int(np.prod(s["shape"], dtype=np.int64)) > 0
        ]
        arrays = {}
        if stored:
            restore_args = {
                _array_key(i): ocp.RestoreArgs(restore_type=np.ndarray) for i in stored
            }
            arrays = checkpointer.restore(path, args=ocp.args.Composite(
                **{_STATE_ITEM: ocp.args.PyTreeRestore(restore_args=restore_args)}
            ))[_STATE_ITEM]
    out = []
    for i, (spec, leaf) in enumerate(zip(specs, leaves)):
        if _array_key(i) in arrays:
            value = np.asarray(arrays[_array_key(i)])
        elif spec["kind"] == "key":  # zero-size: nothing was written
            value = np.zeros(spec["data_shape"], dtype=_np_dtype(spec["data_dtype"]))
        else:
            value = np.zeros(spec["shape"], dtype=_np_dtype(spec["dtype"]))
        out.append(_from_host(value, leaf, spec))
    return jax.tree_util.tree_unflatten(treedef, out)


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(getattr(jax.numpy, name))
