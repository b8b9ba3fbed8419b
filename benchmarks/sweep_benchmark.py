"""Sweep benchmark: K preference vectors trained in one vmapped program vs one after another.

Model: a flax ``nnx`` multi-task MLP, trunk 16 -> W -> W (ReLU) and two linear regression
heads W -> 1, mean squared error per head on a fixed generated batch (targets
``sin(x a / 4)`` and ``cos(x (a + b) / 4)``: related but conflicting tasks); optimizer
``optax.adam(1e-3)``. K = 16 preference vectors ``uniform_preferences(16, margin=0.05)``,
S steps per training, for a loss-only preference method (smooth Tchebycheff, ``stch``) and a
Gramian one (``epo``). Three ways to run the same K trainings, timed interleaved in one run
(see ``_timing.py``):

- ``sweep``: ``mtopt.pareto.sweep`` -- all K trainings, every step, one compiled program
  (``jax.vmap`` over runs of a ``lax.scan`` over steps);
- ``sharded``: the same program with the preferences (so the K runs) sharded over the CPU
  devices (``--cpu-devices``, default 2: one per core; JAX's SPMD partitioner splits the
  runs between them); only when there are several devices;
- ``loop``: the K trainings one after another, each a Python loop of S calls of a jitted
  training step (``mtopt.value_and_grad`` + Adam, buffers donated), as a training loop runs;
- ``scan``: the K trainings one after another, each one jitted program of S steps
  (``sweep`` with a single preference).

The throughput ratio of a one-program variant (``sweep``, ``sharded``) against a baseline
(``loop``, ``scan``) is the baseline's time over its time (its runs per second over the
baseline's); the target of issue 4 is a ratio of at least 3. All variants give the same
final losses (checked, reported as ``max_loss_diff``).

Second part: ``mtopt.pareto.hypervolume`` of 10,000 random points in 2-D and 3-D, uniform in
the unit cube (few non-dominated) and on the unit sphere's positive part (all
non-dominated), timed after compilation.

Usage::

    python benchmarks/sweep_benchmark.py            # full run (~4 min on the 2-core VM)
    python benchmarks/sweep_benchmark.py --quick    # smoke test (~30 s)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import mtopt
from mtopt import pareto
from mtopt._src import base

import _timing

INPUT_DIM = 16
LEARNING_RATE = 1e-3
SEED = 0
TARGET = 3.0
VARIANTS = ("sweep", "sharded", "loop", "scan")
PROGRAMS = ("sweep", "sharded")
BASELINES = ("loop", "scan")
METHODS = ("stch", "epo")
# (label, batch, trunk width); the first is the configuration of the target.
CONFIGS = (("main", 64, 128), ("small", 32, 64), ("large_batch", 256, 128))
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Array = jax.Array
PyTree = Any


# --- the model and data -------------------------------------------------------------------


class TwoHeadMLP(nnx.Module):
    """Shared ReLU trunk 16 -> W -> W, two linear regression heads W -> 1."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.trunk1 = nnx.Linear(INPUT_DIM, width, rngs=rngs)
        self.trunk2 = nnx.Linear(width, width, rngs=rngs)
        self.head1 = nnx.Linear(width, 1, rngs=rngs)
        self.head2 = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        z = jax.nn.relu(self.trunk2(jax.nn.relu(self.trunk1(x))))
        return self.head1(z)[:, 0], self.head2(z)[:, 0]


def make_problem(batch: int, width: int) -> tuple[Callable[..., Array], PyTree, tuple, int]:
    """``(task_losses, params, data, num_params)`` for one configuration."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(batch, INPUT_DIM))
    a, b = rng.normal(size=INPUT_DIM), rng.normal(size=INPUT_DIM)
    data = tuple(jnp.asarray(v, jnp.float32)
                 for v in (x, np.sin(x @ a / 4.0), np.cos(x @ (a + b) / 4.0)))
    graphdef, params = nnx.split(TwoHeadMLP(width, nnx.Rngs(SEED)))

    def task_losses(params: PyTree, x: Array, y1: Array, y2: Array) -> Array:
        pred1, pred2 = nnx.merge(graphdef, params)(x)
        return jnp.stack([jnp.mean((pred1 - y1) ** 2), jnp.mean((pred2 - y2) ** 2)])

    num_params = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
    return task_losses, params, data, num_params


# --- the three ways of running K trainings ------------------------------------------------


def make_variants(method_name: str, batch: int, width: int, num_runs: int,
                  num_steps: int) -> tuple[dict[str, Callable[[], Array]], int]:
    """Zero-argument callables, each running all K trainings and returning final losses.

    ``sharded`` is left out with a single device or when K is not a multiple of the
    device count.
    """
    task_losses, params, data, num_params = make_problem(batch, width)
    method = mtopt.method(method_name)
    optimizer = optax.adam(LEARNING_RATE)
    prefs = pareto.uniform_preferences(num_runs, margin=0.05)

    def run_sweep(prefs: Array, params: PyTree) -> Array:
        return pareto.sweep(task_losses, method, params, optimizer=optimizer,
                            num_steps=num_steps, preferences=prefs, args=data).losses

    sweep_fn = jax.jit(run_sweep)
    single_fn = jax.jit(lambda pref, params: run_sweep(pref[None], params)[0])
    grad_fn = mtopt.value_and_grad(task_losses, method)

    def train_step(params, opt_state, method_state, pref):
        grads, info, method_state = grad_fn(params, method_state, *data, preference=pref)
        params, opt_state = base.optax_step(optimizer, grads, opt_state, params)
        return params, opt_state, method_state, info.losses

    step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
    final_losses = jax.jit(task_losses)

    def sweep() -> Array:
        return sweep_fn(prefs, params)

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("runs",))
    sharded_prefs = jax.device_put(prefs, NamedSharding(mesh, PartitionSpec("runs")))

    def sharded() -> Array:
        return sweep_fn(sharded_prefs, params)

    def loop() -> Array:
        out = []
        for k in range(num_runs):
            p = jax.tree.map(jnp.copy, params)  # the step donates its inputs
            carry = (p, optimizer.init(p), method.init(2, p))
            for _ in range(num_steps):
                carry = step_fn(*carry, prefs[k])[:3]
            out.append(jax.block_until_ready(final_losses(carry[0], *data)))
        return jnp.stack(out)

    def scan() -> Array:
        return jnp.stack([jax.block_until_ready(single_fn(prefs[k], params))
                          for k in range(num_runs)])

    fns = {"sweep": sweep, "sharded": sharded, "loop": loop, "scan": scan}
    if len(devices) == 1 or num_runs % len(devices):
        del fns["sharded"]
    return fns, num_params


def run_sweep_case(label: str, batch: int, width: int, method_name: str, *, num_runs: int,
                   num_steps: int, reps: int, warmup: int, progress=None) -> dict[str, Any]:
    fns, num_params = make_variants(method_name, batch, width, num_runs, num_steps)
    results = {name: np.asarray(jax.block_until_ready(fn())) for name, fn in fns.items()}
    max_diff = max(float(np.max(np.abs(results[name] - results["sweep"]))) for name in fns)
    timings = _timing.time_interleaved(fns, reps=reps, warmup=warmup, progress=progress)
    if progress is not None and "sharded" not in fns:  # keep the progress total right
        progress(1 + warmup + reps)
    record: dict[str, Any] = {
        "config": label, "batch": batch, "width": width, "num_params": num_params,
        "method": method_name, "num_runs": num_runs, "num_steps": num_steps,
        "devices": len(jax.devices()), "max_loss_diff": max_diff,
        "variants": {name: t.to_dict() for name, t in timings.items()},
        "ratios": {},
    }
    for program in PROGRAMS:
        if program not in timings:
            continue
        record["ratios"][program] = {}
        for base_name in BASELINES:
            ratio = timings[base_name].median_ms / timings[program].median_ms
            paired = _timing.paired_ratio(timings[base_name].samples_ms,
                                          timings[program].samples_ms)
            record["ratios"][program][base_name] = {
                "ratio": ratio, "paired_ratio": paired, "target": TARGET,
                "pass": ratio >= TARGET}
    return record


# --- hypervolume --------------------------------------------------------------------------


def hv_points(n: int, n_obj: int, kind: str) -> Array:
    rng = np.random.default_rng(SEED + n_obj)
    if kind == "uniform":
        points = rng.uniform(size=(n, n_obj))
    else:  # on the positive part of the unit sphere: every point non-dominated
        points = np.abs(rng.normal(size=(n, n_obj)))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    return jnp.asarray(points, jnp.float32)


def run_hypervolume(n: int, *, reps: int, warmup: int, progress=None) -> list[dict[str, Any]]:
    hv = jax.jit(pareto.hypervolume)
    cases, fns = {}, {}
    for n_obj in (2, 3):
        for kind in ("uniform", "front"):
            points = hv_points(n, n_obj, kind)
            ref = jnp.full((n_obj,), 1.1, jnp.float32)
            name = f"{n_obj}d_{kind}"
            cases[name] = (n_obj, kind, points, ref)
            fns[name] = (lambda p=points, r=ref: hv(p, r))
    timings = _timing.time_interleaved(fns, reps=reps, warmup=warmup, progress=progress)
    records = []
    for name, (n_obj, kind, points, ref) in cases.items():
        records.append({
            "n_obj": n_obj, "kind": kind, "n_points": n,
            "non_dominated": int(jnp.sum(pareto.non_dominated_mask(points))),
            "hypervolume": float(hv(points, ref)),
            "timing": timings[name].to_dict(),
        })
    return records


# --- output -------------------------------------------------------------------------------


def format_sweep_table(records: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'config':12} {'params':>7} {'batch':>5} {'method':6} "
             + " ".join(f"{name + ' ms':>10}" for name in VARIANTS) + f" {'loss diff':>9}"]
    for r in records:
        times = " ".join(
            f"{r['variants'][name]['median_ms']:>10.1f}" if name in r["variants"] else f"{'-':>10}"
            for name in VARIANTS)
        lines.append(f"{r['config']:12} {r['num_params']:>7,} {r['batch']:>5} {r['method']:6} "
                     f"{times} {r['max_loss_diff']:>9.1e}")
    lines.append("")
    lines.append(f"throughput ratio = baseline time / one-program time (paired), "
                 f"target >= {TARGET:g}x:")
    lines.append(f"{'config':12} {'method':6} {'program':8} "
                 + " ".join(f"{'vs ' + name:>20}" for name in BASELINES))
    for r in records:
        for program, against in r["ratios"].items():
            cells = " ".join(
                f"{q['ratio']:>6.2f}x ({q['paired_ratio']:.2f}) {'PASS' if q['pass'] else 'MISS'}"
                for q in (against[name] for name in BASELINES))
            lines.append(f"{r['config']:12} {r['method']:6} {program:8} {cells}")
    return "\n".join(lines)


def format_hv_table(records: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'n_obj':>5} {'points':12} {'n':>7} {'non-dom':>8} {'median ms':>10} "
             f"{'q25-q75 ms':>16} {'compile+run ms':>15}"]
    for r in records:
        t = r["timing"]
        lines.append(
            f"{r['n_obj']:>5} {r['kind']:12} {r['n_points']:>7,} {r['non_dominated']:>8,} "
            f"{t['median_ms']:>10.2f} {t['q25_ms']:>7.2f}-{t['q75_ms']:<8.2f} "
            f"{t['first_call_ms']:>15.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one small configuration, K = 4, few steps (smoke test)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default 300; quick: 10)")
    parser.add_argument("--runs", type=int, default=None,
                        help="K, preference vectors (default 16; quick: 4)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="registry names of preference methods (default: stch epo)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed rounds per variant (default 5; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds after compilation (default 1; quick: 0)")
    parser.add_argument("--hv-points", type=int, default=None,
                        help="points of the hypervolume timing (default 10000; quick: 500)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="CPU devices for the sharded variant (default 2; quick: 1); "
                             "only applies before JAX has started")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder for sweep_benchmark.json")
    args = parser.parse_args(argv)
    defaults = {"steps": (300, 10), "runs": (16, 4), "reps": (5, 2), "warmup": (1, 0),
                "hv_points": (10_000, 500), "cpu_devices": (2, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.steps, args.runs, args.reps, args.hv_points, args.cpu_devices) < 1 or (
            args.warmup < 0):
        parser.error("--steps, --runs, --reps, --hv-points, --cpu-devices must be >= 1, "
                     "--warmup >= 0")
    args.configs = [("quick", 16, 32)] if args.quick else list(CONFIGS)
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write JSON; return the JSON payload."""
    args = parse_args(argv)
    if args.cpu_devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        except RuntimeError:  # JAX already started (e.g. inside pytest): keep its devices
            print(f"JAX is already running; --cpu-devices {args.cpu_devices} ignored.")
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    machine = _timing.machine_info()
    print(f"sweep benchmark, {machine['date']}, {machine['platform']}, "
          f"{machine['cpu_count']} CPUs, jax {machine['jax']} ({machine['backend']}, "
          f"{len(jax.devices())} devices)")
    cases = [(c, m) for c in args.configs for m in args.methods]
    total = (len(cases) * _timing.calls_needed(len(VARIANTS), reps=args.reps,
                                               warmup=args.warmup)
             + _timing.calls_needed(4, reps=args.reps, warmup=args.warmup))
    bar = tqdm(total=total, unit="call", leave=False) if tqdm is not None else None
    progress = bar.update if bar is not None else None
    records = []
    try:
        for (label, batch, width), method_name in cases:
            if bar is not None:
                bar.set_description(f"{label} {method_name}")
            records.append(run_sweep_case(
                label, batch, width, method_name, num_runs=args.runs, num_steps=args.steps,
                reps=args.reps, warmup=args.warmup, progress=progress))
        if bar is not None:
            bar.set_description("hypervolume")
        hv_records = run_hypervolume(args.hv_points, reps=args.reps, warmup=args.warmup,
                                     progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"\nK = {args.runs} trainings of {args.steps} steps each (median of {args.reps} "
          "rounds; ratio = baseline time / sweep time):")
    print(format_sweep_table(records))
    print(f"\nhypervolume of {args.hv_points:,} random points, after compilation "
          f"(median of {args.reps}):")
    print(format_hv_table(hv_records))
    payload = {
        "benchmark": "sweep_benchmark",
        "machine": machine,
        "config": {
            "input_dim": INPUT_DIM, "optimizer": f"adam({LEARNING_RATE})", "seed": SEED,
            "configs": [{"config": c, "batch": b, "width": w} for c, b, w in args.configs],
            "methods": list(args.methods), "num_runs": args.runs, "num_steps": args.steps,
            "reps": args.reps, "warmup": args.warmup, "quick": args.quick, "target": TARGET,
            "hv_points": args.hv_points, "devices": len(jax.devices()),
        },
        "sweep": records,
        "hypervolume": hv_records,
    }
    path = _timing.write_json(os.path.join(args.out, "sweep_benchmark.json"), payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
