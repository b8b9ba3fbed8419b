"""Accuracy of mtopt's simplex min-norm solver (MGDA, PMTL) against an exact reference.

The problem is ``min_w w^T G w`` over the probability simplex, ``d = J^T w`` the
min-norm point of the convex hull of the task gradients (issue 11, item 2).

**Reference: exact rational arithmetic.** Every float64 (or float32) number is a
rational, so the Gramian handed to the solver is an exact rational matrix
(symmetrised exactly, ``(G + G^T) / 2``). :func:`exact_min_norm` runs Wolfe's
min-norm-point algorithm (Wolfe 1976; finite in exact arithmetic) with
``fractions.Fraction``: every affine solve is exact Gaussian elimination, and the
loop ends only when the KKT conditions hold exactly, ``(G w)_i >= w^T G w`` for every
task with ``w >= 0`` on the simplex. The reference is therefore the exact minimiser
of the given matrix: its duality gap is 0, not small. The errors below are computed
exactly too (``(w - w*)^T G (w - w*)`` in rationals) and rounded to float only
for printing.

**Cases.** T in {3, 4, 8, 16}; the task-gradient norms are log-spaced from 1 down
to 1/spread (shuffled), spread in 1e0 .. 1e8; three families of directions:

- ``diagonal``: orthogonal gradients, ``J = diag(norms)`` (the issue's example is
  T = 3, spread 1e6);
- ``random``: random unit directions in R^(T+2) (general position);
- ``correlated``: unit directions ``u + 0.3 e_i`` normalised (pairwise cosine about
  0.92, nearly collinear: an ill-conditioned cosine matrix; for wide spreads the
  solution is the shortest gradient);
- ``conflicting``: ``s_i u + 0.3 e_i`` normalised with signs ``s_i = +-1`` (half the
  pairs at cosine -0.92: 0 is close to the hull, the solution is a cancellation).

Each case is solved by ``mtopt._src.min_norm.min_norm_simplex_with_info`` in float64
(x64 on) and in float32 (the Gramian rounded to float32). Errors, all relative to
the exact optimum ``d*`` of the matrix the solver received (the float32-rounded one
for float32; the float32 rows also show the error against the float64 problem,
which adds the effect of rounding the input):

- ``err_d = ||d - d*|| / ||d*||`` (``d - d*`` measured in the Gramian's norm, exactly);
- ``err_norm = | ||d|| / ||d*|| - 1 |``;
- ``err_obj = |w^T G w - d*^T d*| / d*^T d*``.

Usage::

    python benchmarks/min_norm_accuracy.py            # the full sweep (~2-4 min here)
    python benchmarks/min_norm_accuracy.py --quick    # T in {3, 8}, three spreads
    python benchmarks/min_norm_accuracy.py --out some/folder

It also checks Pareto-MTL's two sub-problems on ill-conditioned inputs (close
preference rays, norms 1e4 apart; :func:`pmtl_sub_problems`).

Output: a table on stdout and ``results/min_norm_accuracy.json`` next to this script
(every case's errors to 3 digits, the solver's certificate and iteration count, the
machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from fractions import Fraction

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

TASKS = (3, 4, 8, 16)
SPREADS = tuple(10.0**k for k in range(9))
FAMILIES = ("diagonal", "random", "correlated", "conflicting")
SEEDS = (0, 1)


# --------------------------------------------------------------------------- reference


def _fractions(g: np.ndarray) -> list[list[Fraction]]:
    """The exact rational matrix ``(G + G^T) / 2`` of a float array."""
    g = np.asarray(g, np.float64)
    t = g.shape[0]
    f = [[Fraction(float(g[i, j])) for j in range(t)] for i in range(t)]
    return [[(f[i][j] + f[j][i]) / 2 for j in range(t)] for i in range(t)]


def gram_fractions(j: np.ndarray) -> list[list[Fraction]]:
    """The exact rational Gramian ``J J^T`` of a float Jacobian (positive semi-definite
    exactly, unlike a float Gramian of a rank-deficient J, which rounding can make
    slightly indefinite)."""
    rows = [[Fraction(float(x)) for x in row] for row in np.asarray(j, np.float64)]
    return [[sum(a * b for a, b in zip(ri, rj)) for rj in rows] for ri in rows]


def _solve(a: list[list[Fraction]], b: list[Fraction]) -> list[Fraction] | None:
    """Exact Gaussian elimination; None when the matrix is singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col] != 0), None)
        if pivot is None:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        inv = 1 / m[col][col]
        for r in range(col + 1, n):
            factor = m[r][col] * inv
            if factor:
                row_r, row_c = m[r], m[col]
                for k in range(col, n + 1):
                    row_r[k] -= factor * row_c[k]
    x = [Fraction(0)] * n
    for r in range(n - 1, -1, -1):
        s = m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))
        x[r] = s / m[r][r]
    return x


def _affine_minimizer(g, support):
    """Exact ``argmin a^T G_SS a`` s.t. ``sum a = 1``: the bordered KKT system."""
    k = len(support)
    system = [[g[i][j] for j in support] + [Fraction(-1)] for i in support]
    system.append([Fraction(1)] * k + [Fraction(0)])
    sol = _solve(system, [Fraction(0)] * k + [Fraction(1)])
    if sol is None:
        raise ArithmeticError("affinely dependent working set")
    return sol[:k]


def exact_min_norm(gramian, max_rounds: int = 10_000) -> dict:
    """The exact minimiser of ``w^T G w`` on the simplex (Wolfe's algorithm in rationals).

    ``gramian`` is a float (T, T) array or the list of lists of Fractions of
    :func:`_fractions` / :func:`gram_fractions`; it must be positive semi-definite
    (Wolfe's algorithm may not terminate otherwise: use :func:`gram_fractions` for
    rank-deficient gradients). Returns ``{"weights": [Fraction], "value": Fraction,
    "rounds": int}``; the KKT conditions hold exactly at the returned weights
    (checked before returning).
    """
    g = gramian if isinstance(gramian, list) else _fractions(gramian)
    t = len(g)
    start = min(range(t), key=lambda i: g[i][i])
    lam = {start: Fraction(1)}
    rounds = 0
    while True:
        support = sorted(lam)
        glam = [sum(g[i][j] * lam[j] for j in support) for i in range(t)]
        value = sum(lam[i] * glam[i] for i in support)
        j = min(range(t), key=lambda i: glam[i])
        if glam[j] >= value:
            break
        lam[j] = Fraction(0)
        while True:  # minor cycle
            rounds += 1
            if rounds > max_rounds:
                raise RuntimeError("Wolfe's algorithm did not terminate")
            support = sorted(lam)
            alpha = dict(zip(support, _affine_minimizer(g, support)))
            if all(alpha[i] > 0 for i in support):
                lam = alpha
                break
            theta = min(lam[i] / (lam[i] - alpha[i]) for i in support if alpha[i] <= 0)
            lam = {i: lam[i] + theta * (alpha[i] - lam[i]) for i in support}
            lam = {i: v for i, v in lam.items() if v > 0}
    weights = [lam.get(i, Fraction(0)) for i in range(t)]
    gw = [sum(g[i][j] * weights[j] for j in range(t)) for i in range(t)]
    value = sum(weights[i] * gw[i] for i in range(t))
    assert sum(weights) == 1 and min(weights) >= 0 and min(gw) >= value  # exact KKT
    return {"weights": weights, "value": value, "rounds": rounds}


def exact_errors(g_exact, reference: dict, weights) -> dict:
    """Exact relative errors of ``d = J^T w`` for float weights ``w`` (see module doc).

    ``g_exact`` is the rational Gramian, ``reference`` an :func:`exact_min_norm`
    result for it. When the optimum is 0 (0 in the hull) the errors are relative to
    the largest gradient norm instead (``"relative_to": "scale"``).
    """
    t = len(g_exact)
    w = [Fraction(float(x)) for x in np.asarray(weights, np.float64)]
    ws = reference["weights"]
    diff = [w[i] - ws[i] for i in range(t)]
    dist2 = sum(diff[i] * sum(g_exact[i][j] * diff[j] for j in range(t)) for i in range(t))
    value = sum(w[i] * sum(g_exact[i][j] * w[j] for j in range(t)) for i in range(t))
    opt = reference["value"]
    scale = max(g_exact[i][i] for i in range(t))
    scale = scale if scale > 0 else Fraction(1)
    absolute = {
        "dist_d": math.sqrt(float(max(dist2, 0))),
        "norm_optimum": math.sqrt(float(opt)),
        "norm_scale": math.sqrt(float(scale)),
    }
    if opt > 0:
        return {
            **absolute,
            "relative_to": "optimum",
            "err_d": math.sqrt(float(max(dist2, 0) / opt)),
            "err_norm": abs(math.sqrt(float(max(value, 0) / opt)) - 1.0),
            "err_obj": float(abs(value - opt) / opt),
        }
    return {
        **absolute,
        "relative_to": "scale",
        "err_d": math.sqrt(float(max(dist2, 0) / scale)),
        "err_norm": math.sqrt(float(max(value, 0) / scale)),
        "err_obj": float(abs(value - opt) / scale),
    }


# ------------------------------------------------------------------------------- cases


def jacobian(family: str, num_tasks: int, spread: float, seed: int) -> np.ndarray:
    """The (T, P) Jacobian of one case (rows = task gradients), float64."""
    rng = np.random.default_rng([seed, num_tasks, int(round(math.log10(spread)))])
    norms = np.logspace(0.0, -math.log10(spread), num_tasks)[rng.permutation(num_tasks)]
    if family == "diagonal":
        return np.diag(norms)
    if family == "random":
        u = rng.normal(size=(num_tasks, num_tasks + 2))
    elif family in ("correlated", "conflicting"):
        signs = np.ones((num_tasks, 1))
        if family == "conflicting":
            signs[rng.permutation(num_tasks)[: num_tasks // 2]] = -1.0
        u = np.concatenate([signs, 0.3 * np.eye(num_tasks)], axis=1)
        u = u @ np.linalg.qr(rng.normal(size=(num_tasks + 1, num_tasks + 1)))[0]
    else:
        raise ValueError(family)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return norms[:, None] * u


def support_condition(g: np.ndarray, weights) -> float:
    """Condition number of the cosine matrix on the support of the exact solution.

    The forward error of a backward-stable solve in precision eps is about
    ``eps * condition``: the yardstick of "accurate to rounding".
    """
    support = [i for i, x in enumerate(weights) if x > 0]
    n = np.sqrt(np.diag(g))[support]
    c = g[np.ix_(support, support)] / n[:, None] / n[None, :]
    return float(np.linalg.cond(c))


def run(tasks=TASKS, spreads=SPREADS, families=FAMILIES, seeds=SEEDS) -> list[dict]:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from mtopt._src.min_norm import min_norm_simplex_with_info

    solve = jax.jit(jax.vmap(min_norm_simplex_with_info))
    records = []
    for t in tasks:
        cases = [(f, s, seed) for f in families for s in spreads for seed in seeds]
        jacs = [jacobian(f, t, s, seed) for f, s, seed in cases]
        g64 = np.stack([j @ j.T for j in jacs])
        g32 = g64.astype(np.float32)
        w64, info64 = solve(jnp.asarray(g64))
        w32, info32 = solve(jnp.asarray(g32))
        for k, (family, spread, seed) in enumerate(cases):
            exact64 = _fractions(g64[k])
            exact32 = _fractions(g32[k].astype(np.float64))
            ref64 = exact_min_norm(exact64)
            ref32 = exact_min_norm(exact32)
            rec = {
                "num_tasks": t, "family": family, "spread": spread, "seed": seed,
                "optimum_norm": math.sqrt(float(ref64["value"])),
                "support": sum(1 for x in ref64["weights"] if x > 0),
                "support_condition": support_condition(g64[k], ref64["weights"]),
                "float64": {
                    **exact_errors(exact64, ref64, w64[k]),
                    "residual": float(info64.residual[k]),
                    "iterations": int(info64.iterations[k]),
                    "converged": bool(info64.converged[k]),
                },
                "float32": {
                    **exact_errors(exact32, ref32, w32[k]),
                    "vs_float64_problem": exact_errors(exact64, ref64, w32[k]),
                    "residual": float(info32.residual[k]),
                    "iterations": int(info32.iterations[k]),
                    "converged": bool(info32.converged[k]),
                },
            }
            records.append(rec)
    return records


def pmtl_sub_problems(num_cases: int = 12) -> dict:
    """Pareto-MTL's two QPs on ill-conditioned inputs, float64, against the exact optimum.

    Rays 1e-2 apart around the target (1/3, 1/3, 1/3) (constraint gradients about 1e-2
    of the task gradients) and task-gradient norms 1, 1e-2, 1e-4: the direction of each
    phase (warm-up: min-norm point of the active constraint gradients; main phase: of
    the task and active constraint gradients, rescaled to sum |w| = T) against the exact
    min-norm point of the same vectors.
    """
    import jax
    import jax.numpy as jnp

    from mtopt._src.methods.pmtl import active_constraints, pmtl

    eps = 1e-2
    third = 1.0 / 3.0
    prefs = np.array([[third + 2 * eps, third - eps, third - eps],
                      [third - eps, third + 2 * eps, third - eps],
                      [third - eps, third - eps, third + 2 * eps], [third, third, third]])
    method = pmtl(jnp.asarray(prefs), index=3, warmup_steps=5)
    update = jax.jit(method.update)
    rng = np.random.default_rng(0)
    worst = {"warm-up": 0.0, "main": 0.0}
    counts = {"warm-up": 0, "main": 0}
    for _ in range(num_cases):
        norms = np.array([1.0, 1e-2, 1e-4])[rng.permutation(3)]
        j = norms[:, None] * rng.normal(size=(3, 6))
        losses = rng.uniform(0.1, 2, size=3)
        w_all, active = (np.asarray(v) for v in active_constraints(
            jnp.asarray(losses), jnp.asarray(prefs), jnp.asarray(prefs[3])))
        active = active.astype(bool)
        for warmed in (False, True):
            state = method.init(3)._replace(warmed_up=jnp.asarray(warmed))
            w, _ = update(state, jnp.asarray(losses), gramian=jnp.asarray(j @ j.T))
            in_warmup = (not warmed) and active.any()
            rows = w_all[active] if in_warmup else np.concatenate([np.eye(3), w_all[active]])
            vectors = rows @ j
            exact = exact_min_norm(vectors @ vectors.T)
            v = rows.T @ np.array([float(x) for x in exact["weights"]])
            if not in_warmup:
                v = 3 * v / np.abs(v).sum()
            d, d_exact = np.asarray(w, np.float64) @ j, v @ j
            key = "warm-up" if in_warmup else "main"
            err = float(np.linalg.norm(d - d_exact) / np.linalg.norm(d_exact))
            worst[key] = max(worst[key], err)
            counts[key] += 1
    return {"worst_err_d": worst, "cases": counts}


def _rounded(x, digits: int = 3):
    """Floats to ``digits`` significant digits (a compact JSON)."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return x


def summarize(records: list[dict]) -> list[dict]:
    """Worst errors per (family, spread), over T and seeds."""
    rows = []
    keys = sorted({(r["family"], r["spread"]) for r in records},
                  key=lambda k: (FAMILIES.index(k[0]), k[1]))
    for family, spread in keys:
        group = [r for r in records if r["family"] == family and r["spread"] == spread]
        row = {"family": family, "spread": spread, "cases": len(group),
               "max_support": max(r["support"] for r in group)}
        for dt in ("float64", "float32"):
            for e in ("err_d", "err_norm", "err_obj"):
                row[f"{dt}_{e}"] = max(r[dt][e] for r in group)
            row[f"{dt}_max_iterations"] = max(r[dt]["iterations"] for r in group)
            row[f"{dt}_all_converged"] = all(r[dt]["converged"] for r in group)
        row["float32_vs_float64_err_d"] = max(r["float32"]["vs_float64_problem"]["err_d"]
                                              for r in group)
        row["max_condition"] = max(r["support_condition"] for r in group)
        eps32 = float(np.finfo(np.float32).eps)
        row["float32_err_d_over_eps_condition"] = max(
            r["float32"]["err_d"] / (eps32 * r["support_condition"]) for r in group)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("Simplex min-norm solver vs the exact (rational) optimum: worst relative error over "
          "T and seeds")
    print("(supp: size of the exact solution's support; it: first-order iterations + "
          "active-set rounds; cond: condition number of the cosine matrix on the support)")
    head = (f"{'family':>11} {'spread':>7} {'n':>3} {'supp':>4} | {'f64 err_d':>9} {'err_|d|':>9} "
            f"{'err_obj':>9} {'it':>4} {'conv':>4} | {'f32 err_d':>9} {'err_|d|':>9} "
            f"{'err_obj':>9} {'it':>4} {'conv':>4} | {'f32 vs f64':>10} {'cond':>7} "
            f"{'f32/(eps*cond)':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['family']:>11} {r['spread']:>7.0e} {r['cases']:>3} {r['max_support']:>4} | "
              f"{r['float64_err_d']:>9.1e} {r['float64_err_norm']:>9.1e} "
              f"{r['float64_err_obj']:>9.1e} {r['float64_max_iterations']:>4} "
              f"{'yes' if r['float64_all_converged'] else 'NO':>4} | "
              f"{r['float32_err_d']:>9.1e} {r['float32_err_norm']:>9.1e} "
              f"{r['float32_err_obj']:>9.1e} {r['float32_max_iterations']:>4} "
              f"{'yes' if r['float32_all_converged'] else 'NO':>4} | "
              f"{r['float32_vs_float64_err_d']:>10.1e} {r['max_condition']:>7.1e} "
              f"{r['float32_err_d_over_eps_condition']:>14.2f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in {3, 8}, spreads 1, 1e4, 1e8")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        kwargs = {"tasks": (3, 8), "spreads": (1.0, 1e4, 1e8), "seeds": (0,)}
    else:
        kwargs = {}
    start = time.perf_counter()
    records = run(**kwargs)
    rows = summarize(records)
    print_table(rows)
    worst = {dt: max(r[dt]["err_d"] for r in records) for dt in ("float64", "float32")}
    print(f"worst err_d: float64 {worst['float64']:.2e}, float32 {worst['float32']:.2e} "
          f"({len(records)} cases)")
    pmtl_result = pmtl_sub_problems(4 if args.quick else 12)
    print("Pareto-MTL sub-problems (rays 1e-2 apart, norms 1, 1e-2, 1e-4), float64, worst "
          "||d - d*|| / ||d*||: " + ", ".join(
              f"{k} {v:.1e} ({pmtl_result['cases'][k]} QPs)"
              for k, v in pmtl_result["worst_err_d"].items()))
    print(f"({time.perf_counter() - start:.0f} s)")
    import jax

    payload = {
        "description": "mtopt min_norm_simplex vs the exact rational optimum (Wolfe's "
                       "algorithm in fractions.Fraction); errors relative to ||d*||.",
        "config": {k: list(v) for k, v in {**{"tasks": TASKS, "spreads": SPREADS,
                                               "families": FAMILIES, "seeds": SEEDS},
                                            **kwargs}.items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "summary": _rounded(rows),
        "worst_err_d": _rounded(worst),
        "pmtl_sub_problems": _rounded(pmtl_result),
        "cases": _rounded(records),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "min_norm_accuracy.json")
    with open(path, "w", encoding="utf-8") as f:
        # One line per case keeps the file small and readable.
        head = {k: v for k, v in payload.items() if k != "cases"}
        text = json.dumps(head, indent=1)[:-2]
        cases = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in payload["cases"])
        f.write(f'{text},\n "cases": [\n  {cases}\n ]\n}}\n')
    print(f"wrote {os.path.relpath(path)}")
    return payload


if __name__ == "__main__":
    main()
