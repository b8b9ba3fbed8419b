r"""Reports of a benchmark: results.json (everything), results.md (the table), plots."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from mtopt.runner.delta import delta_m, mean_std
from mtopt.runner.train import RunResult, _json_floats, _jsonable

__all__ = ["TaskResults", "markdown_table", "results_dict", "slug", "write_report"]

DELTA_NOTE = (
    "Δm (%) = 100/T · Σ_t (−1)^{h_t} (M_t − B_t) / B_t against the single-task baseline "
    "B (its mean over seeds), h_t = 1 when higher is better: **lower is better, negative = "
    "better than single-task** (Nash-MTL / FAMO sign; LibMTL's Δp has the opposite sign). "
    "Computed per seed; mean ± std (ddof=1) over seeds. Metrics: test set, final step."
)


@dataclasses.dataclass(frozen=True)
class TaskResults:
    """The results of one task of a benchmark.

    Attributes:
      label: the task as given on the command line, e.g. ``gradnorm:num_tasks=10``.
      baseline: single-task test metric per seed, ``{task_name: (S,)}``.
      runs: ``{method label: RunResult}`` in the order they ran.
    """

    label: str
    baseline: Mapping[str, np.ndarray]
    runs: Mapping[str, RunResult]


def slug(label: str) -> str:
    """A file-system friendly version of a label.

    Example:
      >>> from mtopt.runner.report import slug
      >>> slug("cagrad:c=0.4,rescale=1")
      'cagrad_c=0.4_rescale=1'
    """
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_") or "_"


def _summary(values: np.ndarray) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"per_seed": _json_floats(values), "mean": _finite(mean), "std": _finite(std)}


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def results_dict(
    tasks: Sequence[TaskResults], *, command: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Everything as JSON-ready data: settings, baselines, per-method metrics, Δm, histories."""
    import mtopt

    out: dict[str, Any] = {
        "command": command,
        "mtopt_version": mtopt.__version__,
        "settings": _jsonable(dict(settings)),
        "delta_m_convention": DELTA_NOTE,
        "tasks": {},
    }
    for entry in tasks:
        first = next(iter(entry.runs.values()))
        names = first.task_names
        hib = first.higher_is_better
        base_mean = np.asarray([np.mean(entry.baseline[n]) for n in names], np.float64)
        task_out: dict[str, Any] = {
            "name": first.task,
            "task_names": list(names),
            "metric_names": list(first.metric_names),
            "higher_is_better": list(hib),
            "single_task": {n: _summary(np.asarray(entry.baseline[n])) for n in names},
            "methods": {},
        }
        for label, run in entry.runs.items():
            try:
                deltas = np.asarray(delta_m(run.test_metrics, base_mean, hib), np.float64)
            except ValueError:  # a zero baseline metric
                deltas = np.full((len(run.seeds),), np.nan)
            task_out["methods"][label] = {
                "method": run.method,
                "options": _jsonable(run.method_options),
                "seeds": list(run.seeds),
                "metrics": {n: _summary(run.test_metrics[:, i]) for i, n in enumerate(names)},
                "delta_m": _summary(deltas.reshape(-1)),
                "seconds": run.seconds,
                "resumed_from": run.resumed_from,
                "history": run.history(),
            }
        out["tasks"][entry.label] = task_out
    return out


def _fmt(summary: Mapping[str, Any], digits: int = 4) -> str:
    mean, std = summary["mean"], summary["std"]
    if mean is None:
        return "nan"
    return f"{mean:.{digits}g} ± {std:.2g}" if std is not None else f"{mean:.{digits}g}"


def markdown_table(results: Mapping[str, Any]) -> str:
    """results.md from :func:`results_dict`'s output: one table per task."""
    lines = ["# mtopt-bench results", "", f"Command: `{results['command']}`", ""]
    s = results["settings"]
    lines.append(
        "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("tasks", "methods"))
    )
    lines += ["", DELTA_NOTE, ""]
    for label, task in results["tasks"].items():
        names, metrics, hib = task["task_names"], task["metric_names"], task["higher_is_better"]
        lines += [f"## {label}", ""]
        cols = [f"{n} {m} {'↑' if h else '↓'}" for n, m, h in zip(names, metrics, hib)]
        lines.append("| method | " + " | ".join(cols) + " | Δm % ↓ | time (s) |")
        lines.append("|---" * (len(cols) + 3) + "|")
        base = [_fmt(task["single_task"][n]) for n in names]
        lines.append("| single-task (baseline) | " + " | ".join(base) + " | 0 | – |")
        for mlabel, m in task["methods"].items():
            row = [_fmt(m["metrics"][n]) for n in names]
            lines.append(
                f"| {mlabel} | " + " | ".join(row) + f" | {_fmt(m['delta_m'], 3)} | "
                f"{m['seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(
    out_dir: Union[str, Path],
    tasks: Sequence[TaskResults],
    *,
    command: str,
    settings: Mapping[str, Any],
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and, per task, ``<task>/*.png`` under ``out_dir``.

    Args:
      out_dir: output directory (created).
      tasks: one :class:`TaskResults` per task.
      command: the command line that produced the results (written into both files).
      settings: the run settings.
      plots: also write the PNG plots (needs matplotlib).

    Returns:
      The results dictionary written to ``results.json``.

    Example:
      >>> import pathlib, tempfile
      >>> import mtopt.tasks
      >>> from mtopt import runner
      >>> from mtopt.runner.report import TaskResults
      >>> task = mtopt.tasks.get_task("gradnorm", num_tasks=2)
      >>> run = runner.train(task, "equal", seeds=[0], steps=2, eval_every=2, progress=False)
      >>> baseline = {name: run.test_metrics[:, i] for i, name in enumerate(task.task_names)}
      >>> with tempfile.TemporaryDirectory() as out:
      ...     _ = runner.write_report(out, [TaskResults("gradnorm", baseline, {"equal": run})],
      ...                             command="example", settings={}, plots=False)
      ...     sorted(p.name for p in pathlib.Path(out).iterdir())
      ['results.json', 'results.md']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = results_dict(tasks, command=command, settings=settings)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown_table(results))
    if plots:
        from mtopt.runner import plots as plots_lib

        for entry in tasks:
            plots_lib.plot_task(out / slug(entry.label), entry.runs)
    return results
