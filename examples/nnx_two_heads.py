"""Train a flax.nnx model with a shared trunk and two heads under several mtopt methods.

Task "reg" is a regression (MSE), task "cls" a binary classification
(cross-entropy) on the same generated inputs: the classic "one trunk, MSE for the
regressor, cross-entropy for the classifier" set-up. Every method runs the same
number of Adam steps from the same initialisation; the script prints a table of
the final test metrics and the mean task weights, and writes a PNG of the
training curves.

Two ways of plugging mtopt into a flax.nnx loop are shown:

- ``mtopt.value_and_grad`` on the ``nnx.Param`` state (any method), then an
  ordinary ``nnx.Optimizer`` step;
- ``mtopt.as_aggregator`` first in an ``optax.chain``, so
  ``nnx.Optimizer.update(model, per_task_grads, losses=...)`` does the weighting and
  ``mtopt.aggregator_info(optimizer.opt_state)`` reads the step's ``StepInfo``.

Run: ``python examples/nnx_two_heads.py [--steps 600] [--out examples/out]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import mtopt


class TwoHeads(nnx.Module):
    """Shared MLP trunk, a regression head and a classification head."""

    def __init__(self, dim: int, width: int, rngs: nnx.Rngs):
        self.trunk1 = nnx.Linear(dim, width, rngs=rngs)
        self.trunk2 = nnx.Linear(width, width, rngs=rngs)
        self.reg_head = nnx.Linear(width, 1, rngs=rngs)
        self.cls_head = nnx.Linear(width, 1, rngs=rngs)

    def encode(self, x):
        return jax.nn.relu(self.trunk2(jax.nn.relu(self.trunk1(x))))

    def __call__(self, x):
        z = self.encode(x)
        return self.reg_head(z)[:, 0], self.cls_head(z)[:, 0]


def make_data(seed: int = 0, n: int = 2048, dim: int = 16):
    """Regression target of scale ~10 and a binary label, from one input."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    y_reg = (10.0 * np.sin(x @ a / np.sqrt(dim)) + 0.1 * rng.normal(size=n)).astype(np.float32)
    y_cls = ((x @ b + 0.5 * np.sin(3 * x[:, 0])) > 0).astype(np.float32)
    split = int(0.8 * n)
    train = tuple(jnp.asarray(v[:split]) for v in (x, y_reg, y_cls))
    test = tuple(jnp.asarray(v[split:]) for v in (x, y_reg, y_cls))
    return train, test


def task_losses(model: TwoHeads, x, y_reg, y_cls, weight_decay: float = 1e-5):
    """Named task losses plus an L2 penalty kept outside the weighting."""
    pred_reg, logit_cls = model(x)
    losses = {
        "reg": jnp.mean((pred_reg - y_reg) ** 2),
        "cls": jnp.mean(optax.sigmoid_binary_cross_entropy(logit_cls, y_cls)),
    }
    params = nnx.state(model, nnx.Param)
    penalty = weight_decay * sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
    return mtopt.Objectives(losses, penalty=penalty)


def metrics(model: TwoHeads, x, y_reg, y_cls) -> dict[str, float]:
    pred_reg, logit_cls = model(x)
    return {
        "test_mse": float(jnp.mean((pred_reg - y_reg) ** 2)),
        "test_acc": float(jnp.mean((logit_cls > 0) == (y_cls > 0.5))),
    }


def train_with_value_and_grad(method, train, steps, lr, seed, representation=False):
    """The explicit loop: mtopt computes grads and info, nnx.Optimizer applies them."""
    model = TwoHeads(train[0].shape[1], 64, nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def fn(p, x, y_reg, y_cls):
        return task_losses(nnx.merge(graphdef, p, rest), x, y_reg, y_cls)

    if representation:

        def encode(p, x, y_reg, y_cls):
            return nnx.merge(graphdef, p, rest).encode(x)

        def heads(p, z, x, y_reg, y_cls):
            m = nnx.merge(graphdef, p, rest)
            losses = {
                "reg": jnp.mean((m.reg_head(z)[:, 0] - y_reg) ** 2),
                "cls": jnp.mean(optax.sigmoid_binary_cross_entropy(m.cls_head(z)[:, 0], y_cls)),
            }
            penalty = 1e-5 * sum(jnp.sum(q**2) for q in jax.tree.leaves(p))
            return mtopt.Objectives(losses, penalty=penalty)

        grad_fn = mtopt.representation_value_and_grad(encode, heads, method)
    else:
        grad_fn = mtopt.value_and_grad(fn, method)

    @nnx.jit
    def train_step(model, optimizer, method_state, key, x, y_reg, y_cls):
        params = nnx.state(model, nnx.Param)
        grads, info, method_state = grad_fn(params, method_state, x, y_reg, y_cls, key=key)
        optimizer.update(model, grads)
        return method_state, info

    method_state = method.init(2)
    return model, _run(train_step, model, optimizer, method_state, train, steps, seed)


def train_with_aggregator(method, train, steps, lr, seed):
    """The optax-native loop: per-task grads go through an Aggregator chained with Adam."""
    model = TwoHeads(train[0].shape[1], 64, nnx.Rngs(seed))
    tx = optax.chain(mtopt.as_aggregator(method, num_tasks=2), optax.adam(lr))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, method_state, key, x, y_reg, y_cls):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        fn = lambda p: task_losses(nnx.merge(graphdef, p, rest), x, y_reg, y_cls).losses
        losses, jac, _ = mtopt.task_jacobian(fn)(params)
        optimizer.update(model, jac, losses=losses)
        return method_state, mtopt.aggregator_info(optimizer.opt_state)

    return model, _run(train_step, model, optimizer, None, train, steps, seed)


def _run(train_step, model, optimizer, method_state, train, steps, seed):
    x, y_reg, y_cls = train
    key = jax.random.key(seed)
    history = {"reg": [], "cls": [], "w_reg": [], "w_cls": []}
    batch = 128
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = jnp.asarray(rng.integers(0, x.shape[0], size=batch))
        key, sub = jax.random.split(key)
        method_state, info = train_step(model, optimizer, method_state, sub, x[idx], y_reg[idx],
                                        y_cls[idx])
        # Tasks come in sorted name order (cls, reg) on both routes; info.names says so
        # where the losses were named.
        names = info.names or ("cls", "reg")
        reg, cls = names.index("reg"), names.index("cls")
        history["reg"].append(float(info.losses[reg]))
        history["cls"].append(float(info.losses[cls]))
        history["w_reg"].append(float(info.weights[reg]))
        history["w_cls"].append(float(info.weights[cls]))
    return history


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train, test = make_data(args.seed)

    runs = {
        "equal": lambda: train_with_value_and_grad(mtopt.equal(), train, args.steps, args.lr, args.seed),
        "linear[1,0.2]": lambda: train_with_value_and_grad(
            mtopt.linear({"reg": 1.0, "cls": 0.2}), train, args.steps, args.lr, args.seed),
        "dwa(window)": lambda: train_with_value_and_grad(
            mtopt.dwa(mode="window", window=20), train, args.steps, args.lr, args.seed),
        "uncertainty": lambda: train_with_value_and_grad(
            mtopt.uncertainty(), train, args.steps, args.lr, args.seed),
        "mgda(loss+)": lambda: train_with_value_and_grad(
            mtopt.mgda("loss+"), train, args.steps, args.lr, args.seed),
        "mgda-ub": lambda: train_with_value_and_grad(
            mtopt.mgda("loss+"), train, args.steps, args.lr, args.seed, representation=True),
        "mgda(aggregator)": lambda: train_with_aggregator(
            mtopt.mgda("loss+"), train, args.steps, args.lr, args.seed),
    }
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are an optional extra
        tqdm = lambda it, **_: it
    results, histories = {}, {}
    for name in tqdm(list(runs), desc="methods"):
        start = time.perf_counter()
        model, history = runs[name]()
        results[name] = {
            **metrics(model, *test),
            "mean_w_reg": float(np.mean(history["w_reg"][-100:])),
            "mean_w_cls": float(np.mean(history["w_cls"][-100:])),
            "seconds": time.perf_counter() - start,
        }
        histories[name] = history

    header = "| method | test MSE (reg) | test acc (cls) | w_reg | w_cls | s |\n|---|---|---|---|---|---|"
    rows = [
        f"| {n} | {r['test_mse']:.3f} | {r['test_acc']:.3f} | {r['mean_w_reg']:.3g} | "
        f"{r['mean_w_cls']:.3g} | {r['seconds']:.1f} |"
        for n, r in results.items()
    ]
    table = "\n".join([header, *rows])
    print(table)
    with open(os.path.join(args.out, "nnx_two_heads.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
    with open(os.path.join(args.out, "nnx_two_heads.md"), "w") as f:
        f.write(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[examples]').")
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        smooth = lambda v: np.convolve(v, np.ones(20) / 20, mode="valid")
        for name, h in histories.items():
            axes[0].plot(smooth(h["reg"]), label=name)
            axes[1].plot(smooth(h["cls"]), label=name)
            share = np.asarray(h["w_reg"]) / (np.asarray(h["w_reg"]) + np.asarray(h["w_cls"]))
            axes[2].plot(smooth(share), label=name)
        axes[0].set(title="train MSE (reg)", yscale="log", xlabel="step")
        axes[1].set(title="train cross-entropy (cls)", yscale="log", xlabel="step")
        axes[2].set(title="w_reg / (w_reg + w_cls)", xlabel="step")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(args.out, "nnx_two_heads.png")
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")
    print(f"wrote {os.path.join(args.out, 'nnx_two_heads.md')} and .json")
    return results


if __name__ == "__main__":
    main()
