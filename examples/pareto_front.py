"""Trace the ZDT1, ZDT2, ZDT3 and DTLZ2 fronts with EPO and smooth Tchebycheff, by sweep.

For every problem and method, ``mtopt.pareto.sweep`` trains K solutions at once (one
``lax.scan`` over Adam steps, ``vmap``-ed over K preference vectors, in one compiled
program), each from its own random start in the box, projected back into the box after
every step (for ZDT the box starts at ``x_1 = 1e-6``, see ``ZDT_X1_FLOOR``).
Preferences: ``uniform_preferences(K, margin=0.02)`` for the two-objective ZDT
problems; for DTLZ2 the Das-Dennis grid (``H = 7``: 36 vectors) pulled ``margin`` away
from the simplex's faces (EPO needs every ``r_i > 0``).

Both methods aim at the point of the front where ``r_i f_i`` is the same for every
objective (losses proportional to ``1 / r``): EPO (``mtopt.epo()``, Mahapatra & Rajan,
ICML 2020) by its balance / descent linear programs on the Gramian, STCH
(``mtopt.smooth_tchebycheff(mu)``, Lin et al., ICML 2024) by a log-sum-exp smoothing of
``max_i r_i f_i`` with ideal point 0 (the ideal point of ZDT1, ZDT2 and DTLZ2; ZDT3's
``f_2`` goes down to -0.77) and ``mu = 0.01`` (``--stch-mu``; the library default 0.1
smooths a lot for objectives of size ~1).

Reported per run: hypervolume (HV) of the K final points against the problem's
reference point (``problem.ref_point``, 1.2 in every objective); the HV of the true front
(``problem.pareto_front(n)``, dense) and the ratio to it, which K points cannot reach;
the HV of the K *targets* (for each preference, the point of the dense true front that
minimises ``max_i r_i f_i``, where both methods should end) and the ratio to it (about 1
when every run reaches its target; a point slightly off its target can give a little
more); IGD to the true front; GD (mean distance from the K points to the true front:
convergence alone); how many of the K points are finite and non-dominated; the wall time
(compilation included). ZDT3's front is five disconnected pieces: a ray that crosses a
gap has no front point of its own, so some runs end on a dominated part of the curve.

Outputs (in ``--out``): ``pareto_front_2d.png`` (the ZDT fronts),
``pareto_front_3d.png`` (DTLZ2), ``pareto_front.md`` and ``pareto_front.json``.

Run: ``python examples/pareto_front.py [--steps 2000] [--out examples/out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtopt
from mtopt import pareto, problems

LR = 1e-2
MARGIN = 0.02
# ZDT's f_2 has an infinite derivative in x_1 at x_1 = 0 (the box's lower face, where the
# f_1 = 0 end of the front lies): a run that Adam pushes onto that face would get an
# infinite gradient and NaN. The box is therefore x_1 >= 1e-6 for the ZDT problems.
ZDT_X1_FLOOR = 1e-6


def make_problems(quick: bool = False) -> dict[str, problems.Problem]:
    names = ("zdt1", "dtlz2") if quick else ("zdt1", "zdt2", "zdt3", "dtlz2")
    factories: dict[str, Callable[[], problems.Problem]] = {
        "zdt1": problems.zdt1, "zdt2": problems.zdt2, "zdt3": problems.zdt3,
        "dtlz2": lambda: problems.dtlz2(n_obj=3),
    }
    return {name: factories[name]() for name in names}


def make_methods(stch_mu: float) -> dict[str, mtopt.Weighting]:
    return {"EPO": mtopt.epo(), "STCH": mtopt.smooth_tchebycheff(mu=stch_mu)}


def preferences_for(problem: problems.Problem, k2: int, h3: int) -> jax.Array:
    """K preference vectors on the simplex, every component at least ``MARGIN``."""
    if problem.n_obj == 2:
        return pareto.uniform_preferences(k2, margin=MARGIN)
    grid = pareto.das_dennis(h3, problem.n_obj)
    return grid * (1.0 - problem.n_obj * MARGIN) + MARGIN


def box(problem: problems.Problem) -> tuple[jax.Array, jax.Array]:
    """The problem's box, with ``x_1 >= ZDT_X1_FLOOR`` for the ZDT problems."""
    lower, upper = problem.bounds
    if problem.name.startswith("zdt"):
        lower = lower.at[0].set(ZDT_X1_FLOOR)
    return lower, upper


def random_starts(problem: problems.Problem, k: int, seed: int) -> jax.Array:
    lower, upper = box(problem)
    u = jax.random.uniform(jax.random.key(seed), (k, problem.n_var), dtype=lower.dtype)
    return lower[None] + u * (upper - lower)[None]


def true_front(problem: problems.Problem) -> np.ndarray:
    n = 2000 if problem.n_obj == 2 else 5000
    return np.asarray(problem.pareto_front(n))


def trace(problem: problems.Problem, method: mtopt.Weighting, prefs: jax.Array, steps: int,
          seed: int) -> tuple[np.ndarray, float]:
    """One sweep: the K final objective vectors and the wall time."""
    starts = random_starts(problem, prefs.shape[0], seed)
    begin = time.perf_counter()
    result = pareto.sweep(problem, method, starts, optimizer=optax.adam(LR), num_steps=steps,
                          preferences=prefs, batched_params=True, bounds=box(problem))
    losses = np.asarray(jax.block_until_ready(result.losses))
    return losses, time.perf_counter() - begin


def targets(prefs: jax.Array, front: np.ndarray) -> np.ndarray:
    """The point of the (dense) true front each preference aims at: ``argmin max_i r_i f_i``."""
    scores = np.max(np.asarray(prefs)[:, None, :] * front[None, :, :], axis=-1)
    return front[np.argmin(scores, axis=1)]


def metrics(problem: problems.Problem, points: np.ndarray, front: np.ndarray,
            prefs: jax.Array) -> dict[str, Any]:
    """Indicators of the finite final points (a diverged run would be left out and counted)."""
    ref = problem.ref_point
    finite = np.all(np.isfinite(points), axis=1)
    hv_true = float(pareto.hypervolume(jnp.asarray(front, jnp.float32), ref))
    hv_target = float(pareto.hypervolume(jnp.asarray(targets(prefs, front), jnp.float32), ref))
    out = {"hv_true": hv_true, "hv_target": hv_target, "finite": int(finite.sum())}
    if not finite.any():
        return {**out, "hv": float("nan"), "hv_ratio": float("nan"),
                "hv_target_ratio": float("nan"), "igd": float("nan"), "gd": float("nan"),
                "non_dominated": 0}
    good = jnp.asarray(points[finite], jnp.float32)
    hv = float(pareto.hypervolume(good, ref))
    return {
        **out,
        "hv": hv,
        "hv_ratio": hv / hv_true,
        "hv_target_ratio": hv / hv_target,
        "igd": float(pareto.igd(good, jnp.asarray(front))),
        "gd": float(pareto.gd(good, jnp.asarray(front))),
        "non_dominated": int(np.sum(np.asarray(pareto.non_dominated_mask(good)))),
    }


def markdown_table(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        f"Adam lr {LR}, {steps} steps per run, K runs per sweep in one program; "
        "HV against ref_point = 1.2 * ones.",
        "",
        "| problem | method | K | finite | HV | HV true front | HV / true | HV targets | "
        "HV / targets | IGD | GD | non-dominated | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['k']} | {r['finite']} | {r['hv']:.4f} | "
            f"{r['hv_true']:.4f} | "
            f"{r['hv_ratio']:.3f} | {r['hv_target']:.4f} | {r['hv_target_ratio']:.3f} | "
            f"{r['igd']:.4f} | {r['gd']:.4f} | {r['non_dominated']}/{r['k']} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(fronts: dict[str, dict[str, np.ndarray]], problem_set: dict[str, problems.Problem],
         true_fronts: dict[str, np.ndarray], out: str) -> list[str]:
    from matplotlib.figure import Figure

    from mtopt import plots

    written = []
    two = [n for n, p in problem_set.items() if p.n_obj == 2]
    three = [n for n, p in problem_set.items() if p.n_obj == 3]
    if two:
        fig = Figure(figsize=(4.6 * len(two), 4.0))
        axes = fig.subplots(1, len(two), squeeze=False).ravel()
        for ax, name in zip(axes, two):
            plots.plot_front_2d(fronts[name], true_front=true_fronts[name], ax=ax,
                                title=name.upper())
        fig.tight_layout()
        path = os.path.join(out, "pareto_front_2d.png")
        fig.savefig(path, dpi=110)
        written.append(path)
    for name in three:
        fig = Figure(figsize=(5.2 * len(fronts[name]), 5.0))
        for i, (method, points) in enumerate(fronts[name].items()):
            ax = fig.add_subplot(1, len(fronts[name]), i + 1, projection="3d")
            plots.plot_front_3d({method: points}, true_front=true_fronts[name], ax=ax,
                                title=f"{name.upper()}: {method}")
        fig.tight_layout()
        path = os.path.join(out, "pareto_front_3d.png")
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--k", type=int, default=16, help="runs per 2-objective sweep")
    parser.add_argument("--partitions", type=int, default=7,
                        help="Das-Dennis partitions H for DTLZ2 (36 runs for H = 7)")
    parser.add_argument("--stch-mu", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="ZDT1 and DTLZ2 only")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.k < 2 or args.partitions < 1:
        parser.error("need --steps >= 1, --k >= 2 and --partitions >= 1")
    os.makedirs(args.out, exist_ok=True)

    problem_set = make_problems(args.quick)
    methods = make_methods(args.stch_mu)
    jobs = [(p, m) for p in problem_set for m in methods]
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are an optional extra
        def tqdm(iterable, **_):
            return iterable
    rows, fronts, true_fronts = [], {}, {}
    for pname, mname in tqdm(jobs, desc="sweeps"):
        problem = problem_set[pname]
        if pname not in true_fronts:
            true_fronts[pname] = true_front(problem)
        prefs = preferences_for(problem, args.k, args.partitions)
        points, seconds = trace(problem, methods[mname], prefs, args.steps, args.seed)
        fronts.setdefault(pname, {})[mname] = points
        rows.append({"problem": pname, "method": mname, "k": int(prefs.shape[0]),
                     "seconds": seconds,
                     **metrics(problem, points, true_fronts[pname], prefs)})

    table = markdown_table(rows, args.steps)
    print(table)
    base = os.path.join(args.out, "pareto_front")
    with open(base + ".md", "w") as f:
        f.write(table + "\n")
    payload = {"args": vars(args), "lr": LR, "margin": MARGIN, "results": rows,
               "points": {p: {m: v.tolist() for m, v in d.items()} for p, d in fronts.items()}}
    with open(base + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    outputs = [base + ".md", base + ".json"]
    if not args.no_plot:
        try:
            outputs += plot(fronts, problem_set, true_fronts, args.out)
        except ImportError:
            print("matplotlib not installed: no plot (pip install 'mtopt[examples]').")
    print("wrote " + ", ".join(outputs))
    payload["outputs"] = outputs
    return payload


if __name__ == "__main__":
    main()
