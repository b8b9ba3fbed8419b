"""TorchJD side by side: the same model, data and aggregators in TorchJD and in mtopt.

Model and data: ``step_benchmark.py``'s setting (shared ReLU MLP trunk
512 -> 1024 -> 1024 -> 512, 2.1M parameters, one linear (512, T) head matrix,
per-task mean squared error, a fixed random batch of 256), T = 8 by default.
The PyTorch model is built from the JAX parameters (same initial values, weights
transposed into ``nn.Linear`` layout; the (512, T) head matrix becomes T
``nn.Linear(512, 1)`` heads, its columns, as TorchJD's ``mtl_backward`` wants one
graph per task after the features) and the same batch.

Steps timed (each one full training step with ``adam(1e-3)``, interleaved, see
``_timing.py``):

- ``torch_sum``: PyTorch, ``sum(losses).backward()`` (the framework's plain step);
- ``torchjd_<m>``: PyTorch forward, ``torchjd.autojac.mtl_backward(losses,
  features=trunk output)``, ``torchjd.autojac.jac_to_grad(trunk params, <M>())``;
- ``jax_sum``: ``jax.grad`` of the summed losses (jitted);
- ``mtopt_<m>``: ``mtopt.value_and_grad(..., mtopt.<m>(), shared=<trunk>)`` (full
  Jacobian, Gramian over the trunk, jitted);
- ``mtopt_<m>_rep``: ``mtopt.representation_value_and_grad(encode, heads,
  mtopt.<m>())`` (weights from the gradients w.r.t. the trunk output, jitted),
- ``mtopt_<m>_light``: ``mtopt_<m>`` with ``low_memory=True`` (for information; the
  targets compare ``mtopt_<m>`` and ``mtopt_<m>_rep``),

for ``<m>`` in ``upgrad`` and ``mgda``. mtopt's UPGrad is built with
``norm_eps=1e-4, reg_eps=1e-4``, TorchJD's defaults, so both solve the same
problem. Before timing, the combined gradients at the initial parameters are
compared (float32): trunk gradient, weights, and head gradient. Conventions that
differ by design: TorchJD's ``mtl_backward`` gives each head its task's unweighted
gradient, mtopt the weighted one (``w_k dL_k/dhead``), so head
gradients are compared column by column after multiplying TorchJD's by
``w_k``; TorchJD's MGDA is Frank-Wolfe stopped at step size ``epsilon = 1e-3``
(max 100 iterations), mtopt's MGDA is solved to ``tol = 1e-7``, so MGDA is also
compared against TorchJD's ``MGDA(epsilon=1e-8, max_iters=100000)``.

Threads: ``torch.set_num_threads`` is set to the number of cores this process may
use (``os.sched_getaffinity``), which is also the size of XLA's CPU thread pool.

Targets (issue 6): TorchJD time / mtopt full-Jacobian time >= 2, TorchJD time /
mtopt representation-mode time >= 5 (same aggregator).

Usage::

    python benchmarks/torchjd_benchmark.py            # T = 8, 20 timed steps
    python benchmarks/torchjd_benchmark.py --quick    # 3 timed steps

PyTorch and TorchJD are optional: without them the script prints a note and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

# Set before torch starts its OpenMP threads: busy-waiting threads make a PyTorch step on a
# loaded 2-core machine up to 10x slower (measured: 1.7 s instead of 0.14 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import mtopt  # noqa: E402
from mtopt._src import base  # noqa: E402

import _timing  # noqa: E402
import step_benchmark as sb  # noqa: E402

AGGREGATORS = ("upgrad", "mgda")
FULL_TARGET = 2.0  # TorchJD / mtopt full-Jacobian step
REP_TARGET = 5.0  # TorchJD / mtopt representation-mode step
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Array = jax.Array
PyTree = Any


def import_torchjd() -> Optional[tuple[Any, Any]]:
    """``(torch, torchjd)`` or ``None`` (with a printed note) when either is missing."""
    try:
        import torch
        import torchjd
        import torchjd.aggregation  # noqa: F401
        import torchjd.autojac  # noqa: F401
    except ImportError as err:
        print(f"TorchJD comparison skipped: {err} (pip install torch torchjd, or "
              "pip install 'mtopt[bench]').")
        return None
    return torch, torchjd


def num_threads() -> int:
    """Cores this process may run on (XLA's CPU thread pool has this size)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def mtopt_method(name: str) -> base.Weighting:
    """The mtopt weighting matching TorchJD's default aggregator ``name``."""
    if name == "upgrad":
        return mtopt.upgrad(norm_eps=1e-4, reg_eps=1e-4)
    if name == "mgda":
        return mtopt.mgda()
    raise ValueError(f"unknown aggregator {name!r}; expected one of {AGGREGATORS}.")


def torchjd_aggregator(torchjd: Any, name: str, *, tight: bool = False) -> Any:
    """TorchJD's aggregator ``name`` (defaults; ``tight``: MGDA solved to 1e-8)."""
    agg = torchjd.aggregation
    if name == "upgrad":
        return agg.UPGrad()
    if name == "mgda":
        return agg.MGDA(epsilon=1e-8, max_iters=100_000) if tight else agg.MGDA()
    raise ValueError(f"unknown aggregator {name!r}; expected one of {AGGREGATORS}.")


# --- the problem in both frameworks --------------------------------------------------------


def jax_problem(num_tasks: int) -> tuple[PyTree, Array, Array]:
    """``step_benchmark``'s parameters and batch for T tasks (same keys as its run_one)."""
    key_params, key_x, key_y = jax.random.split(jax.random.key(sb.SEED), 3)
    params = sb.init_params(key_params, num_tasks)
    x = jax.random.normal(key_x, (sb.BATCH, sb.WIDTHS[0]), jnp.float32)
    y = jax.random.normal(key_y, (sb.BATCH, num_tasks), jnp.float32)
    return params, x, y


class TorchProblem:
    """The PyTorch twin of ``step_benchmark``'s model, initialised from JAX parameters."""

    def __init__(self, torch: Any, params: PyTree, x: Array, y: Array):
        nn = torch.nn
        self.torch = torch
        layers = []
        for layer in params["trunk"]:
            w = np.asarray(layer["w"])
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.T.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"]).copy()))
            layers += [lin, nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        # One nn.Linear(512, 1) per task, column k of the JAX (512, T) head matrix: TorchJD's
        # mtl_backward differentiates each task's own graph after the features, so the heads
        # must not share intermediate nodes (one Linear(512, T) would).
        w = np.asarray(params["heads"]["w"])
        b = np.asarray(params["heads"]["b"])
        self.heads = nn.ModuleList()
        for k in range(w.shape[1]):
            lin = nn.Linear(w.shape[0], 1)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w[:, k][None, :].copy()))
                lin.bias.copy_(torch.from_numpy(b[k:k + 1].copy()))
            self.heads.append(lin)
        self.x = torch.from_numpy(np.asarray(x).copy())
        self.y = torch.from_numpy(np.asarray(y).copy())
        self.trunk_params = list(self.trunk.parameters())
        self.optimizer = torch.optim.Adam(
            self.trunk_params + list(self.heads.parameters()), lr=sb.LEARNING_RATE
        )

    def forward(self) -> tuple[Any, list[Any]]:
        """``(features, losses)``: trunk output (B, 512) and the T per-task MSE scalars."""
        features = self.trunk(self.x)
        losses = [((head(features)[:, 0] - self.y[:, k]) ** 2).mean()
                  for k, head in enumerate(self.heads)]
        return features, losses

    def jd_gradients(self, torchjd: Any, aggregator: Any) -> Any:
        """Fill ``.grad`` with TorchJD's combined gradient; returns the weights."""
        self.optimizer.zero_grad(set_to_none=True)
        features, losses = self.forward()
        torchjd.autojac.mtl_backward(losses, features=features)
        return jac_to_grad_weights(torchjd, self.trunk_params, aggregator)

    def jd_step(self, torchjd: Any, aggregator: Any) -> Callable[[], Any]:
        def call():
            weights = self.jd_gradients(torchjd, aggregator)
            self.optimizer.step()
            return weights

        return call

    def sum_step(self) -> Callable[[], Any]:
        def call():
            self.optimizer.zero_grad(set_to_none=True)
            _, losses = self.forward()
            total = self.torch.stack(losses).sum()
            total.backward()
            self.optimizer.step()
            return total.detach()

        return call

    def grads(self) -> dict[str, np.ndarray]:
        """Current ``.grad`` fields in JAX layout: ``{"trunk0.w": (d_in, d_out), ...}``."""
        out = {}
        linears = [m for m in self.trunk if isinstance(m, self.torch.nn.Linear)]
        for i, lin in enumerate(linears):
            out[f"trunk{i}.w"] = lin.weight.grad.numpy().T.copy()
            out[f"trunk{i}.b"] = lin.bias.grad.numpy().copy()
        out["heads.w"] = np.concatenate([h.weight.grad.numpy().T for h in self.heads], axis=1)
        out["heads.b"] = np.concatenate([h.bias.grad.numpy() for h in self.heads])
        return out


def jac_to_grad_weights(torchjd: Any, tensors: Sequence[Any], aggregator: Any) -> Any:
    """``jac_to_grad`` (it returns the weights for weighted aggregators)."""
    return torchjd.autojac.jac_to_grad(tensors, aggregator)


def flat_jax_grads(grads: PyTree) -> dict[str, np.ndarray]:
    out = {}
    for i, layer in enumerate(grads["trunk"]):
        out[f"trunk{i}.w"] = np.asarray(layer["w"])
        out[f"trunk{i}.b"] = np.asarray(layer["b"])
    out["heads.w"] = np.asarray(grads["heads"]["w"])
    out["heads.b"] = np.asarray(grads["heads"]["b"])
    return out


def relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                        keys: Sequence[str]) -> dict[str, float]:
    """Two measures over ``keys``: largest elementwise |a-b| / max|b| per leaf, and ||a-b||/||b||."""
    per_leaf = max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-30))
                   for k in keys)
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in keys)
    den = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in keys)
    return {"max_leaf_rel": per_leaf, "global_rel": float(np.sqrt(num / max(den, 1e-300)))}


# --- equivalence ---------------------------------------------------------------------------


def check_equivalence(torch: Any, torchjd: Any, num_tasks: int) -> dict[str, Any]:
    """mtopt vs TorchJD combined gradient and weights at the initial parameters."""
    params, x, y = jax_problem(num_tasks)
    out: dict[str, Any] = {}
    for name in AGGREGATORS:
        method = mtopt_method(name)
        grad_fn = jax.jit(mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk))
        grads, info, _ = grad_fn(params, method.init(num_tasks), x, y)
        mine = flat_jax_grads(grads)
        w_mine = np.asarray(info.weights, np.float64)
        for label, tight in (("default", False), ("tight", True)):
            if name == "upgrad" and tight:
                continue
            problem = TorchProblem(torch, params, x, y)
            weights = problem.jd_gradients(torchjd, torchjd_aggregator(torchjd, name, tight=tight))
            theirs = problem.grads()
            w_theirs = weights.detach().numpy().astype(np.float64)
            # TorchJD's heads get the unweighted task gradients: weight them column by column.
            theirs_weighted = dict(theirs)
            theirs_weighted["heads.w"] = theirs["heads.w"] * w_theirs[None, :].astype(np.float32)
            theirs_weighted["heads.b"] = theirs["heads.b"] * w_theirs.astype(np.float32)
            trunk_keys = [k for k in mine if k.startswith("trunk")]
            out[f"{name}_{label}"] = {
                "torchjd_aggregator": repr(torchjd_aggregator(torchjd, name, tight=tight)),
                "mtopt_method": method.name,
                "trunk_grad": relative_difference(mine, theirs, trunk_keys),
                "head_grad_weighted": relative_difference(mine, theirs_weighted,
                                                          ["heads.w", "heads.b"]),
                "weights_max_abs_diff": float(np.max(np.abs(w_mine - w_theirs))),
                "weights_max_rel_diff": float(np.max(np.abs(w_mine - w_theirs)
                                                     / np.maximum(np.abs(w_theirs), 1e-30))),
                "mtopt_weights": w_mine.tolist(),
                "torchjd_weights": w_theirs.tolist(),
            }
    return out


# --- timing --------------------------------------------------------------------------------


def make_jax_steps(num_tasks: int, optimizer: optax.GradientTransformation
                   ) -> dict[str, tuple[Callable[..., Any], Any]]:
    """``{variant: (jitted step, initial method state)}``; steps as in step_benchmark."""

    def apply(grads, params, opt_state):
        return base.optax_step(optimizer, grads, opt_state, params)

    def sum_step(params, opt_state, extra, x, y):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(sb.task_losses(p, x, y)))(params)
        params, opt_state = apply(grads, params, opt_state)
        return params, opt_state, extra, loss

    def mtopt_step(grad_fn):
        def step(params, opt_state, method_state, x, y):
            grads, info, method_state = grad_fn(params, method_state, x, y)
            params, opt_state = apply(grads, params, opt_state)
            return params, opt_state, method_state, info.weights

        return step

    steps: dict[str, tuple[Callable[..., Any], Any]] = {
        "jax_sum": (sum_step, jnp.zeros((), jnp.float32)),
    }
    for name in AGGREGATORS:
        method = mtopt_method(name)
        full = mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk)
        rep = mtopt.representation_value_and_grad(sb.encode, sb.heads, method)
        light = mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk,
                                     low_memory=True)
        steps[f"mtopt_{name}"] = (mtopt_step(full), method.init(num_tasks))
        steps[f"mtopt_{name}_rep"] = (mtopt_step(rep), method.init(num_tasks))
        steps[f"mtopt_{name}_light"] = (mtopt_step(light), method.init(num_tasks))
    return {name: (jax.jit(fn, donate_argnums=(0, 1)), extra)
            for name, (fn, extra) in steps.items()}


def run(num_tasks: int = 8, *, reps: int = 20, warmup: int = 2,
        progress: Optional[Callable[[int], None]] = None) -> Optional[dict[str, Any]]:
    """Equivalence check and interleaved timing; ``None`` when torch/torchjd are missing."""
    mods = import_torchjd()
    if mods is None:
        return None
    torch, torchjd = mods
    threads = num_threads()
    torch.set_num_threads(threads)
    equivalence = check_equivalence(torch, torchjd, num_tasks)

    params, x, y = jax_problem(num_tasks)
    optimizer = optax.adam(sb.LEARNING_RATE)
    calls: dict[str, Callable[[], Any]] = {}
    for name, (step, extra) in make_jax_steps(num_tasks, optimizer).items():
        own = jax.tree.map(jnp.copy, params)
        calls[name] = _timing.threaded(step, (own, optimizer.init(own), extra), x, y)
    calls["torch_sum"] = TorchProblem(torch, params, x, y).sum_step()
    for name in AGGREGATORS:
        calls[f"torchjd_{name}"] = TorchProblem(torch, params, x, y).jd_step(
            torchjd, torchjd_aggregator(torchjd, name))
    timings = _timing.time_interleaved(calls, reps=reps, warmup=warmup, progress=progress)

    variants = {name: t.to_dict() for name, t in timings.items()}
    checks = []
    for name in AGGREGATORS:
        ref = timings[f"torchjd_{name}"]
        for suffix, limit in (("", FULL_TARGET), ("_rep", REP_TARGET)):
            mine = timings[f"mtopt_{name}{suffix}"]
            ratio = ref.median_ms / mine.median_ms
            checks.append({
                "torchjd": f"torchjd_{name}", "mtopt": f"mtopt_{name}{suffix}",
                "speedup": ratio, "target": limit, "pass": bool(ratio >= limit),
                "paired_speedup": 1.0 / _timing.paired_ratio(mine.samples_ms, ref.samples_ms),
            })
    return {
        "num_tasks": num_tasks,
        "num_params": sb.num_params(params),
        "batch": sb.BATCH,
        "threads": {"torch": torch.get_num_threads(), "affinity_cores": threads},
        "versions": {"torch": torch.__version__,
                     "torchjd": getattr(torchjd, "__version__", _dist_version("torchjd"))},
        "equivalence": equivalence,
        "variants": variants,
        "framework_sum_ratio": timings["torch_sum"].median_ms / timings["jax_sum"].median_ms,
        "checks": checks,
    }


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 -- a version string is informational only
        return None


# --- reporting -----------------------------------------------------------------------------


def format_report(record: dict[str, Any]) -> str:
    """Equivalence lines, the timing table and the speed-up checks."""
    lines = [f"TorchJD {record['versions']['torchjd']} (torch {record['versions']['torch']}, "
             f"{record['threads']['torch']} threads) vs mtopt, T = {record['num_tasks']}, "
             f"{record['num_params']:,} parameters, batch {record['batch']}",
             "Equivalence at the initial parameters (float32):"]
    for label, e in record["equivalence"].items():
        lines.append(
            f"  {label:<15} trunk grad max rel {e['trunk_grad']['max_leaf_rel']:.1e} "
            f"(global {e['trunk_grad']['global_rel']:.1e}), head grad (x w_k) max rel "
            f"{e['head_grad_weighted']['max_leaf_rel']:.1e}, weights max abs diff "
            f"{e['weights_max_abs_diff']:.1e}")
    lines.append(f"  {'variant':<17} {'median ms':>10} {'q25-q75 ms':>17}")
    for name, v in record["variants"].items():
        quart = f"{v['q25_ms']:.1f}-{v['q75_ms']:.1f}"
        lines.append(f"  {name:<17} {v['median_ms']:>10.1f} {quart:>17}")
    lines.append(f"  torch_sum / jax_sum = {record['framework_sum_ratio']:.2f} "
                 "(plain step, framework against framework)")
    for c in record["checks"]:
        verdict = "PASS" if c["pass"] else "MISS"
        lines.append(f"  {c['torchjd']} / {c['mtopt']} = {c['speedup']:.2f}x  "
                     f"(target >= {c['target']:.0f}x)  {verdict}  (paired {c['paired_speedup']:.2f}x)")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed steps (smoke test)")
    parser.add_argument("--tasks", type=int, default=8, help="number of tasks T (default 8)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per variant (default 20; quick: 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds after compilation (default 2; quick: 1)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for the JSON")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.tasks < 1 or args.reps < 1 or args.warmup < 0:
        parser.error("--tasks and --reps must be >= 1, --warmup >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    """Run the comparison, print it, write ``torchjd_benchmark.json``; return the payload."""
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    n_calls = _timing.calls_needed(2 + 4 * len(AGGREGATORS), reps=args.reps, warmup=args.warmup)
    bar = tqdm(total=n_calls, unit="step", leave=False, desc="torchjd") if tqdm else None
    try:
        record = run(args.tasks, reps=args.reps, warmup=args.warmup,
                     progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if record is None:
        return None
    print(format_report(record))
    payload = {"benchmark": "torchjd_benchmark", "machine": _timing.machine_info(),
               "config": {"tasks": args.tasks, "reps": args.reps, "warmup": args.warmup,
                          "quick": args.quick, "targets": {"full": FULL_TARGET,
                                                           "representation": REP_TARGET}},
               "results": record}
    path = _timing.write_json(os.path.join(args.out, "torchjd_benchmark.json"), payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
