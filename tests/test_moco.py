"""Tests of MoCo (mtopt/_src/methods/moco.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import aggregate as aggregate_lib
from mtopt._src.methods.moco import moco

PARAMS = {"dense": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "scale": jnp.zeros(())}


def _flatten(jac, num_tasks):
    leaves = jax.tree.leaves(jac)
    return np.concatenate([np.reshape(np.asarray(x, np.float64), (num_tasks, -1))
                           for x in leaves], axis=1)


def _random_jacobians(rng, steps, num_tasks):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(num_tasks,) + p.shape),
                                           jnp.float32), PARAMS)
        for _ in range(steps)
    ]


def _reference(grads_seq, losses_seq, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5,
               rho=0.0):
    """LibMTL's MoCo on flat gradients, step by step."""
    t, p = grads_seq[0].shape
    y, lam = np.zeros((t, p)), np.ones(t) / t
    out = []
    for step, (grads, losses) in enumerate(zip(grads_seq, losses_seq), start=1):
        grads = grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-8) * losses[:, None]
        y = y - (beta / step**beta_sigma) * (y - grads)
        logits = lam - (gamma / step**gamma_sigma) * (y @ y.T + rho * np.eye(t)) @ lam
        lam = np.exp(logits - logits.max())
        lam = lam / lam.sum()
        out.append((lam.copy(), y.copy(), y.T @ lam))
    return out


class MoCoTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_numpy_reference(self):
        rng = np.random.default_rng(0)
        steps, t = 5, 3
        jacs = _random_jacobians(rng, steps, t)
        losses = jnp.asarray(np.abs(rng.normal(size=(steps, t))) + 0.1, jnp.float32)
        method = moco(rho=0.1)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *jacs)

        def run(stacked, losses):
            def body(state, inputs):
                jac, loss = inputs
                w, state = method.update(state, loss, jacobian=jac)
                direction = method.combine(jac, w, state)
                return state, (w, state.tracked, direction)

            return jax.lax.scan(body, method.init(t, PARAMS), (stacked, losses))[1]

        weights, tracked, directions = self.variant(run)(stacked, losses)
        ref = _reference([_flatten(j, t) for j in jacs], np.asarray(losses, np.float64),
                         rho=0.1)
        for s, (lam, y, d) in enumerate(ref):
            np.testing.assert_allclose(weights[s], lam, rtol=1e-5)
            np.testing.assert_allclose(
                _flatten(jax.tree.map(lambda x: x[s], tracked), t), y, rtol=1e-5, atol=1e-6
            )
            flat_d = np.concatenate([np.ravel(np.asarray(x[s])) for x in
                                     jax.tree.leaves(directions)])
            np.testing.assert_allclose(flat_d, d, rtol=1e-5, atol=1e-6)
        self.assertAlmostEqual(float(jnp.sum(weights[-1])), 1.0, places=5)

    def test_heads_outside_the_jacobian_and_aggregate(self):
        rng = np.random.default_rng(1)
        t = 2
        jac = _random_jacobians(rng, 1, t)[0]
        mask = {"dense": {"w": True, "b": True}, "scale": False}
        method = moco()
        state = method.init(t, PARAMS)  # template of all the parameters
        losses = jnp.array([1.0, 2.0])
        agg = aggregate_lib.aggregate(method, state, losses, jac, mask=mask)
        # The head ("scale") is not tracked: its buffer stays 0 and it gets sum_i w_i J_i.
        np.testing.assert_array_equal(agg.state.tracked["scale"], np.zeros(t))
        np.testing.assert_allclose(agg.direction["scale"], agg.weights @ jac["scale"],
                                   rtol=1e-6)
        shared = _flatten({"d": jac["dense"]}, t)
        ref = _reference([shared], np.asarray(losses, np.float64)[None])[0]
        np.testing.assert_allclose(agg.weights, ref[0], rtol=1e-5)
        flat_d = np.concatenate([np.ravel(agg.direction["dense"]["b"]),
                                 np.ravel(agg.direction["dense"]["w"])])
        np.testing.assert_allclose(flat_d, ref[2], rtol=1e-5, atol=1e-6)

    def test_vmap_degenerate_and_dtypes(self):
        t = 3
        method = moco()
        template = {"w": jax.ShapeDtypeStruct((4,), jnp.bfloat16)}
        state = method.init(t, template)
        self.assertEqual(state.tracked["w"].dtype, jnp.float32)
        jacs = {"w": jnp.stack([
            jnp.zeros((t, 4)),  # every gradient zero
            jnp.array([[1e-10] * 4, [1e10] * 4, [0.0] * 4]),  # extreme scales
            jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0], [1.0, 0.0, 0.0, 0.0]]),
        ]).astype(jnp.bfloat16)}
        losses = jnp.array([[1.0, 1.0, 1.0], [1e3, 1e-3, 0.0], [0.5, 0.5, 0.5]])

        def step(jac, loss):
            w, new_state = method.update(state, loss, jacobian=jac)
            return w, method.combine(jac, w, new_state)

        w, d = jax.jit(jax.vmap(step))(jacs, losses)
        self.assertTrue(bool(jnp.all(jnp.isfinite(w))))
        self.assertTrue(bool(jnp.all(jnp.isfinite(d["w"].astype(jnp.float32)))))
        self.assertEqual(d["w"].dtype, jnp.bfloat16)
        np.testing.assert_allclose(jnp.sum(w, axis=1), np.ones(3), rtol=1e-5)
        # T = 1: lambda stays 1 and the direction is beta * L * g / |g|.
        one = moco()
        w1, st1 = one.update(one.init(1, {"w": jnp.zeros(2)}), jnp.array([2.0]),
                             jacobian={"w": jnp.array([[3.0, 4.0]])})
        np.testing.assert_allclose(w1, [1.0])
        np.testing.assert_allclose(one.combine({"w": jnp.zeros((1, 2))}, w1, st1)["w"],
                                   [0.6, 0.8], rtol=1e-6)

    def test_bad_inputs(self):
        method = moco()
        with pytest.raises(ValueError, match="params"):
            method.init(2)
        state = method.init(2, {"w": jnp.zeros(3)})
        with pytest.raises(ValueError, match="needs the Jacobian"):
            method.update(state, jnp.ones(2))
        with pytest.raises(ValueError, match=r"expected a Jacobian leaf of shape \(2, 3\)"):
            method.update(state, jnp.ones(2), jacobian={"w": jnp.zeros((2, 4))})
        with pytest.raises(ValueError, match="structure"):
            method.update(state, jnp.ones(2), jacobian={"v": jnp.zeros((2, 3))})
        with pytest.raises(ValueError, match="initialised for 2 tasks"):
            method.update(state, jnp.ones(3), jacobian={"w": jnp.zeros((3, 3))})
        with pytest.raises(ValueError, match="beta"):
            moco(beta=-1.0)


def test_float64_state_and_weights_under_x64():
    # Issue 11, item 5: task_weights were created in float32 whatever x64 said.
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {"w": jnp.zeros(3, jnp.float64)}
        method = moco()
        state = method.init(2, params)
        assert state.task_weights.dtype == jnp.float64
        jacs = {"w": jnp.asarray(rng.normal(size=(5, 2, 3)))}
        losses = jnp.asarray(rng.uniform(0.5, 2.0, (5, 2)))

        def step(s, inputs):
            l, j = inputs
            w, s = method.update(s, l, jacobian=j)
            return s, w

        final, weights = jax.jit(lambda s, q: jax.lax.scan(step, s, q))(state, (losses, jacs))
        assert weights.dtype == jnp.float64
        assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
    assert moco().init(2, PARAMS).task_weights.dtype == jnp.float32


def test_state_and_options_are_checked():
    method = moco()
    with pytest.raises(ValueError, match=r"moco: state is None"):
        method.update(None, jnp.ones(2), jacobian={"w": jnp.zeros((2, 3))})
    for bad in (dict(beta=-0.1), dict(gamma=float("inf")), dict(rho=True)):
        with pytest.raises(ValueError, match=r"^moco: .* must be a non-negative finite float"):
            moco(**bad)
