"""Train an equinox model with a shared trunk and two heads under several mtopt methods.

The model is an ``eqx.Module`` passed to ``mtopt.value_and_grad`` as it is: its
array leaves are differentiated, the others (the MLP's activation function) reach
the loss function unchanged and get ``None`` in the gradients, as with
``eqx.filter_grad``; so ``eqx.filter_jit``, ``eqx.filter`` and
``eqx.apply_updates`` work on the result as on any equinox gradient. Task
"reg" is a regression (MSE) of scale ~10, task "cls" a binary classification
(cross-entropy) on the same inputs. The script prints the final test metrics and
mean task weights of each method and writes them to ``equinox_two_heads.json``.

Run: ``python examples/equinox_two_heads.py [--steps 300] [--out examples/out]``.
"""

from __future__ import annotations

import argparse
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtopt


class TwoHeads(eqx.Module):
    """Shared MLP trunk (with its activation function as a leaf), two linear heads."""

    trunk: eqx.nn.MLP
    reg_head: eqx.nn.Linear
    cls_head: eqx.nn.Linear

    def __init__(self, dim: int, width: int, key: jax.Array):
        k_trunk, k_reg, k_cls = jax.random.split(key, 3)
        self.trunk = eqx.nn.MLP(dim, width, width, depth=1, activation=jax.nn.relu,
                                final_activation=jax.nn.relu, key=k_trunk)
        self.reg_head = eqx.nn.Linear(width, 1, key=k_reg)
        self.cls_head = eqx.nn.Linear(width, 1, key=k_cls)

    def encode(self, x: jax.Array) -> jax.Array:
        return jax.vmap(self.trunk)(x)


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


def heads(model: TwoHeads, z: jax.Array, x, y_reg, y_cls) -> dict[str, jax.Array]:
    """The two task losses from the shared representation ``z``."""
    pred = jax.vmap(model.reg_head)(z)[:, 0]
    logit = jax.vmap(model.cls_head)(z)[:, 0]
    return {"reg": jnp.mean((pred - y_reg) ** 2),
            "cls": jnp.mean(optax.sigmoid_binary_cross_entropy(logit, y_cls))}


def task_losses(model: TwoHeads, x, y_reg, y_cls) -> dict[str, jax.Array]:
    return heads(model, model.encode(x), x, y_reg, y_cls)


def train(method: mtopt.Weighting, data, steps: int, lr: float, seed: int, **step_options):
    """Adam on the model's arrays; returns the trained model and the mean task weights."""
    model = TwoHeads(data[0].shape[1], 64, jax.random.key(seed))
    if step_options.pop("representation", False):
        grad_fn = mtopt.representation_value_and_grad(
            lambda m, x, *_: m.encode(x), heads, method, **step_options)
    else:
        grad_fn = mtopt.value_and_grad(task_losses, method, **step_options)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    state = method.init(2)

    @eqx.filter_jit
    def step(model, opt_state, state, key):
        grads, info, state = grad_fn(model, state, *data, key=key)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, state, info.weights

    weights = []
    for t in range(steps):
        model, opt_state, state, w = step(model, opt_state, state, jax.random.key(t))
        weights.append(w)
    return model, np.mean(np.asarray(weights), axis=0)


def evaluate(model: TwoHeads, data) -> dict[str, float]:
    x, y_reg, y_cls = data
    z = model.encode(x)
    pred = jax.vmap(model.reg_head)(z)[:, 0]
    logit = jax.vmap(model.cls_head)(z)[:, 0]
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
        "uncertainty": (mtopt.uncertainty(), {}),
        "upgrad": (mtopt.upgrad(), {}),
        "upgrad (low_memory)": (mtopt.upgrad(), {"low_memory": True}),
        "mgda-ub (representation)": (mtopt.mgda("loss+"), {"representation": True}),
    }
    results = {}
    print(f"{'method':26s} {'test reg MSE':>12s} {'test cls acc':>12s}  mean weights (cls, reg)")
    for name, (method, options) in runs.items():
        model, weights = train(method, train_data, args.steps, args.lr, args.seed, **options)
        metrics = evaluate(model, test_data)
        results[name] = {**metrics, "mean_weights": {"cls": float(weights[0]),
                                                     "reg": float(weights[1])}}
        print(f"{name:26s} {metrics['reg_mse']:12.3f} {metrics['cls_acc']:12.3f}  "
              f"({weights[0]:.3f}, {weights[1]:.3f})")
    payload = {"args": vars(args), "results": results}
    with open(os.path.join(args.out, "equinox_two_heads.json"), "w") as f:
        json.dump(payload, f, indent=2)
    return payload


if __name__ == "__main__":
    main()
