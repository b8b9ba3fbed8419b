"""Benchmark runner: train registry methods on mtopt.tasks, compare them, write reports.

``mtopt-bench`` (or ``python -m mtopt.runner``) is its command line; the same pieces
are functions: :func:`train` (every seed of one method in one compiled program),
:func:`single_task_baseline`, :func:`delta_m`, :func:`write_report`.
"""

from mtopt.runner.delta import delta_m, mean_std
from mtopt.runner.report import write_report
from mtopt.runner.train import RunResult, effective_options, single_task_baseline, train

__all__ = (
    "RunResult", "delta_m", "effective_options", "mean_std", "single_task_baseline", "train",
    "write_report",
)
