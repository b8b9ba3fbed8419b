"""Tests for Random Loss Weighting (mtopt/_src/methods/rlw.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import base
from mtopt._src.methods.rlw import rlw


class RLWTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_softmax_of_normal_draws(self):
        method = rlw()
        key = jax.random.key(3)
        losses = jnp.array([0.5, 2.0, 7.0, 1.0])
        weights, state = self.variant(lambda l, k: method.update(method.init(4), l, key=k))(
            losses, key
        )
        expected = jax.nn.softmax(jax.random.normal(key, (4,), jnp.float32))
        chex.assert_trees_all_close(weights, expected, rtol=1e-6)
        chex.assert_shape(weights, (4,))
        self.assertEqual(weights.dtype, jnp.float32)
        self.assertEqual(state, base.EmptyState(4))

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_distribution(self):
        method = rlw("uniform")
        key = jax.random.key(5)
        weights, _ = self.variant(lambda k: method.update(method.init(3), jnp.ones(3), key=k))(key)
        expected = jax.nn.softmax(jax.random.uniform(key, (3,), jnp.float32))
        chex.assert_trees_all_close(weights, expected, rtol=1e-6)
        # softmax of U[0, 1) draws: every weight within a factor e of 1/T.
        self.assertTrue(bool(jnp.all(weights > 1 / (3 * np.e))))

    def test_weights_on_simplex_and_independent_of_losses(self):
        method = rlw()
        update = jax.jit(lambda l, k: method.update(method.init(5), l, key=k)[0])
        key = jax.random.key(0)
        w1 = update(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), key)
        w2 = update(jnp.array([1e8, 1e-8, 0.0, -3.0, 2.0]), key)
        chex.assert_trees_all_close(w1, w2)
        np.testing.assert_allclose(float(w1.sum()), 1.0, rtol=1e-6)
        self.assertTrue(bool(jnp.all(w1 > 0)))
        w3 = update(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), jax.random.key(1))
        self.assertFalse(bool(jnp.allclose(w1, w3)))

    def test_vmap_over_keys_is_unbiased(self):
        # Exchangeable draws: every task has mean weight 1/T.
        for distribution in ("normal", "uniform"):
            method = rlw(distribution)
            keys = jax.random.split(jax.random.key(42), 4000)
            batched = jax.vmap(lambda k: method.update(method.init(4), jnp.ones(4), key=k)[0])
            weights = batched(keys)
            chex.assert_shape(weights, (4000, 4))
            np.testing.assert_allclose(np.asarray(weights.sum(axis=1)), 1.0, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(weights.mean(axis=0)), 0.25, atol=0.01)

    def test_vmap_over_losses_and_keys(self):
        method = rlw()
        losses = jnp.arange(12.0).reshape(4, 3)
        keys = jax.random.split(jax.random.key(1), 4)
        state = method.init(3)
        weights, _ = jax.vmap(lambda l, k: method.update(state, l, key=k))(losses, keys)
        for i in range(4):
            expected = jax.nn.softmax(jax.random.normal(keys[i], (3,), jnp.float32))
            chex.assert_trees_all_close(weights[i], expected, rtol=1e-6)

    def test_single_task_and_raw_keys(self):
        method = rlw()
        weights, _ = method.update(method.init(1), jnp.array([3.0]), key=jax.random.PRNGKey(0))
        chex.assert_trees_all_close(weights, jnp.ones(1))

    def test_bfloat16_losses_give_float32_weights(self):
        method = rlw()
        weights, _ = method.update(
            method.init(2), jnp.array([1.0, 2.0], jnp.bfloat16), key=jax.random.key(0)
        )
        self.assertEqual(weights.dtype, jnp.float32)
        self.assertTrue(bool(jnp.all(jnp.isfinite(weights))))

    def test_metadata(self):
        method = rlw()
        self.assertEqual(method.needs, base.Needs.LOSSES)
        self.assertTrue(method.stochastic)
        self.assertIsNone(method.combine)
        self.assertEqual(method.name, "rlw")


def test_missing_key_raises():
    method = rlw()
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        method.update(method.init(2), jnp.ones(2))


def test_bad_distribution_raises():
    with pytest.raises(ValueError, match="distribution must be one of"):
        rlw("dirichlet")


def test_bad_losses_raise():
    method = rlw()
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        method.update(method.init(2), jnp.ones((2, 2)), key=jax.random.key(0))
    with pytest.raises(TypeError, match="floating dtype"):
        method.update(method.init(2), jnp.ones(2, jnp.int32), key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        method.init(0)


def test_state_knows_its_task_count():
    # Issue 11, item 17: a stateless state is EmptyState(T) and every step checks T.
    method = rlw()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="rlw: the state was initialised for 5 tasks but the "
                                         "step received 2 task losses"):
        jax.jit(lambda s, l: method.update(s, l, key=key))(method.init(5), jnp.ones(2))
    with pytest.raises(ValueError, match="rlw: state is None"):
        method.update(None, jnp.ones(2), key=key)
    with pytest.raises(ValueError, match="rlw: distribution must be one of 'normal', 'uniform'"):
        rlw("Normal")
