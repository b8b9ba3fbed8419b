"""Multi-device checks of mtopt on simulated CPU devices (run as a script, in its own process).

Data parallel: a three-task model, a global batch split over the mesh axis ``"data"``,
``jax.jit(jax.shard_map(step, in_specs=(P(), P(), P("data"), P()), out_specs=P()))``
where ``step`` calls ``mtopt.value_and_grad(..., axis_name="data")``, compared with the
single-device step on the full batch in the same process: gradients, losses, weights,
Gramian, total, penalty and the new method state. Model parallel: parameters placed
with ``NamedSharding`` over a ``"model"`` axis, plain ``jax.jit`` (GSPMD), compared
with unsharded parameters. Also a 2-D ``("data", "model")`` mesh, a few optax training
steps, and the pitfall: averaging each device's own MGDA direction is not MGDA of the
full batch.

Usage::

    python tests/multidevice_cases.py [--devices 8] [--cases mgda,upgrad] [--list]

The device count must be set before JAX starts: this script appends
``--xla_force_host_platform_device_count=N`` to ``XLA_FLAGS`` itself unless the flag is
already there. The last line of stdout is ``MULTIDEVICE_SUMMARY {json}``; the exit code
is 0 when every case is within its tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--cases", default="",
                        help="comma-separated case names, or 'fast' (default: all)")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    return parser.parse_args(argv)


FLAG = "--xla_force_host_platform_device_count"
if __name__ == "__main__":  # only as a script: importing this module (doctest collection) changes nothing
    ARGS = _parse_args(sys.argv[1:])
    if FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}={ARGS.devices}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
else:
    ARGS = _parse_args([])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import mtopt  # noqa: E402

TASKS = ("a", "b", "c")
NUM_TASKS = len(TASKS)
DIM, HIDDEN = 12, 16                      # HIDDEN divisible by the "model" axis sizes used
PER_DEVICE = 8                            # examples per device in the data-parallel cases
TOL = 2e-5                                # float32, relative to each leaf's scale
TOL_TRAIN = 1e-4                          # several optimizer steps: rounding compounds
PITFALL_MARGIN = 5e-2                     # naive averaging must be off by more than this (~0.23)


# --------------------------------------------------------------------------- model, data


def init_params(seed: int = 0) -> dict:
    """Shared two-layer tanh trunk and one linear head per task (plain pytree)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    return {
        "trunk": {
            "w1": normal(DIM, HIDDEN, scale=DIM ** -0.5), "b1": normal(HIDDEN, scale=0.1),
            "w2": normal(HIDDEN, HIDDEN, scale=HIDDEN ** -0.5), "b2": normal(HIDDEN, scale=0.1),
        },
        "heads": {t: {"w": normal(HIDDEN, scale=HIDDEN ** -0.5), "b": normal(scale=0.1)}
                  for t in TASKS},
    }


def make_batch(n: int, seed: int = 1) -> dict:
    """Two conflicting regressions (y_b = -y_a + noise) and a classification."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM))
    u = np.sin(x @ rng.normal(size=DIM) / np.sqrt(DIM) * 2.0)
    batch = {
        "x": x,
        "ya": 2.0 * u + 0.3 * x[:, 1],
        "yb": -2.0 * u + 0.3 * rng.normal(size=n),
        "yc": np.where(x[:, 2] + 0.5 * x[:, 3] > 0, 1.0, -1.0),
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}


def features(trunk: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ trunk["w1"] + trunk["b1"][None, :])
    return jnp.tanh(h @ trunk["w2"] + trunk["b2"][None, :])


def heads_losses(heads: dict, h: jax.Array, batch: dict) -> dict:
    out = {t: h @ heads[t]["w"] + heads[t]["b"] for t in TASKS}
    return {
        "a": jnp.mean((out["a"] - batch["ya"]) ** 2),
        "b": jnp.mean((out["b"] - batch["yb"]) ** 2),
        "c": jnp.mean(jax.nn.softplus(-batch["yc"] * out["c"])),
    }


def task_losses(params: dict, batch: dict) -> dict:
    """Mean per-task losses on a batch (a dict of three named scalars)."""
    return heads_losses(params["heads"], features(params["trunk"], batch["x"]), batch)


def losses_with_penalty(params: dict, batch: dict) -> mtopt.Objectives:
    """Task losses plus weight decay on the trunk and an activity penalty (batch-dependent)."""
    h = features(params["trunk"], batch["x"])
    decay = 1e-2 * sum(jnp.sum(w ** 2) for w in jax.tree.leaves(params["trunk"]))
    activity = 0.1 * jnp.mean(h ** 2)
    return mtopt.Objectives(heads_losses(params["heads"], h, batch), penalty=decay + activity)


def is_trunk(path, leaf) -> bool:
    """``shared=``: the Gramian is taken over the trunk; heads are task-specific."""
    return "trunk" in jax.tree_util.keystr(path)


class NnxModel(nnx.Module):
    """The same architecture as a flax.nnx module."""

    def __init__(self, rngs: nnx.Rngs):
        self.trunk1 = nnx.Linear(DIM, HIDDEN, rngs=rngs)
        self.trunk2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.head_a = nnx.Linear(HIDDEN, 1, rngs=rngs)
        self.head_b = nnx.Linear(HIDDEN, 1, rngs=rngs)
        self.head_c = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.trunk2(jnp.tanh(self.trunk1(x))))
        return self.head_a(h)[:, 0], self.head_b(h)[:, 0], self.head_c(h)[:, 0]


# --------------------------------------------------------------------------- comparisons


def rel_err(got, want) -> float:
    """Max over leaves of ``max|got - want| / scale``; scale = the leaf's max |want|,
    floored at 1e-3 of the whole tree's scale (tiny leaves are not held to 1e-5 of 0)."""
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    if jax.tree.structure(got) != jax.tree.structure(want):
        raise AssertionError(
            f"tree structures differ: {jax.tree.structure(got)} vs {jax.tree.structure(want)}")
    if not want_leaves:
        return 0.0
    got_leaves = [np.asarray(x, np.float64) for x in got_leaves]
    want_leaves = [np.asarray(x, np.float64) for x in want_leaves]
    tree_scale = max(float(np.max(np.abs(w), initial=0.0)) for w in want_leaves)
    worst = 0.0
    for g, w in zip(got_leaves, want_leaves):
        if g.shape != w.shape:
            raise AssertionError(f"leaf shapes differ: {g.shape} vs {w.shape}")
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(w))):
            return float("inf")
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-3 * tree_scale, 1e-30)
        worst = max(worst, float(np.max(np.abs(g - w), initial=0.0)) / scale)
    return worst


def compare_step(got, want) -> dict:
    """Differences between two ``(grads, info, new_state)`` results."""
    (g_grads, g_info, g_state), (w_grads, w_info, w_state) = got, want
    diffs = {
        "grads": rel_err(g_grads, w_grads),
        "losses": rel_err(g_info.losses, w_info.losses),
        "weights": rel_err(g_info.weights, w_info.weights),
        "total": rel_err(g_info.total, w_info.total),
        "penalty": rel_err(g_info.penalty, w_info.penalty),
        "state": rel_err(g_state, w_state),
    }
    if (g_info.gramian is None) != (w_info.gramian is None):
        raise AssertionError("one result has a Gramian and the other has none")
    if w_info.gramian is not None:
        diffs["gramian"] = rel_err(g_info.gramian, w_info.gramian)
    if g_info.names != w_info.names:
        raise AssertionError(f"task names differ: {g_info.names} vs {w_info.names}")
    return diffs


# --------------------------------------------------------------------------- steps


def data_mesh(num_devices: int) -> jax.sharding.Mesh:
    return jax.make_mesh((num_devices,), ("data",))


def shard_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Place the batch split over "data" (Explicit mesh axes: in_specs must match)."""
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def single_step(fn, method, **options):
    vg = mtopt.value_and_grad(fn, method, shared=is_trunk, **options)
    return jax.jit(lambda params, state, batch, key: vg(params, state, batch, key=key))


def data_parallel_step(fn, method, mesh, *, check_vma: bool = True, **options):
    """``jit(shard_map(...))`` of the mtopt step with ``axis_name="data"``."""
    vg = mtopt.value_and_grad(fn, method, shared=is_trunk, axis_name="data", **options)

    def per_device(params, state, local_batch, key):
        return vg(params, state, local_batch, key=key)

    return jax.jit(jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(), P("data"), P()), out_specs=P(),
        check_vma=check_vma))


METHODS = {
    "linear": lambda: mtopt.linear([1.0, 0.5, 2.0]),
    "dwa": lambda: mtopt.dwa(mode="window", window=1),
    "uncertainty": mtopt.uncertainty,
    "mgda": mtopt.mgda,
    "upgrad": mtopt.upgrad,
    "nash_mtl": mtopt.nash_mtl,
    "cagrad": mtopt.cagrad,
    "moco": mtopt.moco,
    "graddrop": mtopt.graddrop,
    "pcgrad": mtopt.pcgrad,
}
LOSS_FNS = {"plain": task_losses, "penalty": losses_with_penalty}


def init_state(method, params):
    if method.name.startswith("moco"):
        return method.init(NUM_TASKS, params)
    return method.init(NUM_TASKS)


class Ctx:
    """What every case needs: the mesh, params, a global batch, and memoised results.

    Several cases compare against the same single-device step (e.g. MGDA on the full
    batch); each distinct step is compiled and run once per process.
    """

    def __init__(self, num_devices: int):
        self.num_devices = num_devices
        self.mesh = data_mesh(num_devices)
        self.params = init_params(0)
        self.batch = make_batch(PER_DEVICE * num_devices, seed=1)
        self.sharded_batch = shard_batch(self.batch, self.mesh)
        self.key = jax.random.key(42)
        self._memo: dict = {}

    def _run(self, label, compute):
        if label not in self._memo:
            self._memo[label] = compute()
        return self._memo[label]

    def reference(self, method: str, loss: str = "plain", **options):
        """The single-device step on the full batch (no mesh, no shard_map)."""
        def compute():
            m = METHODS[method]()
            key = self.key if m.stochastic else None
            return single_step(LOSS_FNS[loss], m, **options)(
                self.params, init_state(m, self.params), self.batch, key)
        return self._run(("ref", method, loss, tuple(sorted(options.items()))), compute)

    def data_parallel(self, method: str, loss: str = "plain", check_vma: bool = True,
                      **options):
        """The same step split over the "data" axis with ``axis_name="data"``."""
        def compute():
            m = METHODS[method]()
            key = self.key if m.stochastic else None
            step = data_parallel_step(LOSS_FNS[loss], m, self.mesh, check_vma=check_vma,
                                      **options)
            return step(self.params, init_state(m, self.params), self.sharded_batch, key)
        label = ("dp", method, loss, check_vma, tuple(sorted(options.items())))
        return self._run(label, compute)


def data_parallel_case(method: str, *, loss: str = "plain", ref_options=None, tols=None,
                       **options):
    """A case comparing the data-parallel step with the single-device step on one batch.

    ``options`` go to the data-parallel step; the reference gets ``ref_options``
    (default: none, i.e. the plain Jacobian path: low_memory etc. must match it).
    """

    def run(ctx: Ctx) -> dict:
        want = ctx.reference(method, loss, **(ref_options or {}))
        got = ctx.data_parallel(method, loss, **options)
        result = {"diffs": compare_step(got, want), "tol": TOL, "tols": dict(tols or {})}
        if want[1].gramian is not None:
            result["min_cosine"] = float(jnp.min(mtopt.cosine_matrix(want[1].gramian)))
        return result

    return run


# MGDA's direction is the min-norm point of the task gradients' hull: here about 6x shorter
# than the gradients it combines, so float32 rounding in the Gramian, amplified by the
# solver's 1e-7 tolerance into ~1e-6 weight differences, shows as ~1e-5 of |d|.
MGDA_TOLS = {"grads": 1e-4, "total": 1e-4, "weights": 5e-5}


# --------------------------------------------------------------------------- special cases


def case_nnx_upgrad(ctx: Ctx) -> dict:
    """flax.nnx model: nnx.split to a Param state, shard_map over it, merge inside the loss."""
    model = NnxModel(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def fn(p, batch):
        a, b, c = nnx.merge(graphdef, p)(batch["x"])
        return {"a": jnp.mean((a - batch["ya"]) ** 2), "b": jnp.mean((b - batch["yb"]) ** 2),
                "c": jnp.mean(jax.nn.softplus(-batch["yc"] * c))}

    method = mtopt.upgrad()
    state = method.init(NUM_TASKS)
    want = single_step(fn, method)(params, state, ctx.batch, None)
    got = data_parallel_step(fn, method, ctx.mesh)(params, state, ctx.sharded_batch, None)
    return {"diffs": compare_step(got, want), "tol": TOL}


def _train(step_fn, params, opt_state, mstate, batches, key):
    """Run ``step_fn`` over the leading axis of ``batches``; collect per-step losses and weights."""
    history = []
    for i in range(jax.tree.leaves(batches)[0].shape[0]):
        batch = jax.tree.map(lambda x, i=i: x[i], batches)
        params, opt_state, mstate, info = step_fn(
            params, opt_state, mstate, batch, jax.random.fold_in(key, i))
        history.append((info.losses, info.weights))
    return params, opt_state, mstate, history


def training_case(method_name: str, *, steps: int = 3):
    """Several Adam steps: params, optimizer state and method state are threaded through."""

    def run(ctx: Ctx) -> dict:
        # optax's Adam mixes Python floats with int32 counters: user code runs under
        # JAX's default (standard) promotion; mtopt itself is checked strictly elsewhere.
        with jax.numpy_dtype_promotion("standard"):
            return _run(ctx)

    def _run(ctx: Ctx) -> dict:
        method = METHODS[method_name]()
        stochastic = method.stochastic
        tx = optax.adam(1e-2)
        vg_single = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
        vg_dp = mtopt.value_and_grad(task_losses, method, shared=is_trunk, axis_name="data")

        def train_step(vg):
            def step(params, opt_state, mstate, batch, key):
                grads, info, mstate = vg(params, mstate, batch, key=key if stochastic else None)
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, mstate, info
            return step

        single = jax.jit(train_step(vg_single))
        dp = jax.jit(jax.shard_map(
            train_step(vg_dp), mesh=ctx.mesh, in_specs=(P(), P(), P(), P("data"), P()),
            out_specs=P()))
        n = PER_DEVICE * ctx.num_devices
        batches = [make_batch(n, seed=100 + i) for i in range(steps)]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
        mstate = init_state(method, ctx.params)
        want = _train(single, ctx.params, tx.init(ctx.params), mstate, stacked, ctx.key)

        def dp_step(params, opt_state, mstate, batch, key):
            return dp(params, opt_state, mstate, shard_batch(batch, ctx.mesh), key)

        got = _train(dp_step, ctx.params, tx.init(ctx.params), mstate, stacked, ctx.key)
        diffs = {
            "params": rel_err(got[0], want[0]),
            "opt_state": rel_err(got[1], want[1]),
            "state": rel_err(got[2], want[2]),
            "losses": max(rel_err(g[0], w[0]) for g, w in zip(got[3], want[3])),
            "weights": max(rel_err(g[1], w[1]) for g, w in zip(got[3], want[3])),
        }
        return {"diffs": diffs, "tol": TOL_TRAIN, "steps": steps}

    return run


def case_pitfall_mgda(ctx: Ctx) -> dict:
    """Averaging per-device MGDA directions is not MGDA of the full batch.

    The naive step lets every device run MGDA on its own shard (no ``axis_name``) and
    ``pmean``s the directions, as a data-parallel wrapper that all-reduces finished
    gradients would. ``check_vma=False`` keeps each device's derivatives local (no
    implicit sum over "data" for the replicated params).
    """
    method = mtopt.mgda()
    state = method.init(NUM_TASKS)
    local_vg = mtopt.value_and_grad(task_losses, method, shared=is_trunk)

    def naive(params, local_batch):
        grads, info, _ = local_vg(params, state, local_batch)
        return jax.lax.pmean((grads, info.weights), "data")

    naive_step = jax.jit(jax.shard_map(
        naive, mesh=ctx.mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False))
    naive_grads, naive_mean_weights = naive_step(ctx.params, ctx.sharded_batch)
    want = ctx.reference("mgda")
    good = ctx.data_parallel("mgda")
    trunk_gap = rel_err(naive_grads["trunk"], want[0]["trunk"])
    return {
        "diffs": compare_step(good, want),
        "tol": TOL,
        "tols": MGDA_TOLS,
        "naive_vs_full_batch": rel_err(naive_grads, want[0]),
        "naive_vs_full_batch_trunk": trunk_gap,
        "naive_mean_weights": np.asarray(naive_mean_weights).tolist(),
        "full_batch_weights": np.asarray(want[1].weights).tolist(),
        "margin": PITFALL_MARGIN,
        "pitfall_shown": bool(trunk_gap > PITFALL_MARGIN),
    }


def case_implicit_psum(ctx: Ctx) -> dict:
    """Without axis_name inside shard_map, replicated params get N x the mean gradient.

    Documents the gotcha: the derivative with respect to a device-invariant input is
    summed over the axis. Loss-only method, so no per-device weighting is involved.
    """
    method = METHODS["linear"]()
    state = method.init(NUM_TASKS)
    vg = mtopt.value_and_grad(task_losses, method, shared=is_trunk)

    def per_device(params, local_batch):
        grads, _, _ = vg(params, state, local_batch)
        return grads

    summed = jax.jit(jax.shard_map(
        per_device, mesh=ctx.mesh, in_specs=(P(), P("data")), out_specs=P()))(
        ctx.params, ctx.sharded_batch)
    want = ctx.reference("linear")[0]
    scaled = jax.tree.map(lambda g: g / ctx.num_devices, summed)
    return {"diffs": {"grads_over_num_devices": rel_err(scaled, want)}, "tol": TOL,
            "grads_unscaled_vs_mean": rel_err(summed, want)}


# --------------------------------------------------------------------------- model parallel


MODEL_SPECS = {
    "trunk": {"w1": P(None, "model"), "b1": P("model"), "w2": P(None, "model"),
              "b2": P("model")},
    "heads": {t: {"w": P("model"), "b": P()} for t in TASKS},
}


def place(params: dict, mesh: jax.sharding.Mesh) -> dict:
    """Model-parallel layout: hidden units split over "model" in every layer."""
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)),
                        params, MODEL_SPECS, is_leaf=lambda s: isinstance(s, P))


def task_losses_explicit(params: dict, batch: dict) -> dict:
    """``task_losses`` written for Explicit mesh axes: matmuls that contract the sharded
    hidden dimension say how their output is sharded (JAX asks for it)."""
    trunk, heads = params["trunk"], params["heads"]
    h = jnp.tanh(batch["x"] @ trunk["w1"] + trunk["b1"][None, :])
    h = jnp.tanh(jnp.matmul(h, trunk["w2"], out_sharding=P(None, "model"))
                 + trunk["b2"][None, :])
    out = {t: jnp.matmul(h, heads[t]["w"], out_sharding=P()) + heads[t]["b"] for t in TASKS}
    return {
        "a": jnp.mean((out["a"] - batch["ya"]) ** 2),
        "b": jnp.mean((out["b"] - batch["yb"]) ** 2),
        "c": jnp.mean(jax.nn.softplus(-batch["yc"] * out["c"])),
    }


BLOCK_WEIGHTS = (0.5, 0.3, 0.2)


def building_blocks(fn):
    """``task_jacobian -> gramian -> combine`` under jit."""
    def blocks(params, batch):
        _, jac, _ = mtopt.task_jacobian(fn)(params, batch)
        return mtopt.gramian(jac), mtopt.combine(jac, jnp.asarray(BLOCK_WEIGHTS, jnp.float32))
    return jax.jit(blocks)


def model_parallel_case(methods, *, axis_type=AxisType.Auto, blocks=True):
    """Params sharded over "model", plain ``jit`` (GSPMD), vs unsharded params."""

    def run(ctx: Ctx) -> dict:
        mesh = jax.make_mesh((ctx.num_devices,), ("model",), axis_types=(axis_type,))
        sharded = place(ctx.params, mesh)
        fn = task_losses_explicit if axis_type == AxisType.Explicit else task_losses
        diffs, tols, layout = {}, {}, {}
        for name, options in methods:
            want = ctx.reference(name)
            m = METHODS[name]()
            key = ctx.key if m.stochastic else None
            with jax.set_mesh(mesh):
                got = single_step(fn, m, **options)(
                    sharded, init_state(m, ctx.params), ctx.batch, key)
            label = name + "".join(f"_{k}" for k in options)
            for field, value in compare_step(got, want).items():
                diffs[f"{label}/{field}"] = value
                if name == "mgda" and field in MGDA_TOLS:
                    tols[f"{label}/{field}"] = MGDA_TOLS[field]
            layout[label] = all(jax.tree.leaves(jax.tree.map(
                lambda g, p: g.sharding.spec == p.sharding.spec, got[0], sharded)))
        if blocks:
            want = building_blocks(task_losses)(ctx.params, ctx.batch)
            with jax.set_mesh(mesh):
                got = building_blocks(fn)(sharded, ctx.batch)
            diffs["blocks/gramian"] = rel_err(got[0], want[0])
            diffs["blocks/combine"] = rel_err(got[1], want[1])
        return {"diffs": diffs, "tol": TOL, "tols": tols, "grads_keep_param_sharding": layout}

    return run


def case_model_parallel_explicit(ctx: Ctx) -> dict:
    """Explicit "model" axis (sharding in types): the Gramian contracts sharded leaves in place."""
    return model_parallel_case(
        [("mgda", {}), ("upgrad", {"low_memory": True}), ("pcgrad", {})],
        axis_type=AxisType.Explicit)(ctx)


def case_mesh_2d(ctx: Ctx) -> dict:
    """("data", "model") mesh: batch over "data" via shard_map, params sharded over "model".

    shard_map is manual over "data" only (``axis_names={"data"}``); "model" stays
    automatic, so the params keep their model-parallel layout inside the step.
    """
    model = 2 if ctx.num_devices % 2 == 0 and ctx.num_devices >= 4 else 1
    data = ctx.num_devices // model
    mesh = jax.make_mesh((data, model), ("data", "model"),
                         axis_types=(AxisType.Explicit, AxisType.Auto))
    params = place(ctx.params, mesh)
    batch = jax.device_put(ctx.batch, NamedSharding(mesh, P("data")))
    diffs, tols = {}, {}
    for name in ("linear", "mgda", "upgrad"):
        method = METHODS[name]()
        vg = mtopt.value_and_grad(task_losses, method, shared=is_trunk, axis_name="data")
        step = jax.jit(jax.shard_map(
            lambda p, s, b, vg=vg: vg(p, s, b), mesh=mesh,
            in_specs=(P(), P(), P("data")), out_specs=P(), axis_names={"data"}))
        with jax.set_mesh(mesh):
            got = step(params, method.init(NUM_TASKS), batch)
        for field, value in compare_step(got, ctx.reference(name)).items():
            diffs[f"{name}/{field}"] = value
            if name == "mgda" and field in MGDA_TOLS:
                tols[f"{name}/{field}"] = MGDA_TOLS[field]
    return {"diffs": diffs, "tol": TOL, "tols": tols, "mesh": {"data": data, "model": model}}


# --------------------------------------------------------------------------- registry


CASES = {
    # loss-only methods
    "linear": data_parallel_case("linear"),
    "linear_diagnostics": data_parallel_case("linear", diagnostics=True,
                                             ref_options={"diagnostics": True}),
    "dwa": data_parallel_case("dwa"),
    "uncertainty": data_parallel_case("uncertainty"),
    # Gramian methods
    "mgda": data_parallel_case("mgda", tols=MGDA_TOLS),
    "upgrad": data_parallel_case("upgrad"),
    "nash_mtl": data_parallel_case("nash_mtl"),
    "cagrad": data_parallel_case("cagrad"),
    "mgda_check_vma_false": data_parallel_case("mgda", check_vma=False, tols=MGDA_TOLS),
    "upgrad_sequential": data_parallel_case("upgrad", strategy="sequential", chunk_size=2),
    # Jacobian methods (MoCo keeps gradient-shaped state; GradDrop is random, with a key)
    "moco": data_parallel_case("moco"),
    "graddrop": data_parallel_case("graddrop"),
    # low-memory Gramian, stochastic, penalty
    "mgda_low_memory": data_parallel_case("mgda", low_memory=True, tols=MGDA_TOLS),
    "upgrad_low_memory": data_parallel_case("upgrad", low_memory=True),
    "pcgrad": data_parallel_case("pcgrad"),
    "linear_penalty": data_parallel_case("linear", loss="penalty"),
    "upgrad_penalty": data_parallel_case("upgrad", loss="penalty"),
    "upgrad_low_memory_penalty": data_parallel_case("upgrad", loss="penalty", low_memory=True),
    # structured Gramian engine (against the single-device Jacobian path)
    "mgda_structured": data_parallel_case("mgda", gramian="structured", tols=MGDA_TOLS),
    "upgrad_structured_penalty": data_parallel_case("upgrad", loss="penalty",
                                                    gramian="structured"),
    "nnx_upgrad": case_nnx_upgrad,
    # several optax steps
    "train_nash_mtl": training_case("nash_mtl"),
    "train_uncertainty": training_case("uncertainty"),
    "train_pcgrad": training_case("pcgrad"),
    # the pitfall and the gotcha
    "pitfall_mgda": case_pitfall_mgda,
    "implicit_psum": case_implicit_psum,
    # model parallel
    "model_parallel": model_parallel_case([("mgda", {})]),
    "model_parallel_more": model_parallel_case(
        [("upgrad", {}), ("upgrad", {"low_memory": True}), ("pcgrad", {})], blocks=False),
    "model_parallel_explicit": case_model_parallel_explicit,
    "mesh_2d": case_mesh_2d,
}

# The default (non-slow) test runs these: one case per code path (loss-only with a
# penalty, Gramian, low-memory Gramian, Jacobian + key, optax state threading, the
# pitfall, model parallel). tests/test_multidevice.py runs all of them in its slow test.
FAST_CASES = (
    "linear_penalty", "mgda", "upgrad_low_memory_penalty", "upgrad_structured_penalty",
    "graddrop", "train_uncertainty",
    "pitfall_mgda", "model_parallel",
)


def case_ok(result: dict) -> bool:
    if "error" in result:
        return False
    if "unsupported" in result:
        return True
    tols = result.get("tols", {})
    if not all(v <= tols.get(k, result["tol"]) for k, v in result["diffs"].items()):
        return False
    return result.get("pitfall_shown", True)


def main() -> int:
    if ARGS.list:
        print("\n".join(CASES))
        return 0
    # Same settings as the test suite: no silent dtype or rank promotion inside mtopt.
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if ARGS.cases == "fast":
        names = list(FAST_CASES)
    else:
        names = [c for c in ARGS.cases.split(",") if c] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        print(f"unknown cases {unknown}; valid: {sorted(CASES)}", file=sys.stderr)
        return 2
    if jax.device_count() != ARGS.devices:
        print(f"expected {ARGS.devices} devices, JAX sees {jax.device_count()} "
              f"(XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ctx = Ctx(ARGS.devices)
    results = {}
    for name in names:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = CASES[name](ctx)
        except Exception as err:  # noqa: BLE001  (reported in the summary, exit code 1)
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"[:2000]}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result["cpu_seconds"] = round(time.process_time() - c0, 2)
        result["ok"] = case_ok(result)
        if "diffs" in result:
            result["max_diff"] = max(result["diffs"].values())
        results[name] = result
        status = "ok" if result["ok"] else "FAIL"
        note = " (unsupported)" if "unsupported" in result else ""
        print(f"{name:28s} {status:4s} max_diff={result.get('max_diff', float('nan')):.2e} "
              f"({result['seconds']:.1f} s, cpu {result['cpu_seconds']:.1f} s){note}", flush=True)
    summary = {
        "devices": ARGS.devices,
        "jax": jax.__version__,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(time.process_time(), 2),
        "ok": all(r["ok"] for r in results.values()),
        "cases": results,
    }
    print("MULTIDEVICE_SUMMARY " + json.dumps(summary, sort_keys=True))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
