"""Aggregation benchmark: what each method's weighting and aggregation cost.

For T tasks and P = 1,050,112 shared parameters (the trunk of an MLP
512 -> 1024 -> 512), every registered method is timed three ways:

- ``single``: ``jax.jit(method.update)`` on one fixed (T, T) Gramian: the cost
  of the weighting alone;
- ``batch``: ``jax.jit(jax.vmap(method.update))`` on a batch of 64 Gramians
  (64 losses vectors, 64 states, 64 keys);
- ``aggregate``: from per-task gradients already computed (a T x P Jacobian
  pytree) to the combined update: ``mtopt._src.aggregate.aggregate`` (Gramian +
  weighting + combination), jitted.

Gramian methods are the subject; loss-only methods (``single`` and ``batch``
only: their aggregation is their update plus ``mtopt.combine``) and Jacobian
methods (``single`` and ``aggregate``; their update reads the T x P Jacobian,
so a batch of 64 is not run) are included and labelled. Two baselines are timed
with ``aggregate``: ``gramian`` (``mtopt.gramian`` of the Jacobian alone) and
``combine`` (``mtopt.combine`` with fixed weights alone).

The gradients have a realistic amount of conflict: task ``i`` has gradient
``g_i = s_i (c_i u + e_i)`` with ``u`` a shared unit direction, ``e_i`` noise of
norm about 1, ``c_i`` evenly spaced in [-0.5, 1.5] and shuffled (a quarter of the
tasks point against the shared direction; about 40% of the pairs of tasks have a
negative cosine, the most negative about -0.37) and scales ``s_i = exp(U(-1, 1))``
(norms up to about 10x apart). Each method's state is advanced by three updates on
other Gramians before timing (a mid-training state, e.g. Nash-MTL warm-started
from another step's solution); timed calls all start from that state.

At T = 8 (``--ratio-tasks``) the per-task Jacobian of the MLP with T linear
heads (per-task mean squared error, batch 256) is timed with
``mtopt.task_jacobian``, and each method's ``single`` time is divided by it.
Target (issue 3): the weighting of every Gramian method costs under 10% of that
Jacobian.

Run as a script it sets ``OPENBLAS_NUM_THREADS=1`` unless already set (see the
comment below the imports' ``__future__`` line).

Usage::

    python benchmarks/aggregation_benchmark.py            # T in {2, 8, 32, 128}, 8-16 min here
    python benchmarks/aggregation_benchmark.py --quick    # T in {2, 8}, small P, few reps
    python benchmarks/aggregation_benchmark.py --tasks 8 32 --methods mgda upgrad
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # JAX's CPU eigh and Cholesky call OpenBLAS (through SciPy). On a small shared machine
    # its worker threads oversubscribe the cores: a 128 x 128 eigh then takes 100-250 ms
    # instead of 0.8 ms, at random. One thread is as fast for T x T problems and steady.
    # Set before JAX loads OpenBLAS; an OPENBLAS_NUM_THREADS already set is kept.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp

import mtopt
from mtopt._src.aggregate import aggregate

import _timing

WIDTHS = (512, 1024, 512)  # trunk of the Jacobian model; its parameters are the P shared ones
QUICK_WIDTHS = (32, 64, 32)
BATCH = 256  # examples in the Jacobian model's batch
NUM_GRAMIANS = 64  # Gramians in the vmapped batch
BATCH_GRAMIAN_DIM = 2048  # columns of the synthetic Jacobians behind the batched Gramians
STATE_STEPS = 3  # updates that advance each method's state before timing
SHARED_MIN, SHARED_MAX = -0.5, 1.5  # c_i: weight of the shared direction, evenly spread
LOG_SCALE = 1.0  # s_i = exp(U(-LOG_SCALE, LOG_SCALE))
TARGET = 0.10  # weighting time / Jacobian time, Gramian methods, at the ratio tasks
SEED = 0
DEFAULT_TASKS = (2, 8, 32, 128)
# (timed reps, untimed warm-up rounds) per phase and number of tasks; few at T = 128.
DEFAULT_REPS = {
    "single": {2: (30, 2), 8: (30, 2), 32: (15, 2), 128: (5, 1)},
    "batch": {2: (10, 1), 8: (10, 1), 32: (5, 1), 128: (2, 0)},
    "aggregate": {2: (10, 1), 8: (10, 1), 32: (5, 1), 128: (2, 0)},
    "jacobian": {8: (10, 2)},
}
# A phase is skipped for a method when one call is expected to take longer than this.
MAX_CALL_SECONDS = 30.0
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
KINDS = {mtopt.Needs.GRAMIAN: "gramian", mtopt.Needs.LOSSES: "losses",
         mtopt.Needs.JACOBIAN: "jacobian"}
BASELINES = ("gramian", "combine")

Array = jax.Array
PyTree = Any


# --- the synthetic task gradients -----------------------------------------------------------


def trunk_shapes(widths: Sequence[int]) -> list[dict[str, tuple[int, ...]]]:
    """Parameter shapes of the trunk: one ``{"w", "b"}`` dict per layer."""
    return [{"w": (d_in, d_out), "b": (d_out,)} for d_in, d_out in zip(widths[:-1], widths[1:])]


def is_shape(x: Any) -> bool:
    return isinstance(x, tuple)


def count(shapes: PyTree) -> int:
    """Number of parameters in a pytree of shapes."""
    return sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=is_shape))


def conflicting_jacobian(key: Array, num_tasks: int, shapes: PyTree) -> PyTree:
    """Task gradients ``g_i = s_i (c_i u + e_i)`` as a Jacobian pytree (leaves ``(T, *shape)``).

    ``u`` is a random unit direction shared by all tasks, ``e_i`` independent
    noise of norm about 1, the ``c_i`` evenly spaced in [-0.5, 1.5] in a random
    order, and ``s_i = exp(U(-1, 1))``.
    """
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_shape)
    total = sum(math.prod(s) for s in leaves)
    k_c, k_s, *k_leaves = jax.random.split(key, 2 + 2 * len(leaves))
    # Evenly spread shared components, shuffled: the same share of conflicting tasks at every T.
    spread = jnp.linspace(SHARED_MIN, SHARED_MAX, num_tasks, dtype=jnp.float32)
    shared = jax.random.permutation(k_c, spread) if num_tasks > 1 else jnp.ones((1,), jnp.float32)
    scales = jnp.exp(jax.random.uniform(k_s, (num_tasks,), jnp.float32, -LOG_SCALE, LOG_SCALE))
    directions = [jax.random.normal(k, s, jnp.float32) for k, s in zip(k_leaves[::2], leaves)]
    norm = jnp.sqrt(sum(jnp.sum(d * d) for d in directions))
    noise_scale = jnp.float32(1.0 / math.sqrt(total))
    out = []
    for d, k, s in zip(directions, k_leaves[1::2], leaves):
        noise = jax.random.normal(k, (num_tasks, *s), jnp.float32) * noise_scale
        expand = (num_tasks,) + (1,) * len(s)
        out.append(jnp.reshape(scales, expand) * (
            jnp.reshape(shared, expand) * (d / norm)[None] + noise))
    return jax.tree.unflatten(treedef, out)


def conflict_stats(gramian: Array) -> dict[str, float]:
    """Share of negative cosines between distinct tasks, the smallest cosine, norm spread."""
    cos = mtopt.cosine_matrix(gramian)
    num_tasks = gramian.shape[0]
    off = ~jnp.eye(num_tasks, dtype=bool)
    norms = jnp.sqrt(jnp.diagonal(gramian))
    pairs = max(num_tasks * (num_tasks - 1), 1)
    return {
        "negative_cosine_fraction": float(jnp.sum((cos < 0) & off)) / pairs,
        "min_cosine": float(jnp.min(jnp.where(off, cos, jnp.inf))) if num_tasks > 1 else 1.0,
        "norm_ratio": float(jnp.max(norms) / jnp.min(norms)),
    }


# --- the Jacobian model (the denominator of the ratio) ---------------------------------------


def init_model(key: Array, widths: Sequence[int], num_tasks: int) -> PyTree:
    """He-initialised trunk and one (width, T) head matrix."""
    keys = jax.random.split(key, len(widths))
    trunk = []
    for k, d_in, d_out in zip(keys[:-1], widths[:-1], widths[1:]):
        scale = jnp.float32(math.sqrt(2.0 / d_in))
        trunk.append({"w": jax.random.normal(k, (d_in, d_out), jnp.float32) * scale,
                      "b": jnp.zeros((d_out,), jnp.float32)})
    scale = jnp.float32(math.sqrt(1.0 / widths[-1]))
    heads = {"w": jax.random.normal(keys[-1], (widths[-1], num_tasks), jnp.float32) * scale,
             "b": jnp.zeros((num_tasks,), jnp.float32)}
    return {"trunk": trunk, "heads": heads}


def task_losses(params: PyTree, x: Array, y: Array) -> Array:
    """Per-task mean squared error of the MLP with T linear heads, (T,)."""
    h = x
    for layer in params["trunk"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    pred = h @ params["heads"]["w"] + params["heads"]["b"][None, :]
    return jnp.mean((pred - y) ** 2, axis=0)


def time_jacobian(num_tasks: int, widths: Sequence[int], *, reps: int, warmup: int,
                  progress=None) -> tuple[_timing.Timing, int]:
    """Median time of ``jax.jit(mtopt.task_jacobian(task_losses))`` and the model's size."""
    k_p, k_x, k_y = jax.random.split(jax.random.key(SEED + 1), 3)
    params = init_model(k_p, widths, num_tasks)
    x = jax.random.normal(k_x, (BATCH, widths[0]), jnp.float32)
    y = jax.random.normal(k_y, (BATCH, num_tasks), jnp.float32)
    jac_fn = jax.jit(mtopt.task_jacobian(task_losses))
    timing = _timing.time_interleaved({"jacobian": lambda: jac_fn(params, x, y)}, reps=reps,
                                      warmup=warmup, progress=progress)["jacobian"]
    size = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
    return timing, size


# --- the methods ----------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """One method ready to run on T tasks."""

    name: str
    kind: str  # "gramian", "losses" or "jacobian"
    method: mtopt.Weighting
    preference: Optional[Array]
    state: Any = None
    compile_ms: float = float("nan")


def build(name: str, num_tasks: int) -> Setup:
    """The method with default options (``linear``: unit weights; ``pmtl``: preferences eye(T))."""
    info = mtopt.method_info(name)
    options: dict[str, Any] = {}
    if name == "linear":
        options["weights"] = [1.0] * num_tasks
    if name == "pmtl":
        options["preferences"] = jnp.eye(num_tasks, dtype=jnp.float32)
    preference = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32) if info.preference else None
    return Setup(name, KINDS[info.needs], mtopt.method(name, **options), preference)


def update_fn(setup: Setup) -> Callable[..., Any]:
    """``(state, losses, gramian, jacobian, key) -> (weights, new_state)``, not jitted."""
    method, preference = setup.method, setup.preference

    def update(state, losses, gramian, jacobian, key):
        return method.update(state, losses, gramian=gramian, jacobian=jacobian, key=key,
                             preference=preference)

    return update


def inputs_for(kind: str, gramian: Array, jacobian: PyTree) -> tuple[Any, Any]:
    """What the update reads, as ``aggregate`` passes it: (gramian, jacobian)."""
    if kind == "losses":
        return None, None
    return gramian, (jacobian if kind == "jacobian" else None)


def broadcast(tree: PyTree, size: int) -> PyTree:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (size, *jnp.shape(x))), tree)


# --- one number of tasks --------------------------------------------------------------------


def phase_reps(phase: str, num_tasks: int, override: Optional[int]) -> tuple[int, int]:
    """(reps, warmup) of a phase: ``--reps`` if given, else the table (nearest smaller T)."""
    if override is not None:
        return override, 1
    table = DEFAULT_REPS[phase]
    known = [t for t in sorted(table) if t <= num_tasks] or [min(table)]
    return table[known[-1]]


def time_phase(fns: dict[str, Callable[[], Any]], phase: str, num_tasks: int,
               reps_override: Optional[int], progress) -> dict[str, dict[str, Any]]:
    if not fns:
        return {}
    reps, warmup = phase_reps(phase, num_tasks, reps_override)
    timings = _timing.time_interleaved(fns, reps=reps, warmup=warmup, progress=progress)
    return {name: t.to_dict() for name, t in timings.items()}


def run_one(num_tasks: int, names: Sequence[str], widths: Sequence[int], *,
            reps: Optional[int], progress=None, log=print) -> dict[str, Any]:
    """Every phase for one T; returns the JSON-ready record."""
    shapes = trunk_shapes(widths)
    num_params = count(shapes)
    k_jac, k_batch, k_loss, k_key = jax.random.split(jax.random.key(SEED + num_tasks), 4)
    jacobian = jax.jit(lambda k: conflicting_jacobian(k, num_tasks, shapes))(k_jac)
    gramian = jax.jit(mtopt.gramian)(jacobian)
    batch_jac = jax.jit(jax.vmap(
        lambda k: conflicting_jacobian(k, num_tasks, [(BATCH_GRAMIAN_DIM,)])
    ))(jax.random.split(k_batch, NUM_GRAMIANS))
    gramians = jax.vmap(mtopt.gramian)(batch_jac)
    del batch_jac
    batch_losses = jax.random.uniform(k_loss, (NUM_GRAMIANS, num_tasks), jnp.float32, 0.5, 2.0)
    losses = batch_losses[0]
    key = k_key
    batch_keys = jax.random.split(k_key, NUM_GRAMIANS)
    template = jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=is_shape)
    mask = jax.tree.map(lambda _: True, template)

    # Build every method and advance its state (the first call also compiles `single`).
    setups, singles, skipped = {}, {}, {}
    for name in names:
        setup = build(name, num_tasks)
        update = jax.jit(update_fn(setup))
        state = setup.method.init(num_tasks, template) if setup.kind == "jacobian" \
            else setup.method.init(num_tasks)
        for step in range(STATE_STEPS):
            g = gramian if setup.kind == "jacobian" else gramians[1 + step]
            g_in, j_in = inputs_for(setup.kind, g, jacobian)
            start = time.perf_counter()
            _, state = jax.block_until_ready(update(state, batch_losses[1 + step], g_in, j_in,
                                                    batch_keys[1 + step]))
            if step == 0:
                setup.compile_ms = (time.perf_counter() - start) * 1e3
        setup.state = state
        setups[name] = setup
        g_in, j_in = inputs_for(setup.kind, gramian, jacobian)
        singles[name] = functools.partial(update, state, losses, g_in, j_in, key)
    log(f"T = {num_tasks}: built {len(setups)} methods")
    single = time_phase(singles, "single", num_tasks, reps, progress)

    # A batch of 64 Gramians (Gramian and loss-only methods).
    batched = {}
    for name, setup in setups.items():
        if setup.kind == "jacobian":
            skipped.setdefault("batch", {})[name] = "reads the T x P Jacobian: not batched"
            continue
        estimate = NUM_GRAMIANS * single[name]["median_ms"] / 1e3
        if estimate > MAX_CALL_SECONDS:
            skipped.setdefault("batch", {})[name] = f"estimated {estimate:.0f} s per call"
            continue
        update = jax.jit(jax.vmap(update_fn(setup), in_axes=(0, 0, 0, None, 0)))
        states = broadcast(setup.state, NUM_GRAMIANS)
        g_in = gramians if setup.kind == "gramian" else None
        batched[name] = functools.partial(update, states, batch_losses, g_in, None, batch_keys)
    log(f"T = {num_tasks}: batch of {NUM_GRAMIANS}")
    batch = time_phase(batched, "batch", num_tasks, reps, progress)

    # From the Jacobian to the combined update: baselines and Gramian methods in one
    # interleaved group, Jacobian methods (which write T x P buffers or masks, and slow
    # down whatever runs right after them) in another.
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "gramian": {
            "gramian": functools.partial(jax.jit(mtopt.gramian), jacobian),
            "combine": functools.partial(jax.jit(mtopt.combine), jacobian,
                                         jnp.ones((num_tasks,), jnp.float32)),
        },
        "jacobian": {},
    }
    for name, setup in setups.items():
        if setup.kind == "losses":
            continue
        estimate = single[name]["median_ms"] / 1e3
        if estimate > MAX_CALL_SECONDS:
            skipped.setdefault("aggregate", {})[name] = f"estimated {estimate:.0f} s per call"
            continue

        def agg(state, losses_, jac, key_, setup=setup):
            return aggregate(setup.method, state, losses_, jac, mask=mask, key=key_,
                             preference=setup.preference)

        groups[setup.kind][name] = functools.partial(jax.jit(agg), setup.state, losses,
                                                     jacobian, key)
    log(f"T = {num_tasks}: Jacobian to update")
    aggregated = {}
    for group in groups.values():
        aggregated.update(time_phase(group, "aggregate", num_tasks, reps, progress))

    return {
        "num_tasks": num_tasks,
        "num_params": num_params,
        "conflict": conflict_stats(gramian),
        "kinds": {name: s.kind for name, s in setups.items()},
        "compile_ms": {name: s.compile_ms for name, s in setups.items()},
        "single": single,
        "batch": batch,
        "aggregate": aggregated,
        "skipped": skipped,
    }


def ratio_record(record: dict[str, Any], jac: _timing.Timing, model_params: int
                 ) -> dict[str, Any]:
    """Weighting (and aggregation) time over the Jacobian time; PASS/MISS for Gramian methods."""
    methods = {}
    for name, t in record["single"].items():
        kind = record["kinds"][name]
        ratio = t["median_ms"] / jac.median_ms
        entry = {"kind": kind, "weighting_ms": t["median_ms"], "ratio": ratio,
                 "pass": bool(ratio < TARGET) if kind == "gramian" else None}
        if name in record["aggregate"]:
            entry["aggregate_ms"] = record["aggregate"][name]["median_ms"]
            entry["aggregate_ratio"] = entry["aggregate_ms"] / jac.median_ms
        methods[name] = entry
    return {"num_tasks": record["num_tasks"], "model_params": model_params,
            "jacobian": jac.to_dict(), "target": TARGET, "methods": methods}


# --- reporting ------------------------------------------------------------------------------


def fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def ordered_names(records: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Gramian methods, then Jacobian methods, then loss-only methods (registry order)."""
    kinds: dict[str, str] = {}
    for r in records:
        kinds.update(r["kinds"])
    rank = {"gramian": 0, "jacobian": 1, "losses": 2}
    return sorted(kinds, key=lambda n: rank[kinds[n]]), kinds


def format_tables(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one table per phase (median ms, rows = methods, columns = T)."""
    names, kinds = ordered_names(records)
    tasks = [r["num_tasks"] for r in records]
    head = "| method | needs | " + " | ".join(f"T={t}" for t in tasks) + " |"
    rule = "|---|---|" + "---:|" * len(tasks)
    titles = {
        "single": "Weighting on one Gramian: `jit(update)`, median ms",
        "batch": f"Weighting on a batch of {NUM_GRAMIANS} Gramians: `jit(vmap(update))`, "
                 "median ms per batch",
        "aggregate": "Jacobian to update: `aggregate` (Gramian + weighting + combine), median ms",
    }
    out = []
    for phase, title in titles.items():
        rows = [f"**{title}**", "", head, rule]
        phase_names = list(BASELINES) + names if phase == "aggregate" else names
        for name in phase_names:
            cells = []
            for r in records:
                t = r[phase].get(name)
                why = r["skipped"].get(phase, {}).get(name)
                cells.append(fmt_ms(t["median_ms"]) if t else
                             ("n/a" if why and "not batched" in why else "skip" if why else "–"))
            if all(c == "–" for c in cells):
                continue
            kind = "baseline" if name in BASELINES else kinds[name]
            rows.append(f"| `{name}` | {kind} | " + " | ".join(cells) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def format_ratios(ratios: Sequence[dict[str, Any]]) -> str:
    """Markdown: weighting / Jacobian at the ratio tasks, PASS/MISS for Gramian methods."""
    out = []
    for rr in ratios:
        jac = rr["jacobian"]
        rows = [
            (f"**T = {rr['num_tasks']}: weighting / per-task Jacobian** (MLP "
             f"{rr['model_params']:,} parameters, batch {BATCH}: `task_jacobian` "
             f"{fmt_ms(jac['median_ms'])} ms median of {jac['reps']}; target < "
             f"{100 * rr['target']:.0f}% for Gramian methods)"),
            "",
            "| method | needs | weighting ms | / Jacobian | target | aggregate ms | / Jacobian |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        names, _ = ordered_names([{"kinds": {n: m["kind"] for n, m in rr["methods"].items()}}])
        for name in names:
            m = rr["methods"][name]
            verdict = "–" if m["pass"] is None else ("PASS" if m["pass"] else "MISS")
            agg = m.get("aggregate_ms")
            agg_ratio = f"{100 * m['aggregate_ratio']:.1f}%" if agg is not None else "–"
            rows.append(f"| `{name}` | {m['kind']} | {fmt_ms(m['weighting_ms'])} | "
                        f"{100 * m['ratio']:.2f}% | {verdict} | {fmt_ms(agg)} | {agg_ratio} |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def format_header(records: Sequence[dict[str, Any]]) -> str:
    lines = ["Gradients (conflict of the timed Gramian):"]
    for r in records:
        c = r["conflict"]
        lines.append(f"  T = {r['num_tasks']:>3}: P = {r['num_params']:,}, "
                     f"{100 * c['negative_cosine_fraction']:.0f}% negative cosines, "
                     f"min cosine {c['min_cosine']:.2f}, norm ratio {c['norm_ratio']:.1f}")
    skipped = [(r["num_tasks"], phase, name, why) for r in records
               for phase, d in r["skipped"].items() for name, why in d.items()]
    for t, phase, name, why in skipped:
        if "not batched" not in why:
            lines.append(f"  skipped: T = {t} {phase} {name}: {why}")
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: str) -> Optional[str]:
    """Log-log: weighting time vs T (left), Jacobian-to-update time vs T (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'mtopt[bench]').")
        return None
    names, kinds = ordered_names(records)
    tasks = [r["num_tasks"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5))
    styles = {"gramian": "-", "jacobian": "--", "losses": ":", "baseline": "-"}
    for ax, phase, title in ((left, "single", "Weighting on one Gramian"),
                             (right, "aggregate",
                              f"Jacobian to update (P = {records[0]['num_params']:,})")):
        plotted = list(BASELINES) + names if phase == "aggregate" else names
        for i, name in enumerate(plotted):
            kind = "baseline" if name in BASELINES else kinds[name]
            if kind == "losses" and name not in ("equal", "famo"):
                continue  # loss-only methods all cost about the same: show two
            pts = [(r["num_tasks"], r[phase][name]["median_ms"]) for r in records
                   if name in r[phase]]
            if not pts:
                continue
            xs, ys = zip(*pts)
            color = "black" if kind == "baseline" else plt.get_cmap("tab20")(i % 20)
            ax.plot(xs, ys, styles[kind], marker="osv^DPX*<>"[i % 10], ms=4, color=color,
                    lw=2.0 if kind == "baseline" else 1.2, label=f"{name} ({kind})")
        ax.set(xscale="log", yscale="log", xlabel="number of tasks T", ylabel="median ms",
               title=title)
        ax.set_xticks(tasks)
        ax.set_xticklabels([str(t) for t in tasks])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
    left.legend(fontsize=6.5, ncol=2, loc="upper left")
    right.legend(fontsize=6.5, ncol=2, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="T in {2, 8}, a small trunk (P = 4,192), 2 reps (smoke test)")
    parser.add_argument("--tasks", type=int, nargs="+", default=None,
                        help="numbers of tasks T (default 2 8 32 128; quick: 2 8)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="registry names to time (default: all)")
    parser.add_argument("--ratio-tasks", type=int, nargs="*", default=None,
                        help="T at which the Jacobian is timed for the ratio (default 8)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed calls per phase, overriding the per-T defaults "
                             "(30/30/15/5 single, 10/10/5/2 batch and aggregate)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder for aggregation_benchmark.json and .png")
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [2, 8] if args.quick else list(DEFAULT_TASKS)
    if args.ratio_tasks is None:
        args.ratio_tasks = [8]
    if args.reps is None and args.quick:
        args.reps = 2
    if args.methods is None:
        args.methods = list(mtopt.method_names())
    unknown = sorted(set(args.methods) - set(mtopt.method_names()))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {', '.join(mtopt.method_names())}")
    if any(t < 1 for t in args.tasks + args.ratio_tasks):
        parser.error("numbers of tasks must be positive")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    args.widths = QUICK_WIDTHS if args.quick else WIDTHS
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, write JSON (and a PNG); return the JSON payload."""
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    machine = _timing.machine_info()
    print(f"aggregation benchmark, {machine['date']}, {machine['platform']}, "
          f"{machine['cpu_count']} CPUs, jax {machine['jax']} ({machine['backend']})", flush=True)
    bar = tqdm(unit="call", leave=False) if tqdm is not None else None
    log = bar.write if bar is not None else (lambda s: print(s, flush=True))
    progress = bar.update if bar is not None else None
    started = time.perf_counter()
    records, ratios = [], []
    try:
        for num_tasks in args.tasks:
            if bar is not None:
                bar.set_description(f"T={num_tasks}")
            record = run_one(num_tasks, args.methods, args.widths, reps=args.reps,
                             progress=progress, log=log)
            records.append(record)
            if num_tasks in args.ratio_tasks:
                reps, warmup = phase_reps("jacobian", num_tasks, args.reps)
                jac, size = time_jacobian(num_tasks, args.widths, reps=reps, warmup=warmup,
                                          progress=progress)
                ratios.append(ratio_record(record, jac, size))
            log(f"T = {num_tasks} done after {time.perf_counter() - started:.0f} s")
    finally:
        if bar is not None:
            bar.close()
    print()
    print(format_header(records) + "\n")
    print(format_tables(records) + "\n")
    if ratios:
        print(format_ratios(ratios) + "\n")
    elapsed = time.perf_counter() - started
    payload = {
        "benchmark": "aggregation_benchmark",
        "machine": machine,
        "config": {
            "trunk_widths": list(args.widths), "num_params": count(trunk_shapes(args.widths)),
            "jacobian_batch": BATCH, "num_gramians": NUM_GRAMIANS,
            "batch_gramian_dim": BATCH_GRAMIAN_DIM, "state_steps": STATE_STEPS,
            "conflict_model": {"shared_min": SHARED_MIN, "shared_max": SHARED_MAX,
                               "log_scale": LOG_SCALE},
            "seed": SEED, "tasks": list(args.tasks), "ratio_tasks": list(args.ratio_tasks),
            "methods": list(args.methods), "reps": args.reps if args.reps is not None
            else {p: {str(t): list(v) for t, v in d.items()} for p, d in DEFAULT_REPS.items()},
            "target": TARGET, "quick": args.quick, "max_call_seconds": MAX_CALL_SECONDS,
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        },
        "elapsed_s": elapsed,
        "results": records,
        "ratios": ratios,
    }
    json_path = _timing.write_json(os.path.join(args.out, "aggregation_benchmark.json"), payload)
    png_path = plot(records, os.path.join(args.out, "aggregation_benchmark.png"))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else "")
          + f" ({elapsed:.0f} s)")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
