r"""Data-parallel multi-task training on N devices with ``mtopt.value_and_grad(axis_name=...)``.

A flax.nnx model (shared trunk, a regression head and a classification head) is
trained with Adam and a Gramian method (UPGrad by default) on a global batch split
over the ``"data"`` axis of a device mesh::

    step = jax.jit(jax.shard_map(per_device_step, mesh=mesh,
                                 in_specs=(P(), P(), P(), P("data"), P()), out_specs=P()))

where ``per_device_step`` calls ``mtopt.value_and_grad(loss_fn, method,
axis_name="data")`` on the device's shard. The same training runs on one device with
the full batch, side by side; the script prints the per-step losses and weights and
checks at the end that both trainings agree (exit code 1 if not).

Without real accelerators, ``--devices N`` (default 8) simulated CPU devices are made
by setting ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts,
which this script does itself.

**The pitfall.** The obvious data-parallel recipe, "each device computes its update,
then average the updates" (what an all-reduce of finished gradients does), is wrong
for every method that is not a fixed weighted sum. With :math:`J_d` the per-task
Jacobian of device d's shard, the full-batch Jacobian is the mean
:math:`J = \frac{1}{N} \sum_d J_d`, but the method's weights are a nonlinear function
of the Jacobian (through the Gramian :math:`G = J J^\top`, a QP, a projection ...), so

.. math::
    \frac{1}{N} \sum_d \mathrm{combine}(J_d) \ne \mathrm{combine}\Big(\frac{1}{N} \sum_d J_d\Big).

Each device would solve MGDA / UPGrad for its own small shard and the average of
those directions is not the direction of the batch. With ``axis_name`` mtopt instead
averages the losses and per-task gradients (``pmean``) *before* the weighting, so
every device solves the same full-batch problem and keeps the same method state. The
script ends by measuring the gap between the two recipes.

Run: ``python examples/data_parallel.py [--devices 8] [--steps 20] [--method upgrad]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

METHODS = ("upgrad", "mgda", "nash_mtl", "cagrad", "pcgrad", "imtl_g", "dualproj",
           "aligned_mtl", "dwa", "uncertainty", "equal")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Data-parallel mtopt training on N devices.")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (N)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--method", default="upgrad", choices=METHODS)
    parser.add_argument("--per-device-batch", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative difference accepted at the end")
    return parser.parse_args(argv)


def set_device_count(n: int) -> None:
    """Ask XLA for n CPU devices; must run before JAX initialises its backend."""
    flag = "--xla_force_host_platform_device_count"
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
    os.environ["XLA_FLAGS"] = " ".join(kept + [f"{flag}={n}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    set_device_count(parse_args().devices)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import mtopt  # noqa: E402

DIM, WIDTH = 16, 32


class TwoHeads(nnx.Module):
    """Shared MLP trunk, a regression head and a binary classification head."""

    def __init__(self, rngs: nnx.Rngs):
        self.trunk1 = nnx.Linear(DIM, WIDTH, rngs=rngs)
        self.trunk2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.reg_head = nnx.Linear(WIDTH, 1, rngs=rngs)
        self.cls_head = nnx.Linear(WIDTH, 1, rngs=rngs)

    def __call__(self, x):
        z = jax.nn.relu(self.trunk2(jax.nn.relu(self.trunk1(x))))
        return self.reg_head(z)[:, 0], self.cls_head(z)[:, 0]


def make_batches(steps: int, batch_size: int, seed: int = 0) -> dict:
    """``steps`` global batches: a regression target of scale ~5 and a binary label."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=DIM), rng.normal(size=DIM)
    x = rng.normal(size=(steps, batch_size, DIM))
    y_reg = 5.0 * np.sin(x @ a / np.sqrt(DIM)) + 0.1 * rng.normal(size=(steps, batch_size))
    y_cls = (x @ b + 0.5 * np.sin(3 * x[..., 0]) > 0).astype(np.float64)
    return {"x": jnp.asarray(x, jnp.float32), "reg": jnp.asarray(y_reg, jnp.float32),
            "cls": jnp.asarray(y_cls, jnp.float32)}


def is_trunk(path, leaf) -> bool:
    """The Gramian is taken over the shared trunk; the heads are task-specific."""
    return "trunk" in jax.tree_util.keystr(path)


def build(method: mtopt.Weighting, tx: optax.GradientTransformation, graphdef, mesh):
    """The single-device step and the data-parallel step (same code, plus axis_name)."""

    def task_losses(params, batch):
        reg, logit = nnx.merge(graphdef, params)(batch["x"])
        return {"reg": jnp.mean((reg - batch["reg"]) ** 2),
                "cls": jnp.mean(optax.sigmoid_binary_cross_entropy(logit, batch["cls"]))}

    def train_step(value_and_grad):
        def step(params, opt_state, method_state, batch, key):
            grads, info, method_state = value_and_grad(
                params, method_state, batch, key=key if method.stochastic else None)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, method_state, info
        return step

    single = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
    # The only change for data parallelism: axis_name names the mesh axis of the batch.
    parallel = mtopt.value_and_grad(task_losses, method, shared=is_trunk, axis_name="data")
    single_step = jax.jit(train_step(single))
    parallel_step = jax.jit(jax.shard_map(
        train_step(parallel), mesh=mesh,
        in_specs=(P(), P(), P(), P("data"), P()),  # replicated state, batch split over "data"
        out_specs=P(),                             # every device holds the same result
    ))
    return task_losses, single_step, parallel_step


def rel_diff(a, b) -> float:
    """Largest leaf-wise ``max |a - b| / max |b|`` (scales floored at 1e-6)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), 1e-6))
    return worst


def naive_gap(task_losses, method, params, method_state, batch, mesh) -> float:
    """The pitfall: average the directions each device combines from its own shard."""
    local = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
    key = jax.random.key(0) if method.stochastic else None

    def per_device(p, s, b):
        grads, _, _ = local(p, s, b, key=key)
        return jax.lax.pmean(grads, "data")

    # check_vma=False: derivatives w.r.t. the replicated params stay local to each
    # device (no implicit sum), as in a framework that all-reduces finished gradients.
    naive = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P("data")),
                                  out_specs=P(), check_vma=False))(params, method_state, batch)
    full = jax.jit(local)(params, method_state, jax.device_get(batch), key=key)[0]
    return rel_diff(naive, full)


def main(argv=None) -> int:
    args = parse_args(argv)
    n = jax.device_count()
    if n != args.devices:
        print(f"asked for {args.devices} devices, JAX has {n}: set XLA_FLAGS before importing "
              "jax (run this file as a script)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    mesh = jax.make_mesh((n,), ("data",))
    graphdef, params = nnx.split(TwoHeads(nnx.Rngs(0)), nnx.Param)
    method = mtopt.method(args.method)
    tx = optax.adam(args.learning_rate)
    task_losses, single_step, parallel_step = build(method, tx, graphdef, mesh)
    batches = make_batches(args.steps, n * args.per_device_batch)
    key = jax.random.key(1)

    print(f"{args.method} on {n} devices, global batch {n * args.per_device_batch} "
          f"({args.per_device_batch} per device), {args.steps} Adam steps")
    one = (params, tx.init(params), method.init(2))
    many = (params, tx.init(params), method.init(2))
    worst_step = 0.0
    for i in range(args.steps):
        batch = jax.tree.map(lambda x, i=i: x[i], batches)
        step_key = jax.random.fold_in(key, i)
        *one, info_one = single_step(*one, batch, step_key)
        sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
        *many, info = parallel_step(*many, sharded, step_key)
        worst_step = max(worst_step, rel_diff(info.losses, info_one.losses),
                         rel_diff(info.weights, info_one.weights))
        losses = " ".join(f"{name}={float(v):.4f}" for name, v in zip(info.names, info.losses))
        weights = " ".join(f"{float(w):.3f}" for w in info.weights)
        print(f"step {i:3d}  {losses}  weights [{weights}]")

    final = rel_diff(many, one)
    print(f"largest per-step difference in losses/weights: {worst_step:.2e}")
    print(f"final params, optimizer and method state vs single device: {final:.2e}")
    last = jax.device_put(jax.tree.map(lambda x: x[-1], batches), NamedSharding(mesh, P("data")))
    gap = naive_gap(task_losses, method, one[0], one[2], last, mesh)
    print(f"pitfall: averaging per-device {args.method} directions is off by {gap:.1%} "
          "(relative to the full-batch direction)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if max(final, worst_step) > args.tolerance:
        print(f"MISMATCH: data-parallel training differs from the single-device step by "
              f"more than {args.tolerance:g}", file=sys.stderr)
        return 1
    print("data-parallel training matches the single-device step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
