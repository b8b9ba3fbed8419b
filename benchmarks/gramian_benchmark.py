"""Gramian benchmark: the three exact Gramian paths against the floor, model by model.

For a Gramian method (UPGrad, MGDA) ``mtopt.value_and_grad`` has three exact ways
to the same Gramian and combined gradient (``gramian=``):

- ``jacobian``: the T per-task gradients (the T x P Jacobian), then their Gramian;
- ``low_memory``: the Gramian from one Jacobian-vector product per task, never the
  Jacobian;
- ``structured``: one forward pass, T reverse passes through the *activations*
  only, each layer's Gramian block from its inputs and output cotangents (see
  ``mtopt/_src/structured.py``).

Each variant is one jitted training step (gradient + ``optax.adam(1e-3)`` update,
parameters, Adam state and method state threaded, buffers donated), all variants
of one configuration timed in the same run, interleaved (``_timing.py``):

- ``sum``: ``jax.grad`` of the summed task losses;
- ``floor``: what any exact Gramian step must at least do: one forward pass, the
  summed loss's gradient, and T reverse passes with respect to the model's first
  activation only (the weight-gradient products of those T passes are dead code,
  which XLA removes), batched over the tasks; no Gramian;
- ``<path>_<m>``: ``mtopt.value_and_grad(loss, <m>, shared=<trunk>, gramian=<path>)``.

Models (``--models``; the Gramian is over the trunk, every parameter but the heads):

| model | trunk | batch | T (default) |
|---|---|---|---|
| ``mlp`` | step_benchmark's ReLU MLP 512 -> 1024 -> 1024 -> 512, 2.1M parameters | 256 | 2, 4, 8, 16, 32 |
| ``mlp_large`` | the same with hidden width 4096, 21M parameters | 256 | 16 |
| ``cnn`` | three 3x3 convolutions 3 -> 32 -> 64 -> 64 (SAME padding; strides 1, 2, 2; the last with 2 groups), global mean pool, dense 64 -> 128, on 32 x 32 x 3 images | 64 | 8, 16 |
| ``transformer`` | token embedding (vocabulary 512, width 128), one pre-LayerNorm block (single-head attention, 4x MLP), final LayerNorm, mean pool, on 64-token sequences | 16 | 8, 16 |

Each has T linear heads (one (width, T) matrix) and a per-task mean squared error.

Peak memory: ``jax.jit(step).lower(...).compile().memory_analysis()``, arguments +
outputs + temporaries - aliased (donated) bytes, for every variant, and its ratio to
``sum``'s.

Usage::

    python benchmarks/gramian_benchmark.py                 # every model (about 15 min here)
    python benchmarks/gramian_benchmark.py --quick         # small T, few reps (smoke test)
    python benchmarks/gramian_benchmark.py --models mlp --tasks 8 16 --methods upgrad mgda
    python benchmarks/gramian_benchmark.py --gpu           # on a GPU: batches x8, T 8-32
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtopt

import _timing
import step_benchmark as sb

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PATHS = ("jacobian", "low_memory", "structured")
METHODS = ("upgrad", "mgda")
LEARNING_RATE = 1e-3
SEED = 0
FLOOR_TARGET = 1.5  # structured step / floor, T = 8 and 16 on the mlp
JACOBIAN_TARGET = 2.5  # jacobian step / structured step

Array = jax.Array
PyTree = Any


class Model(NamedTuple):
    """A benchmark model: ``losses(params, inp, target) -> (T,)`` and how it starts.

    ``embed(params, data) -> inp`` is the part before the first activation (the
    identity, or the embedding lookup); the floor differentiates ``losses`` with
    respect to ``inp``.
    """

    params: PyTree
    data: Array
    target: Array
    embed: Callable[[PyTree, Array], Array]
    losses: Callable[[PyTree, Array, Array], Array]
    default_tasks: tuple[int, ...]


def _dense(key: Array, d_in: int, d_out: int, gain: float = 2.0) -> dict[str, Array]:
    w = jax.random.normal(key, (d_in, d_out), jnp.float32) * jnp.float32(math.sqrt(gain / d_in))
    return {"w": w, "b": jnp.zeros((d_out,), jnp.float32)}


def _heads(key: Array, width: int, num_tasks: int) -> dict[str, Array]:
    return _dense(key, width, num_tasks, gain=1.0)


def _mse(z: Array, heads: dict[str, Array], target: Array) -> Array:
    pred = z @ heads["w"] + heads["b"][None, :]
    return jnp.mean((pred - target) ** 2, axis=0)


def _identity(params: PyTree, data: Array) -> Array:
    del params
    return data


def mlp_model(num_tasks: int, hidden: int = 1024, batch_scale: int = 1) -> Model:
    widths = (512, hidden, hidden, 512)
    batch = sb.BATCH * batch_scale
    k_p, k_x, k_y = jax.random.split(jax.random.key(SEED), 3)
    params = sb.init_params(k_p, num_tasks, widths=widths)
    x = jax.random.normal(k_x, (batch, widths[0]), jnp.float32)
    y = jax.random.normal(k_y, (batch, num_tasks), jnp.float32)
    return Model(params, x, y, _identity, lambda p, h, t: sb.task_losses(p, h, t),
                 (2, 4, 8, 16, 32) if hidden == 1024 else (16,))


def cnn_model(num_tasks: int, batch_scale: int = 1) -> Model:
    keys = jax.random.split(jax.random.key(SEED), 8)
    convs = [(3, 32, 1, 1), (32, 64, 2, 1), (64, 64, 2, 2)]  # in, out, stride, groups
    trunk = {f"conv{i}": {
        "w": jax.random.normal(keys[i], (3, 3, c_in // g, c_out), jnp.float32)
        * jnp.float32(math.sqrt(2.0 / (9 * c_in // g))),
        "b": jnp.zeros((c_out,), jnp.float32)} for i, (c_in, c_out, _, g) in enumerate(convs)}
    trunk["dense"] = _dense(keys[3], 64, 128)
    params = {"trunk": trunk, "heads": _heads(keys[4], 128, num_tasks)}
    x = jax.random.normal(keys[5], (64 * batch_scale, 32, 32, 3), jnp.float32)
    y = jax.random.normal(keys[6], (64 * batch_scale, num_tasks), jnp.float32)

    def losses(p: PyTree, h: Array, target: Array) -> Array:
        for i, (_, _, stride, groups) in enumerate(convs):
            layer = p["trunk"][f"conv{i}"]
            h = jax.lax.conv_general_dilated(
                h, layer["w"], (stride, stride), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
            h = jax.nn.relu(h + layer["b"][None, None, None, :])
        z = jnp.mean(h, axis=(1, 2))
        z = jax.nn.relu(z @ p["trunk"]["dense"]["w"] + p["trunk"]["dense"]["b"][None, :])
        return _mse(z, p["heads"], target)

    return Model(params, x, y, _identity, losses, (8, 16))


def transformer_model(num_tasks: int, batch_scale: int = 1) -> Model:
    vocab, width, seq, batch = 512, 128, 64, 16 * batch_scale
    keys = jax.random.split(jax.random.key(SEED), 10)

    def norm(d: int) -> dict[str, Array]:
        return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}

    trunk = {
        "embed": jax.random.normal(keys[0], (vocab, width), jnp.float32) * 0.02,
        "ln1": norm(width), "qkv": _dense(keys[1], width, 3 * width, gain=1.0),
        "proj": _dense(keys[2], width, width, gain=1.0), "ln2": norm(width),
        "up": _dense(keys[3], width, 4 * width), "down": _dense(keys[4], 4 * width, width),
        "ln3": norm(width),
    }
    params = {"trunk": trunk, "heads": _heads(keys[5], width, num_tasks)}
    tokens = jax.random.randint(keys[6], (batch, seq), 0, vocab)
    y = jax.random.normal(keys[7], (batch, num_tasks), jnp.float32)

    def layer_norm(h: Array, p: dict[str, Array]) -> Array:
        mu = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
        return (h - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]

    def dense(h: Array, p: dict[str, Array]) -> Array:
        return h @ p["w"] + p["b"]

    def embed(p: PyTree, data: Array) -> Array:
        return p["trunk"]["embed"][data]

    def losses(p: PyTree, h: Array, target: Array) -> Array:
        t = p["trunk"]
        q, k, v = jnp.split(dense(layer_norm(h, t["ln1"]), t["qkv"]), 3, axis=-1)
        att = jax.nn.softmax(jnp.einsum("bsd,btd->bst", q, k) / math.sqrt(width), axis=-1)
        h = h + dense(jnp.einsum("bst,btd->bsd", att, v), t["proj"])
        h = h + dense(jax.nn.gelu(dense(layer_norm(h, t["ln2"]), t["up"])), t["down"])
        z = jnp.mean(layer_norm(h, t["ln3"]), axis=1)
        return _mse(z, p["heads"], target)

    return Model(params, tokens, y, embed, losses, (8, 16))


MODELS: dict[str, Callable[..., Model]] = {  # (num_tasks, batch_scale=1) -> Model
    "mlp": mlp_model,
    "mlp_large": lambda t, batch_scale=1: mlp_model(t, hidden=4096, batch_scale=batch_scale),
    "cnn": cnn_model,
    "transformer": transformer_model,
}


def is_trunk(path: Sequence[Any], leaf: Array) -> bool:
    del leaf
    return getattr(path[0], "key", None) == "trunk"


def gramian_method(name: str) -> mtopt.Weighting:
    return {"upgrad": mtopt.upgrad, "mgda": mtopt.mgda}[name]()


# --- the steps --------------------------------------------------------------------------------


def make_steps(model: Model, num_tasks: int, methods: dict[str, mtopt.Weighting],
               optimizer: optax.GradientTransformation, paths: Sequence[str] = PATHS,
               ) -> dict[str, tuple[Callable, Any]]:
    """``{variant: (step, initial extra)}``, each ``step(params, opt, extra, data, target)``:
    ``sum``, ``floor`` and ``<path>_<name>`` for every method and path."""

    def loss_fn(p: PyTree, data: Array, target: Array) -> Array:
        return model.losses(p, model.embed(p, data), target)

    def apply(grads: PyTree, params: PyTree, opt_state: Any) -> tuple[PyTree, Any]:
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def sum_step(params, opt_state, extra, data, target):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(loss_fn(p, data, target)))(params)
        params, opt_state = apply(grads, params, opt_state)
        return params, opt_state, extra, loss

    def floor_step(params, opt_state, extra, data, target):
        inp, embed_vjp = jax.vjp(lambda p: model.embed(p, data), params)
        losses, vjp = jax.vjp(lambda p, h: model.losses(p, h, target), params, inp)
        grads, d_inp = vjp(jnp.ones_like(losses))
        grads = jax.tree.map(jnp.add, grads, embed_vjp(d_inp)[0])
        # T reverse passes through the activations (their weight-gradient products unused).
        per_task = jax.vmap(lambda row: vjp(row)[1])(jnp.eye(num_tasks, dtype=losses.dtype))
        params, opt_state = apply(grads, params, opt_state)
        return params, opt_state, extra, (jnp.sum(losses), jnp.sum(per_task))

    def mtopt_step(grad_fn):
        def step(params, opt_state, method_state, data, target):
            grads, info, method_state = grad_fn(params, method_state, data, target)
            params, opt_state = apply(grads, params, opt_state)
            return params, opt_state, method_state, info.total

        return step

    steps: dict[str, tuple[Callable, Any]] = {
        "sum": (sum_step, jnp.zeros((), jnp.float32)),
        "floor": (floor_step, jnp.zeros((), jnp.float32)),
    }
    for name, method in methods.items():
        for path in paths:
            grad_fn = mtopt.value_and_grad(loss_fn, method, shared=is_trunk, gramian=path)
            steps[f"{path}_{name}"] = (mtopt_step(grad_fn), method.init(num_tasks))
    return steps


def peak_bytes(compiled: Any) -> int:
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def run_one(model_name: str, num_tasks: int, methods: Sequence[str], *, reps: int,
            warmup: int, batch_scale: int = 1,
            progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Check the paths agree, then time every variant of one (model, T) interleaved."""
    model = MODELS[model_name](num_tasks, batch_scale=batch_scale)
    optimizer = optax.adam(LEARNING_RATE)
    steps = make_steps(model, num_tasks, {m: gramian_method(m) for m in methods}, optimizer)
    calls, memory = {}, {}
    for name, (step, extra) in steps.items():
        own = jax.tree.map(jnp.copy, model.params)  # donated: one copy per variant
        args = (own, optimizer.init(own), extra, model.data, model.target)
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
        memory[name] = peak_bytes(compiled)
        calls[name] = _timing.threaded(compiled, args[:3], model.data, model.target)
    agreement = check_agreement(model, num_tasks, methods)
    timings = _timing.time_interleaved(calls, reps=reps, warmup=warmup, progress=progress)
    variants = {}
    for name, t in timings.items():
        record = t.to_dict()
        for ref in ("sum", "floor"):
            record[f"ratio_to_{ref}"] = t.median_ms / timings[ref].median_ms
            record[f"paired_ratio_to_{ref}"] = _timing.paired_ratio(
                t.samples_ms, timings[ref].samples_ms)
        record["peak_bytes"] = memory[name]
        record["memory_ratio_to_sum"] = memory[name] / memory["sum"]
        variants[name] = record
    speedups = {name: timings[f"jacobian_{name}"].median_ms
                / timings[f"structured_{name}"].median_ms for name in methods}
    return {"model": model_name, "num_tasks": num_tasks,
            "batch": int(jax.tree.leaves(model.data)[0].shape[0]),
            "num_params": sb.num_params(model.params),
            "num_shared_params": sb.num_params(model.params["trunk"]),
            "variants": variants, "jacobian_over_structured": speedups,
            "agreement": agreement}


def check_agreement(model: Model, num_tasks: int, methods: Sequence[str]) -> dict[str, Any]:
    """Largest relative differences of the structured and low-memory paths from the
    Jacobian path, at the initial parameters (float32)."""

    def loss_fn(p, data, target):
        return model.losses(p, model.embed(p, data), target)

    out = {}
    for name in methods:
        method = gramian_method(name)
        results = {path: jax.jit(mtopt.value_and_grad(loss_fn, method, shared=is_trunk,
                                                      gramian=path))(
            model.params, method.init(num_tasks), model.data, model.target)
            for path in PATHS}
        ref_grads, ref_info, _ = results["jacobian"]
        for path in ("structured", "low_memory"):
            grads, info, _ = results[path]
            gram = float(jnp.max(jnp.abs(info.gramian - ref_info.gramian))
                         / jnp.max(jnp.abs(ref_info.gramian)))
            g = max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
                    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
            out[f"{path}_{name}"] = {"gramian_rel": gram, "grads_max_leaf_rel": g}
    return out


# --- reporting ----------------------------------------------------------------------------------


def format_table(record: dict[str, Any]) -> str:
    v = record["variants"]
    reps = v["sum"]["reps"]
    lines = [f"{record['model']}, T = {record['num_tasks']}, batch {record['batch']}  "
             f"({record['num_params']:,} "
             f"parameters, {record['num_shared_params']:,} in the Gramian; median of {reps} "
             "steps)",
             f"  {'variant':<20} {'median ms':>10} {'q25-q75 ms':>17} {'x sum':>7} "
             f"{'x floor':>8} {'peak MiB':>9} {'x sum mem':>9}"]
    for name, r in v.items():
        quart = f"{r['q25_ms']:.1f}-{r['q75_ms']:.1f}"
        lines.append(f"  {name:<20} {r['median_ms']:>10.1f} {quart:>17} "
                     f"{r['ratio_to_sum']:>7.2f} {r['ratio_to_floor']:>8.2f} "
                     f"{r['peak_bytes'] / 2**20:>9.1f} {r['memory_ratio_to_sum']:>9.2f}")
    for name, s in record["jacobian_over_structured"].items():
        lines.append(f"  jacobian_{name} / structured_{name} = {s:.2f}x")
    for name, a in record["agreement"].items():
        lines.append(f"  {name} vs jacobian_{name[name.rfind('_') + 1:]}: Gramian max rel "
                     f"{a['gramian_rel']:.1e}, gradient max leaf rel "
                     f"{a['grads_max_leaf_rel']:.1e}")
    return "\n".join(lines)


def format_summary(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    head = (f"  {'model':<12} {'T':>3} {'sum ms':>8} {'floor':>7} "
            + " ".join(f"{p[:6] + '_' + m[:2]:>10}" for m in methods for p in PATHS)
            + "   (ratios to the floor)")
    lines = ["Step time / floor (same run):", head]
    for r in records:
        v = r["variants"]
        cells = " ".join(f"{v[f'{p}_{m}']['ratio_to_floor']:>10.2f}"
                         for m in methods for p in PATHS)
        lines.append(f"  {r['model']:<12} {r['num_tasks']:>3} {v['sum']['median_ms']:>8.1f} "
                     f"{v['floor']['ratio_to_sum']:>7.2f} {cells}")
    lines.append("  (floor column: floor / sum)")
    return "\n".join(lines)


def checks(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets of issue 14 that this benchmark measures."""
    out = []
    for r in records:
        for name, s in r["jacobian_over_structured"].items():
            out.append({"model": r["model"], "num_tasks": r["num_tasks"],
                        "target": f"jacobian_{name} / structured_{name} >= {JACOBIAN_TARGET}",
                        "value": s, "pass": bool(s >= JACOBIAN_TARGET)})
            if r["model"] == "mlp" and r["num_tasks"] in (8, 16):
                f = r["variants"][f"structured_{name}"]["ratio_to_floor"]
                out.append({"model": r["model"], "num_tasks": r["num_tasks"],
                            "target": f"structured_{name} / floor <= {FLOOR_TARGET}",
                            "value": f, "pass": bool(f <= FLOOR_TARGET)})
    return out


def plot(records: Sequence[dict[str, Any]], methods: Sequence[str], path: str) -> Optional[str]:
    """Step time / floor vs T per model, one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'mtopt[bench]').")
        return None
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in records if r["model"] == model]
        tasks = [r["num_tasks"] for r in rs]
        for i, p in enumerate(PATHS):
            for j, m in enumerate(methods):
                ax.plot(tasks, [r["variants"][f"{p}_{m}"]["ratio_to_floor"] for r in rs],
                        "o-" if j == 0 else "s--", color=f"C{i}", label=f"{p} ({m})")
        ax.plot(tasks, [1.0 / r["variants"]["floor"]["ratio_to_sum"] for r in rs], "k.:",
                label="summed-loss step")
        ax.axhline(1.0, color="grey", lw=1, label="floor")
        ax.axhline(FLOOR_TARGET, color="grey", ls="--", lw=1, label=f"{FLOOR_TARGET}x floor")
        ax.set(xscale="log", yscale="log", xlabel="number of tasks T",
               ylabel="step time / floor", title=f"{model} (batch {rs[0].get('batch', '?')})")
        ax.set_xticks(tasks)
        ax.set_xticklabels([str(t) for t in tasks])
        ax.minorticks_off()
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
                 if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="mlp, cnn and transformer at T = 4, 3 steps (smoke test)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--tasks", type=int, nargs="+", default=None,
                        help="numbers of tasks (default: each model's own list)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["upgrad"])
    parser.add_argument("--batch-scale", type=int, default=1,
                        help="multiply every model's batch by this (GPU runs)")
    parser.add_argument("--gpu", action="store_true",
                        help="accelerator preset: batches x8, T in {8, 16, 32}, 10 reps "
                             "(one run well inside 10 minutes on one H200-class GPU)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per variant (default 20, 8 for mlp_large; quick: 3)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder for the JSON and PNG")
    args = parser.parse_args(argv)
    if args.gpu:
        args.batch_scale = max(args.batch_scale, 8)
        args.tasks = args.tasks or [8, 16, 32]
        args.reps = args.reps or 10
    if args.batch_scale < 1:
        parser.error("--batch-scale must be >= 1")
    if args.models is None:
        args.models = ["mlp", "cnn", "transformer"] if args.quick else list(MODELS)
    if args.quick and args.tasks is None:
        args.tasks = [4]
    if args.warmup is None:
        args.warmup = 1
    if args.tasks is not None and any(t < 1 for t in args.tasks):
        parser.error(f"--tasks must be positive, got {args.tasks}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    machine = _timing.machine_info()
    print(f"Gramian benchmark, {machine['date']}, {machine['platform']}, "
          f"{machine['cpu_count']} CPUs, jax {machine['jax']} ({machine['backend']})")
    configs = []
    for name in args.models:
        tasks = args.tasks or list(MODELS[name](2).default_tasks)
        reps = args.reps or (3 if args.quick else 8 if name == "mlp_large" else 20)
        configs += [(name, t, reps) for t in tasks]
    n_variants = 2 + len(PATHS) * len(args.methods)
    total = sum(_timing.calls_needed(n_variants, reps=r, warmup=args.warmup)
                for _, _, r in configs)
    bar = tqdm(total=total, unit="step", leave=False) if tqdm is not None else None
    records = []
    try:
        for name, num_tasks, reps in configs:
            if bar is not None:
                bar.set_description(f"{name} T={num_tasks}")
            record = run_one(name, num_tasks, args.methods, reps=reps, warmup=args.warmup,
                             batch_scale=args.batch_scale,
                             progress=bar.update if bar is not None else None)
            records.append(record)
            (bar.write if bar is not None else print)(format_table(record) + "\n")
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(records, args.methods))
    results = checks(records)
    for c in results:
        print(f"  {c['model']} T={c['num_tasks']}: {c['target']}: {c['value']:.2f}  "
              f"{'PASS' if c['pass'] else 'MISS'}")
    payload = {"benchmark": "gramian_benchmark", "machine": machine,
               "config": {"models": args.models, "methods": args.methods,
                          "batch_scale": args.batch_scale, "gpu": args.gpu,
                          "warmup": args.warmup, "quick": args.quick,
                          "optimizer": f"adam({LEARNING_RATE})"},
               "results": records, "checks": results}
    json_path = _timing.write_json(os.path.join(args.out, "gramian_benchmark.json"), payload)
    png = plot(records, args.methods, os.path.join(args.out, "gramian_benchmark.png"))
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return payload


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(sys.argv[1:])
