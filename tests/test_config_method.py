"""Tests of ConFIG (mtopt/_src/methods/config_method.py)."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gramian_cases import gramian, jacobian_cases
from mtopt._src.methods.config_method import config

PAPER_J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def _reference(j, targets=None):
    """ConFIG on explicit gradients, as the official code / TorchJD write it (float64)."""
    norms = np.linalg.norm(j, axis=1, keepdims=True)
    units = np.divide(j, norms, out=np.zeros_like(j), where=norms > 0)
    targets = np.ones(j.shape[0]) if targets is None else targets
    best = np.linalg.pinv(units) @ targets
    size = np.linalg.norm(best)
    unit_best = best / size if size > 0 else best
    return np.sum(j @ unit_best) * unit_best


def _weights(gram, preference=None):
    method = config()
    return method.update(method.init(gram.shape[-1]), jnp.ones(gram.shape[-1]), gramian=gram,
                         preference=preference)[0]


def _groups():
    groups = collections.defaultdict(list)
    for name, j in jacobian_cases():
        groups[j.shape[0]].append((name, j))
    return groups


def _independent(j):
    """Linearly independent, well-conditioned unit gradients (no zero row)."""
    norms = np.linalg.norm(j, axis=1)
    if j.shape[0] > j.shape[1] or norms.min() == 0:
        return False
    return np.linalg.cond(j / norms[:, None]) < 1e2


class ConFIGTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_values(self):
        run = self.variant(_weights)
        j = np.array([[1.0, 0.0], [-1.0, 1.0]])
        w = np.asarray(run(jnp.asarray(gramian(j), jnp.float32)))
        np.testing.assert_allclose(w @ j, [0.5 / np.sqrt(2), 0.5 + 0.5 / np.sqrt(2)], rtol=1e-5)
        w = np.asarray(run(jnp.asarray(gramian(PAPER_J), jnp.float32)))
        np.testing.assert_allclose(w @ PAPER_J, _reference(PAPER_J), rtol=1e-5)

    def test_matches_reference_and_properties_on_all_cases(self):
        run = jax.jit(jax.vmap(_weights))
        checked = 0
        for t, cases in _groups().items():
            grams = jnp.asarray(np.stack([gramian(j) for _, j in cases]), jnp.float32)
            weights = np.asarray(run(grams), np.float64)
            self.assertTrue(np.all(np.isfinite(weights)), f"T={t}")
            for (name, j), w in zip(cases, weights):
                d = w @ j
                scale = np.linalg.norm(j, axis=1).sum() + 1e-300
                np.testing.assert_allclose(d / scale, _reference(j) / scale, atol=2e-4,
                                           err_msg=name)
                if _independent(j):
                    checked += 1
                    norms = np.linalg.norm(j, axis=1)
                    cosines = j @ d / norms / np.linalg.norm(d)
                    self.assertTrue(np.all(j @ d >= 0), name)  # non-conflicting
                    np.testing.assert_allclose(cosines, np.full(t, cosines[0]), rtol=1e-3,
                                               err_msg=name)
        self.assertGreaterEqual(checked, 20)

    def test_preference_sets_cosine_ratios(self):
        j = np.random.default_rng(0).normal(size=(3, 7))
        pref = np.array([1.0, 2.0, 0.5])
        w = np.asarray(_weights(jnp.asarray(gramian(j), jnp.float32), jnp.asarray(pref)))
        d = w @ j
        cosines = j @ d / np.linalg.norm(j, axis=1) / np.linalg.norm(d)
        np.testing.assert_allclose(cosines / cosines[0], pref, rtol=1e-4)
        np.testing.assert_allclose(d, _reference(j, pref), rtol=1e-4)

    def test_permutation_scale_and_vmap_over_preferences(self):
        j = np.random.default_rng(1).normal(size=(4, 6))
        g = jnp.asarray(gramian(j), jnp.float32)
        w = np.asarray(_weights(g))
        perm = np.array([3, 1, 0, 2])
        np.testing.assert_allclose(_weights(jnp.asarray(gramian(j[perm]), jnp.float32)),
                                   w[perm], rtol=1e-4)
        for scale in (1e-10, 1e10):
            np.testing.assert_allclose(_weights(jnp.asarray(gramian(scale * j), jnp.float32)),
                                       w, rtol=1e-4)
        prefs = jnp.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
        ws = jax.vmap(lambda p: _weights(g, p))(prefs)
        np.testing.assert_allclose(ws[0], w, rtol=1e-5)
        np.testing.assert_allclose(ws[1], w, rtol=1e-4)  # the length rule ignores |p|

    def test_degenerate(self):
        np.testing.assert_allclose(_weights(jnp.array([[4.0]])), [1.0], rtol=1e-6)
        np.testing.assert_allclose(_weights(jnp.zeros((3, 3))), np.zeros(3))
        j = np.random.default_rng(2).normal(size=(3, 5))
        j[1] = 0.0
        w = np.asarray(_weights(jnp.asarray(gramian(j), jnp.float32)))
        self.assertEqual(w[1], 0.0)
        np.testing.assert_allclose(w @ j, _reference(j), rtol=1e-4)
        wb = _weights(jnp.asarray(gramian(PAPER_J), jnp.bfloat16))
        self.assertEqual(wb.dtype, jnp.float32)

    def test_bad_inputs(self):
        method = config()
        with pytest.raises(ValueError, match="needs the Gramian"):
            method.update(method.init(2), jnp.ones(2))
        with pytest.raises(ValueError, match=r"preference must have shape \(2,\)"):
            method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(2),
                          preference=jnp.ones(3))
        with pytest.raises(ValueError, match=r"\(2, 2\)"):
            method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(3))


def test_linear_under_scaling_in_float64_with_dependent_gradients():
    # The registry's claim: positive row scaling keeps the unit vectors, so the
    # direction is linear in the scaling, rank-deficient Jacobians included (the
    # pseudo-inverse's cutoff sees only the cosine matrix). float32 rounding can move a
    # singular cosine matrix's eigenvalues across the cutoff: see the hypothesis tests.
    rng = np.random.default_rng(0)
    jacs = [rng.normal(size=(4, 6)), rng.normal(size=(5, 3))]  # independent, T > P
    collinear = rng.normal(size=(1, 6)) * np.array([[1.0], [2.0], [-0.5]])
    jacs += [collinear, np.vstack([jacs[0][:2], jacs[0][:1] + jacs[0][1:2]])]
    with jax.enable_x64(True):
        for j in jacs:
            c1, c2 = rng.uniform(0.1, 10.0, size=(2, j.shape[0], 1))

            def direction(c):
                jc = c * j
                return np.asarray(_weights(jnp.asarray(jc @ jc.T))) @ jc

            d12 = direction(c1 + c2)
            np.testing.assert_allclose(d12, direction(c1) + direction(c2),
                                       rtol=1e-9, atol=1e-12 * np.abs(d12).max())
            assert np.abs(d12).max() > 0
