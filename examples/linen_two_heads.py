"""Train a flax.linen model with batch norm and dropout under several mtopt methods.

The linen conventions, unchanged: ``variables["params"]`` is what
``mtopt.value_and_grad`` differentiates; the other collections (``batch_stats``)
and the call's keyword arguments (``train=``, ``rngs=``) go to the loss function,
which calls ``model.apply(..., mutable=["batch_stats"])`` and returns the new
statistics as its auxiliary output (``has_aux=True``): they come back in
``info.aux``, to be threaded into the next step. Task "reg" is a regression
(MSE) of scale ~10, task "cls" a binary classification (cross-entropy) on the
same inputs. The script prints the final test metrics (``train=False``: running
statistics, no dropout) and mean task weights of each method and writes them to
``linen_two_heads.json``.

Run: ``python examples/linen_two_heads.py [--steps 300] [--out examples/out]``.
"""

from __future__ import annotations

import argparse
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtopt


class TwoHeads(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dropout trunk, a regression and a classification head."""

    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        z = nn.Dense(self.width)(x)
        z = nn.BatchNorm(use_running_average=not train, momentum=0.9)(z)
        z = nn.Dropout(0.1, deterministic=not train)(nn.relu(z))
        return nn.Dense(1, name="reg_head")(z)[:, 0], nn.Dense(1, name="cls_head")(z)[:, 0]


def make_data(seed: int = 0, n: int = 1024, dim: int = 16):
    """Regression target of scale ~10 and a binary label, from one input; train/test halves."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    y_reg = (10.0 * np.sin(x @ a / np.sqrt(dim)) + 0.1 * rng.normal(size=n)).astype(np.float32)
    y_cls = ((x @ b + 0.5 * np.sin(3 * x[:, 0])) > 0).astype(np.float32)
    half = n // 2
    split = lambda s: tuple(jnp.asarray(v[s]) for v in (x, y_reg, y_cls))  # noqa: E731
    return split(slice(0, half)), split(slice(half, n))


MODEL = TwoHeads()


def task_losses(params, batch_stats, x, y_reg, y_cls, *, train: bool, rngs=None):
    """The two task losses, and the updated batch statistics as auxiliary output."""
    (pred, logit), updates = MODEL.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=train, rngs=rngs,
        mutable=["batch_stats"],
    )
    losses = {"reg": jnp.mean((pred - y_reg) ** 2),
              "cls": jnp.mean(optax.sigmoid_binary_cross_entropy(logit, y_cls))}
    return losses, updates["batch_stats"]


def train(method: mtopt.Weighting, data, steps: int, lr: float, seed: int, **step_options):
    """Adam on ``params``; returns the trained variables and the mean task weights."""
    variables = MODEL.init(jax.random.key(seed), data[0][:2], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    grad_fn = mtopt.value_and_grad(task_losses, method, has_aux=True, **step_options)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    state = method.init(2)

    @jax.jit
    def step(params, batch_stats, opt_state, state, key):
        method_key, dropout_key = jax.random.split(key)
        grads, info, state = grad_fn(params, state, batch_stats, *data, train=True,
                                     rngs={"dropout": dropout_key}, key=method_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), info.aux, opt_state, state, info.weights

    weights = []
    for t in range(steps):
        params, batch_stats, opt_state, state, w = step(params, batch_stats, opt_state, state,
                                                        jax.random.key(t))
        weights.append(w)
    return {"params": params, "batch_stats": batch_stats}, np.mean(np.asarray(weights), axis=0)


def evaluate(variables, data) -> dict[str, float]:
    x, y_reg, y_cls = data
    pred, logit = MODEL.apply(variables, x, train=False)
    return {"reg_mse": float(jnp.mean((pred - y_reg) ** 2)),
            "cls_acc": float(jnp.mean((logit > 0) == (y_cls > 0.5)))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train_data, test_data = make_data(args.seed)
    runs = {
        "equal": (mtopt.equal(), {}),
        "famo": (mtopt.famo(), {}),
        "upgrad": (mtopt.upgrad(), {}),
        "upgrad (low_memory)": (mtopt.upgrad(), {"low_memory": True}),
        "pcgrad": (mtopt.pcgrad(), {}),
    }
    results = {}
    print(f"{'method':22s} {'test reg MSE':>12s} {'test cls acc':>12s}  mean weights (cls, reg)")
    for name, (method, options) in runs.items():
        variables, weights = train(method, train_data, args.steps, args.lr, args.seed, **options)
        metrics = evaluate(variables, test_data)
        results[name] = {**metrics, "mean_weights": {"cls": float(weights[0]),
                                                     "reg": float(weights[1])}}
        print(f"{name:22s} {metrics['reg_mse']:12.3f} {metrics['cls_acc']:12.3f}  "
              f"({weights[0]:.3f}, {weights[1]:.3f})")
    payload = {"args": vars(args), "results": results}
    with open(os.path.join(args.out, "linen_two_heads.json"), "w") as f:
        json.dump(payload, f, indent=2)
    return payload


if __name__ == "__main__":
    main()
