"""PNG plots of a benchmark task: training curves, task weights, task-gradient cosines.

matplotlib is imported lazily (``pip install 'mtopt[examples]'``). Figures are drawn on
:class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, without
``pyplot``: no window, no global backend switch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from mtopt.runner.train import RunResult

__all__ = ["plot_cosines", "plot_task", "plot_training_curves", "plot_weights"]

_HINT = (
    "The benchmark plots need matplotlib, an optional dependency: pip install 'mtopt[examples]' "
    "(or pip install matplotlib)."
)
# At most this many task pairs get their own cosine panel; beyond, one panel of the mean.
_MAX_PAIR_PANELS = 6


def _figure(num_panels: int) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(_HINT) from err
    cols = min(num_panels, 3)
    rows = math.ceil(num_panels / cols)
    fig = Figure(figsize=(max(4.2 * cols, 6.0), 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(num_panels)]
    return fig, axes


def _styles(count: int) -> list[tuple[Any, str]]:
    """Distinct (color, line style) pairs: 10 colours, then the same with new dashes."""
    dashes = ("-", "--", ":", "-.")
    return [(f"C{i % 10}", dashes[(i // 10) % len(dashes)]) for i in range(count)]


def _band(
    ax: Any, steps: np.ndarray, values: np.ndarray, label: str, color: Any, dashes: str = "-"
) -> None:
    """Mean over seeds (axis 0) as a line, min-max over seeds as a band."""
    ax.plot(steps, np.mean(values, axis=0), label=label, color=color, lw=1.5, ls=dashes)
    if values.shape[0] > 1:
        ax.fill_between(steps, np.min(values, axis=0), np.max(values, axis=0), color=color,
                        alpha=0.2, lw=0)


def _per_panel_plot(
    runs: Mapping[str, RunResult],
    panels: list[str],
    series: Callable[[RunResult, int], np.ndarray],
    ylabel: str,
    title: str,
    path: Path,
    *,
    log_y: bool = False,
    hline: Union[float, None] = None,
) -> Path:
    fig, axes = _figure(len(panels))
    styles = _styles(len(runs))
    for p, (ax, panel) in enumerate(zip(axes, panels)):
        positive = True
        for (color, dashes), (label, run) in zip(styles, runs.items()):
            values = series(run, p)
            positive &= bool(np.all(values > 0))
            _band(ax, run.eval_steps, values, label, color, dashes)
        if hline is not None:
            ax.axhline(hline, color="0.5", lw=0.8, ls=":")
        if log_y and positive:
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7,
               ncol=1 + (len(labels) - 1) // 18)
    fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_training_curves(runs: Mapping[str, RunResult], path: Union[str, Path]) -> Path:
    """Per task: training loss (chunk mean) vs step, one line per method, min-max band over seeds."""
    first = next(iter(runs.values()))
    return _per_panel_plot(
        runs, list(first.task_names), lambda r, t: r.train_loss[:, :, t], "training loss",
        f"{first.task}: training loss (mean over seeds, band = min-max)", Path(path), log_y=True,
    )


def plot_weights(runs: Mapping[str, RunResult], path: Union[str, Path]) -> Path:
    """Per task: the weight the method put on it (chunk mean) vs step, one line per method."""
    first = next(iter(runs.values()))
    return _per_panel_plot(
        runs, list(first.task_names), lambda r, t: r.weights[:, :, t], "task weight",
        f"{first.task}: task weights (mean over seeds, band = min-max)", Path(path),
        log_y=True,
    )


def plot_cosines(runs: Mapping[str, RunResult], path: Union[str, Path]) -> Path:
    """Pairwise cosines of the task gradients (validation batch) vs step, one line per method.

    One panel per task pair; with more than 6 pairs, one panel of the mean over pairs.
    """
    first = next(iter(runs.values()))
    names = first.task_names
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    title = f"{first.task}: task-gradient cosines on a validation batch"
    if not pairs:  # a single task: plot its (trivial) self-cosine
        pairs = [(0, 0)]
    if len(pairs) <= _MAX_PAIR_PANELS:
        panels = [f"cos({names[i]}, {names[j]})" for i, j in pairs]
        return _per_panel_plot(
            runs, panels, lambda r, p: r.cosines[:, :, pairs[p][0], pairs[p][1]], "cosine",
            title, Path(path), hline=0.0,
        )
    rows, cols = np.triu_indices(len(names), k=1)
    return _per_panel_plot(
        runs, [f"mean over {len(pairs)} task pairs"],
        lambda r, p: np.mean(r.cosines[:, :, rows, cols], axis=-1), "mean cosine", title,
        Path(path), hline=0.0,
    )


def plot_task(out_dir: Union[str, Path], runs: Mapping[str, RunResult]) -> list[Path]:
    """Write ``training_curves.png``, ``weights.png`` and ``cosines.png`` into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_training_curves(runs, out / "training_curves.png"),
        plot_weights(runs, out / "weights.png"),
        plot_cosines(runs, out / "cosines.png"),
    ]
