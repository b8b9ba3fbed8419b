"""Reproduce the two-objective toy figure of the CAGrad, Nash-MTL and FAMO papers.

Seven methods (linear scalarisation, MGDA, PCGrad, CAGrad, Nash-MTL, UPGrad, FAMO) each
run Adam (lr 1e-3) from the five standard start points of ``mtopt.problems.toy``
(Nash-MTL / FAMO protocol: ``f_1`` scaled by 0.1, 35,000 steps). Every method and every
start is advanced inside **one** jitted program: per method a ``lax.scan`` over the steps
whose body is ``vmap``-ed over the five starts. The steps run in equal chunks of that
same compiled program, so a tqdm bar can show progress.

Settings per method (the Nash-MTL repository's CLI defaults unless said otherwise):

- ``LS``: ``mtopt.equal()``, the plain sum of the two losses (nash-mtl's ``ls``);
- ``MGDA``: ``mtopt.mgda()`` (no normalisation);
- ``PCGrad``: ``mtopt.pcgrad()`` (sum reduction, random projection order from the key);
- ``CAGrad``: ``mtopt.cagrad(c=0.4, max_iter=100)`` (nash-mtl's ``--c 0.4``; the
  CAGrad script uses 0.5; the solver bound is explained at ``CAGRAD_MAX_ITER``);
- ``Nash-MTL``: ``mtopt.nash_mtl()`` (``max_norm=1``, 20 solver iterations);
- ``UPGrad``: ``mtopt.upgrad()``;
- ``FAMO``: ``mtopt.famo(w_lr=0.025, gamma=0, min_losses=(-21 * scale, -21),
  lagged=True)``, the official toy trainer (logit step from the current losses before
  each parameter step, no second forward pass).

Outputs (in ``--out``): ``toy_trajectories.png`` (one panel per method over the contour
of ``f_1 + f_2``, with the Pareto-set segment), ``toy_trajectories.md`` and ``.json``:
the final ``x`` and ``f`` of every run, its distance to the front in objective space
(to the image of the segment ``x_1 in [-7, 7], x_2 = -8.3552``), ``|x_2 + 8.3552|`` and
whether ``x_1`` lies in ``[-7, 7]``, plus the two anchors of the reference re-run: linear
scalarisation stays stuck from (9, 9); MGDA reaches the front from all five starts.

Run: ``python examples/toy_trajectories.py [--steps 35000] [--out examples/out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtopt
from mtopt import problems

SCALE = 0.1
LR = 1e-3
FRONT_X2 = -8.3552
# A run "reached the front" when its objectives are this close (Euclidean, objective
# space) to the image of the Pareto-set segment. The LS run stuck at (5, 4) is ~20 away;
# points on the true set off the segment (x2 = -8.434 at x1 = +-7) are ~1e-4 away.
REACHED_TOL = 0.05
# Iteration bound of CAGrad's inner solver (default 1000). On the front the two gradients
# are exactly opposite (cosine -1) and the solver uses every iteration it is allowed; at
# 100 the final points of all five runs are the same as at 1000 (to the 3 decimals of the
# table) and the whole run is about twice as fast. UPGrad keeps its default: there the
# drift along the front comes from directions of size ~1e-6 that Adam normalises, so its
# end points along the segment depend on solver round-off (not on whether it gets there).
CAGRAD_MAX_ITER = 100


# Final x of an independent torch float32 re-run of the nash-mtl protocol (reference notes
# on the toy problem), per start point in ``problems.toy().start_points`` order.
REFERENCE_X = {
    "LS": ((-5.714, -5.451), (-5.727, -8.409), (4.995, 3.977), (-5.727, -8.409),
           (-5.727, -8.409)),
    "MGDA": ((-2.026, -8.362), (6.119, -8.417), (6.979, -8.434), (-4.187, -8.385),
             (6.995, -8.434)),
}


def make_methods(scale: float) -> dict[str, mtopt.Weighting]:
    """The seven methods of the figure, by display name."""
    return {
        "LS": mtopt.equal(),
        "MGDA": mtopt.mgda(),
        "PCGrad": mtopt.pcgrad(),
        "CAGrad (c=0.4)": mtopt.cagrad(c=0.4, max_iter=CAGRAD_MAX_ITER),
        "Nash-MTL": mtopt.nash_mtl(),
        "UPGrad": mtopt.upgrad(),
        "FAMO": mtopt.famo(w_lr=0.025, gamma=0.0, min_losses=(-21.0 * scale, -21.0),
                           lagged=True),
    }


class Carry(NamedTuple):
    """Per-method loop state, batched over the start points."""

    x: jax.Array  # (K, 2)
    method_state: Any
    opt_state: Any


def _init_carry(method: mtopt.Weighting, tx: optax.GradientTransformation,
                starts: jax.Array) -> Carry:
    k = starts.shape[0]
    method_state = jax.vmap(lambda _: method.init(2))(jnp.arange(k))
    return Carry(starts, method_state, jax.vmap(tx.init)(starts))


def make_advance(problem: problems.Problem, methods: dict[str, mtopt.Weighting],
                 tx: optax.GradientTransformation, chunk: int, total_steps: int) -> Callable:
    """One jitted function advancing every method and start by ``chunk`` Adam steps.

    Steps numbered ``>= total_steps`` leave the carry unchanged, so every chunk has the
    same length and the program compiles once. Returns the new carries and the
    trajectories ``(chunk, K, 2)`` of every method.
    """
    grad_fns = {name: mtopt.value_and_grad(problem.f, m) for name, m in methods.items()}

    def advance_one(name: str, carry: Carry, first_step: jax.Array, key: jax.Array):
        grad_fn = grad_fns[name]

        def one_start(x, method_state, opt_state, k):
            grads, _, method_state = grad_fn(x, method_state, key=k)
            updates, opt_state = tx.update(grads, opt_state, x)
            return optax.apply_updates(x, updates), method_state, opt_state

        def body(carry: Carry, t: jax.Array):
            step = first_step + t
            keys = jax.random.split(jax.random.fold_in(key, step), carry.x.shape[0])
            new = Carry(*jax.vmap(one_start)(carry.x, carry.method_state, carry.opt_state,
                                              keys))
            active = step < total_steps
            new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, carry)
            return new, new.x

        return jax.lax.scan(body, carry, jnp.arange(chunk))

    @jax.jit
    def advance(carries: dict[str, Carry], first_step: jax.Array, key: jax.Array):
        out_carries, paths = {}, {}
        for i, name in enumerate(methods):
            out_carries[name], paths[name] = advance_one(
                name, carries[name], first_step, jax.random.fold_in(key, i))
        return out_carries, paths

    return advance


def run(steps: int, *, scale: float = SCALE, seed: int = 0, chunks: int = 20,
        max_points: int = 600, progress: bool = True) -> dict[str, Any]:
    """Run every method from every start; returns final points and subsampled paths."""
    problem = problems.toy(scale=scale)
    methods = make_methods(scale)
    starts = problem.start_points
    tx = optax.adam(LR)
    chunks = max(1, min(chunks, steps))
    chunk = -(-steps // chunks)
    advance = make_advance(problem, methods, tx, chunk, steps)
    carries = {name: _init_carry(m, tx, starts) for name, m in methods.items()}
    key = jax.random.key(seed)
    keep_every = max(1, steps // max_points)
    paths = {name: [np.asarray(starts)[None]] for name in methods}
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are an optional extra
        tqdm = None
    bar = tqdm(total=steps, desc=f"{len(methods)} methods x {starts.shape[0]} starts",
               unit="step", disable=not progress) if tqdm else None
    start_time = time.perf_counter()
    compile_seconds = None
    for c in range(chunks):
        carries, chunk_paths = advance(carries, jnp.asarray(c * chunk, jnp.int32), key)
        chunk_paths = jax.device_get(chunk_paths)
        if compile_seconds is None:
            compile_seconds = time.perf_counter() - start_time
        first = c * chunk
        n_valid = max(0, min(chunk, steps - first))
        # keep global steps s (1-based) with s % keep_every == 0, plus the last one
        local = np.arange(n_valid)
        keep = local[((first + local + 1) % keep_every == 0) | (first + local + 1 == steps)]
        for name in methods:
            paths[name].append(chunk_paths[name][keep])
        if bar is not None:
            bar.update(n_valid)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start_time
    trajectories = {
        name: np.concatenate(p, axis=0).transpose(1, 0, 2) for name, p in paths.items()
    }  # (K, S, 2)
    finals = {name: np.asarray(carries[name].x) for name in methods}
    return {
        "problem": problem,
        "starts": np.asarray(starts),
        "finals": finals,
        "trajectories": trajectories,
        "seconds": seconds,
        "first_chunk_seconds": compile_seconds,
    }


def front_distance(problem: problems.Problem, xs: np.ndarray, n_front: int = 4001):
    """Objectives at ``xs`` and their Euclidean distance to the front segment's image."""
    f = np.asarray(jax.vmap(problem.f)(jnp.asarray(xs, jnp.float32)), dtype=np.float64)
    front = np.asarray(problem.pareto_front(n_front), dtype=np.float64)
    dist = np.min(np.linalg.norm(f[:, None, :] - front[None, :, :], axis=-1), axis=1)
    return f, dist


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per-run rows and the anchor checks."""
    problem, starts = result["problem"], result["starts"]
    rows = []
    reached = {}
    for name, xs in result["finals"].items():
        f, dist = front_distance(problem, xs)
        reached[name] = []
        for k in range(xs.shape[0]):
            ok = bool(dist[k] < REACHED_TOL)
            reached[name].append(ok)
            ref = REFERENCE_X.get(name)
            rows.append({
                "method": name,
                "reference_x": None if ref is None else list(ref[k]),
                "distance_to_reference_x": None if ref is None else float(
                    np.linalg.norm(xs[k] - np.asarray(ref[k]))),
                "start": [float(v) for v in starts[k]],
                "x": [float(v) for v in xs[k]],
                "f": [float(v) for v in f[k]],
                "front_distance": float(dist[k]),
                "x2_gap": float(abs(xs[k, 1] - FRONT_X2)),
                "x1_in_segment": bool(-7.0 <= xs[k, 0] <= 7.0),
                "reached_front": ok,
            })
    stuck_start = int(np.flatnonzero(np.all(starts == np.array([9.0, 9.0]), axis=1))[0])
    ls_row = next(r for r in rows if r["method"] == "LS" and r["start"] == [9.0, 9.0])
    anchors = {
        "ls_stuck_from_9_9": {
            "holds": not reached["LS"][stuck_start],
            "x": ls_row["x"], "f": ls_row["f"],
            "reference": "x = (4.995, 3.977), f = (0.733, 0.277) after 35k steps; f_2 sits "
                         "in the log valley of h_2 there and moves by ~0.1 per 0.001 of x",
        },
        "mgda_reaches_front_from_all_starts": {
            "holds": all(reached["MGDA"]),
            "reached": reached["MGDA"],
        },
    }
    summary = {name: int(sum(v)) for name, v in reached.items()}
    return {"rows": rows, "anchors": anchors, "reached_count": summary}


def markdown_table(summary: dict[str, Any], steps: int, seconds: float,
                   first_chunk_seconds: float) -> str:
    lines = [
        f"Toy problem (f1 scale {SCALE}), Adam lr {LR}, {steps} steps; all 7 methods x 5 "
        f"starts in one jitted program: {seconds:.1f} s (of which {first_chunk_seconds:.1f} s "
        "for the first chunk, including compilation).",
        "",
        "| method | start | final x | final f | dist. to front (obj.) | abs(x2 + 8.3552) | "
        "x1 in [-7, 7] | reached |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['method']} | ({r['start'][0]:g}, {r['start'][1]:g}) | "
            f"({r['x'][0]:.3f}, {r['x'][1]:.3f}) | ({r['f'][0]:.3f}, {r['f'][1]:.3f}) | "
            f"{r['front_distance']:.4f} | {r['x2_gap']:.3f} | "
            f"{'yes' if r['x1_in_segment'] else 'no'} | {'yes' if r['reached_front'] else 'no'} |"
        )
    lines += ["", "Against the reference re-run (torch float32, nash-mtl protocol):", "",
              "| method | start | final x | reference x | distance |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["reference_x"] is not None:
            lines.append(
                f"| {r['method']} | ({r['start'][0]:g}, {r['start'][1]:g}) | "
                f"({r['x'][0]:.3f}, {r['x'][1]:.3f}) | "
                f"({r['reference_x'][0]:.3f}, {r['reference_x'][1]:.3f}) | "
                f"{r['distance_to_reference_x']:.3f} |"
            )
    lines += ["", "| method | runs that reached the front (of 5) |", "|---|---|"]
    lines += [f"| {n} | {c} |" for n, c in summary["reached_count"].items()]
    stuck = summary["anchors"]["ls_stuck_from_9_9"]
    mgda = summary["anchors"]["mgda_reaches_front_from_all_starts"]
    verdict = {True: "holds", False: "FAILS"}
    lines += [
        "",
        "Anchors (re-run of the nash-mtl protocol, reference notes section 2.4):",
        f"- LS stays stuck from (9, 9): **{verdict[stuck['holds']]}** "
        f"(x = ({stuck['x'][0]:.3f}, {stuck['x'][1]:.3f}); reference {stuck['reference']})",
        f"- MGDA reaches the front from all 5 starts: **{verdict[mgda['holds']]}**",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    from matplotlib.figure import Figure

    from mtopt import plots

    names = list(result["trajectories"])
    cols = 4
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.0 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        plots.plot_trajectories(result["problem"], result["trajectories"][name], ax=ax,
                                title=name, resolution=120)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=35000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    os.makedirs(args.out, exist_ok=True)

    result = run(args.steps, seed=args.seed)
    summary = summarise(result)
    table = markdown_table(summary, args.steps, result["seconds"],
                           result["first_chunk_seconds"])
    print(table)
    base = os.path.join(args.out, "toy_trajectories")
    with open(base + ".md", "w") as f:
        f.write(table + "\n")
    payload = {
        "args": vars(args),
        "scale": SCALE,
        "lr": LR,
        "seconds": result["seconds"],
        "first_chunk_seconds": result["first_chunk_seconds"],
        **summary,
    }
    with open(base + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    outputs = [base + ".md", base + ".json"]
    if not args.no_plot:
        try:
            plot(result, base + ".png")
        except ImportError:
            print("matplotlib not installed: no plot (pip install 'mtopt[examples]').")
        else:
            outputs.append(base + ".png")
    print("wrote " + ", ".join(outputs))
    payload["outputs"] = outputs
    return payload


if __name__ == "__main__":
    main()
