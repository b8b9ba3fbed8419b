"""Tests for GradDrop (mtopt/_src/methods/graddrop.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gramian_cases import jacobian_cases
from mtopt._src import base
from mtopt._src.methods.graddrop import graddrop


def _numpy_graddrop(jac, draws, leak):
    """LibMTL's rule on one (T, P) leaf with given uniform draws, in float64 NumPy."""
    total, mass = jac.sum(0), np.abs(jac).sum(0)
    purity = np.where(mass > 0, 0.5 * (1 + total / np.where(mass > 0, mass, 1.0)), 0.5)
    mask = ((purity > draws) & (jac > 0)) | ((purity < draws) & (jac < 0))
    leak = np.broadcast_to(np.asarray(leak, np.float64), (jac.shape[0],))[:, None]
    return (jac * (leak + (1 - leak) * mask)).sum(0)


def _padded_cases(seed, num_random):
    """jacobian_cases with the columns zero-padded to 12, so one compile per T suffices
    (zero coordinates contribute nothing and never produce NaN)."""
    cases = []
    for name, jac in jacobian_cases(seed=seed, num_random=num_random):
        padded = np.zeros((jac.shape[0], 12))
        padded[:, : jac.shape[1]] = jac
        cases.append((name, padded))
    return cases


def _run(method, jac, key, weights=None):
    t = jax.tree.leaves(jac)[0].shape[0]
    w, state = method.update(method.init(t), jnp.ones(t), jacobian=jac, key=key)
    if weights is not None:
        w = weights
    return method.combine(jac, w, state, key=key)


class GradDropTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_rule_with_the_same_draws(self):
        rng = np.random.default_rng(0)
        jac = {"a": rng.normal(size=(3, 4, 2)), "b": rng.normal(size=(3, 5))}
        jac = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), jac)
        key = jax.random.key(7)
        for leak in (0.0, 0.3, [0.0, 0.5, 1.0]):
            method = graddrop(leak)
            out = self.variant(lambda j, k: _run(method, j, k))(jac, key)
            # Draws: one key per leaf (in tree order), one uniform per coordinate.
            leaves, treedef = jax.tree.flatten(jac)
            keys = jax.random.split(key, len(leaves))
            expected = []
            for leaf, k in zip(leaves, keys):
                draws = np.asarray(jax.random.uniform(k, leaf.shape[1:], jnp.float32))
                flat = np.asarray(leaf, np.float64).reshape(3, -1)
                expected.append(
                    _numpy_graddrop(flat, draws.reshape(-1), leak).reshape(leaf.shape[1:])
                )
            chex.assert_trees_all_close(
                out, jax.tree.unflatten(treedef, expected), rtol=1e-5, atol=1e-6
            )

    def test_update_returns_ones(self):
        method = graddrop()
        jac = {"w": jnp.ones((3, 2))}
        weights, state = method.update(
            method.init(3), jnp.array([1.0, 5.0, 2.0]), jacobian=jac, key=jax.random.key(0)
        )
        chex.assert_trees_all_close(weights, jnp.ones(3))
        self.assertEqual(weights.dtype, jnp.float32)
        self.assertEqual(state, base.EmptyState(3))

    def test_sign_consistency_on_many_jacobians(self):
        method = graddrop()
        combine = jax.jit(lambda j, k: _run(method, j, k))
        key = jax.random.key(1)
        for name, jac in _padded_cases(seed=1, num_random=20):
            key, sub = jax.random.split(key)
            out = np.asarray(combine(jnp.asarray(jac, jnp.float32), sub), np.float64)
            j32 = np.asarray(jnp.asarray(jac, jnp.float32), np.float64)
            positive = np.where(j32 > 0, j32, 0.0).sum(0)
            negative = np.where(j32 < 0, j32, 0.0).sum(0)
            self.assertTrue(np.all(np.isfinite(out)), name)
            # Each coordinate is the sum of its positive or of its negative entries (or 0).
            tol = 1e-5 * np.abs(j32).sum(0) + 1e-30
            is_pos = np.abs(out - positive) <= tol
            is_neg = np.abs(out - negative) <= tol
            self.assertTrue(np.all(is_pos | is_neg | (out == 0)), name)

    def test_leak_one_is_the_plain_sum(self):
        method = graddrop(1.0)
        combine = jax.jit(lambda j, k: _run(method, j, k))
        for name, jac in _padded_cases(seed=2, num_random=5):
            out = combine(jnp.asarray(jac, jnp.float32), jax.random.key(0))
            np.testing.assert_allclose(out, jac.sum(0), rtol=1e-5, atol=1e-5 * np.abs(jac).max(),
                                       err_msg=name)

    def test_per_task_leak(self):
        # Task 0 leaks fully (always kept); task 1 is dropped where the sign is not chosen.
        method = graddrop([1.0, 0.0])
        jac = jnp.array([[1.0, -1.0, 2.0], [-3.0, 3.0, 1.0]])
        keys = jax.random.split(jax.random.key(3), 64)
        outs = jax.vmap(lambda k: _run(method, jac, k))(keys)
        for out in np.asarray(outs):
            for k in range(3):
                assert np.isclose(out[k], jac[0, k]) or np.isclose(out[k], jac[:, k].sum())

    def test_keep_probability_is_the_sign_purity(self):
        method = graddrop()
        jac = jnp.array([[3.0], [-1.0]])  # P = (1 + 2/4) / 2 = 0.75
        keys = jax.random.split(jax.random.key(11), 4000)
        outs = np.asarray(jax.jit(jax.vmap(lambda k: _run(method, jac, k)))(keys))[:, 0]
        self.assertTrue(np.all(np.isclose(outs, 3.0) | np.isclose(outs, -1.0)))
        np.testing.assert_allclose(np.mean(np.isclose(outs, 3.0)), 0.75, atol=0.03)

    def test_same_sign_and_zero_coordinates(self):
        method = graddrop()
        jac = jnp.array([[1.0, -2.0, 0.0, 0.0], [2.0, -1.0, 0.0, 5.0]])
        for seed in range(5):
            out = _run(method, jac, jax.random.key(seed))
            chex.assert_trees_all_close(out, jnp.array([3.0, -3.0, 0.0, 5.0]))
        # Tiny gradients: the sign purity is scale free (no absolute epsilon).
        out = _run(method, 1e-30 * jac, jax.random.key(0))
        chex.assert_trees_all_close(out, 1e-30 * jnp.array([3.0, -3.0, 0.0, 5.0]), atol=0.0,
                                    rtol=1e-6)
        zeros = _run(method, jnp.zeros((3, 4)), jax.random.key(0))
        chex.assert_trees_all_close(zeros, jnp.zeros(4))

    def test_weights_scale_the_task_gradients(self):
        method = graddrop()
        jac = jnp.array([[1.0, -2.0], [2.0, -1.0]])
        out = _run(method, jac, jax.random.key(0), weights=jnp.array([2.0, 0.5]))
        chex.assert_trees_all_close(out, jnp.array([3.0, -4.5]))

    def test_deterministic_given_key(self):
        method = graddrop()
        jac = jnp.asarray(np.random.default_rng(4).normal(size=(4, 50)), jnp.float32)
        a = _run(method, jac, jax.random.key(5))
        b = _run(method, jac, jax.random.key(5))
        c = _run(method, jac, jax.random.key(6))
        chex.assert_trees_all_close(a, b)
        self.assertFalse(bool(jnp.allclose(a, c)))

    def test_single_task_keeps_its_gradient(self):
        method = graddrop()
        jac = jnp.array([[1.0, -2.0, 0.5]])
        chex.assert_trees_all_close(_run(method, jac, jax.random.key(0)), jac[0])

    def test_pytree_with_none_leaves_and_bfloat16(self):
        # The step passes the shared part of the Jacobian, with None for the heads.
        method = graddrop()
        jac = {"head": None, "trunk": jnp.array([[1.0, -1.0], [1.0, 2.0]], jnp.bfloat16)}
        out = _run(method, jac, jax.random.key(0))
        self.assertIsNone(out["head"])
        self.assertEqual(out["trunk"].dtype, jnp.bfloat16)
        self.assertEqual(float(out["trunk"][0]), 2.0)

    def test_vmap_over_jacobians_and_keys(self):
        method = graddrop()
        rng = np.random.default_rng(6)
        jacs = jnp.asarray(rng.normal(size=(8, 3, 10)), jnp.float32)
        keys = jax.random.split(jax.random.key(0), 8)
        outs = jax.jit(jax.vmap(lambda j, k: _run(method, j, k)))(jacs, keys)
        for i in range(8):
            chex.assert_trees_all_close(outs[i], _run(method, jacs[i], keys[i]), rtol=1e-6)

    def test_metadata(self):
        method = graddrop()
        self.assertEqual(method.needs, base.Needs.JACOBIAN)
        self.assertTrue(method.stochastic)
        self.assertIsNotNone(method.combine)
        self.assertEqual(method.name, "graddrop")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"leak must be in \[0, 1\]"):
        graddrop(1.5)
    with pytest.raises(ValueError, match="leak must be a scalar or a"):
        graddrop([[0.0]])
    method = graddrop([0.0, 0.5])
    with pytest.raises(ValueError, match="leak has 2 values but there are 3 tasks"):
        method.update(method.init(3), jnp.ones(3), key=jax.random.key(0))
    method = graddrop()
    state = method.init(2)
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        method.update(state, jnp.ones(2))
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        method.combine({"w": jnp.ones((2, 3))}, jnp.ones(2), state)
    with pytest.raises(ValueError, match="leading task axis of size 2"):
        method.combine({"w": jnp.ones((3, 3))}, jnp.ones(2), state, key=jax.random.key(0))
    with pytest.raises(ValueError, match="leading task axis of size 2"):
        method.update(state, jnp.ones(2), jacobian=jnp.ones((3,)), key=jax.random.key(0))
