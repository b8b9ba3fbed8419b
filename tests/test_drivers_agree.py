"""Every registry method, driven by four drivers, follows one trajectory.

A hand-written jitted loop (``value_and_grad`` and an optax step, the README's
pattern, with the calls a method declares), :func:`mtopt.pareto.sweep`,
:func:`mtopt.as_aggregator` inside ``optax`` and the runner
(:func:`mtopt.runner.train`, on a task whose losses are this problem's) train
the same three-task problem from the same start with the same keys; parameters
and weights agree at every step. A driver that ignored part of a method's protocol (its state, key,
preference, combine, after_step or epochs) would leave this trajectory. The
method is built from its name alone, with the options a driver fills in
(:func:`mtopt.runner.effective_options`), so a new method is covered by
registering it. The default run keeps the representative methods of
``tests/conftest.py``; ``pytest -m slow`` runs all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.experimental import aggregating

import mtopt
from mtopt import pareto
from mtopt.runner import effective_options, train
from mtopt.tasks import Task

NUM_TASKS = 3
STEPS = 6
LR = 0.05
PREFERENCE = jnp.array([0.5, 0.3, 0.2])
KEY = jax.random.key(7)
TARGETS = jnp.array([[1.0, 0.0, 0.5], [-1.0, 2.0, 0.0], [0.5, -1.5, 1.0]])
SCALES = jnp.array([1.0, 3.0, 0.3])
START = {"w": jnp.array([[0.3, -0.2, 0.1], [0.2, 0.4, -0.3]]), "b": jnp.array([0.1, -0.1, 0.2])}


def losses_fn(params):
    """Three deterministic tasks of different scales on a two-leaf model."""
    z = jnp.tanh(params["w"]).sum(axis=0) + params["b"]
    return jnp.sum((z[None, :] - TARGETS) ** 2, axis=1) * SCALES + 0.1


def build(name):
    options = effective_options(name, {}, num_tasks=NUM_TASKS, steps_per_epoch=2,
                                preference=PREFERENCE)
    return mtopt.method(name, **options)


def preference_of(method):
    return PREFERENCE if method.preference != "none" else None


def sweep_key(t):
    """The method key of step t of run 0, as pareto.sweep derives it."""
    return jax.random.fold_in(jax.random.split(KEY, 1)[0], t)


def runner_key(t):
    """The method key of step t of seed 0, as the runner derives it."""
    return jax.random.split(jax.random.fold_in(jax.random.key(0), t))[1]


def hand_loop(method, step_key=sweep_key):
    grad_fn = mtopt.value_and_grad(losses_fn, method)
    opt = optax.sgd(LR)
    pref = preference_of(method)

    def step(carry, t):
        p, o, s = carry
        g, info, s = grad_fn(p, s, key=step_key(t), preference=pref)
        u, o = opt.update(g, o, p)
        p = optax.apply_updates(p, u)
        if method.after_step is not None:
            s = method.after_step(s, losses_fn(p))
        return (p, o, s), (p, info.weights)

    carry = (START, opt.init(START), method.init(NUM_TASKS, START))
    _, (params, weights) = jax.jit(
        lambda c: jax.lax.scan(step, c, jnp.arange(STEPS)))(carry)
    return params, weights


def sweep_run(method):
    pref = preference_of(method)
    common = dict(optimizer=optax.sgd(LR), num_steps=STEPS, key=KEY, record_every=1)
    if pref is None:  # one run from a batched start point
        out = pareto.sweep(losses_fn, method, jax.tree.map(lambda x: x[None], START),
                           batched_params=True, **common)
    else:  # one run per preference
        out = pareto.sweep(losses_fn, method, START, preferences=pref[None], **common)
    return jax.tree.map(lambda x: x[0], out.params), out.weights[0]


def aggregator_run(method):
    tx = aggregating.process(optax.with_extra_args_support(optax.identity()),
                             mtopt.as_aggregator(method, num_tasks=NUM_TASKS), optax.sgd(LR))
    pref = preference_of(method)

    def step(carry, t):
        p, o = carry
        losses, jac, _ = mtopt.task_jacobian(losses_fn)(p)
        updates, o = tx.update(jac, o, p, losses=losses, key=sweep_key(t), preference=pref)
        p = optax.apply_updates(p, updates)
        return (p, o), p

    _, params = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(STEPS)))(
        (START, tx.init(START)))
    return params


class Model(nnx.Module):
    """The problem's parameters as an nnx model, for the runner."""

    def __init__(self, rngs=None):
        del rngs
        self.b = nnx.Param(START["b"])
        self.w = nnx.Param(START["w"])


def _named_losses(model, batch=None):
    del batch  # deterministic: the same problem whatever batch the runner draws
    losses = losses_fn({"b": model.b[...], "w": model.w[...]})
    return dict(zip("abc", losses))


# Two steps per epoch (4 of 8 examples per batch), as build() tells DWA.
_DATA = {"x": jnp.zeros((8, 1)), "a": jnp.zeros(8), "b": jnp.zeros(8), "c": jnp.zeros(8)}
TASK = Task(
    name="drivers_agree", task_names=("a", "b", "c"), metric_names=("loss",) * 3,
    higher_is_better=(False,) * 3, chance=(1.0,) * 3, train=_DATA, val=_DATA, test=_DATA,
    make_model=Model, losses=_named_losses, metrics=_named_losses,
    is_shared=lambda path, leaf: True,
)


def runner_run(name, method):
    result = train(TASK, name, seeds=[0], steps=STEPS, batch_size=4, eval_every=1,
                   optimizer=optax.sgd(LR), preference=preference_of(method),
                   cosine_batch_size=4, progress=False)
    params = jax.tree.map(lambda x: x[0], result.params)
    return {"b": params["b"], "w": params["w"]}, result.weights[0]


def assert_close(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5,
                                   err_msg=what)


@pytest.mark.parametrize("name", mtopt.method_names())
def test_drivers_follow_one_trajectory(name):
    method = build(name)
    params, weights = hand_loop(method)
    final = jax.tree.map(lambda x: x[-1], params)
    assert np.all(np.isfinite(np.asarray(weights))), name
    swept, swept_weights = sweep_run(method)
    assert_close(swept, final, f"{name}: sweep vs hand loop (parameters)")
    assert_close(swept_weights, weights, f"{name}: sweep vs hand loop (weights)")
    if method.after_step is None and method.end_epoch is None:
        assert_close(aggregator_run(method), params,
                     f"{name}: as_aggregator vs hand loop (parameters at every step)")
    runner_params, runner_weights = runner_run(name, method)
    if method.stochastic:  # the runner draws its method keys from the seed
        params, weights = hand_loop(method, step_key=runner_key)
        final = jax.tree.map(lambda x: x[-1], params)
    assert_close(runner_params, final, f"{name}: runner vs hand loop (parameters)")
    assert_close(runner_weights, weights, f"{name}: runner vs hand loop (weights)")
    # The model moved: no driver ran a method that does nothing.
    assert not np.allclose(np.asarray(final["b"]), np.asarray(START["b"])), name
