"""Float32 accuracy of the QP- and solve-based weightings against their float64 answers.

Issue 11, item 6. The inputs are TorchJD's standard test matrices
(``tests/unit/aggregation/_inputs.py`` and ``_matrix_samplers.py`` of TorchJD),
transcribed in NumPy (same constructions, NumPy's generator instead of torch's, so
the same families, not the same numbers):

- ``normal{m}x{n}r{r}``: ``U[:, :r] diag(|N(0,1)|) V^T[:r]`` with Haar-random
  orthonormal ``U, V`` (m x n of rank r);
- ``strong``: rows orthogonal to a positive vector (``0`` is a strictly positive
  combination of the rows: the exact UPGrad/DualProj direction is 0);
- ``strictly_weak``: orthogonal to a non-negative, not positive, vector;
- ``non_weak``: a positive left-singular vector;

the stationarity families at TorchJD's dimensions 20 x 10 (rank 10, 5, 1) and
20 x 100 (rank 1, 19): degenerate (rank deficient) and ill-conditioned Gramians.

For every matrix ``J`` (rounded to float32) and method, three answers:

- ``f32``: the method in float32 on the float32 Gramian ``G32 = fl32(J J^T)``;
- ``f64_rounded``: the method in float64 on that same float32-rounded Gramian;
- ``f64_exact``: the method in float64 on the exact Gramian of the float32 ``J``.

``solver = |f32 - f64_rounded|`` is the float32 solver's own error;
``gramian = |f64_rounded - f64_exact|`` is what rounding the Gramian to float32
costs (unavoidable for any method that reads only the float32 Gramian);
``total = |f32 - f64_exact|``. Errors are ``max_k |d_k - d*_k|`` of the aggregated
direction ``d = J^T w`` (computed in float64 from the weights), in units of the
largest task-gradient norm (these matrices have gradient norms of order 1).
``perm`` is the largest change of the float32 ``d`` under 5 random permutations of
the tasks, in TorchJD's metric: the smallest ``tol`` with
``|d_perm - d| <= tol (1 + |d|)`` entry-wise (TorchJD's ``assert_close(atol=tol, rtol=tol)``;
TorchJD's float32 tests require 5e-7 for UPGrad, 2e-7 for DualProj and 1e-4 for
ConFIG, IMTL-G and Aligned-MTL).

Usage::

    python benchmarks/float32_accuracy.py            # all methods (~3-6 min on 2 cores)
    python benchmarks/float32_accuracy.py --methods upgrad,config
    python benchmarks/float32_accuracy.py --out some/folder

Output: a table on stdout and ``results/float32_accuracy.json`` next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from tests.torchjd_matrices import torchjd_matrices  # noqa: E402  (TorchJD's test matrices)

# The solve- and QP-based weightings issue 11 item 6 asked about (UPGrad, DualProj, IMTL and
# ConFIG use double-float refinement in float32), and the other solver-based methods.
REFINED = ("upgrad", "dualproj", "config", "imtl_g", "imtl", "aligned_mtl", "fairgrad")
OTHER_SOLVERS = ("mgda", "cagrad", "pmtl", "nash_mtl", "epo")
# TorchJD's float32 permutation tolerances (atol = rtol), tests/unit/aggregation/test_*.py.
TORCHJD_PERMUTATION_TOL = {
    "upgrad": 5e-7, "dualproj": 2e-7, "config": 1e-4, "imtl_g": 1e-4, "aligned_mtl": 1e-4,
}


# ----------------------------------------------------------------------- measurement


def _make(name: str, num_tasks: int):
    import mtopt

    if name == "pmtl":
        rays = np.eye(num_tasks) + 0.5
        return mtopt.pmtl(rays / rays.sum(axis=1, keepdims=True), 0)
    return mtopt.method(name)


def _weights_fn(name: str, num_tasks: int):
    import jax
    import jax.numpy as jnp

    method = _make(name, num_tasks)

    def weights(gramian):
        dtype = gramian.dtype
        state = method.init(num_tasks)
        kwargs = {}
        if method.preference == "required":
            kwargs["preference"] = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
        if method.stochastic:
            kwargs["key"] = jax.random.key(0)
        w, _ = method.update(state, jnp.ones((num_tasks,), dtype), gramian=gramian, **kwargs)
        return w

    return jax.jit(weights)


def measure(methods, seed: int = 0, runs: int = 5):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    mats = torchjd_matrices(seed)
    rng = np.random.default_rng(seed + 1)
    perms = {k: [rng.permutation(j.shape[0]) for _ in range(runs)] for k, j in mats.items()}
    rows = []
    for name in methods:
        fns = {}
        for key, j32 in mats.items():
            t = j32.shape[0]
            fn = fns.setdefault(t, _weights_fn(name, t))
            jj = jnp.asarray(j32)
            g32 = jj @ jj.T
            j64 = j32.astype(np.float64)
            d = lambda w: j64.T @ np.asarray(w, np.float64)
            w32 = fn(g32)
            d32 = d(w32)
            d64r = d(fn(g32.astype(jnp.float64)))
            d64 = d(fn(jnp.asarray(j64 @ j64.T)))
            scale = float(np.max(np.linalg.norm(j64, axis=1)))
            perm = 0.0
            d32f = np.asarray(w32 @ jj, np.float64)
            for p in perms[key]:
                jp = jnp.asarray(j32[p])
                dp = np.asarray(fn(jp @ jp.T) @ jp, np.float64)
                perm = max(perm, float(np.max(np.abs(dp - d32f) / (1.0 + np.abs(d32f)))))
            err = lambda a, b: float(np.max(np.abs(a - b))) / scale
            rows.append({
                "method": name, "matrix": key, "norm_d": float(np.linalg.norm(d64)) / scale,
                "solver": err(d32, d64r), "gramian": err(d64r, d64), "total": err(d32, d64),
                "perm": perm, "finite": bool(np.all(np.isfinite(d32))),
            })
    return rows


def summarise(rows):
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        worst = lambda f: max(r[f] for r in mine)
        out.append({
            "method": name, "refined": name in REFINED, "solver": worst("solver"),
            "gramian": worst("gramian"), "total": worst("total"), "perm": worst("perm"),
            "torchjd_perm_tol": TORCHJD_PERMUTATION_TOL.get(name),
            "all_finite": all(r["finite"] for r in mine),
        })
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(REFINED + OTHER_SOLVERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    import jax

    start = time.time()
    rows = measure(args.methods.split(","), seed=args.seed)
    summary = summarise(rows)
    print(f"{'method':12s} {'solver':>9s} {'gramian':>9s} {'total':>9s} {'perm':>9s} {'TorchJD':>8s}")
    for s in summary:
        tol = s["torchjd_perm_tol"]
        print(f"{s['method']:12s} {s['solver']:9.2e} {s['gramian']:9.2e} {s['total']:9.2e} "
              f"{s['perm']:9.2e} {'' if tol is None else f'{tol:.0e}':>8s}"
              f"{'' if s['all_finite'] else '  NON-FINITE'}")
    print("worst matrix per method (total):")
    for s in summary:
        r = max((r for r in rows if r["method"] == s["method"]), key=lambda r: r["total"])
        print(f"  {s['method']:12s} {r['matrix']:24s} |d*|={r['norm_d']:.1e} total={r['total']:.2e}")
    os.makedirs(args.out, exist_ok=True)
    result = {
        "description": __doc__.split("\n\n")[0],
        "config": {"seed": args.seed, "matrices": list(torchjd_matrices(args.seed)),
                   "permutation_runs": 5},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "seconds": round(time.time() - start, 1),
        "summary": [{k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in s.items()}
                    for s in summary],
        "cases": [{k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in r.items()}
                  for r in rows],
    }
    with open(os.path.join(args.out, "float32_accuracy.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
