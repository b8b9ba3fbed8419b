"""Tests of GradVac (mtopt/_src/methods/gradvac.py)."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gramian_cases import gramian, jacobian_cases
from mtopt._src.methods.gradvac import GradVacState, gradvac
from mtopt._src.methods.pcgrad import pcgrad


def _orders(key, num_tasks):
    """The documented visiting orders: row i of argsort(uniform(key, (T, T)))."""
    return jnp.argsort(jax.random.uniform(key, (num_tasks, num_tasks)), axis=-1)


def _vectors(gram):
    """Rows g_i with g_i . g_j = G_ij / max diag (the normalised frame of the method)."""
    gram = np.asarray(gram, np.float64)
    top = gram.diagonal().max()
    gram = gram / (top if top > 0 else 1.0)
    vals, vecs = np.linalg.eigh(gram)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def _reference_step(grads, targets, orders, beta, eps=1e-8):
    """One GradVac step on explicit vectors (paper / TorchJD EMA: updated at every visit)."""
    t = grads.shape[0]
    targets = targets.copy()
    pcs = grads.copy()
    for i in range(t):
        for j in orders[i]:
            if j == i:
                continue
            norm_i, norm_j = np.linalg.norm(pcs[i]), np.linalg.norm(grads[j])
            cos = np.clip(pcs[i] @ grads[j] / (norm_i * norm_j + eps), -1.0, 1.0)
            target = targets[i, j]
            if cos < target:
                w = norm_i * (target * np.sqrt(1 - cos**2) - cos * np.sqrt(1 - target**2))
                w = w / (norm_j * np.sqrt(1 - target**2) + eps)
                pcs[i] = pcs[i] + w * grads[j]
            targets[i, j] = (1 - beta) * target + beta * cos
    return pcs.sum(0), targets


def _update(method, state, gram, key):
    num_tasks = gram.shape[-1]
    return method.update(state, jnp.ones(num_tasks), gramian=gram, key=key)


class GradVacTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_numpy_reference(self):
        rng = np.random.default_rng(0)
        t, steps, beta = 4, 5, 0.5
        jacs = rng.normal(size=(steps, t, 6))
        jacs[:, 1] -= jacs[:, 0]  # some conflict at every step
        grams = jnp.asarray(np.stack([gramian(j) for j in jacs]), jnp.float32)
        keys = jax.random.split(jax.random.key(1), steps)
        method = gradvac(beta)

        def run(grams, keys):
            def body(state, inputs):
                g, k = inputs
                w, state = _update(method, state, g, k)
                return state, (w, state.target_cosines, _orders(k, t))

            return jax.lax.scan(body, method.init(t), (grams, keys))[1]

        weights, targets, orders = self.variant(run)(grams, keys)
        ref_targets = np.zeros((t, t))
        for s in range(steps):
            grads = _vectors(gramian(jacs[s]))
            merged, ref_targets = _reference_step(
                grads, ref_targets, np.asarray(orders[s]), beta
            )
            np.testing.assert_allclose(np.asarray(weights[s]) @ grads, merged, atol=1e-4)
            np.testing.assert_allclose(targets[s], ref_targets, atol=1e-5)

    def test_first_step_two_tasks_is_pcgrad(self):
        rng = np.random.default_rng(3)
        for _ in range(3):
            j = rng.normal(size=(2, 5))
            j[1] -= 2.0 * j[0]
            g = jnp.asarray(gramian(j), jnp.float32)
            key = jax.random.key(0)
            w_vac, _ = _update(gradvac(), gradvac().init(2), g, key)
            w_pc = pcgrad().update(pcgrad().init(2), jnp.ones(2), gramian=g, key=key)[0]
            np.testing.assert_allclose(w_vac, w_pc, rtol=1e-5)

    def test_correction_reaches_target_cosine_and_ema(self):
        # cos(g_1, g_2) = 0.1 < target 0.6: after the correction cos(g'_1, g_2) = 0.6.
        j = np.array([[1.0, 0.0], [0.1, np.sqrt(1 - 0.01)]]) * np.array([[2.0], [0.5]])
        g = jnp.asarray(gramian(j), jnp.float32)
        state = GradVacState(target_cosines=jnp.array([[0.0, 0.6], [0.6, 0.0]]))
        w, new_state = _update(gradvac(beta=0.25), state, g, jax.random.key(0))
        corrected = np.array([j[0] + (w[1] - 1.0) * j[1], j[1] + (w[0] - 1.0) * j[0]])
        for i, other in ((0, 1), (1, 0)):
            cos = corrected[i] @ j[other] / np.linalg.norm(corrected[i]) / np.linalg.norm(
                j[other]
            )
            np.testing.assert_allclose(cos, 0.6, rtol=1e-5)
        np.testing.assert_allclose(new_state.target_cosines[0, 1], 0.75 * 0.6 + 0.25 * 0.1,
                                   rtol=1e-5)
        # A pair above its target is left alone, but the EMA still moves.
        state = GradVacState(target_cosines=jnp.array([[0.0, -0.5], [-0.5, 0.0]]))
        w, new_state = _update(gradvac(beta=0.25), state, g, jax.random.key(0))
        np.testing.assert_allclose(w, [1.0, 1.0])
        np.testing.assert_allclose(new_state.target_cosines[0, 1], 0.75 * -0.5 + 0.25 * 0.1,
                                   rtol=1e-5)

    @pytest.mark.slow  # one compilation per T (8); test_registry checks every case's finiteness
    def test_finite_on_all_cases_over_steps_and_vmap(self):
        groups = collections.defaultdict(list)
        for name, j in jacobian_cases():
            groups[j.shape[0]].append(gramian(j))
        method = gradvac()

        def three_steps(g, key):
            def body(state, k):
                w, state = _update(method, state, g, k)
                return state, w

            state, w = jax.lax.scan(body, method.init(g.shape[-1]), jax.random.split(key, 3))
            return w, state.target_cosines

        run = jax.jit(jax.vmap(three_steps))
        for t, grams in groups.items():
            keys = jax.random.split(jax.random.key(t), len(grams))
            w, targets = run(jnp.asarray(np.stack(grams), jnp.float32), keys)
            self.assertTrue(bool(jnp.all(jnp.isfinite(w))), f"T={t}")
            self.assertTrue(bool(jnp.all(jnp.abs(targets) <= 1.0)), f"T={t}")

    def test_scale_invariance(self):
        j = np.random.default_rng(2).normal(size=(3, 6))
        key = jax.random.key(4)
        state = GradVacState(target_cosines=jnp.full((3, 3), 0.3))
        run = jax.jit(lambda g: _update(gradvac(), state, g, key)[0])
        w1 = run(jnp.asarray(gramian(j), jnp.float32))
        for scale in (1e-10, 1e10):
            np.testing.assert_allclose(
                run(jnp.asarray(gramian(scale * j), jnp.float32)), w1, rtol=1e-4
            )

    def test_same_key_same_result_keys_matter(self):
        j = np.array([[1.0, 0.0, 0.2], [-0.6, 0.8, 0.1], [-0.5, -0.9, 0.3]])
        g = jnp.asarray(gramian(j), jnp.float32)
        method = gradvac()
        state = GradVacState(target_cosines=jnp.full((3, 3), 0.2))
        run = jax.jit(jax.vmap(lambda k: _update(method, state, g, k)[0]))
        keys = jax.random.split(jax.random.key(7), 16)
        ws = np.asarray(run(keys))
        np.testing.assert_array_equal(ws, np.asarray(run(keys)))
        self.assertGreater(np.ptp(ws, axis=0).max(), 1e-3)

    def test_single_task(self):
        method = gradvac()
        w, state = _update(method, method.init(1), jnp.array([[2.0]]), jax.random.key(0))
        np.testing.assert_allclose(w, [1.0])
        np.testing.assert_allclose(state.target_cosines, [[0.0]])

    def test_bad_inputs(self):
        method = gradvac()
        with pytest.raises(ValueError, match="initialised for 3 tasks"):
            _update(method, method.init(3), jnp.eye(2), jax.random.key(0))
        with pytest.raises(ValueError, match="PRNG key"):
            method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(2))
        with pytest.raises(ValueError, match="needs the Gramian"):
            method.update(method.init(2), jnp.ones(2), key=jax.random.key(0))
        with pytest.raises(ValueError, match="beta"):
            gradvac(beta=1.5)
        with pytest.raises(ValueError, match="num_tasks"):
            method.init(0)
