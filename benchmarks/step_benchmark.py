"""Step benchmark: what a multi-task training step costs, method by method.

Model: a shared MLP trunk 512 -> 1024 -> 1024 -> 512 (ReLU after every layer)
and T linear heads 512 -> 1 (one (512, T) matrix), mean squared error per task
on a fixed random batch of 256 examples; optimizer ``optax.adam(1e-3)``. Each
variant is one jitted training step (gradient + Adam update + apply), the
parameters and optimizer state threaded from call to call:

- ``sum``: ``jax.grad`` of the summed task losses (the baseline);
- ``linear``: ``mtopt.value_and_grad`` with ``mtopt.linear([1.0] * T)``;
- ``dwa``: ``mtopt.value_and_grad`` with ``mtopt.dwa(steps_per_epoch=100)``, its state threaded;
- ``jacobian``: the bare per-task Jacobian MGDA needs
  (``mtopt.task_jacobian`` + ``mtopt.combine`` with weights given at run time);
- ``mgda``: ``mtopt.value_and_grad`` with ``mtopt.mgda()`` (full Jacobian,
  ``gramian="jacobian"``, Gramian over the trunk);
- ``mgda_structured``: the same with ``gramian="structured"`` (the Gramian from the
  layer inputs and output cotangents; what ``gramian="auto"`` picks for this trunk);
- ``mgda_ub``: ``mtopt.representation_value_and_grad`` with ``mtopt.mgda()`` on
  the trunk output.

All variants of one T are timed in the same run, round-robin (see
``_timing.py``); the table reports each variant's median step time and its
ratio to ``sum``, and checks the targets of issue 2: loss-only methods <= 1.1x
sum, MGDA-UB <= 1.5x sum, MGDA <= 1.2x the bare Jacobian step; and of issue 14:
the structured MGDA step at least 2.5x faster than the Jacobian one (<= 0.4x).

Usage::

    python benchmarks/step_benchmark.py            # T in {2, 4, 8, 16}
    python benchmarks/step_benchmark.py --quick    # T in {2, 4}, few reps
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

import mtopt

import _timing

WIDTHS = (512, 1024, 1024, 512)
BATCH = 256
LEARNING_RATE = 1e-3
SEED = 0
VARIANTS = ("sum", "linear", "dwa", "jacobian", "mgda", "mgda_structured", "mgda_ub")
# variant -> (reference variant, largest allowed ratio)
TARGETS = {
    "linear": ("sum", 1.1),
    "dwa": ("sum", 1.1),
    "mgda_ub": ("sum", 1.5),
    "mgda": ("jacobian", 1.2),
    "mgda_structured": ("mgda", 0.4),
}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Array = jax.Array
PyTree = Any


# --- the model ------------------------------------------------------------------------------


def init_params(key: Array, num_tasks: int, widths: Sequence[int] = WIDTHS) -> PyTree:
    """He-initialised trunk layers and one (widths[-1], T) head matrix."""
    keys = jax.random.split(key, len(widths))
    trunk = []
    for k, d_in, d_out in zip(keys[:-1], widths[:-1], widths[1:]):
        scale = jnp.float32(math.sqrt(2.0 / d_in))
        trunk.append({
            "w": jax.random.normal(k, (d_in, d_out), jnp.float32) * scale,
            "b": jnp.zeros((d_out,), jnp.float32),
        })
    scale = jnp.float32(math.sqrt(1.0 / widths[-1]))
    heads = {
        "w": jax.random.normal(keys[-1], (widths[-1], num_tasks), jnp.float32) * scale,
        "b": jnp.zeros((num_tasks,), jnp.float32),
    }
    return {"trunk": trunk, "heads": heads}


def encode(params: PyTree, x: Array, y: Array) -> Array:
    """The shared trunk: z = relu(... relu(x W1 + b1) ...), shape (batch, 512)."""
    del y
    h = x
    for layer in params["trunk"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    return h


def heads(params: PyTree, z: Array, x: Array, y: Array) -> Array:
    """The T task losses from the representation: per-task mean squared error, (T,)."""
    del x
    pred = z @ params["heads"]["w"] + params["heads"]["b"][None, :]
    return jnp.mean((pred - y) ** 2, axis=0)


def task_losses(params: PyTree, x: Array, y: Array) -> Array:
    """The T task losses, (T,)."""
    return heads(params, encode(params, x, y), x, y)


def is_trunk(path: Sequence[Any], leaf: Array) -> bool:
    """Shared-parameter selector for the Gramian: the trunk leaves."""
    del leaf
    return getattr(path[0], "key", None) == "trunk"


def num_params(params: PyTree) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


# --- the training steps ---------------------------------------------------------------------
# Every step has the signature (params, opt_state, extra, x, y) -> (params, opt_state, extra,
# scalar), where `extra` is the method state (or the run-time weights for "jacobian").


def make_steps(num_tasks: int, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """``{variant: (jitted_step, initial_extra)}`` for one number of tasks."""

    def apply(grads, params, opt_state):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def sum_step(params, opt_state, extra, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(task_losses(p, x, y)))(params)
        params, opt_state = apply(grads, params, opt_state)
        return params, opt_state, extra, loss

    def mtopt_step(grad_fn):
        def step(params, opt_state, method_state, x, y):
            grads, info, method_state = grad_fn(params, method_state, x, y)
            params, opt_state = apply(grads, params, opt_state)
            return params, opt_state, method_state, info.total

        return step

    jacobian_fn = mtopt.task_jacobian(task_losses)

    def jacobian_step(params, opt_state, weights, x, y):
        losses, jac, _ = jacobian_fn(params, x, y)
        grads = mtopt.combine(jac, weights)
        params, opt_state = apply(grads, params, opt_state)
        return params, opt_state, weights, jnp.sum(weights * losses)

    linear = mtopt.linear([1.0] * num_tasks)
    dwa = mtopt.dwa(steps_per_epoch=100)
    mgda = mtopt.mgda()
    steps = {
        "sum": (sum_step, jnp.zeros((), jnp.float32)),
        "linear": (mtopt_step(mtopt.value_and_grad(task_losses, linear)), linear.init(num_tasks)),
        "dwa": (mtopt_step(mtopt.value_and_grad(task_losses, dwa)), dwa.init(num_tasks)),
        "jacobian": (jacobian_step, jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)),
        "mgda": (
            mtopt_step(mtopt.value_and_grad(task_losses, mgda, shared=is_trunk,
                                            gramian="jacobian")),
            mgda.init(num_tasks),
        ),
        "mgda_structured": (
            mtopt_step(mtopt.value_and_grad(task_losses, mgda, shared=is_trunk,
                                            gramian="structured")),
            mgda.init(num_tasks),
        ),
        "mgda_ub": (
            mtopt_step(mtopt.representation_value_and_grad(encode, heads, mgda)),
            mgda.init(num_tasks),
        ),
    }
    # Donate parameters and optimizer state, as a training loop would.
    return {
        name: (jax.jit(fn, donate_argnums=(0, 1)), extra) for name, (fn, extra) in steps.items()
    }


# --- running and reporting ------------------------------------------------------------------


def run_one(num_tasks: int, *, reps: int, warmup: int, progress=None) -> dict[str, Any]:
    """Time every variant for one T; returns the JSON-ready record."""
    key_params, key_x, key_y = jax.random.split(jax.random.key(SEED), 3)
    params = init_params(key_params, num_tasks)
    x = jax.random.normal(key_x, (BATCH, WIDTHS[0]), jnp.float32)
    y = jax.random.normal(key_y, (BATCH, num_tasks), jnp.float32)
    optimizer = optax.adam(LEARNING_RATE)
    calls = {}
    for name, (step, extra) in make_steps(num_tasks, optimizer).items():
        own = jax.tree.map(jnp.copy, params)  # donated buffers: one copy per variant
        calls[name] = _timing.threaded(step, (own, optimizer.init(own), extra), x, y)
    timings = _timing.time_interleaved(calls, reps=reps, warmup=warmup, progress=progress)

    base = timings["sum"]
    variants = {}
    for name, t in timings.items():
        record = t.to_dict()
        record["ratio_to_sum"] = t.median_ms / base.median_ms
        record["paired_ratio_to_sum"] = _timing.paired_ratio(t.samples_ms, base.samples_ms)
        variants[name] = record
    checks = []
    for name, (ref, limit) in TARGETS.items():
        ratio = timings[name].median_ms / timings[ref].median_ms
        checks.append({
            "variant": name, "reference": ref, "ratio": ratio, "limit": limit,
            "pass": bool(ratio <= limit),
            "paired_ratio": _timing.paired_ratio(timings[name].samples_ms,
                                                 timings[ref].samples_ms),
        })
    return {
        "num_tasks": num_tasks,
        "num_params": num_params(params),
        "variants": variants,
        "mgda_over_jacobian": timings["mgda"].median_ms / timings["jacobian"].median_ms,
        "mgda_over_jacobian_paired": _timing.paired_ratio(timings["mgda"].samples_ms,
                                                          timings["jacobian"].samples_ms),
        "checks": checks,
    }


def format_table(record: dict[str, Any]) -> str:
    """The per-T table: median, quartiles, ratio to sum, target and PASS/MISS.

    ``x sum`` is the ratio of the medians (what the targets are checked on);
    ``paired`` the median of the per-round ratios, a second opinion on a noisy
    machine.
    """
    checks = {c["variant"]: c for c in record["checks"]}
    reps = record["variants"]["sum"]["reps"]
    lines = [
        f"T = {record['num_tasks']}  ({record['num_params']:,} parameters, batch {BATCH}, "
        f"median of {reps} steps)",
        f"  {'variant':<9} {'median ms':>10} {'q25-q75 ms':>17} {'x sum':>7} {'paired':>7}"
        "   target",
    ]
    for name, v in record["variants"].items():
        quart = f"{v['q25_ms']:.1f}-{v['q75_ms']:.1f}"
        line = (f"  {name:<9} {v['median_ms']:>10.1f} {quart:>17} {v['ratio_to_sum']:>7.2f}"
                f" {v['paired_ratio_to_sum']:>7.2f}")
        if name in checks:
            c = checks[name]
            verdict = "PASS" if c["pass"] else "MISS"
            line += (f"   {c['ratio']:.2f}x {c['reference']} <= {c['limit']:.2f}x  {verdict}"
                     f"  (paired {c['paired_ratio']:.2f})")
        lines.append(line)
    return "\n".join(lines)


def format_summary(records: Sequence[dict[str, Any]]) -> str:
    """One line per T: every ratio to sum, and mgda / jacobian."""
    names = [n for n in VARIANTS if n != "sum"]
    head = f"  {'T':>3} {'sum ms':>8} " + " ".join(f"{n:>9}" for n in names) + "  mgda/jac"
    lines = ["Ratios to the summed-loss step (same run):", head]
    for r in records:
        v = r["variants"]
        cells = " ".join(f"{v[n]['ratio_to_sum']:>9.2f}" for n in names)
        lines.append(
            f"  {r['num_tasks']:>3} {v['sum']['median_ms']:>8.1f} {cells}"
            f"  {r['mgda_over_jacobian']:>8.2f}"
        )
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: str) -> Optional[str]:
    """Ratio to ``sum`` vs T (left) and MGDA / Jacobian vs T (right), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'mtopt[bench]').")
        return None
    tasks = [r["num_tasks"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in VARIANTS[1:]:
        left.plot(tasks, [r["variants"][name]["ratio_to_sum"] for r in records], "o-", label=name)
    left.axhline(1.1, color="grey", ls=":", lw=1)
    left.axhline(1.5, color="grey", ls="--", lw=1)
    left.text(tasks[0], 1.1, " 1.1x (loss-only)", va="bottom", fontsize=8, color="grey")
    left.text(tasks[0], 1.5, " 1.5x (MGDA-UB)", va="bottom", fontsize=8, color="grey")
    left.set(xscale="log", yscale="log", xlabel="number of tasks T",
             ylabel="median step time / sum step", title="Step time relative to the summed loss")
    right.plot(tasks, [r["mgda_over_jacobian"] for r in records], "o-", color="C4", label="mgda")
    right.axhline(1.2, color="grey", ls="--", lw=1)
    right.set(xscale="log", xlabel="number of tasks T", ylabel="mgda step / bare Jacobian step",
              title="Cost of the weighting on top of the Jacobian")
    for ax in (left, right):
        ax.set_xticks(tasks)
        ax.set_xticklabels([str(t) for t in tasks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="T in {2, 4} and few repetitions (smoke test)")
    parser.add_argument("--tasks", type=int, nargs="+", default=None,
                        help="numbers of tasks T (default 2 4 8 16; quick: 2 4)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per variant (default 30; quick: 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds after compilation (default 2; quick: 1)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder for step_benchmark.json and .png")
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [2, 4] if args.quick else [2, 4, 8, 16]
    if args.reps is None:
        args.reps = 3 if args.quick else 30
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if any(t < 1 for t in args.tasks):
        parser.error(f"--tasks must be positive, got {args.tasks}")
    if args.reps < 1 or args.warmup < 0:
        parser.error("--reps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write JSON (and a PNG); return the JSON payload."""
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    machine = _timing.machine_info()
    print(f"step benchmark, {machine['date']}, {machine['platform']}, "
          f"{machine['cpu_count']} CPUs, jax {machine['jax']} ({machine['backend']})")
    total = len(args.tasks) * _timing.calls_needed(len(VARIANTS), reps=args.reps,
                                                   warmup=args.warmup)
    bar = tqdm(total=total, unit="step", leave=False) if tqdm is not None else None
    records = []
    try:
        for num_tasks in args.tasks:
            if bar is not None:
                bar.set_description(f"T={num_tasks}")
            record = run_one(num_tasks, reps=args.reps, warmup=args.warmup,
                             progress=bar.update if bar is not None else None)
            records.append(record)
            text = format_table(record)
            if bar is not None:
                bar.write(text + "\n")
            else:
                print(text + "\n", flush=True)
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(records))
    payload = {
        "benchmark": "step_benchmark",
        "machine": machine,
        "config": {
            "trunk_widths": list(WIDTHS), "batch": BATCH, "optimizer": f"adam({LEARNING_RATE})",
            "seed": SEED, "tasks": list(args.tasks), "reps": args.reps, "warmup": args.warmup,
            "quick": args.quick, "targets": {name: {"reference": ref, "limit": limit}
                                             for name, (ref, limit) in TARGETS.items()},
        },
        "results": records,
    }
    json_path = _timing.write_json(os.path.join(args.out, "step_benchmark.json"), payload)
    png_path = plot(records, os.path.join(args.out, "step_benchmark.png"))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
