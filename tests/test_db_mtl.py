"""Tests of DB-MTL (mtopt/_src/methods/db_mtl.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import aggregate as aggregate_lib
from mtopt._src.methods.db_mtl import db_mtl

PARAMS = {"dense": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "scale": jnp.zeros(())}


def _flatten(tree, num_tasks):
    return np.concatenate([np.reshape(np.asarray(x, np.float64), (num_tasks, -1))
                           for x in jax.tree.leaves(tree)], axis=1)


def _random_jacobians(rng, steps, num_tasks):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(num_tasks,) + p.shape),
                                           jnp.float32), PARAMS)
        for _ in range(steps)
    ]


def _reference(grads_seq, losses_seq, beta=0.9, beta_sigma=0.0):
    """LibMTL's DB_MTL on flat gradients, step by step."""
    buffer = np.zeros_like(grads_seq[0])
    out = []
    for step, (grads, losses) in enumerate(zip(grads_seq, losses_seq), start=1):
        log_grads = grads / (losses[:, None] + 1e-8)
        buffer = log_grads + (beta / step**beta_sigma) * (buffer - log_grads)
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        out.append((alpha, buffer.copy(), alpha @ buffer))
    return out


class DBMTLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_numpy_reference(self):
        rng = np.random.default_rng(0)
        steps, t = 5, 3
        jacs = _random_jacobians(rng, steps, t)
        losses = np.abs(rng.normal(size=(steps, t))) * np.array([1.0, 10.0, 0.1]) + 0.01
        method = db_mtl(beta=0.9, beta_sigma=0.5)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *jacs)

        def run(stacked, losses):
            def body(state, inputs):
                jac, loss = inputs
                w, state = method.update(state, loss, jacobian=jac)
                return state, (w, state.grad_buffer, method.combine(jac, w, state))

            return jax.lax.scan(body, method.init(t, PARAMS), (stacked, losses))[1]

        weights, buffers, directions = self.variant(run)(stacked,
                                                         jnp.asarray(losses, jnp.float32))
        ref = _reference([_flatten(j, t) for j in jacs], losses, beta=0.9, beta_sigma=0.5)
        for s, (alpha, buffer, d) in enumerate(ref):
            np.testing.assert_allclose(weights[s], alpha, rtol=1e-5)
            got = _flatten(jax.tree.map(lambda x: x[s], buffers), t)
            np.testing.assert_allclose(got, buffer, rtol=1e-5, atol=1e-5)
            flat_d = np.concatenate([np.ravel(np.asarray(x[s]))
                                     for x in jax.tree.leaves(directions)])
            np.testing.assert_allclose(flat_d, d, rtol=1e-5, atol=1e-4)
            # Dual balancing: every alpha_i * buffer_i has the largest buffer norm.
            scaled = np.linalg.norm(np.asarray(weights[s])[:, None] * got, axis=1)
            np.testing.assert_allclose(scaled, np.full(t, scaled.max()), rtol=1e-5)

    def test_without_ema_it_is_a_gramian_weighting(self):
        rng = np.random.default_rng(1)
        jac = {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}
        losses = jnp.array([0.5, 4.0, 0.02])
        method = db_mtl(beta=0.0)
        w, state = method.update(method.init(3, {"w": jnp.zeros(5)}), losses, jacobian=jac)
        d = method.combine(jac, w, state)["w"]
        gram = np.asarray(jac["w"], np.float64) @ np.asarray(jac["w"], np.float64).T
        log_norms = np.sqrt(np.diag(gram)) / (np.asarray(losses) + 1e-8)
        raw_weights = (log_norms.max() / log_norms) / (np.asarray(losses) + 1e-8)
        np.testing.assert_allclose(d, raw_weights @ np.asarray(jac["w"]), rtol=1e-5)

    def test_heads_outside_the_jacobian_and_aggregate(self):
        rng = np.random.default_rng(2)
        jac = _random_jacobians(rng, 1, 2)[0]
        mask = {"dense": {"w": True, "b": True}, "scale": False}
        method = db_mtl()
        losses = jnp.array([1.0, 3.0])
        agg = aggregate_lib.aggregate(method, method.init(2, PARAMS), losses, jac, mask=mask)
        np.testing.assert_array_equal(agg.state.grad_buffer["scale"], np.zeros(2))
        np.testing.assert_allclose(agg.direction["scale"], agg.weights @ jac["scale"],
                                   rtol=1e-6)
        ref = _reference([_flatten({"d": jac["dense"]}, 2)], np.asarray(losses)[None])[0]
        flat_d = np.concatenate([np.ravel(agg.direction["dense"]["b"]),
                                 np.ravel(agg.direction["dense"]["w"])])
        np.testing.assert_allclose(flat_d, ref[2], rtol=1e-5, atol=1e-5)

    def test_vmap_degenerate_and_dtypes(self):
        t = 3
        method = db_mtl()
        state = method.init(t, {"w": jax.ShapeDtypeStruct((4,), jnp.bfloat16)})
        self.assertEqual(state.grad_buffer["w"].dtype, jnp.float32)
        jacs = {"w": jnp.stack([
            jnp.zeros((t, 4)),
            jnp.array([[1e-10] * 4, [1e10] * 4, [0.0] * 4]),
            jnp.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0], [1.0, 0.0, 0.0, 0.0]]),
        ]).astype(jnp.bfloat16)}
        losses = jnp.array([[1.0, 1.0, 1.0], [1e3, 1e-3, 0.0], [0.5, -0.5, 0.0]])

        def step(jac, loss):
            w, new_state = method.update(state, loss, jacobian=jac)
            return w, method.combine(jac, w, new_state)

        w, d = jax.jit(jax.vmap(step))(jacs, losses)
        self.assertTrue(bool(jnp.all(jnp.isfinite(w))))
        self.assertTrue(bool(jnp.all(jnp.isfinite(d["w"].astype(jnp.float32)))))
        self.assertEqual(d["w"].dtype, jnp.bfloat16)
        np.testing.assert_array_equal(w[0], np.zeros(t))  # all-zero buffers
        # T = 1: the direction is (1 - beta) g / (L + 1e-8).
        one = db_mtl()
        w1, st1 = one.update(one.init(1, {"w": jnp.zeros(2)}), jnp.array([2.0]),
                             jacobian={"w": jnp.array([[3.0, 4.0]])})
        np.testing.assert_allclose(w1, [1.0])
        np.testing.assert_allclose(one.combine({"w": jnp.zeros((1, 2))}, w1, st1)["w"],
                                   [0.15, 0.2], rtol=1e-5)

    def test_bad_inputs(self):
        method = db_mtl()
        with pytest.raises(ValueError, match="params"):
            method.init(2)
        state = method.init(2, {"w": jnp.zeros(3)})
        with pytest.raises(ValueError, match="needs the Jacobian"):
            method.update(state, jnp.ones(2))
        with pytest.raises(ValueError, match=r"expected a Jacobian leaf of shape \(2, 3\)"):
            method.update(state, jnp.ones(2), jacobian={"w": jnp.zeros((2, 4))})
        with pytest.raises(ValueError, match="initialised for 2 tasks"):
            method.update(state, jnp.ones(3), jacobian={"w": jnp.zeros((3, 3))})
        with pytest.raises(ValueError, match="beta"):
            db_mtl(beta=2.0)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_float32_norms_do_not_overflow(beta):
    """Log-loss gradients of 1e20 (a gradient of 1e12 over a loss of 1e-8) have
    squared norms beyond float32's range; the norms are formed scaled, so the
    weights stay finite and every weighted buffer still has the largest norm,
    split over two leaves as well as in one."""
    rows = np.array([[1e12, -2e12, 0.0, 5e11], [3e-10, 0.0, 1e-10, 0.0], [1.0, 1.0, 1.0, 1.0]])
    losses = jnp.array([1e-8, 1e8, 1.0], jnp.float32)
    jac = {"a": jnp.asarray(rows[:, :1], jnp.float32), "b": jnp.asarray(rows[:, 1:], jnp.float32)}
    method = db_mtl(beta=beta)
    state = method.init(3, jax.tree.map(lambda x: x[0], jac))
    for _ in range(2):
        w, state = jax.jit(method.update)(state, losses, jacobian=jac)
    buffers = _flatten(state.grad_buffer, 3)
    assert np.all(np.isfinite(np.asarray(w))), w
    norms = np.linalg.norm(buffers, axis=1)  # float64 reference norms
    np.testing.assert_allclose(np.asarray(w, np.float64) * norms, norms.max(), rtol=1e-5)
    assert np.asarray(w)[0] == 1.0 and np.asarray(w)[1] > 1e30


def test_weights_beyond_the_float32_range_are_capped():
    """Buffer norms 1e20 and 1e-20 apart by 1e40: the ratio is capped at the
    largest float32, not inf (which would make the direction inf or NaN)."""
    jac = {"w": jnp.array([[1e12, 0.0], [0.0, 1e-12]], jnp.float32)}
    method = db_mtl(beta=0.0)
    w, state = method.update(method.init(2, {"w": jnp.zeros(2)}),
                             jnp.array([1e-8, 1e8], jnp.float32), jacobian=jac)
    np.testing.assert_array_equal(np.asarray(w), [1.0, np.finfo(np.float32).max])
    assert np.all(np.isfinite(np.asarray(method.combine(jac, w, state)["w"])))


def test_state_and_options_are_checked():
    method = db_mtl()
    with pytest.raises(ValueError, match=r"db_mtl: state is None"):
        method.update(None, jnp.ones(2), jacobian={"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"db_mtl: beta must be a float in \[0, 1\], got True"):
        db_mtl(beta=True)
    with pytest.raises(ValueError, match=r"db_mtl: beta_sigma must be a non-negative finite"):
        db_mtl(beta_sigma=-1.0)
