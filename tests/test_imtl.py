"""Tests of IMTL-G, IMTL-L and the hybrid IMTL (mtopt/_src/methods/imtl.py)."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gramian_cases import gramian, jacobian_cases
from mtopt._src.methods.imtl import imtl, imtl_g, imtl_l

PAPER_J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def _closed_form(j):
    """LibMTL / Nash-MTL IMTL-G on explicit gradients (float64)."""
    units = j / np.linalg.norm(j, axis=1, keepdims=True)
    d = j[0:1] - j[1:]
    u = units[0:1] - units[1:]
    alpha = j[0] @ u.T @ np.linalg.inv(d @ u.T)
    return np.concatenate([[1.0 - alpha.sum()], alpha])


def _imtl_g(gram):
    return imtl_g().update(imtl_g().init(gram.shape[-1]), jnp.ones(gram.shape[-1]), gramian=gram)[0]


def _full_rank_cases():
    """Cases with linearly independent, well-conditioned gradients, grouped by T."""
    groups = collections.defaultdict(list)
    for name, j in jacobian_cases():
        t, p = j.shape
        norms = np.linalg.norm(j, axis=1)
        if t < 2 or t > p or norms.min() == 0:
            continue
        units = j / np.linalg.norm(j, axis=1, keepdims=True)
        if np.linalg.cond(units) < 1e2 and np.abs(np.log10(norms)).max() < 3:
            groups[t].append((name, j))
    return groups


class IMTLGTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_value(self):
        w = self.variant(_imtl_g)(jnp.asarray(PAPER_J @ PAPER_J.T, jnp.float32))
        np.testing.assert_allclose(w, [0.5923, 0.4077], atol=1e-4)
        np.testing.assert_allclose(np.asarray(w) @ PAPER_J, [0.0767, 1.0, 1.0], atol=1e-4)
        np.testing.assert_allclose(w, _closed_form(PAPER_J), rtol=1e-5)

    def test_matches_closed_form_and_equal_projections(self):
        groups = _full_rank_cases()
        self.assertGreaterEqual(sum(len(c) for c in groups.values()), 10)
        run = jax.jit(jax.vmap(_imtl_g))
        for t, cases in groups.items():
            w = np.asarray(run(jnp.asarray(np.stack([gramian(j) for _, j in cases]),
                                           jnp.float32)), np.float64)
            for (name, j), wi in zip(cases, w):
                np.testing.assert_allclose(wi, _closed_form(j), rtol=1e-3, atol=1e-4,
                                           err_msg=name)
                self.assertAlmostEqual(wi.sum(), 1.0, places=5)
                proj = j @ (wi @ j) / np.linalg.norm(j, axis=1)
                np.testing.assert_allclose(proj, np.full(t, proj[0]), rtol=1e-3, atol=1e-4,
                                           err_msg=name)

    def test_finite_on_all_cases_sum_one_or_zero(self):
        groups = collections.defaultdict(list)
        for name, j in jacobian_cases():
            groups[j.shape[0]].append((name, j))
        run = jax.jit(jax.vmap(_imtl_g))
        for t, cases in groups.items():
            w = np.asarray(run(jnp.asarray(np.stack([gramian(j) for _, j in cases]),
                                           jnp.float32)))
            self.assertTrue(np.all(np.isfinite(w)), f"T={t}")
            for (name, _), wi in zip(cases, w):
                total = wi.sum()
                self.assertTrue(abs(total - 1) < 1e-4 or np.all(wi == 0), name)

    def test_degenerate_cases(self):
        rng = np.random.default_rng(0)
        j = rng.normal(size=(3, 5))
        # Duplicated task: the duplicates share their weight, the direction is unchanged.
        dup = np.concatenate([j, j[:1]])
        w = np.asarray(_imtl_g(jnp.asarray(gramian(dup), jnp.float32)))
        np.testing.assert_allclose(w[0], w[3], rtol=1e-4)
        w3 = np.asarray(_imtl_g(jnp.asarray(gramian(j), jnp.float32)))
        np.testing.assert_allclose(w @ dup, w3 @ j, rtol=1e-3, atol=1e-4)
        # Opposite gradients: the equal-projection direction is 0.
        opp = np.stack([j[0], -j[0]])
        w = np.asarray(_imtl_g(jnp.asarray(gramian(opp), jnp.float32)))
        np.testing.assert_allclose(w @ opp, np.zeros(5), atol=1e-5)
        # A zero gradient gets weight 0; the others keep their IMTL-G weights.
        zero = np.concatenate([j[:2], np.zeros((1, 5))])
        w = np.asarray(_imtl_g(jnp.asarray(gramian(zero), jnp.float32)))
        np.testing.assert_allclose(w, np.concatenate([_closed_form(j[:2]), [0.0]]), atol=1e-5)
        # T = 1 and all zero.
        np.testing.assert_allclose(_imtl_g(jnp.array([[9.0]])), [1.0])
        np.testing.assert_allclose(_imtl_g(jnp.zeros((3, 3))), np.zeros(3))

    def test_permutation_and_scale(self):
        j = np.random.default_rng(1).normal(size=(4, 6))
        w = np.asarray(_imtl_g(jnp.asarray(gramian(j), jnp.float32)))
        perm = np.array([2, 0, 3, 1])
        wp = np.asarray(_imtl_g(jnp.asarray(gramian(j[perm]), jnp.float32)))
        np.testing.assert_allclose(wp, w[perm], rtol=1e-4)
        for scale in (1e-10, 1e10):
            ws = _imtl_g(jnp.asarray(gramian(scale * j), jnp.float32))
            np.testing.assert_allclose(ws, w, rtol=1e-4)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="needs the Gramian"):
            imtl_g().update(imtl_g().init(2), jnp.ones(2))
        with pytest.raises(ValueError, match=r"\(3, 3\)"):
            imtl_g().update(imtl_g().init(3), jnp.ones(3), gramian=jnp.eye(2))


def _numpy_imtl_l(losses_seq, lr):
    s = np.zeros(losses_seq.shape[1])
    out = []
    for losses in losses_seq:
        out.append((np.exp(s), s.copy()))
        s = s - lr * (np.exp(s) * losses - 1.0)
    return out


class IMTLLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_numpy(self):
        losses_seq = np.abs(np.random.default_rng(0).normal(size=(6, 3))) * np.array([1, 10, 0.1])
        method = imtl_l(optax.sgd(0.05))

        def run(seq):
            def body(state, losses):
                w, state = method.update(state, losses)
                return state, w

            return jax.lax.scan(body, method.init(3), seq)

        state, weights = self.variant(run)(jnp.asarray(losses_seq, jnp.float32))
        ref = _numpy_imtl_l(losses_seq, 0.05)
        for s, (w_ref, _) in enumerate(ref):
            np.testing.assert_allclose(weights[s], w_ref, rtol=1e-5)

    def test_default_optimizer_is_torch_adam_with_l2(self):
        losses_seq = np.array([[2.0, 0.5], [1.5, 0.7], [1.0, 0.9]])
        method = imtl_l()
        state = method.init(2)
        s, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
        for k, losses in enumerate(losses_seq, start=1):
            w, state = method.update(state, jnp.asarray(losses, jnp.float32))
            np.testing.assert_allclose(w, np.exp(s), rtol=1e-6)
            grad = np.exp(s) * losses - 1.0 + 1e-5 * s
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            s = s - 1e-4 * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
            np.testing.assert_allclose(state.log_scales, s, rtol=1e-4, atol=1e-9)

    def test_fixed_point_balances_losses(self):
        method = imtl_l(optax.sgd(0.2))
        losses = jnp.array([5.0, 0.05])
        state = method.init(2)
        step = jax.jit(lambda st: method.update(st, losses))
        for _ in range(300):
            w, state = step(state)
        np.testing.assert_allclose(w * losses, [1.0, 1.0], rtol=1e-3)

    def test_bad_inputs(self):
        with pytest.raises(TypeError, match="optax.GradientTransformation"):
            imtl_l(optimizer=0.1)
        method = imtl_l()
        with pytest.raises(ValueError, match="initialised for 3 tasks"):
            method.update(method.init(3), jnp.ones(2))


class IMTLHybridTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_several_steps_match_libmtl_formula(self):
        rng = np.random.default_rng(4)
        steps, t = 4, 3
        jacs = rng.normal(size=(steps, t, 5))
        losses_seq = np.abs(rng.normal(size=(steps, t))) * np.array([1.0, 10.0, 0.1])
        method = imtl(optax.sgd(0.1))

        def run(grams, seq):
            def body(state, inputs):
                g, losses = inputs
                w, state = method.update(state, losses, gramian=g)
                return state, w

            return jax.lax.scan(body, method.init(t), (grams, seq))[1]

        grams = jnp.asarray(np.stack([gramian(j) for j in jacs]), jnp.float32)
        weights = np.asarray(self.variant(run)(grams, jnp.asarray(losses_seq, jnp.float32)))
        s = np.zeros(t)
        for k in range(steps):
            scaled = np.exp(s)[:, None] * jacs[k]  # gradients of e^s L - s
            alpha = _closed_form(scaled)
            np.testing.assert_allclose(weights[k] @ jacs[k], alpha @ scaled, rtol=1e-3,
                                       atol=1e-4)
            np.testing.assert_allclose(weights[k], alpha * np.exp(s), rtol=1e-3, atol=1e-5)
            s = s - 0.1 * (np.exp(s) * losses_seq[k] - 1.0)

    def test_direction_parallel_to_imtl_g_and_vmap(self):
        j = np.random.default_rng(5).normal(size=(3, 6))
        g = jnp.asarray(gramian(j), jnp.float32)
        method = imtl()
        base_state = method.init(3)
        states = jax.vmap(lambda s: base_state._replace(log_scales=s))(
            jnp.array([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0], [30.0, -30.0, 0.0]])
        )
        w, _ = jax.vmap(lambda st: method.update(st, jnp.ones(3), gramian=g))(states)
        w_g = np.asarray(_imtl_g(g))
        d_g = w_g @ j
        for wi in np.asarray(w, np.float64):
            d = wi @ j
            self.assertTrue(np.all(np.isfinite(d)))
            cos = d @ d_g / np.linalg.norm(d) / np.linalg.norm(d_g)
            self.assertGreater(cos, 1 - 1e-4)

    def test_bad_inputs(self):
        method = imtl()
        with pytest.raises(ValueError, match="needs the Gramian"):
            method.update(method.init(2), jnp.ones(2))
