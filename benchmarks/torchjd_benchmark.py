"""TorchJD side by side: the same model, data and aggregators in TorchJD and in mtopt.

Model and data: ``step_benchmark.py``'s setting (shared ReLU MLP trunk
512 -> 1024 -> 1024 -> 512, 2.1M parameters, one linear (512, T) head matrix,
per-task mean squared error, a fixed random batch of 256), T = 8 by default.
The PyTorch model is built from the JAX parameters (same initial values, weights
transposed into ``nn.Linear`` layout; the (512, T) head matrix becomes T
``nn.Linear(512, 1)`` heads, its columns, as TorchJD's ``mtl_backward`` wants one
graph per task after the features) and the same batch.

Steps timed (each one full training step with ``adam(1e-3)``, interleaved, see
``_timing.py``), compared like with like, each pair computing the same Gramian
and the same combined gradient:

| TorchJD | mtopt | what both compute |
|---|---|---|
| ``torchjd_<m>``: ``torchjd.autojac.mtl_backward(losses, features=trunk output)`` + ``jac_to_grad(trunk params, <M>())`` | ``mtopt_<m>``: ``value_and_grad(..., gramian="jacobian")`` | the T x P trunk Jacobian, its Gramian, the combined gradient |
| ``torchjd_<m>_autogram``: ``torchjd.autogram.Engine(*trunk linears)``, ``compute_gramian(losses)``, ``<M>Weighting()``, ``losses.backward(weights)`` | ``mtopt_<m>_structured``: ``gramian="structured"``; ``mtopt_<m>_light``: ``gramian="low_memory"`` | the trunk Gramian without the Jacobian, the combined gradient |

Also timed, for reference: ``torch_sum`` and ``jax_sum`` (each framework's summed
loss step), ``floor`` (``gramian_benchmark.py``'s: one summed gradient plus T
reverse passes through the activations only), and ``mtopt_<m>_rep``
(``representation_value_and_grad``: weights from the gradients with respect to
the trunk *output*, MGDA-UB style). The last is a different, cheaper method
(its Gramian is not the trunk Gramian), so its ratio to TorchJD is a **cost
comparison**, not a speed-up of the same computation.

for ``<m>`` in ``upgrad`` and ``mgda``. mtopt's UPGrad is built with
``norm_eps=1e-4, reg_eps=1e-4``, TorchJD's defaults, so both solve the same
problem. Before timing, the combined gradients at the initial parameters are
compared (float32): trunk gradient, weights, and head gradient. Conventions that
differ by design: TorchJD's ``mtl_backward`` gives each head its task's unweighted
gradient, mtopt the weighted one (``w_k dL_k/dhead``), so head
gradients are compared column by column after multiplying TorchJD's by
``w_k`` (the autogram step, ``losses.backward(weights)``, weights them as mtopt
does); TorchJD's MGDA is Frank-Wolfe stopped at step size ``epsilon = 1e-3``
(max 100 iterations), mtopt's MGDA is solved to ``tol = 1e-7``, so MGDA is also
compared against TorchJD's ``MGDA(epsilon=1e-8, max_iters=100000)``.

Threads: ``torch.set_num_threads`` is set to the number of cores this process may
use (``os.sched_getaffinity``), which is also the size of XLA's CPU thread pool.

Targets: TorchJD autojac / mtopt Jacobian >= 2 (issue 6); on the 2.1M trunk at
T = 8 and 16, TorchJD autojac and autogram / mtopt structured >= 2.5, and on the
21M trunk (``--hidden 4096``) at T = 16, TorchJD autogram / mtopt structured >= 4
(issue 14).

Usage::

    python benchmarks/torchjd_benchmark.py                    # T in {2, 4, 8, 16, 32}
    python benchmarks/torchjd_benchmark.py --quick            # T = 4, 3 timed steps
    python benchmarks/torchjd_benchmark.py --hidden 4096 --tasks 16 --reps 5   # 21M trunk

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
import gramian_benchmark as gb  # noqa: E402
import step_benchmark as sb  # noqa: E402

AGGREGATORS = ("upgrad", "mgda")
DEFAULT_TASKS = (2, 4, 8, 16, 32)
# (TorchJD variant suffix, mtopt variant suffix, smallest speed-up, where it applies:
# None = everywhere, else (hidden width, tasks)).
TARGETS = (
    ("", "", 2.0, None),
    ("", "_structured", 2.5, (1024, (8, 16))),
    ("_autogram", "_structured", 2.5, (1024, (8, 16))),
    ("_autogram", "_structured", 4.0, (4096, (16,))),
)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Array = jax.Array
PyTree = Any


def import_torchjd() -> Optional[tuple[Any, Any]]:
    """``(torch, torchjd)`` or ``None`` (with a printed note) when either is missing."""
    try:
        import torch
        import torchjd
        import torchjd.aggregation  # noqa: F401
        import torchjd.autogram  # noqa: F401
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


def torchjd_weighting(torchjd: Any, name: str) -> Any:
    """TorchJD's weighting behind its default aggregator ``name`` (for autogram)."""
    agg = torchjd.aggregation
    if name == "upgrad":
        return agg.UPGradWeighting()
    if name == "mgda":
        return agg.MGDAWeighting()
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


def jax_problem(num_tasks: int, hidden: int = 1024) -> tuple[PyTree, Array, Array]:
    """``step_benchmark``'s parameters and batch for T tasks (same keys as its run_one),
    with hidden width ``hidden``."""
    model = gb.mlp_model(num_tasks, hidden=hidden)
    return model.params, model.data, model.target


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
        return self._step(lambda: self.jd_gradients(torchjd, aggregator))

    def autogram_gradients(self, torchjd: Any, weighting: Any) -> Any:
        """Fill ``.grad`` by TorchJD's autogram route; returns the weights."""
        if not hasattr(self, "engine"):  # created once, before the first backward pass
            linears = [m for m in self.trunk if isinstance(m, self.torch.nn.Linear)]
            self.engine = torchjd.autogram.Engine(*linears, batch_dim=None)
        self.optimizer.zero_grad(set_to_none=True)
        _, losses = self.forward()
        losses = self.torch.stack(losses)
        weights = weighting(self.engine.compute_gramian(losses))
        losses.backward(weights)
        return weights

    def autogram_step(self, torchjd: Any, weighting: Any) -> Callable[[], Any]:
        return self._step(lambda: self.autogram_gradients(torchjd, weighting))

    def _step(self, gradients: Callable[[], Any]) -> Callable[[], Any]:
        """A training step: ``gradients()`` fills ``.grad`` (returning the weights), Adam."""
        def call():
            weights = gradients()
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


def _compare(mine: dict[str, np.ndarray], w_mine: np.ndarray, theirs: dict[str, np.ndarray],
             w_theirs: np.ndarray, *, heads_weighted: bool) -> dict[str, Any]:
    if not heads_weighted:  # mtl_backward: each head gets its task's unweighted gradient
        theirs = dict(theirs)
        theirs["heads.w"] = theirs["heads.w"] * w_theirs[None, :].astype(np.float32)
        theirs["heads.b"] = theirs["heads.b"] * w_theirs.astype(np.float32)
    trunk_keys = [k for k in mine if k.startswith("trunk")]
    return {
        "trunk_grad": relative_difference(mine, theirs, trunk_keys),
        "head_grad_weighted": relative_difference(mine, theirs, ["heads.w", "heads.b"]),
        "weights_max_abs_diff": float(np.max(np.abs(w_mine - w_theirs))),
        "weights_max_rel_diff": float(np.max(np.abs(w_mine - w_theirs)
                                             / np.maximum(np.abs(w_theirs), 1e-30))),
        "mtopt_weights": w_mine.tolist(),
        "torchjd_weights": w_theirs.tolist(),
    }


def check_equivalence(torch: Any, torchjd: Any, num_tasks: int,
                      hidden: int = 1024) -> dict[str, Any]:
    """mtopt vs TorchJD combined gradient and weights at the initial parameters: the
    Jacobian path against autojac, the structured path against autogram."""
    params, x, y = jax_problem(num_tasks, hidden)
    out: dict[str, Any] = {}
    for name in AGGREGATORS:
        method = mtopt_method(name)
        for path in ("jacobian", "structured"):
            grad_fn = jax.jit(mtopt.value_and_grad(sb.task_losses, method, shared=sb.is_trunk,
                                                   gramian=path))
            grads, info, _ = grad_fn(params, method.init(num_tasks), x, y)
            mine, w_mine = flat_jax_grads(grads), np.asarray(info.weights, np.float64)
            if path == "jacobian":
                runs = [("default", False)] + ([("tight", True)] if name == "mgda" else [])
                for label, tight in runs:
                    problem = TorchProblem(torch, params, x, y)
                    agg = torchjd_aggregator(torchjd, name, tight=tight)
                    weights = problem.jd_gradients(torchjd, agg)
                    out[f"{name}_{label}"] = {
                        "torchjd": f"autojac {agg!r}", "mtopt": f"{method.name}, gramian=jacobian",
                        **_compare(mine, w_mine, problem.grads(),
                                   weights.detach().numpy().astype(np.float64),
                                   heads_weighted=False)}
            else:
                problem = TorchProblem(torch, params, x, y)
                weighting = torchjd_weighting(torchjd, name)
                weights = problem.autogram_gradients(torchjd, weighting)
                out[f"{name}_autogram"] = {
                    "torchjd": f"autogram {weighting!r}",
                    "mtopt": f"{method.name}, gramian=structured",
                    **_compare(mine, w_mine, problem.grads(),
                               weights.detach().numpy().astype(np.float64),
                               heads_weighted=True)}
    return out


# --- timing --------------------------------------------------------------------------------


def make_jax_steps(num_tasks: int, optimizer: optax.GradientTransformation, hidden: int = 1024
                   ) -> dict[str, tuple[Callable[..., Any], Any]]:
    """``{variant: (jitted step, initial method state)}``; steps as in gramian_benchmark."""
    model = gb.mlp_model(num_tasks, hidden=hidden)
    methods = {name: mtopt_method(name) for name in AGGREGATORS}
    steps = gb.make_steps(model, num_tasks, methods, optimizer)
    renamed = {"jacobian": "", "structured": "_structured", "low_memory": "_light"}
    out: dict[str, tuple[Callable[..., Any], Any]] = {"jax_sum": steps["sum"],
                                                      "floor": steps["floor"]}
    for name, method in methods.items():
        for path, suffix in renamed.items():
            out[f"mtopt_{name}{suffix}"] = steps[f"{path}_{name}"]
        rep = mtopt.representation_value_and_grad(sb.encode, sb.heads, method)

        def rep_step(params, opt_state, method_state, x, y, rep=rep):
            grads, info, method_state = rep(params, method_state, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, method_state, info.total

        out[f"mtopt_{name}_rep"] = (rep_step, method.init(num_tasks))
    return {name: (jax.jit(fn, donate_argnums=(0, 1)), extra) for name, (fn, extra) in out.items()}


def num_variants() -> int:
    """How many steps one run times (for progress bars)."""
    return 3 + 6 * len(AGGREGATORS)


def run(num_tasks: int = 8, *, reps: int = 20, warmup: int = 2, hidden: int = 1024,
        progress: Optional[Callable[[int], None]] = None) -> Optional[dict[str, Any]]:
    """Equivalence check and interleaved timing; ``None`` when torch/torchjd are missing."""
    mods = import_torchjd()
    if mods is None:
        return None
    torch, torchjd = mods
    threads = num_threads()
    torch.set_num_threads(threads)
    equivalence = check_equivalence(torch, torchjd, num_tasks, hidden)

    params, x, y = jax_problem(num_tasks, hidden)
    optimizer = optax.adam(sb.LEARNING_RATE)
    calls: dict[str, Callable[[], Any]] = {}
    for name, (step, extra) in make_jax_steps(num_tasks, optimizer, hidden).items():
        own = jax.tree.map(jnp.copy, params)
        calls[name] = _timing.threaded(step, (own, optimizer.init(own), extra), x, y)
    calls["torch_sum"] = TorchProblem(torch, params, x, y).sum_step()
    for name in AGGREGATORS:
        calls[f"torchjd_{name}"] = TorchProblem(torch, params, x, y).jd_step(
            torchjd, torchjd_aggregator(torchjd, name))
        calls[f"torchjd_{name}_autogram"] = TorchProblem(torch, params, x, y).autogram_step(
            torchjd, torchjd_weighting(torchjd, name))
    timings = _timing.time_interleaved(calls, reps=reps, warmup=warmup, progress=progress)

    variants = {name: t.to_dict() for name, t in timings.items()}
    for name, v in variants.items():
        v["ratio_to_floor"] = timings[name].median_ms / timings["floor"].median_ms
    pairs = []
    for name in AGGREGATORS:
        for theirs, mine in (("", ""), ("_autogram", "_structured"), ("", "_structured"),
                             ("_autogram", "_light")):
            ref, got = timings[f"torchjd_{name}{theirs}"], timings[f"mtopt_{name}{mine}"]
            target = [limit for t, m, limit, where in TARGETS if (t, m) == (theirs, mine)
                      and (where is None or (hidden == where[0] and num_tasks in where[1]))]
            pairs.append({
                "torchjd": f"torchjd_{name}{theirs}", "mtopt": f"mtopt_{name}{mine}",
                "speedup": ref.median_ms / got.median_ms,
                "paired_speedup": 1.0 / _timing.paired_ratio(got.samples_ms, ref.samples_ms),
                "target": max(target) if target else None,
            })
        for p in pairs[-4:]:
            p["pass"] = None if p["target"] is None else bool(p["speedup"] >= p["target"])
        rep = timings[f"mtopt_{name}_rep"]
        pairs.append({
            "torchjd": f"torchjd_{name}", "mtopt": f"mtopt_{name}_rep",
            "cost_ratio": timings[f"torchjd_{name}"].median_ms / rep.median_ms,
            "note": "cost comparison: representation mode is a different, cheaper method",
        })
    return {
        "num_tasks": num_tasks,
        "hidden": hidden,
        "num_params": sb.num_params(params),
        "batch": sb.BATCH,
        "threads": {"torch": torch.get_num_threads(), "affinity_cores": threads},
        "versions": {"torch": torch.__version__,
                     "torchjd": getattr(torchjd, "__version__", _dist_version("torchjd"))},
        "equivalence": equivalence,
        "variants": variants,
        "framework_sum_ratio": timings["torch_sum"].median_ms / timings["jax_sum"].median_ms,
        "checks": pairs,
    }


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 -- a version string is informational only
        return None


# --- reporting -----------------------------------------------------------------------------


def format_report(record: dict[str, Any]) -> str:
    """Equivalence lines, the timing table and the like-with-like speed-ups."""
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
    lines.append(f"  {'variant':<24} {'median ms':>10} {'q25-q75 ms':>17} {'x floor':>8}")
    for name, v in record["variants"].items():
        quart = f"{v['q25_ms']:.1f}-{v['q75_ms']:.1f}"
        lines.append(f"  {name:<24} {v['median_ms']:>10.1f} {quart:>17} "
                     f"{v['ratio_to_floor']:>8.2f}")
    lines.append(f"  torch_sum / jax_sum = {record['framework_sum_ratio']:.2f} "
                 "(plain step, framework against framework)")
    for c in record["checks"]:
        if "cost_ratio" in c:
            lines.append(f"  {c['torchjd']} / {c['mtopt']} = {c['cost_ratio']:.2f}x  "
                         f"({c['note']})")
            continue
        verdict = ("" if c["target"] is None else
                   f"  (target >= {c['target']:g}x)  {'PASS' if c['pass'] else 'MISS'}")
        lines.append(f"  {c['torchjd']} / {c['mtopt']} = {c['speedup']:.2f}x{verdict}  "
                     f"(paired {c['paired_speedup']:.2f}x)")
    return "\n".join(lines)


def format_summary(records: Sequence[dict[str, Any]]) -> str:
    """Speed-ups of the same computation, one line per T."""
    names = [f"{c['torchjd']}/{c['mtopt']}" for c in records[0]["checks"] if "speedup" in c]
    short = [n.replace("torchjd_", "").replace("mtopt_", "") for n in names]
    lines = ["TorchJD time / mtopt time, same computation (same run per T):",
             f"  {'T':>3} {'params':>11} " + " ".join(f"{s:>26}" for s in short)]
    for r in records:
        cells = " ".join(f"{c['speedup']:>26.2f}" for c in r["checks"] if "speedup" in c)
        lines.append(f"  {r['num_tasks']:>3} {r['num_params']:>11,} {cells}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 4, 3 timed steps (smoke test)")
    parser.add_argument("--tasks", type=int, nargs="+", default=None,
                        help="numbers of tasks T (default 2 4 8 16 32; quick: 4)")
    parser.add_argument("--hidden", type=int, default=1024,
                        help="hidden width of the trunk (1024: 2.1M parameters; 4096: 21M)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per variant (default 20; quick: 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds after compilation (default 2; quick: 1)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for the JSON")
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [4] if args.quick else list(DEFAULT_TASKS)
    if args.reps is None:
        args.reps = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if min(args.tasks) < 1 or args.reps < 1 or args.warmup < 0 or args.hidden < 1:
        parser.error("--tasks, --hidden and --reps must be >= 1, --warmup >= 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict[str, Any]]:
    """Run the comparison, print it, write ``torchjd_benchmark.json``; return the payload."""
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    n_calls = len(args.tasks) * _timing.calls_needed(num_variants(), reps=args.reps,
                                                     warmup=args.warmup)
    bar = tqdm(total=n_calls, unit="step", leave=False, desc="torchjd") if tqdm else None
    records = []
    try:
        for num_tasks in args.tasks:
            if bar is not None:
                bar.set_description(f"torchjd T={num_tasks}")
            record = run(num_tasks, reps=args.reps, warmup=args.warmup, hidden=args.hidden,
                         progress=bar.update if bar is not None else None)
            if record is None:
                return None
            records.append(record)
            (bar.write if bar is not None else print)(format_report(record) + "\n")
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(records))
    payload = {"benchmark": "torchjd_benchmark", "machine": _timing.machine_info(),
               "config": {"tasks": args.tasks, "hidden": args.hidden, "reps": args.reps,
                          "warmup": args.warmup, "quick": args.quick,
                          "targets": [list(t) for t in TARGETS]},
               "results": records}
    suffix = "" if args.hidden == 1024 else f"_hidden{args.hidden}"
    path = _timing.write_json(os.path.join(args.out, f"torchjd_benchmark{suffix}.json"), payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
