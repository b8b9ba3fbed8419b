"""Scale benchmark: step time and peak memory of every mtopt path vs T and vs parameter count.

Model: a ReLU MLP trunk W -> W -> W -> W (three dense layers) and a linear (W, T)
head matrix, per-task mean squared error on a fixed random batch (default 128
rows; inputs of width W, targets N(0, 1)); the width W sets the parameter count
P ~ 3 W^2. It uses ``step_benchmark.py``'s ``encode`` / ``heads`` / ``task_losses``
(only the widths differ).

Paths, all timed in the same run per configuration, interleaved (``_timing.py``) in
two groups that each include ``sum``: the one-backward-pass paths (``sum``,
``linear``, ``dwa``, ``rep_*``; 3x the calls) and the T-pass paths (``light_*``,
``struct_*``, ``full_*``), whose large buffers slow down the step that runs after them; each
ratio is to the ``sum`` of its own group:

| path            | what is computed |
|-----------------|------------------|
| ``sum``         | ``jax.value_and_grad`` of the summed task losses (the baseline) |
| ``linear``      | ``mtopt.value_and_grad(..., mtopt.linear([1.0] * T))`` (loss-only) |
| ``dwa``         | ``mtopt.value_and_grad(..., mtopt.dwa(steps_per_epoch=100))`` (loss-only, state threaded) |
| ``rep_<m>``     | ``mtopt.representation_value_and_grad(encode, heads, <m>)`` |
| ``light_<m>``   | ``mtopt.value_and_grad(..., <m>, shared=<trunk>, low_memory=True)`` |
| ``struct_<m>``  | ``mtopt.value_and_grad(..., <m>, shared=<trunk>, gramian="structured")`` |
| ``full_<m>``    | ``mtopt.value_and_grad(..., <m>, shared=<trunk>)`` (T x P Jacobian) |

for ``<m>`` in ``mgda`` and ``upgrad`` (default options). The timed call is the
gradient computation, ``jit(f)(method_state, params, x, y) -> (method_state,
grads, weights)``, the method state threaded from call to call; the optimizer
update is the same for every path and left out, and nothing is donated, so every
path reads the same parameter buffers.

Peak memory, two ways:

- **compiled**: ``jax.jit(f).lower(*args).compile().memory_analysis()`` of that
  same function: ``argument_size_in_bytes + output_size_in_bytes +
  temp_size_in_bytes`` (``alias_size_in_bytes`` is 0: nothing is donated). The
  arguments are the parameters, the batch and the method state; the outputs the
  gradient (P floats), the state and the weights; ``temp`` is XLA's buffer
  assignment for everything else (activations, per-task gradients, the Jacobian,
  ...), after its liveness-based reuse. This is what the targets are checked on.
- **RSS** (cross-check, the P sweep): each (path, P) in a fresh subprocess; after
  compiling and placing the inputs, the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs`` = 5), the function is run once, and the increase
  ``VmHWM - VmRSS(before)`` is reported next to the compiled ``output + temp``
  (the memory a run adds on top of its resident arguments). The process's peak
  before the reset (JAX itself, compilation, the inputs) is also recorded.
  (``ru_maxrss`` is no use here: Linux carries the parent's peak across
  ``exec``.) Allocator arenas and thread stacks add ~10 MiB to small runs.

Configurations: T in {2, 4, 8, 16, 32, 64} at P ~ 1e6; P in {1e5, 1e6, 1e7, 1e8}
at T = 16. A full-Jacobian path whose Jacobian (T x P float32) exceeds
``--max-jacobian-gib`` (8) is not run, and no path runs whose compiled peak
exceeds ``--max-peak-gib`` (10): the table says so and still reports the compiled
peak.

Also:

- **Seeds in one program**: K in {1, 2, 4, 8, 16} training runs (different
  initialisations) of a training step (gradient + SGD update, parameters
  threaded) on P ~ 1e4 and 1e5, T = 4 models, for ``linear`` and ``upgrad`` (full
  Jacobian): ``jit(vmap(step))`` over the K runs vs K calls of ``jit(step)``; steps
  per second = K / time.
- **Targets**: loss-only methods (``linear``, ``dwa``) within 10% of ``sum`` at
  every T (PASS/FAIL per T); ``light_*`` compiled peak at T = 16, P = 1e7 at most
  1.5x ``sum``'s, ``struct_*``'s at most 1.3x.
- **TorchJD** side by side (``torchjd_benchmark.py``; skipped with a note when
  torch / torchjd are missing).

Output: ``results/scale_benchmark.json``, ``results/scale_benchmark.md`` (the
printed tables), and PNGs ``results/scale_*.png``.

Usage::

    python benchmarks/scale_benchmark.py            # everything (long: about an hour here)
    python benchmarks/scale_benchmark.py --quick    # small sizes, few reps (~2 min)
    python benchmarks/scale_benchmark.py --tasks 2 8 --params 1e5 1e6 --no-rss --skip-torchjd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

# Set before torch (imported lazily by the TorchJD part) starts its OpenMP threads: busy
# waiting threads make a PyTorch step on a loaded 2-core machine up to 10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mtopt  # noqa: E402

import _timing  # noqa: E402
import step_benchmark as sb  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GRAMIAN_METHODS = ("mgda", "upgrad")
PATHS = ("sum", "linear", "dwa") + tuple(
    f"{kind}_{m}" for kind in ("rep", "light", "struct", "full") for m in GRAMIAN_METHODS
)
LOSS_ONLY = ("linear", "dwa")
HEAVY_PREFIXES = ("light_", "struct_", "full_")
CHEAP_REPS_FACTOR = 3
LOSS_ONLY_LIMIT = 1.10
LIGHT_MEMORY_LIMIT = 1.5
STRUCT_MEMORY_LIMIT = 1.3
LIGHT_TARGET_CONFIG = (16, 10**7)  # (T, P) of the memory target
SEEDS_PARAMS = (10**4, 10**5)
SEEDS_TASKS = 4
SEEDS_LR = 1e-3
SEED = 0
GIB = 2.0**30

Array = jax.Array
PyTree = Any


# --- the model ------------------------------------------------------------------------------


def width_for(num_params: float) -> int:
    """Trunk width W with 3 W^2 (the trunk's weight count) closest to ``num_params``."""
    return max(8, int(round(math.sqrt(float(num_params) / 3.0))))


def init_params(key: Array, width: int, num_tasks: int) -> PyTree:
    """He-initialised trunk W -> W -> W -> W and a (W, T) head matrix (step_benchmark layout)."""
    keys = jax.random.split(key, 4)
    scale = jnp.float32(math.sqrt(2.0 / width))
    trunk = [{"w": jax.random.normal(k, (width, width), jnp.float32) * scale,
              "b": jnp.zeros((width,), jnp.float32)} for k in keys[:3]]
    heads = {"w": jax.random.normal(keys[3], (width, num_tasks), jnp.float32)
             * jnp.float32(math.sqrt(1.0 / width)),
             "b": jnp.zeros((num_tasks,), jnp.float32)}
    return {"trunk": trunk, "heads": heads}


def make_problem(num_tasks: int, num_params: float, batch: int, seed: int = SEED
                 ) -> tuple[PyTree, Array, Array]:
    key_p, key_x, key_y = jax.random.split(jax.random.key(seed), 3)
    width = width_for(num_params)
    params = init_params(key_p, width, num_tasks)
    x = jax.random.normal(key_x, (batch, width), jnp.float32)
    y = jax.random.normal(key_y, (batch, num_tasks), jnp.float32)
    return params, x, y


def low_memory_available() -> bool:
    import inspect

    return "low_memory" in inspect.signature(mtopt.value_and_grad).parameters


def gramian_method(name: str) -> mtopt.Weighting:
    return {"mgda": mtopt.mgda, "upgrad": mtopt.upgrad}[name]()


def path_function(path: str, num_tasks: int) -> tuple[Callable[..., Any], Any]:
    """``(f, initial_state)`` with ``f(state, params, x, y) -> (state, grads, weights)``."""
    if path == "sum":
        def f(state, params, x, y):
            loss, grads = jax.value_and_grad(
                lambda p: jnp.sum(sb.task_losses(p, x, y)))(params)
            return state, grads, loss

        return f, jnp.zeros((), jnp.float32)
    kind, _, name = path.partition("_")
    if path in LOSS_ONLY:
        method = (mtopt.linear([1.0] * num_tasks) if path == "linear"
                  else mtopt.dwa(steps_per_epoch=100))
        grad_fn = mtopt.value_and_grad(sb.task_losses, method)
    else:
        method = gramian_method(name)
        if kind == "rep":
            grad_fn = mtopt.representation_value_and_grad(sb.encode, sb.heads, method)
        elif kind == "light":
            grad_fn = mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk,
                                           low_memory=True)
        elif kind == "struct":
            grad_fn = mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk,
                                           gramian="structured")
        elif kind == "full":
            grad_fn = mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk,
                                           gramian="jacobian")
        else:
            raise ValueError(f"unknown path {path!r}; expected one of {PATHS}.")

    def g(state, params, x, y):
        grads, info, state = grad_fn(params, state, x, y)
        return state, grads, info.weights

    return g, method.init(num_tasks)


def compile_path(path: str, num_tasks: int, params: PyTree, x: Array, y: Array
                 ) -> tuple[Any, Any, dict[str, Any]]:
    """``(compiled, state, memory)``: the compiled function and its memory analysis."""
    f, state = path_function(path, num_tasks)
    start = time.perf_counter()
    compiled = jax.jit(f).lower(state, params, x, y).compile()
    compile_s = time.perf_counter() - start
    return compiled, state, memory_record(compiled, compile_s)


def memory_record(compiled: Any, compile_s: float) -> dict[str, Any]:
    stats = compiled.memory_analysis()
    arg = int(stats.argument_size_in_bytes)
    out = int(stats.output_size_in_bytes)
    tmp = int(stats.temp_size_in_bytes)
    alias = int(stats.alias_size_in_bytes)
    return {
        "argument_bytes": arg, "output_bytes": out, "temp_bytes": tmp, "alias_bytes": alias,
        "peak_bytes": arg + out + tmp - alias,
        "xla_peak_memory_in_bytes": int(getattr(stats, "peak_memory_in_bytes", -1)),
        "compile_s": compile_s,
    }


# --- one configuration ------------------------------------------------------------------------


def run_config(num_tasks: int, num_params: float, *, batch: int, reps: int, warmup: int,
               paths: Sequence[str], max_jacobian_gib: float, max_peak_gib: float,
               progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Compile every path, check the memory guards, time the runnable ones interleaved."""
    params, x, y = make_problem(num_tasks, num_params, batch)
    n_params = sb.num_params(params)
    n_shared = sum(int(leaf.size) for leaf in jax.tree.leaves(params["trunk"]))
    jacobian_gib = num_tasks * n_params * 4 / GIB
    records: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for path in paths:
        if path.startswith("light_") and not low_memory_available():
            records[path] = {"skipped": "value_and_grad has no low_memory option in this mtopt"}
            continue
        if path.startswith("full_") and jacobian_gib > max_jacobian_gib:
            records[path] = {"skipped": f"Jacobian {jacobian_gib:.1f} GiB > "
                                        f"{max_jacobian_gib:g} GiB"}
            continue
        compiled, state, memory = compile_path(path, num_tasks, params, x, y)
        records[path] = {"memory": memory}
        if memory["peak_bytes"] > max_peak_gib * GIB:
            records[path]["skipped"] = (f"compiled peak {memory['peak_bytes'] / GIB:.1f} GiB > "
                                        f"{max_peak_gib:g} GiB")
            continue
        calls[path] = _timing.threaded(compiled, (state,), params, x, y)
    # Two interleaved groups, each with its own `sum`: the cheap paths (one backward pass)
    # with CHEAP_REPS_FACTOR x more calls, and the T-pass paths, which write T x P buffers
    # and slow down whatever runs next (see _timing.py).
    groups = {"cheap": [p for p in calls if not p.startswith(HEAVY_PREFIXES)],
              "heavy": [p for p in calls if p.startswith(HEAVY_PREFIXES)]}
    timings: dict[str, Any] = {}
    base = None
    for group, members in groups.items():
        if not members or members == ["sum"]:
            continue
        if "sum" not in members:
            members = ["sum"] + members
        group_reps = reps * CHEAP_REPS_FACTOR if group == "cheap" else reps
        t = _timing.time_interleaved({p: calls[p] for p in members}, reps=group_reps,
                                     warmup=warmup, progress=progress)
        group_base = t["sum"]
        for path, timing in t.items():
            if path == "sum" and group == "heavy" and "sum" in timings:
                records["sum"]["timing_heavy_group"] = timing.to_dict()
                continue
            timings[path] = timing
            rec = records[path]
            rec["timing"] = timing.to_dict()
            rec["group"] = group
            rec["ratio_to_sum"] = timing.median_ms / group_base.median_ms
            rec["paired_ratio_to_sum"] = _timing.paired_ratio(timing.samples_ms,
                                                              group_base.samples_ms)
        base = base or group_base
    base_mem = records.get("sum", {}).get("memory")
    for rec in records.values():
        if base_mem is not None and "memory" in rec:
            rec["memory_ratio_to_sum"] = rec["memory"]["peak_bytes"] / base_mem["peak_bytes"]
    checks = []
    if base is not None:
        for path in LOSS_ONLY:
            if path in timings:
                ratio = records[path]["ratio_to_sum"]
                checks.append({"target": "loss_only_time", "path": path, "ratio": ratio,
                               "limit": LOSS_ONLY_LIMIT, "pass": bool(ratio <= LOSS_ONLY_LIMIT),
                               "paired_ratio": records[path]["paired_ratio_to_sum"]})
    if base_mem is not None and (num_tasks, int(num_params)) == LIGHT_TARGET_CONFIG:
        for path in paths:
            for prefix, target, limit in (("light_", "light_memory", LIGHT_MEMORY_LIMIT),
                                          ("struct_", "struct_memory", STRUCT_MEMORY_LIMIT)):
                if path.startswith(prefix) and "memory" in records[path]:
                    ratio = records[path]["memory_ratio_to_sum"]
                    checks.append({"target": target, "path": path, "ratio": ratio,
                                   "limit": limit, "pass": bool(ratio <= limit)})
    return {"num_tasks": num_tasks, "target_params": float(num_params), "num_params": n_params,
            "num_shared_params": n_shared, "width": width_for(num_params), "batch": batch,
            "jacobian_gib": jacobian_gib, "reps": reps, "paths": records, "checks": checks}


# --- RSS cross-check (one subprocess per path and size) --------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_probe(path: str, num_tasks: int, num_params: float, batch: int) -> dict[str, Any]:
    """Run in a fresh process: compile, reset the peak-RSS counter, run once, measure."""
    params, x, y = make_problem(num_tasks, num_params, batch)
    compiled, state, memory = compile_path(path, num_tasks, params, x, y)
    jax.block_until_ready((params, x, y, state))
    setup_peak = _status_kib("VmHWM")  # import, compilation, inputs
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    jax.block_until_ready(compiled(state, params, x, y))
    hwm = _status_kib("VmHWM")
    return {"path": path, "rss_before_bytes": before * 1024, "hwm_bytes": hwm * 1024,
            "run_increase_bytes": (hwm - before) * 1024,
            "setup_peak_bytes": setup_peak * 1024,
            "compiled_output_plus_temp_bytes": memory["output_bytes"] + memory["temp_bytes"],
            "compiled_peak_bytes": memory["peak_bytes"]}


def rss_available() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def run_rss(path: str, num_tasks: int, num_params: float, batch: int,
            timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-probe", path,
           "--probe-tasks", str(num_tasks), "--probe-params", repr(float(num_params)),
           "--batch", str(batch)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"path": path, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RSS_PROBE "):
            return json.loads(line[len("RSS_PROBE "):])
    return {"path": path, "error": (done.stderr or done.stdout)[-500:]}


# --- seeds in one program ---------------------------------------------------------------------


def run_seeds(ks: Sequence[int], *, batch: int, reps: int, warmup: int,
              methods: Sequence[str] = ("linear", "upgrad"),
              sizes: Sequence[float] = SEEDS_PARAMS,
              progress: Optional[Callable[[int], None]] = None) -> list[dict[str, Any]]:
    """K runs vmapped in one program vs K sequential calls, per model size, method and K."""
    num_tasks = SEEDS_TASKS
    out = []
    for size in sizes:
        width = width_for(size)
        _, x, y = make_problem(num_tasks, size, batch)
        for name in methods:
            method = (mtopt.linear([1.0] * num_tasks) if name == "linear"
                      else gramian_method(name))
            kwargs = {} if name == "linear" else {"shared": sb.is_trunk}
            grad_fn = mtopt.value_and_grad(sb.task_losses, method, **kwargs)

            def step(params, state, x, y, grad_fn=grad_fn):
                grads, info, state = grad_fn(params, state, x, y)
                params = jax.tree.map(lambda p, g: p - jnp.float32(SEEDS_LR) * g, params, grads)
                return params, state, info.total

            single = jax.jit(step, donate_argnums=(0,))
            batched = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None)), donate_argnums=(0,))
            for k in ks:
                keys = jax.random.split(jax.random.key(SEED + 1), k)
                runs = [init_params(key, width, num_tasks) for key in keys]
                stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *runs)
                states = jax.tree.map(lambda *s: jnp.stack(s), *[method.init(num_tasks)] * k)
                calls = {"vmapped": _timing.threaded(batched, (stacked, states), x, y)}
                seq_box = {"carry": [(p, method.init(num_tasks)) for p in runs]}

                def sequential(box=seq_box, single=single):
                    outs = [single(p, s, x, y) for p, s in box["carry"]]
                    box["carry"] = [(o[0], o[1]) for o in outs]
                    return [o[2] for o in outs]

                calls["sequential"] = sequential
                t = _timing.time_interleaved(calls, reps=reps, warmup=warmup,
                                             progress=progress)
                rec = {"method": name, "k": k, "num_params": sb.num_params(runs[0]),
                       "num_tasks": num_tasks, "target_params": float(size)}
                for label, timing in t.items():
                    rec[label] = timing.to_dict(with_samples=False)
                    rec[f"{label}_steps_per_s"] = k / (timing.median_ms / 1e3)
                rec["speedup"] = t["sequential"].median_ms / t["vmapped"].median_ms
                out.append(rec)
    return out


# --- reporting --------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 1024.0)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_config(rec: dict[str, Any]) -> str:
    """Markdown table of one configuration."""
    lines = [f"**T = {rec['num_tasks']}, P = {rec['num_params']:,}** (width {rec['width']}, "
             f"batch {rec['batch']}, full Jacobian {rec['jacobian_gib'] * 1024:.0f} MiB, "
             f"median of {rec['reps']} calls, {rec['reps'] * CHEAP_REPS_FACTOR} for the one-pass "
             "paths)", "",
             "| path | median ms | q25-q75 ms | x sum | paired | compiled peak | x sum | temp |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path, r in rec["paths"].items():
        mem = r.get("memory")
        mem_cells = (f"{_fmt_bytes(mem['peak_bytes'])} | {r['memory_ratio_to_sum']:.2f} | "
                     f"{_fmt_bytes(mem['temp_bytes'])}" if mem and "memory_ratio_to_sum" in r
                     else (f"{_fmt_bytes(mem['peak_bytes'])} | | {_fmt_bytes(mem['temp_bytes'])}"
                           if mem else " | | "))
        if "timing" in r:
            t = r["timing"]
            ratio = f"{r.get('ratio_to_sum', float('nan')):.2f}"
            paired = f"{r.get('paired_ratio_to_sum', float('nan')):.2f}"
            lines.append(f"| `{path}` | {t['median_ms']:.1f} | {t['q25_ms']:.1f}-{t['q75_ms']:.1f}"
                         f" | {ratio} | {paired} | {mem_cells} |")
        else:
            lines.append(f"| `{path}` | not run: {r['skipped']} | | | | {mem_cells} |")
    for c in rec["checks"]:
        verdict = "PASS" if c["pass"] else "FAIL"
        what = "time" if c["target"] == "loss_only_time" else "compiled peak"
        lines.append("")
        lines.append(f"- {what} `{c['path']}` / `sum` = {c['ratio']:.2f} (limit "
                     f"{c['limit']:.2f}): **{verdict}**")
    return "\n".join(lines)


def format_sweep(records: Sequence[dict[str, Any]], key: str, label: str) -> str:
    """One row per configuration: each path's time ratio and compiled-peak ratio to sum."""
    paths = [p for p in PATHS if p != "sum"]
    head = (f"| {label} | P | sum ms | sum peak | "
            + " | ".join(f"`{p}`" for p in paths) + " |")
    lines = [head, "|" + "---|" * (4 + len(paths))]
    for rec in records:
        sum_rec = rec["paths"].get("sum", {})
        sum_ms = sum_rec.get("timing", {}).get("median_ms", float("nan"))
        sum_peak = sum_rec.get("memory", {}).get("peak_bytes", float("nan"))
        cells = []
        for p in paths:
            r = rec["paths"].get(p)
            if r is None:
                cells.append("")
            elif "ratio_to_sum" in r:
                cells.append(f"{r['ratio_to_sum']:.2f}x / {r['memory_ratio_to_sum']:.2f}x")
            elif "memory_ratio_to_sum" in r:
                cells.append(f"skip / {r['memory_ratio_to_sum']:.2f}x")
            else:
                cells.append("skip")
        value = rec["num_tasks"] if key == "num_tasks" else f"{rec['target_params']:.0e}"
        lines.append(f"| {value} | {rec['num_params']:,} | {sum_ms:.1f} | "
                     f"{_fmt_bytes(sum_peak)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_loss_only(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| T | P | `linear` / `sum` | `dwa` / `sum` | verdict |", "|---:|---:|---:|---:|---|"]
    for rec in records:
        checks = {c["path"]: c for c in rec["checks"] if c["target"] == "loss_only_time"}
        if not checks:
            continue
        cells = [f"{checks[p]['ratio']:.2f} (paired {checks[p]['paired_ratio']:.2f})"
                 if p in checks else "" for p in LOSS_ONLY]
        verdict = "PASS" if all(c["pass"] for c in checks.values()) else "FAIL"
        lines.append(f"| {rec['num_tasks']} | {rec['num_params']:,} | "
                     + " | ".join(cells) + f" | **{verdict}** |")
    return "\n".join(lines)


def format_rss(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| T | P | path | compiled output+temp | RSS increase during the run | "
             "process peak before the run |", "|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['num_tasks']} | {r['num_params']:,} | `{r['path']}` | "
                         f"error: {r['error'].splitlines()[-1] if r['error'] else ''} | | |")
            continue
        lines.append(f"| {r['num_tasks']} | {r['num_params']:,} | `{r['path']}` | "
                     f"{_fmt_bytes(r['compiled_output_plus_temp_bytes'])} | "
                     f"{_fmt_bytes(r['run_increase_bytes'])} | {_fmt_bytes(r['setup_peak_bytes'])} |")
    return "\n".join(lines)


def format_seeds(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| P | method | K | vmapped ms | sequential ms | vmapped steps/s | sequential steps/s "
             "| speed-up |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['num_params']:,} | `{r['method']}` | {r['k']} | "
                     f"{r['vmapped']['median_ms']:.2f} | "
                     f"{r['sequential']['median_ms']:.2f} | {r['vmapped_steps_per_s']:.0f} | "
                     f"{r['sequential_steps_per_s']:.0f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def format_torchjd(record: dict[str, Any]) -> str:
    import torchjd_benchmark

    return "```\n" + torchjd_benchmark.format_report(record) + "\n```"


def plot(payload: dict[str, Any], out: str) -> list[str]:
    """PNG plots into ``out``: time and memory ratios vs T and vs P, seeds throughput."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'mtopt[bench]').")
        return []
    written = []
    for key, label, fname in (("tasks_sweep", "number of tasks T", "scale_vs_tasks.png"),
                              ("params_sweep", "parameters P", "scale_vs_params.png")):
        records = payload.get(key) or []
        if not records:
            continue
        xs = [r["num_tasks"] if key == "tasks_sweep" else r["num_params"] for r in records]
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
        for i, path in enumerate(p for p in PATHS if p != "sum"):
            style = "-" if path.endswith("mgda") or path in LOSS_ONLY else "--"
            for ax, field in ((left, "ratio_to_sum"), (right, "memory_ratio_to_sum")):
                pts = [(x, r["paths"][path][field]) for x, r in zip(xs, records)
                       if field in r["paths"].get(path, {})]
                if pts:
                    ax.plot(*zip(*pts), "o" + style, color=f"C{i}", label=path)
        left.axhline(LOSS_ONLY_LIMIT, color="grey", ls=":", lw=1)
        right.axhline(LIGHT_MEMORY_LIMIT, color="grey", ls=":", lw=1)
        left.set(xscale="log", yscale="log", xlabel=label, ylabel="median time / sum",
                 title="Gradient time relative to the summed loss")
        right.set(xscale="log", yscale="log", xlabel=label, ylabel="compiled peak / sum",
                  title="Compiled peak memory relative to the summed loss")
        for ax in (left, right):
            if key == "tasks_sweep":
                ax.set_xticks(xs)
                ax.set_xticklabels([str(x) for x in xs])
                ax.minorticks_off()
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = os.path.join(out, fname)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    rows = payload.get("seeds") or []
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        series = sorted({(r["method"], r["num_params"]) for r in rows})
        for i, (name, size) in enumerate(series):
            sel = [r for r in rows if (r["method"], r["num_params"]) == (name, size)]
            ks = [r["k"] for r in sel]
            ax.plot(ks, [r["vmapped_steps_per_s"] for r in sel], "o-", color=f"C{i}",
                    label=f"{name}, P={size:,} vmapped")
            ax.plot(ks, [r["sequential_steps_per_s"] for r in sel], "s--", color=f"C{i}",
                    label=f"{name}, P={size:,} sequential")
        ax.set(xscale="log", yscale="log", xlabel="runs K", ylabel="training steps / s",
               title="K seeds: one vmapped program vs K calls")
        all_ks = sorted({r["k"] for r in rows})
        ax.set_xticks(all_ks)
        ax.set_xticklabels([str(k) for k in all_ks])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, "scale_seeds.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# --- command line -----------------------------------------------------------------------------


def reps_for(num_params: float, quick: bool) -> tuple[int, int]:
    """(reps, warmup) by model size: fewer repetitions of the expensive configurations."""
    if quick:
        return 2, 0
    if num_params >= 5e7:
        return 2, 0
    if num_params >= 5e6:
        return 5, 1
    return 10, 1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repetitions (smoke test)")
    parser.add_argument("--tasks", type=int, nargs="*", default=None,
                        help="T values of the T sweep (default 2 4 8 16 32 64; quick: 2 8)")
    parser.add_argument("--tasks-params", type=float, default=None,
                        help="P of the T sweep (default 1e6; quick: 1e5)")
    parser.add_argument("--params", type=float, nargs="*", default=None,
                        help="P values of the P sweep (default 1e5 1e6 1e7 1e8; quick: 1e5 1e6)")
    parser.add_argument("--params-tasks", type=int, default=16, help="T of the P sweep (16)")
    parser.add_argument("--batch", type=int, default=128, help="batch rows (128)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS,
                        help="paths to run (sum is always included)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed calls per path (default by size: 10 / 5 / 2; quick: 2)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="K values of the seeds part (default 1 2 4 8 16; quick: 1 4)")
    parser.add_argument("--max-jacobian-gib", type=float, default=8.0)
    parser.add_argument("--max-peak-gib", type=float, default=10.0)
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--rss-timeout", type=float, default=1800.0)
    parser.add_argument("--skip-torchjd", action="store_true")
    parser.add_argument("--torchjd-reps", type=int, default=None,
                        help="timed steps in the TorchJD part (default 20; quick: 3)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    # internal: one RSS measurement in this (fresh) process
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-tasks", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-params", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [2, 8] if args.quick else [2, 4, 8, 16, 32, 64]
    if args.tasks_params is None:
        args.tasks_params = 1e5 if args.quick else 1e6
    if args.params is None:
        args.params = [1e5, 1e6] if args.quick else [1e5, 1e6, 1e7, 1e8]
    if args.seeds is None:
        args.seeds = [1, 4] if args.quick else [1, 2, 4, 8, 16]
    if args.torchjd_reps is None:
        args.torchjd_reps = 3 if args.quick else 20
    if "sum" not in args.paths:
        args.paths = ["sum"] + list(args.paths)
    args.paths = [p for p in PATHS if p in args.paths]
    if any(t < 1 for t in args.tasks) or args.params_tasks < 1 or args.batch < 1:
        parser.error("numbers of tasks and the batch must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run every part, print and write the tables, JSON and plots; return the JSON payload."""
    args = parse_args(argv)
    if args.rss_probe is not None:
        res = rss_probe(args.rss_probe, args.probe_tasks, args.probe_params, args.batch)
        print("RSS_PROBE " + json.dumps(res), flush=True)
        return res
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    machine = _timing.machine_info()
    header = (f"scale benchmark, {machine['date']}, {machine['platform']}, "
              f"{machine['cpu_count']} CPUs, jax {machine['jax']} ({machine['backend']}), "
              f"load {machine['load_average']}")
    print(header)
    if not low_memory_available():
        print("note: mtopt.value_and_grad has no low_memory option here: light_* paths skipped.")
    command = " ".join(["python benchmarks/scale_benchmark.py",
                        *(argv if argv is not None else sys.argv[1:])])
    sections: list[str] = [f"`{command}`", "", header]
    payload: dict[str, Any] = {"benchmark": "scale_benchmark", "machine": machine,
                               "config": {k: v for k, v in vars(args).items()
                                          if not k.startswith("probe")
                                          and k not in ("rss_probe", "out")}}
    payload["config"]["env"] = {k: os.environ.get(k) for k in
                                ("OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")}

    def emit(text: str) -> None:
        sections.append(text)
        if bar is not None:
            bar.write(text + "\n")
        else:
            print(text + "\n", flush=True)

    configs = ([("tasks_sweep", t, args.tasks_params) for t in args.tasks]
               + [("params_sweep", args.params_tasks, p) for p in args.params])
    def config_calls(num_params: float) -> int:
        reps, warmup = reps_for(num_params, args.quick)
        reps = args.reps or reps
        heavy = sum(p.startswith(HEAVY_PREFIXES) for p in args.paths)
        cheap = len(args.paths) - heavy
        return (_timing.calls_needed(cheap, reps=reps * CHEAP_REPS_FACTOR, warmup=warmup)
                + (_timing.calls_needed(heavy + 1, reps=reps, warmup=warmup) if heavy else 0))

    total = sum(config_calls(p) for _, _, p in configs)
    total += sum(_timing.calls_needed(2, reps=3 if args.quick else 10, warmup=1)
                 for _ in args.seeds) * 2 * len(SEEDS_PARAMS)
    if not args.skip_torchjd:
        import torchjd_benchmark

        total += _timing.calls_needed(torchjd_benchmark.num_variants(), reps=args.torchjd_reps,
                                      warmup=1 if args.quick else 2)
    bar = tqdm(total=total, unit="call", leave=False) if tqdm is not None else None
    start = time.perf_counter()
    try:
        for part, title, label in (("tasks_sweep", "Step time vs T", "T"),
                                   ("params_sweep", "Step time vs P", "P")):
            records = []
            emit(f"## {title}")
            for kind, num_tasks, num_params in configs:
                if kind != part:
                    continue
                reps, warmup = reps_for(num_params, args.quick)
                reps = args.reps or reps
                if bar is not None:
                    bar.set_description(f"T={num_tasks} P={num_params:.0e}")
                rec = run_config(num_tasks, num_params, batch=args.batch, reps=reps,
                                 warmup=warmup, paths=args.paths,
                                 max_jacobian_gib=args.max_jacobian_gib,
                                 max_peak_gib=args.max_peak_gib,
                                 progress=bar.update if bar is not None else None)
                records.append(rec)
                emit(format_config(rec))
            payload[part] = records
            if records:
                emit(f"Summary ({title}): time ratio / compiled-peak ratio to `sum`\n\n"
                     + format_sweep(records, "num_tasks" if label == "T" else "num_params",
                                    "T" if label == "T" else "target P"))
        emit("## Loss-only methods vs the summed loss (limit 1.10x)\n\n"
             + format_loss_only(payload["tasks_sweep"] + payload["params_sweep"]))
        memory_checks = [c for rec in payload["params_sweep"] + payload["tasks_sweep"]
                         for c in rec["checks"] if c["target"] in ("light_memory",
                                                                   "struct_memory")]
        if memory_checks:
            emit(f"## Memory targets (T = 16, P = 1e7: compiled peak <= "
                 f"{LIGHT_MEMORY_LIMIT}x sum for light_*, {STRUCT_MEMORY_LIMIT}x for "
                 "struct_*)\n\n"
                 + "\n".join(f"- `{c['path']}`: {c['ratio']:.2f}x sum: "
                             f"**{'PASS' if c['pass'] else 'MISS'}**" for c in memory_checks))

        if not args.no_rss and payload["params_sweep"]:
            if rss_available():
                rows = []
                for rec in payload["params_sweep"]:
                    for path, r in rec["paths"].items():
                        if "skipped" in r:
                            continue
                        if bar is not None:
                            bar.set_description(f"RSS {path} P={rec['target_params']:.0e}")
                        row = run_rss(path, rec["num_tasks"], rec["target_params"], args.batch,
                                      args.rss_timeout)
                        row.update(num_tasks=rec["num_tasks"], num_params=rec["num_params"])
                        rows.append(row)
                payload["rss"] = rows
                emit("## Peak RSS cross-check (fresh process per row)\n\n" + format_rss(rows))
            else:
                emit("RSS cross-check skipped: /proc/self/clear_refs is not writable here.")

        if args.seeds:
            seeds = run_seeds(args.seeds, batch=args.batch, reps=3 if args.quick else 10,
                              warmup=1, progress=bar.update if bar is not None else None)
            payload["seeds"] = seeds
            emit(f"## K seeds in one vmapped program vs K sequential calls (T = {SEEDS_TASKS}, "
                 "gradient + SGD step)\n\n"
                 + format_seeds(seeds))

        if not args.skip_torchjd:
            import torchjd_benchmark

            if bar is not None:
                bar.set_description("TorchJD")
            record = torchjd_benchmark.run(8, reps=args.torchjd_reps,
                                           warmup=1 if args.quick else 2,
                                           progress=bar.update if bar is not None else None)
            payload["torchjd"] = record
            if record is None:
                emit("TorchJD comparison skipped: torch / torchjd not importable.")
            else:
                emit("## TorchJD side by side (step_benchmark model, T = 8, adam steps)\n\n"
                     + format_torchjd(record))
                _timing.write_json(os.path.join(args.out, "torchjd_benchmark.json"), {
                    "benchmark": "torchjd_benchmark", "machine": machine,
                    "config": {"tasks": 8, "reps": args.torchjd_reps, "quick": args.quick,
                               "via": "scale_benchmark.py"},
                    "results": record})
    finally:
        if bar is not None:
            bar.close()
    payload["elapsed_s"] = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    json_path = _timing.write_json(os.path.join(args.out, "scale_benchmark.json"), payload)
    md_path = os.path.join(args.out, "scale_benchmark.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(sections) + "\n")
    pngs = plot(payload, args.out)
    print(f"wrote {json_path}, {md_path}" + "".join(f", {p}" for p in pngs)
          + f" ({payload['elapsed_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
