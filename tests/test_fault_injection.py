"""Training survives injected NaN losses with ``nan_policy="skip"``.

A flax.nnx model (shared trunk, one head per task) learns two regression
tasks for 300 steps. On a fixed set of steps task 1's loss is multiplied by
NaN (a mask in the batch, as a corrupt batch would). The step uses
``nan_policy="skip"``, Adam, and :func:`mtopt.keep_if_skipped` on the
parameters and optimizer state; the whole run is one ``lax.scan``. Checked for
a Gramian method (UPGrad; MGDA with ``low_memory=True``) and stateful loss-only
methods (uncertainty weighting, DWA):

- the run completes and the skipped steps are exactly the injected ones;
- the final parameters, optimizer state and method state are finite;
- both tasks' (clean) losses fell well below their starting values;
- a skipped step changes nothing: parameters, Adam state and method state
  after it equal those before it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtopt
from mtopt._src import base

NUM_STEPS = 300
BATCH = 32
BAD_STEPS = np.zeros(NUM_STEPS, bool)
BAD_STEPS[[3, 4, 50, 51, 52, 137, 200, 299]] = True  # first step, bursts and the last step


class TwoTaskModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.trunk = nnx.Linear(4, 32, rngs=rngs)
        self.head_a = nnx.Linear(32, 1, rngs=rngs)
        self.head_b = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.trunk(x))
        return self.head_a(h)[:, 0], self.head_b(h)[:, 0]


def targets(x):
    return jnp.sin(x[:, 0]) + 0.5 * x[:, 1], x[:, 2] * x[:, 3]


def make_batches(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_STEPS, BATCH, 4)).astype(np.float32)
    return {"x": jnp.asarray(x), "bad": jnp.asarray(BAD_STEPS)}


def is_shared(path, leaf) -> bool:
    return "trunk" in jax.tree_util.keystr(path)


def build_run(name: str, low_memory: bool):
    graphdef, params = nnx.split(TwoTaskModel(nnx.Rngs(0)), nnx.Param)
    options = {"steps_per_epoch": 10} if name == "dwa" else {}
    method = mtopt.method(name, **options)
    optimizer = optax.adam(3e-2)

    def losses_fn(p, batch):
        model = nnx.merge(graphdef, p)
        pred_a, pred_b = model(batch["x"])
        y_a, y_b = targets(batch["x"])
        loss_a = jnp.mean((pred_a - y_a) ** 2)
        loss_b = jnp.mean((pred_b - y_b) ** 2)
        poison = jnp.where(batch["bad"], jnp.nan, 1.0)  # the injected fault
        return {"a": loss_a, "b": loss_b * poison}

    step = mtopt.value_and_grad(
        losses_fn, method, shared=is_shared, low_memory=low_memory, nan_policy="skip"
    )

    def train_step(carry, batch):
        p, opt_state, state = carry
        grads, info, new_state = step(p, state, batch)
        new_p, new_opt_state = base.optax_step(optimizer, grads, opt_state, p)
        new_p, new_opt_state = mtopt.keep_if_skipped(
            info, (new_p, new_opt_state), (p, opt_state)
        )
        changed = jnp.logical_not(
            jnp.all(jnp.stack([jnp.all(a == b) for a, b in zip(
                jax.tree.leaves((new_p, new_opt_state, new_state)),
                jax.tree.leaves((p, opt_state, state)))]))
        )
        return (new_p, new_opt_state, new_state), (info.skipped, info.nonfinite_tasks, changed)

    @jax.jit
    def run(batches):
        carry = (params, optimizer.init(params), method.init(2, params))
        return jax.lax.scan(train_step, carry, batches)

    def clean_losses(p, x):
        model = nnx.merge(graphdef, p)
        pred_a, pred_b = model(x)
        y_a, y_b = targets(x)
        return np.array([jnp.mean((pred_a - y_a) ** 2), jnp.mean((pred_b - y_b) ** 2)])

    return params, run, clean_losses


def all_finite(tree) -> bool:
    return all(
        bool(np.all(np.isfinite(np.asarray(leaf, np.float64))))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    )


@pytest.mark.parametrize(
    "name, low_memory",
    [("upgrad", False), ("mgda", True), ("uncertainty", False), ("dwa", False)],
    ids=["upgrad", "mgda-low_memory", "uncertainty", "dwa"],
)
def test_training_skips_exactly_the_injected_steps(name, low_memory):
    params0, run, clean_losses = build_run(name, low_memory)
    x_eval = jnp.asarray(np.random.default_rng(123).normal(size=(512, 4)).astype(np.float32))
    start = clean_losses(params0, x_eval)

    (params, opt_state, state), (skipped, nonfinite, changed) = run(make_batches(0))

    np.testing.assert_array_equal(np.asarray(skipped), BAD_STEPS)
    expected = np.zeros((NUM_STEPS, 2), bool)
    expected[BAD_STEPS, 1] = True  # task b, and only task b, on the injected steps
    np.testing.assert_array_equal(np.asarray(nonfinite), expected)
    # A skipped step changes nothing; every other step changes something.
    np.testing.assert_array_equal(np.asarray(changed), ~BAD_STEPS)
    assert all_finite(params) and all_finite(opt_state) and all_finite(state)
    end = clean_losses(params, x_eval)
    assert np.all(np.isfinite(end))
    assert np.all(end < 0.5 * start), (name, start, end)


def test_without_skip_one_nan_poisons_the_run():
    """The control: the same run with nan_policy='propagate' ends with NaN parameters."""
    graphdef, params = nnx.split(TwoTaskModel(nnx.Rngs(0)), nnx.Param)
    method = mtopt.upgrad()
    optimizer = optax.adam(3e-2)

    def losses_fn(p, batch):
        pred_a, pred_b = nnx.merge(graphdef, p)(batch["x"])
        y_a, y_b = targets(batch["x"])
        poison = jnp.where(batch["bad"], jnp.nan, 1.0)
        return {"a": jnp.mean((pred_a - y_a) ** 2), "b": jnp.mean((pred_b - y_b) ** 2) * poison}

    step = mtopt.value_and_grad(losses_fn, method, shared=is_shared)

    def train_step(carry, batch):
        p, opt_state = carry
        grads, info, _ = step(p, method.init(2), batch)
        return base.optax_step(optimizer, grads, opt_state, p), info.finite

    batches = jax.tree.map(lambda a: a[:20], make_batches(0))
    (params, _), finite = jax.jit(lambda b: jax.lax.scan(
        train_step, (params, optimizer.init(params)), b))(batches)
    first_bad = int(np.argmax(BAD_STEPS))
    # Healthy until the first injected NaN, which poisons the parameters for good.
    np.testing.assert_array_equal(np.asarray(finite), np.arange(20) < first_bad)
    assert not all_finite(params)
