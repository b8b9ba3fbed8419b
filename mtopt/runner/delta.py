r"""The multi-task performance change :math:`\Delta_m` against single-task learning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

__all__ = ["delta_m", "mean_std"]


def delta_m(
    metrics: Union[Sequence[float], np.ndarray],
    baseline: Union[Sequence[float], np.ndarray],
    higher_is_better: Sequence[bool],
) -> Union[float, np.ndarray]:
    r"""Average relative change of the task metrics against a baseline, in percent.

    .. math::
        \Delta_m = \frac{100}{T} \sum_{t=1}^{T} (-1)^{h_t}\, \frac{M_t - B_t}{B_t},
        \qquad h_t = 1 \text{ if a higher metric is better for task } t, \text{ else } 0,

    with :math:`M_t` the method's metric and :math:`B_t` the single-task baseline's.

    Sign: **lower is better**; a negative :math:`\Delta_m` means the method beats
    single-task learning on average. This is the convention of Nash-MTL (Navon et
    al., ICML 2022, ``experiments/*/utils.py``) and FAMO (Liu et al., NeurIPS 2023).
    LibMTL's :math:`\Delta_p` (``count_improvement``) has the **opposite sign**
    (positive = improvement), as has Maninis et al. (CVPR 2019). With one metric per
    task, Nash-MTL's flat mean over metrics and LibMTL's per-task mean coincide.
    Each task counts equally, whatever its scale.

    Averaging over seeds (as in the runner's reports): :math:`B_t` is the baseline's
    mean over its seeds, :math:`\Delta_m` is computed per seed of the method, then
    reported as mean ± std over those seeds.

    Args:
      metrics: (..., T) the method's metrics; leading axes (e.g. seeds) are kept.
      baseline: (T,) the baseline's metrics (non-zero).
      higher_is_better: (T,) per task.

    Returns:
      A float for (T,) metrics, else an array of the leading shape.

    Raises:
      ValueError: mismatched lengths, or a zero baseline metric.

    Example:
      >>> from mtopt.runner import delta_m
      >>> # accuracy 0.9 vs 0.8 (better), error 0.5 vs 0.4 (worse)
      >>> round(delta_m([0.9, 0.5], [0.8, 0.4], higher_is_better=[True, False]), 6)
      6.25
      >>> round(delta_m([0.9, 0.3], [0.8, 0.4], higher_is_better=[True, False]), 6)  # both better
      -18.75
    """
    m = np.asarray(metrics, np.float64)
    b = np.asarray(baseline, np.float64)
    h = np.asarray(higher_is_better, bool)
    if b.ndim != 1 or h.shape != b.shape or m.ndim < 1 or m.shape[-1] != b.shape[0]:
        raise ValueError(
            "delta_m expects metrics of shape (..., T) and baseline and higher_is_better of "
            f"shape (T,); got {m.shape}, {b.shape} and {h.shape}."
        )
    if np.any(b == 0):
        raise ValueError(f"delta_m divides by the baseline metrics, which contain 0: {b.tolist()}.")
    sign = np.where(h, -1.0, 1.0)
    value = 100.0 * np.mean(sign * (m - b) / b, axis=-1)
    return float(value) if value.ndim == 0 else value


def mean_std(values: Union[Sequence[float], np.ndarray]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value) over seeds.

    Example:
      >>> from mtopt.runner import mean_std
      >>> mean_std([1.0, 3.0])
      (2.0, 1.4142135623730951)
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value.")
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std
