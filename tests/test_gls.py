"""Tests for the Geometric Loss Strategy (mtopt/_src/methods/gls.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import base
from mtopt._src.methods.gls import gls


def _geometric_mean(losses):
    return jnp.prod(losses) ** (1.0 / losses.shape[0])


class GLSTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_values(self):
        method = gls()
        update = self.variant(lambda l: method.update(method.init(l.shape[0]), l)[0])
        chex.assert_trees_all_close(update(jnp.array([1.0, 4.0])), jnp.array([1.0, 0.25]))
        # (2 * 4 * 8)^(1/3) = 4: weights 4 / (3 L_i).
        chex.assert_trees_all_close(
            update(jnp.array([2.0, 4.0, 8.0])), jnp.array([2 / 3, 1 / 3, 1 / 6]), rtol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_weights_are_the_gradient_of_the_geometric_mean(self):
        method = gls()
        update = self.variant(lambda l: method.update(method.init(l.shape[0]), l)[0])
        rng = np.random.default_rng(0)
        for t in (1, 2, 3, 7):
            losses = jnp.asarray(rng.uniform(0.1, 10.0, size=t), jnp.float32)
            expected = jax.grad(_geometric_mean)(losses)
            chex.assert_trees_all_close(update(losses), expected, rtol=2e-5)
            # The reported total sum_i w_i L_i is the objective itself.
            np.testing.assert_allclose(
                float(update(losses) @ losses), float(_geometric_mean(losses)), rtol=2e-5
            )

    def test_scale_invariance(self):
        method = gls()
        update = jax.jit(lambda l: method.update(method.init(4), l)[0])
        losses = jnp.array([0.3, 2.0, 5.0, 1.1])
        base_weights = update(losses)
        for scale in (1e-10, 1e-4, 1e4, 1e10):
            chex.assert_trees_all_close(update(scale * losses), base_weights, rtol=1e-4)
        # Scaling one loss by c: its weight times c^(1/T - 1), the others times c^(1/T).
        c = 100.0
        scaled = update(losses.at[2].multiply(c))
        factors = jnp.full((4,), c**0.25).at[2].set(c ** (0.25 - 1.0))
        chex.assert_trees_all_close(scaled, base_weights * factors, rtol=1e-5)

    def test_permutation_equivariance_and_sum(self):
        method = gls()
        update = jax.jit(lambda l: method.update(method.init(5), l)[0])
        losses = jnp.array([0.5, 3.0, 1.0, 8.0, 2.0])
        perm = np.array([3, 0, 4, 1, 2])
        chex.assert_trees_all_close(update(losses[perm]), update(losses)[perm], rtol=1e-6)
        w = update(losses)
        # Weights sum to the geometric over the harmonic mean (>= 1).
        ratio = float(_geometric_mean(losses) * jnp.mean(1.0 / losses))
        np.testing.assert_allclose(float(w.sum()), ratio, rtol=1e-5)
        self.assertGreater(float(w.sum()), 1.0)
        equal = update(jnp.full((5,), 3.0))
        chex.assert_trees_all_close(equal, jnp.full((5,), 0.2), rtol=1e-6)

    def test_guard_for_zero_negative_and_tiny_losses(self):
        eps = 1e-8
        method = gls(eps)
        update = jax.jit(lambda l: method.update(method.init(l.shape[0]), l)[0])
        # A zero (or negative) loss sits at eps * max: weight eps^(1/T - 1) / T.
        for bad in (0.0, -5.0, 1e-20):
            w = update(jnp.array([bad, 2.0]))
            self.assertTrue(bool(jnp.all(jnp.isfinite(w))))
            np.testing.assert_allclose(float(w[0]), eps ** (0.5 - 1.0) / 2, rtol=1e-4)
            np.testing.assert_allclose(float(w[1]), eps**0.5 / 2, rtol=1e-4)
        # No positive loss at all: equal weights 1/T.
        for losses in ([0.0, 0.0, 0.0], [-1.0, -2.0, 0.0]):
            chex.assert_trees_all_close(update(jnp.array(losses)), jnp.full((3,), 1 / 3))
        # Above the floor the weights are exact, even across many orders of magnitude.
        losses = jnp.array([1e-6, 1.0])
        chex.assert_trees_all_close(update(losses), jax.grad(_geometric_mean)(losses), rtol=1e-5)

    def test_single_task_weight_is_one(self):
        method = gls()
        for loss in (3.0, 1e-30, 0.0, -1.0):
            weights, _ = method.update(method.init(1), jnp.array([loss]))
            chex.assert_trees_all_close(weights, jnp.ones(1))

    def test_vmap_and_dtypes(self):
        method = gls()
        losses = jnp.array([[1.0, 4.0], [2.0, 8.0], [0.0, 1.0]], jnp.float32)
        weights, _ = jax.vmap(lambda l: method.update(method.init(2), l))(losses)
        chex.assert_shape(weights, (3, 2))
        chex.assert_trees_all_close(weights[0], weights[1])
        self.assertTrue(bool(jnp.all(jnp.isfinite(weights))))
        w16, _ = method.update(method.init(2), jnp.array([1.0, 4.0], jnp.bfloat16))
        self.assertEqual(w16.dtype, jnp.float32)
        chex.assert_trees_all_close(w16, jnp.array([1.0, 0.25]), rtol=1e-2)

    def test_metadata(self):
        method = gls()
        self.assertEqual(method.needs, base.Needs.LOSSES)
        self.assertFalse(method.stochastic)
        self.assertEqual(method.name, "gls")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\)"):
        gls(0.0)
    method = gls()
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        method.update(method.init(2), jnp.ones(()))


def test_state_knows_its_task_count():
    # Issue 11, item 17: a stateless state is EmptyState(T) and every step checks T.
    method = gls()
    assert method.init(5) == base.EmptyState(5)
    with pytest.raises(ValueError, match="gls: the state was initialised for 5 tasks but the "
                                         "step received 2 task losses"):
        jax.jit(method.update)(method.init(5), jnp.ones(2))
    with pytest.raises(ValueError, match="gls: state is None"):
        method.update(None, jnp.ones(2))
    with pytest.raises(ValueError, match=r"gls: eps must be a finite float, got True"):
        gls(True)
