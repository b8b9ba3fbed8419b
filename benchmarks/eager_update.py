"""Cost of calling a method's ``update`` eagerly (no ``jax.jit``) at every step.

A hand-written loop that is not jitted calls ``method.update`` op by op. Before the
solver cores were jitted as a whole, every such call traced the solver's loops
(``lax.while_loop`` / ``fori_loop`` bodies are fresh closures at each call) and
compiled them again: an eager UPGrad step cost about 1.3 s, IMTL-G 0.7 s, Nash-MTL
0.5 s, PCGrad 0.2 s on a 2-core CPU, whatever the problem size. Now each core
(``nonneg_qp``'s dual-cone QP, ``min_norm``'s simplex QP, CAGrad's dual, the
alpha-fair Newton solve, EPO's simplex, PCGrad's projection, the refined
eigendecomposition) is one jitted function, compiled once per shape, dtype and
options.

For each method this times, interleaved in one process (``_timing.time_interleaved``):

- ``eager``: ``method.update(state, losses, gramian=G, ...)`` called as it is;
- ``jit``: the same call through ``jax.jit`` (the baseline: what a jitted loop pays).

and reports the first eager call (tracing and compilation), the median of the
repeated calls, and ``eager / jit``: the price of not jitting once everything is
compiled (dispatch of the un-jitted checks and small ops around the core).

Usage::

    python benchmarks/eager_update.py              # ~1 min on 2 cores
    python benchmarks/eager_update.py --tasks 8 --reps 20

Output: a table on stdout and ``results/eager_update.json`` next to this script.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

import mtopt
from _timing import machine_info, time_interleaved, write_json

METHODS = ("mgda", "upgrad", "dualproj", "cagrad", "imtl_g", "config", "nash_mtl",
           "fairgrad", "aligned_mtl", "pcgrad", "epo", "pmtl")


def make_call(name: str, num_tasks: int, dim: int):
    options = {"preferences": jnp.eye(num_tasks)} if name == "pmtl" else {}
    method = mtopt.method(name, **options)
    state = method.init(num_tasks)
    jac = jax.random.normal(jax.random.key(0), (num_tasks, dim))
    kwargs = dict(gramian=jac @ jac.T, jacobian={"w": jac}, key=jax.random.key(1))
    if mtopt.method_info(name).preference:
        kwargs["preference"] = jnp.full((num_tasks,), 1.0 / num_tasks)
    losses = jnp.linspace(0.5, 1.5, num_tasks)

    def update(state, losses, kwargs):
        return method.update(state, losses, **kwargs)

    jitted = jax.jit(update)
    return (lambda: update(state, losses, kwargs)), (lambda: jitted(state, losses, kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional (extra "bench")
        def tqdm(items, **_):
            return items

    rows = {}
    for name in tqdm(args.methods.split(","), desc="methods"):
        eager, jitted = make_call(name, args.tasks, args.dim)
        timings = time_interleaved({"eager": eager, "jit": jitted}, reps=args.reps, warmup=1)
        rows[name] = {
            "eager_first_call_ms": timings["eager"].first_call_ms,
            "eager_median_ms": timings["eager"].median_ms,
            "jit_median_ms": timings["jit"].median_ms,
            "eager_over_jit": timings["eager"].median_ms / timings["jit"].median_ms,
        }

    print(f"\nT = {args.tasks}, P = {args.dim}, {args.reps} timed rounds")
    print("| method | eager first call (ms) | eager median (ms) | jit median (ms) | eager / jit |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['eager_first_call_ms']:.0f} | {r['eager_median_ms']:.2f} | "
              f"{r['jit_median_ms']:.3f} | {r['eager_over_jit']:.1f} |")
    path = write_json(os.path.join(args.out, "eager_update.json"), {
        "machine": machine_info(),
        "config": {"tasks": args.tasks, "dim": args.dim, "reps": args.reps},
        "methods": rows,
    })
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
