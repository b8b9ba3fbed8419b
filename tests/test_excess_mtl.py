"""Tests of ExcessMTL (mtopt/_src/methods/excess_mtl.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import aggregate as aggregate_lib
from mtopt._src.methods.excess_mtl import excess_mtl

PARAMS = {"dense": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "scale": jnp.zeros(())}


def _flatten(tree, num_tasks):
    return np.concatenate([np.reshape(np.asarray(x, np.float64), (num_tasks, -1))
                           for x in jax.tree.leaves(tree)], axis=1)


def _random_jacobians(rng, steps, num_tasks):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(num_tasks,) + p.shape) * (k + 1),
                                           jnp.float32), PARAMS)
        for k in range(steps)
    ]


def _reference(grads_seq, step_size=1e-2):
    """LibMTL's ExcessMTL on flat gradients, step by step."""
    t = grads_seq[0].shape[0]
    weights, acc, initial = np.ones(t), np.zeros_like(grads_seq[0]), None
    out = []
    for grads in grads_seq:
        acc = acc + grads**2
        w = np.sum(grads * grads / np.sqrt(acc + 1e-7), axis=1)
        if initial is None:
            initial = w
        else:
            weights = weights * np.exp(step_size * w / initial)
            weights = weights / weights.sum() * t
        out.append((weights.copy(), acc.copy()))
    return out


class ExcessMTLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_numpy_reference(self):
        rng = np.random.default_rng(0)
        steps, t = 5, 3
        jacs = _random_jacobians(rng, steps, t)
        method = excess_mtl(robust_step_size=0.5)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *jacs)

        def run(stacked):
            def body(state, jac):
                w, state = method.update(state, jnp.ones(t), jacobian=jac)
                return state, (w, state.grad_sq_sum)

            return jax.lax.scan(body, method.init(t, PARAMS), stacked)[1]

        weights, accs = self.variant(run)(stacked)
        ref = _reference([_flatten(j, t) for j in jacs], step_size=0.5)
        np.testing.assert_array_equal(weights[0], np.ones(t))
        for s, (w, acc) in enumerate(ref):
            np.testing.assert_allclose(weights[s], w, rtol=1e-5)
            np.testing.assert_allclose(_flatten(jax.tree.map(lambda x: x[s], accs), t), acc,
                                       rtol=1e-5)
            self.assertAlmostEqual(float(jnp.sum(weights[s])), t, places=4)

    def test_is_a_weighting_of_raw_gradients_in_aggregate(self):
        rng = np.random.default_rng(1)
        jacs = _random_jacobians(rng, 2, 2)
        mask = {"dense": {"w": True, "b": True}, "scale": False}
        method = excess_mtl(robust_step_size=1.0)
        state = method.init(2, PARAMS)
        self.assertIsNone(method.combine)
        for jac in jacs:
            agg = aggregate_lib.aggregate(method, state, jnp.ones(2), jac, mask=mask)
            state = agg.state
        np.testing.assert_array_equal(state.grad_sq_sum["scale"], np.zeros(2))
        ref = _reference([_flatten({"d": j["dense"]}, 2) for j in jacs], step_size=1.0)
        np.testing.assert_allclose(agg.weights, ref[-1][0], rtol=1e-5)
        np.testing.assert_allclose(agg.direction["dense"]["w"],
                                   jnp.tensordot(agg.weights, jacs[-1]["dense"]["w"], 1),
                                   rtol=1e-5)

    def test_degenerate_vmap_and_no_overflow(self):
        t = 3
        method = excess_mtl(robust_step_size=1e3)
        template = {"w": jax.ShapeDtypeStruct((4,), jnp.bfloat16)}
        first = jnp.stack([
            jnp.zeros((t, 4)),
            jnp.array([[1e-10] * 4, [1e10] * 4, [0.0] * 4]),
            jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0], [1e-3, 0.0, 0.0, 0.0]]),
        ]).astype(jnp.bfloat16)
        second = (first.astype(jnp.float32) * jnp.array([1.0, 1e3, 50.0])[:, None, None]
                  + 1.0).astype(jnp.bfloat16)

        def two_steps(j1, j2):
            state = method.init(t, template)
            _, state = method.update(state, jnp.ones(t), jacobian={"w": j1})
            return method.update(state, jnp.ones(t), jacobian={"w": j2})[0]

        w = jax.jit(jax.vmap(two_steps))(first, second)
        self.assertTrue(bool(jnp.all(jnp.isfinite(w))))
        np.testing.assert_allclose(jnp.sum(w, axis=1), np.full(3, 3.0), rtol=1e-5)
        # Task 3 of the last case has by far the largest proxy ratio: it takes all the weight.
        np.testing.assert_allclose(w[2], [0.0, 0.0, 3.0], atol=1e-5)
        # T = 1: the weight stays 1.
        one = excess_mtl()
        st = one.init(1, {"w": jnp.zeros(2)})
        for _ in range(3):
            w1, st = one.update(st, jnp.ones(1), jacobian={"w": jnp.array([[3.0, 4.0]])})
            np.testing.assert_allclose(w1, [1.0], rtol=1e-6)

    def test_bad_inputs(self):
        method = excess_mtl()
        with pytest.raises(ValueError, match="params"):
            method.init(2)
        state = method.init(2, {"w": jnp.zeros(3)})
        with pytest.raises(ValueError, match="needs the Jacobian"):
            method.update(state, jnp.ones(2))
        with pytest.raises(ValueError, match=r"expected a Jacobian leaf of shape \(2, 3\)"):
            method.update(state, jnp.ones(2), jacobian={"w": jnp.zeros((2, 3, 1))})
        with pytest.raises(ValueError, match="initialised for 2 tasks"):
            method.update(state, jnp.ones(3), jacobian={"w": jnp.zeros((3, 3))})
        with pytest.raises(ValueError, match="robust_step_size"):
            excess_mtl(robust_step_size=-1.0)


def test_float64_state_and_weights_under_x64():
    # Issue 11, item 5: log_weights / initial_excess were created in float32 under x64.
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        method = excess_mtl()
        state = method.init(2, {"w": jnp.zeros(3, jnp.float64)})
        assert state.log_weights.dtype == state.initial_excess.dtype == jnp.float64
        jacs = {"w": jnp.asarray(rng.normal(size=(5, 2, 3)))}
        losses = jnp.asarray(rng.uniform(0.5, 2.0, (5, 2)))

        def step(s, inputs):
            l, j = inputs
            w, s = method.update(s, l, jacobian=j)
            return s, w

        final, weights = jax.jit(lambda s, q: jax.lax.scan(step, s, q))(state, (losses, jacs))
        assert weights.dtype == jnp.float64
        assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
        np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 2.0, rtol=1e-9)


def test_state_and_options_are_checked():
    method = excess_mtl()
    with pytest.raises(ValueError, match=r"excess_mtl: state is None"):
        method.update(None, jnp.ones(2), jacobian={"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"excess_mtl: eps must be a non-negative finite float"):
        excess_mtl(eps=-1.0)
