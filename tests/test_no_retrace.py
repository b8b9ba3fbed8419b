"""A jitted training step compiles once and then runs for many steps.

For every registered method (and a few option variants whose state machine
differs), a tiny two-layer model is trained with ``mtopt.value_and_grad`` and
optax SGD with momentum; the step is wrapped in ``chex.assert_max_traces(n=1)``
and the parameters, optimizer state and method state are threaded from step to
step. A retrace would mean a state leaf changed dtype, shape or weak type (or a
Python value leaked into the state). After the run:

- every leaf of the method state, parameters and optimizer state has the dtype,
  shape and ``weak_type`` it had at ``init``;
- the state of a stateful method changed value; everything is finite.

Default run: 200 steps per method; slow run: 5000.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtopt
from mtopt._src import base

NUM_TASKS = 3
NAMES = mtopt.method_names()
# Option variants with a different state machine than the defaults.
VARIANTS = [
    ("dwa", {"steps_per_epoch": 7}),
    ("dwa", {"mode": "window", "window": 4}),
    ("nash_mtl", {"update_weights_every": 3}),
    ("famo", {"lagged": True}),
    ("pmtl", {"warmup_steps": 5}),
]


def build(name: str, **options: Any) -> mtopt.Weighting:
    if name == "linear":
        options.setdefault("weights", [1.0, 0.5, 0.25])
    if name == "dwa":
        options.setdefault("steps_per_epoch", 1)
    if name == "pmtl":
        options.setdefault("preferences", jnp.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2]]))
    return mtopt.method(name, **options)


def init_params() -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "trunk": 0.5 * jax.random.normal(k1, (4, 5)),
        "heads": 0.5 * jax.random.normal(k2, (NUM_TASKS, 5)),
    }


def task_losses(params, x, y):
    hidden = jnp.tanh(x @ params["trunk"])  # (B, 5)
    preds = hidden @ params["heads"].T  # (B, T)
    return jnp.mean((preds - y) ** 2, axis=0) + 0.01  # (T,), positive


def data(step: int):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2], np.cos(x[:, 3])], axis=1)
    return jnp.asarray(x), jnp.asarray(y.astype(np.float32))


def signature(tree: Any) -> list[tuple]:
    """(path, shape, dtype, weak_type) of every leaf."""
    return [
        (jax.tree_util.keystr(path), jnp.shape(leaf), jnp.asarray(leaf).dtype,
         getattr(leaf, "weak_type", False))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def all_finite(tree: Any) -> bool:
    return all(
        bool(np.all(np.isfinite(np.asarray(leaf, np.float64))))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    )


def train(name: str, options: dict, num_steps: int, nan_policy: str = "propagate") -> None:
    info = mtopt.method_info(name)
    method = build(name, **options)
    optimizer = optax.sgd(1e-2, momentum=0.9)
    vg = mtopt.value_and_grad(task_losses, method, nan_policy=nan_policy)
    preference = jnp.array([0.6, 0.2, 0.2]) if info.preference and name != "pmtl" else None
    if name == "pmtl" and "index" not in options:
        preference = jnp.array([0.6, 0.2, 0.2])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, opt_state, state, x, y, key):
        grads, step_info, state = vg(params, state, x, y, key=key, preference=preference)
        new_params, new_opt_state = base.optax_step(optimizer, grads, opt_state, params)
        if nan_policy == "skip":
            new_params = mtopt.keep_if_skipped(step_info, new_params, params)
            new_opt_state = mtopt.keep_if_skipped(step_info, new_opt_state, opt_state)
        return new_params, new_opt_state, state, step_info.losses

    params = init_params()
    opt_state = optimizer.init(params)
    state = method.init(NUM_TASKS, params)
    start = (signature(params), signature(opt_state), signature(state))
    initial_state = jax.tree.map(np.asarray, state)
    key = jax.random.key(1)
    first_losses = None
    for i in range(num_steps):
        x, y = data(i % 50)
        params, opt_state, state, losses = train_step(
            params, opt_state, state, x, y, jax.random.fold_in(key, i)
        )
        if first_losses is None:
            first_losses = np.asarray(losses)
    end = (signature(params), signature(opt_state), signature(state))
    for what, before, after in zip(("params", "optimizer state", "method state"), start, end):
        assert before == after, f"{name}: {what} leaves changed: {before} -> {after}"
    assert all_finite(params) and all_finite(opt_state) and all_finite(state), name
    assert np.all(np.isfinite(np.asarray(losses)))
    if info.stateful:
        changed = [
            not np.array_equal(a, np.asarray(b))
            for a, b in zip(jax.tree.leaves(initial_state), jax.tree.leaves(state))
        ]
        assert any(changed), f"{name}: a stateful method's state never changed"


@pytest.fixture(autouse=True)
def _clear_trace_counter():
    chex.clear_trace_counter()
    yield
    chex.clear_trace_counter()


@pytest.mark.parametrize("name", NAMES)
def test_no_retrace(name):
    train(name, {}, 200)


@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_no_retrace_option_variants(name, options):
    train(name, options, 200)


@pytest.mark.parametrize("name", [n for n in NAMES if mtopt.method_info(n).stateful])
def test_no_retrace_with_skip_policy(name):
    train(name, {}, 50, nan_policy="skip")


def test_a_retrace_is_caught():
    """The guards themselves: a state leaf that turns weak-typed retraces the step
    (chex fails) and changes the leaf signature."""

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(state):
        return state + 1.0

    strong = jnp.zeros((), jnp.float32)
    weak = jnp.asarray(0.0)
    assert signature(strong) != signature(weak)
    f(strong)
    with pytest.raises(AssertionError, match=r"traced > 1 times"):
        f(weak)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_no_retrace_long(name):
    train(name, {}, 5000)
