"""The plain optax route: ``optax.chain(mtopt.as_aggregator(...), clip, adam)``.

It follows the hand-written loop (``value_and_grad``, then the same clip and
Adam) step for step, inside ``lax.scan``; ``mtopt.aggregator_info`` reads the
step's ``StepInfo`` from the chained state without knowing where it sits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtopt


@pytest.fixture(autouse=True)
def _standard_promotion():
    """optax's Adam mixes its int32 count with floats: user code, JAX's default rules."""
    with jax.numpy_dtype_promotion("standard"):
        yield


TARGETS = jnp.array([[1.0, 0.0], [-1.0, 2.0], [0.5, -1.5]])
SCALES = jnp.array([1.0, 3.0, 0.3])
START = jnp.array([2.0, 2.0])
STEPS = 8


def losses_fn(p):
    return jnp.sum((p[None, :] - TARGETS) ** 2, axis=1) * SCALES + 0.1


def tail():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))


def hand_loop(method):
    grad_fn = mtopt.value_and_grad(losses_fn, method)
    opt = tail()

    def step(carry, t):
        p, o, s = carry
        g, info, s = grad_fn(p, s, key=jax.random.fold_in(jax.random.key(0), t))
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o, s), (info.weights, info.cosines)

    carry = (START, opt.init(START), method.init(3))
    (p, _, _), out = jax.lax.scan(step, carry, jnp.arange(STEPS))
    return p, out


def chain_loop(method):
    tx = optax.chain(mtopt.as_aggregator(method, num_tasks=3), tail())

    def step(carry, t):
        p, o = carry
        losses, jac, _ = mtopt.task_jacobian(losses_fn)(p)
        u, o = tx.update(jac, o, p, losses=losses, key=jax.random.fold_in(jax.random.key(0), t))
        info = mtopt.aggregator_info(o)
        return (optax.apply_updates(p, u), o), (info.weights, info.cosines)

    (p, _), out = jax.lax.scan(step, (START, tx.init(START)), jnp.arange(STEPS))
    return p, out


@pytest.mark.parametrize("name", ["equal", "famo", "mgda", "pcgrad", "upgrad"])
def test_chain_route_equals_the_hand_written_loop(name):
    method = mtopt.method(name)
    p_hand, (w_hand, _) = jax.jit(hand_loop, static_argnums=0)(method)
    p_chain, (w_chain, cos_chain) = jax.jit(chain_loop, static_argnums=0)(method)
    np.testing.assert_allclose(np.asarray(w_chain), np.asarray(w_hand), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p_chain), np.asarray(p_hand), rtol=1e-5, atol=1e-6)
    # The cosines are reported for every method, loss-only ones included.
    _, (_, cos_hand) = jax.jit(hand_loop, static_argnums=0)(mtopt.mgda())
    assert cos_chain.shape == (STEPS, 3, 3) and bool(jnp.all(jnp.isfinite(cos_chain)))
    if name == "mgda":
        np.testing.assert_allclose(np.asarray(cos_chain), np.asarray(cos_hand), rtol=1e-5,
                                   atol=1e-6)


def test_aggregator_info_reports_the_step_and_refuses_ambiguous_states():
    method = mtopt.upgrad()
    tx = optax.chain(mtopt.as_aggregator(method, num_tasks=3), tail())
    state = tx.init(START)
    before = mtopt.aggregator_info(state)
    np.testing.assert_array_equal(np.asarray(before.losses), 0.0)
    losses, jac, _ = mtopt.task_jacobian(losses_fn)(START)
    _, state = tx.update(jac, state, START, losses=losses)
    info = mtopt.aggregator_info(state)
    grads, expected, _ = mtopt.value_and_grad(losses_fn, method)(START, method.init(3))
    np.testing.assert_allclose(np.asarray(info.weights), np.asarray(expected.weights), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(info.gramian), np.asarray(expected.gramian), rtol=1e-6)
    assert int(info.num_conflicts) == int(expected.num_conflicts)
    assert bool(info.solver.converged)
    assert set(info.scalars()) >= {"weight/task0", "cosine/task0/task1", "solver/iterations"}
    with pytest.raises(ValueError, match="expected one mtopt.as_aggregator state.*found 0"):
        mtopt.aggregator_info(tail().init(START))
    two = (state, state)
    with pytest.raises(ValueError, match="found 2"):
        mtopt.aggregator_info(two)
