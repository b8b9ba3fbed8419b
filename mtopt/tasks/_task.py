"""The :class:`Task` record and the trunk-plus-heads model every task builds."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

TRUNK = "trunk"
HEADS = "heads"


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    r"""A multi-task benchmark: data splits, a model factory, losses and metrics.

    Every array in ``train``, ``val`` and ``test`` has the examples on its first
    axis: ``"x"`` holds the float32 inputs and each task name holds that task's
    targets (int32 class labels or float32 regression targets). The model built
    by ``make_model`` maps a batch of inputs to ``{task_name: output}``; its
    parameters are a shared trunk (the ``"trunk"`` attribute) and one head per
    task (``"heads"``). ``losses`` and ``metrics`` take the model and a batch
    (a dict with ``"x"`` and the targets) and return ``{task_name: scalar}``
    with keys in ``task_names`` order; both are pure ``jax.numpy`` code, so they
    run under ``jax.jit`` and ``jax.vmap``. ``losses`` and ``metrics`` only call
    ``model(batch["x"])``, so any callable returning the outputs works in place of
    the ``nnx`` module. (Dicts that come back out of ``jax.jit`` have their keys
    sorted: index them by name, or reorder with ``task_names``.)

    ``chance[i]`` is the metric a trivial predictor reaches on the test split
    (the majority test class for accuracies, the training-mean prediction for
    errors); ``higher_is_better[i]`` gives the metric's direction.

    Tasks compare by identity (``eq=False``), so a Task is hashable and can be
    a static argument.

    Attributes:
      name: the benchmark's registry name (``"multidigits"``, ``"gradnorm"``, ``"wine"``).
      task_names: one name per task, in sorted order: the order of ``losses`` and
        ``metrics`` and the task order of every mtopt step (which orders a loss
        dict by sorted name, as ``jax.jit`` does).
      metric_names: one metric name per task, e.g. ``"accuracy"``, ``"rmse"``.
      higher_is_better: per task, whether a larger metric is better.
      chance: per task, the metric of a trivial predictor on the test split.
      train: training split, ``{"x": (N, ...), task_name: (N, ...)}``.
      val: validation split, same keys.
      test: test split, same keys.
      make_model: ``make_model(nnx.Rngs(seed))`` builds a fresh model.
      losses: ``losses(model, batch)``: mean training loss per task.
      metrics: ``metrics(model, batch)``: the evaluation metric per task.
      is_shared: ``is_shared(path, leaf)``: True for trunk leaves of
        ``nnx.state(model, nnx.Param)``; pass as ``mtopt.value_and_grad(shared=...)``.

    Example:
      >>> from flax import nnx
      >>> import mtopt.tasks
      >>> task = mtopt.tasks.wine(seed=0)
      >>> task.task_names, task.metric_names
      (('alcohol', 'cultivar'), ('rmse', 'accuracy'))
      >>> model = task.make_model(nnx.Rngs(0))
      >>> sorted(task.losses(model, task.train))
      ['alcohol', 'cultivar']
    """

    name: str
    task_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    chance: tuple[float, ...]
    train: dict[str, Array]
    val: dict[str, Array]
    test: dict[str, Array]
    make_model: Callable[[nnx.Rngs], nnx.Module]
    losses: Callable[[Any, Mapping[str, Array]], dict[str, Array]]
    metrics: Callable[[Any, Mapping[str, Array]], dict[str, Array]]
    is_shared: Callable[[tuple, Any], bool]

    def __post_init__(self) -> None:
        names = tuple(self.task_names)
        if names != tuple(sorted(names)):
            raise ValueError(
                f"Task {self.name!r}: task_names must be in sorted order (the task order of "
                f"every mtopt step), got {names}; use {tuple(sorted(names))} and order the "
                "per-task fields the same way."
            )


class TrunkHeads(nnx.Module):
    """A shared trunk followed by one head per task: ``x -> {name: head(trunk(x))}``.

    Args:
      trunk: the shared module (its parameters live under ``"trunk"``).
      heads: ``{task_name: module}``; outputs come back in this order.
    """

    def __init__(self, trunk: nnx.Module, heads: Mapping[str, nnx.Module]):
        self.trunk = trunk
        self.heads = nnx.Dict(dict(heads))
        self.names = tuple(heads)

    def __call__(self, x: Array) -> dict[str, Array]:
        features = self.trunk(x)
        return {name: self.heads[name](features) for name in self.names}


def mlp(sizes: Sequence[int], rngs: nnx.Rngs) -> nnx.Sequential:
    """Flatten each example, then ``Linear -> ReLU`` for each consecutive pair of ``sizes``."""
    layers: list[Any] = [flatten]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nnx.Linear(fan_in, fan_out, rngs=rngs), nnx.relu]
    return nnx.Sequential(*layers)


def flatten(x: Array) -> Array:
    """``(N, ...) -> (N, prod(...))``."""
    return jnp.reshape(x, (x.shape[0], -1))


def _entry_name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def is_trunk(path: tuple, leaf: Any = None) -> bool:
    """True when a parameter path starts in the model's ``"trunk"`` (the shared leaves).

    ``path`` is a key path as given by ``jax.tree_util.tree_map_with_path`` on
    ``nnx.state(model, nnx.Param)`` (``DictKey`` / ``GetAttrKey`` entries) or a tuple
    of plain names as in ``nnx.State.flat_state()``.
    """
    del leaf
    return len(path) > 0 and _entry_name(path[0]) == TRUNK


def to_arrays(split: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """NumPy split -> dict of jax arrays (float to float32, integers to int32)."""
    out = {}
    for key, value in split.items():
        value = np.asarray(value)
        dtype = np.int32 if np.issubdtype(value.dtype, np.integer) else np.float32
        out[key] = jnp.asarray(value.astype(dtype))
    return out


def check_batch(batch: Mapping[str, Array], keys: Sequence[str], task: str) -> None:
    """Raise a ValueError naming the missing keys of a batch."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{task}: a batch must be a dict with keys {list(keys)}, "
                        f"got {type(batch).__name__}.")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{task}: batch is missing key(s) {missing}; expected keys "
                         f"{list(keys)}, got {list(batch)}.")


def check_seed(seed: Any, task: str) -> int:
    """A non-negative Python/NumPy integer (not a bool, not a jax array)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{task}: seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def check_count(value: Any, name: str, task: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (e.g. a split size or a number of tasks)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{task}: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def streams(seed: int, tag: str, count: int) -> list[np.random.Generator]:
    """``count`` independent NumPy generators for ``seed``, one per purpose.

    Independent streams keep, e.g., the test split unchanged when ``num_train``
    changes. ``tag`` separates the benchmarks' streams.
    """
    entropy = [seed, *tag.encode()]
    return [np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(count)]


def sklearn_datasets() -> Any:
    """``sklearn.datasets``, or an ImportError naming the extra that provides it."""
    try:
        from sklearn import datasets
    except ImportError as err:  # scikit-learn is an optional dependency
        raise ImportError(
            "This benchmark task loads a data set bundled with scikit-learn, which is not "
            'installed. Install it with: pip install "mtopt[examples]" (or pip install scikit-learn).'
        ) from err
    return datasets
