"""Benchmark tasks by name: :func:`get_task` and :func:`task_names`."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from mtopt.tasks._gradnorm import gradnorm_synthetic
from mtopt.tasks._multidigits import multidigits
from mtopt.tasks._task import Task
from mtopt.tasks._wine import wine

_FACTORIES: dict[str, Callable[..., Task]] = {
    "multidigits": multidigits,
    "gradnorm": gradnorm_synthetic,
    "wine": wine,
}


def task_names() -> tuple[str, ...]:
    """The names :func:`get_task` accepts.

    Example:
      >>> import mtopt.tasks
      >>> mtopt.tasks.task_names()
      ('multidigits', 'gradnorm', 'wine')
    """
    return tuple(_FACTORIES)


def _options(factory: Callable[..., Task]) -> dict[str, Any]:
    return {
        p.name: p.default for p in inspect.signature(factory).parameters.values()
    }


def get_task(name: str, **options: Any) -> Task:
    """Build a benchmark task by name, its options as keyword arguments.

    ``"multidigits"`` is :func:`mtopt.tasks.multidigits`, ``"gradnorm"``
    :func:`mtopt.tasks.gradnorm_synthetic` and ``"wine"`` :func:`mtopt.tasks.wine`;
    the options are those functions' arguments.

    Args:
      name: one of :func:`task_names`.
      **options: the factory's keyword arguments, e.g. ``seed=1`` or ``num_tasks=10``.

    Returns:
      The :class:`mtopt.tasks.Task`.

    Raises:
      ValueError: for an unknown name or option, listing the valid ones.

    Example:
      >>> import mtopt.tasks
      >>> task = mtopt.tasks.get_task("gradnorm", num_tasks=3, num_train=32)
      >>> task.task_names
      ('task_0', 'task_1', 'task_2')
    """
    if not isinstance(name, str) or name not in _FACTORIES:
        raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(_FACTORIES)}.")
    factory = _FACTORIES[name]
    valid = _options(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items())
        raise ValueError(f"Task {name!r} has no option(s) {unknown}. Valid options: {listed}.")
    return factory(**options)
