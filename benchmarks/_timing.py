"""Shared timing helpers for the mtopt benchmarks.

The benchmarks compare several jitted training steps measured in the same process.
On a shared, noisy machine absolute times drift from minute to minute, so the
callables are timed **interleaved**: one call of each per round, in an order
shuffled from round to round, and each variant's **median** over the rounds is
reported.
Ratios between variants measured this way are far steadier than the absolute
times.

Typical use::

    fns = {"sum": threaded(sum_step, (params, opt_state)), "mgda": ...}
    results = time_interleaved(fns, reps=20, warmup=3)
    results["mgda"].median_ms / results["sum"].median_ms

Every call is followed by ``jax.block_until_ready`` on its output, so the time
covers the computation and not only the asynchronous dispatch.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import jax


@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of one callable, in milliseconds.

    Attributes:
      median_ms: median of the timed calls (the number to report).
      min_ms: fastest timed call.
      q25_ms: first quartile of the timed calls.
      q75_ms: third quartile of the timed calls.
      mean_ms: mean of the timed calls.
      first_call_ms: the first call, which includes tracing and compilation.
      reps: number of timed calls.
      samples_ms: every timed call, in order.
    """

    median_ms: float
    min_ms: float
    q25_ms: float
    q75_ms: float
    mean_ms: float
    first_call_ms: float
    reps: int
    samples_ms: tuple[float, ...]

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``samples_ms`` optional)."""
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        if not with_samples:
            del out["samples_ms"]
        return out


def threaded(step: Callable[..., Any], carry: Sequence[Any], *consts: Any) -> Callable[[], Any]:
    """A zero-argument callable that runs ``step`` as a training loop would.

    Each call evaluates ``out = step(*carry, *consts)`` and keeps
    ``out[:len(carry)]`` as the carry of the next call (parameters, optimizer
    state, method state...), so every timed call is a genuine next step.

    Args:
      step: a (jitted) function whose first ``len(carry)`` outputs have the
        structure of its first ``len(carry)`` inputs.
      carry: the initial values threaded from call to call.
      *consts: arguments passed unchanged to every call (e.g. the batch).

    Returns:
      ``call() -> out``, the full output of the latest step.
    """
    box = {"carry": tuple(carry)}
    size = len(box["carry"])

    def call() -> Any:
        out = step(*box["carry"], *consts)
        box["carry"] = tuple(out[:size])
        return out

    return call


def _time_once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    reps: int,
    warmup: int = 2,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
) -> dict[str, Timing]:
    """Time several zero-argument callables round-robin and summarise each.

    Procedure: every callable is called once (tracing and compilation; timed as
    ``first_call_ms``), then ``warmup`` more rounds are run untimed, then
    ``reps`` timed rounds. Each round runs the callables in a fresh random
    order, so none systematically runs first, last, or right after the same
    neighbour. (A rotated order is not enough: it keeps every callable's
    predecessor fixed, and a cheap step that always follows a step which
    allocated and freed gigabytes pays for it in every round.)

    Args:
      fns: ``{name: call}``; each ``call()`` runs one step and returns its
        output (anything ``jax.block_until_ready`` accepts).
      reps: timed calls per callable (at least 1).
      warmup: untimed rounds after the compiling call.
      seed: seed of the per-round shuffles (the same seed gives the same orders).
      progress: called with the number of calls just made (for a progress bar).

    Returns:
      ``{name: Timing}`` in the order of ``fns``.
    """
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}.")
    names = list(fns)
    first = {}
    for name in names:
        first[name] = _time_once(fns[name])
        if progress is not None:
            progress(1)
    for _ in range(warmup):
        for name in names:
            jax.block_until_ready(fns[name]())
        if progress is not None:
            progress(len(names))
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            samples[name].append(_time_once(fns[name]))
        if progress is not None:
            progress(len(names))
    out = {}
    for name in names:
        values = samples[name]
        ordered = sorted(values)
        out[name] = Timing(
            median_ms=statistics.median(values),
            min_ms=ordered[0],
            q25_ms=_quantile(ordered, 0.25),
            q75_ms=_quantile(ordered, 0.75),
            mean_ms=statistics.fmean(values),
            first_call_ms=first[name],
            reps=len(values),
            samples_ms=tuple(values),
        )
    return out


def paired_ratio(samples_ms: Sequence[float], base_ms: Sequence[float]) -> float:
    """Median over rounds of ``samples_ms[r] / base_ms[r]`` (two callables of one run).

    Both calls of a round ran seconds apart, so this ratio cancels slow drifts
    of the machine's load that the ratio of the two medians does not.
    """
    if len(samples_ms) != len(base_ms) or not samples_ms:
        raise ValueError("paired_ratio needs two non-empty sample lists of the same length.")
    return statistics.median(a / b for a, b in zip(samples_ms, base_ms))


def calls_needed(num_fns: int, *, reps: int, warmup: int) -> int:
    """How many calls :func:`time_interleaved` makes (the progress-bar total)."""
    return num_fns * (1 + warmup + reps)


def machine_info() -> dict[str, Any]:
    """Where and when the benchmark ran: host, CPU count, load, library versions."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Write ``payload`` as indented JSON to ``path`` (creating its folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    return path
