"""DWA (both variants) against hand-computed values; uncertainty weighting's update and fixed point."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtopt


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def numpy_dwa_epoch(loss_seq, steps_per_epoch, temp=2.0):
    """LibMTL: lambda = T softmax((L(e-1)/L(e-2))/temp) from epoch-mean losses; 1 for e < 2."""
    t = len(loss_seq[0])
    epoch_means = []
    weights = []
    for k, losses in enumerate(loss_seq):
        epoch = k // steps_per_epoch
        if epoch >= 2:
            r = np.asarray(epoch_means[epoch - 1]) / np.asarray(epoch_means[epoch - 2])
            weights.append(t * softmax(r / temp))
        else:
            weights.append(np.ones(t))
        if (k + 1) % steps_per_epoch == 0:
            block = loss_seq[k + 1 - steps_per_epoch : k + 1]
            epoch_means.append(np.mean(block, axis=0))
    return np.array(weights)


def numpy_dwa_window(loss_seq, window, temp=2.0):
    """Nash-MTL's DynamicWeightAverage, transcribed (costs init to ones, FIFO of 2 windows)."""
    t = len(loss_seq[0])
    costs = np.ones((2 * window, t))
    w = np.ones(t)
    out = []
    for it, losses in enumerate(loss_seq):
        costs[:-1] = costs[1:]
        costs[-1] = losses
        if it > window:
            ws = costs[window:].mean(0) / costs[:window].mean(0)
            w = t * np.exp(ws / temp) / np.exp(ws / temp).sum()
        out.append(w.copy())
    return np.array(out)


class DWATest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_epoch_variant_matches_libmtl_formula(self):
        rng = np.random.default_rng(0)
        loss_seq = rng.uniform(0.2, 3.0, size=(15, 3)).astype(np.float32)
        method = mtopt.dwa(steps_per_epoch=3)
        update = self.variant(method.update)
        state = method.init(3)
        got = []
        for losses in loss_seq:
            w, state = update(state, jnp.asarray(losses))
            got.append(np.asarray(w))
        np.testing.assert_allclose(got, numpy_dwa_epoch(loss_seq, 3), rtol=1e-5)
        self.assertEqual(int(state.epochs), 5)

    def test_hand_computed_epoch_value(self):
        # Epoch means (1, 1) then (0.5, 1): r = (0.5, 1), w = 2 softmax(r / 2).
        method = mtopt.dwa(steps_per_epoch=1)
        state = method.init(2)
        for losses in ([1.0, 1.0], [0.5, 1.0]):
            w, state = method.update(state, jnp.array(losses))
            np.testing.assert_allclose(w, [1.0, 1.0])
        w, _ = method.update(state, jnp.array([9.0, 9.0]))
        e1, e2 = np.exp(0.25), np.exp(0.5)
        np.testing.assert_allclose(w, [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)
        np.testing.assert_allclose(float(jnp.sum(w)), 2.0, rtol=1e-6)

    def test_manual_epochs_equal_fixed_epochs(self):
        rng = np.random.default_rng(1)
        loss_seq = rng.uniform(0.2, 3.0, size=(12, 2)).astype(np.float32)
        auto, manual = mtopt.dwa(steps_per_epoch=4), mtopt.dwa()
        sa, sm = auto.init(2), manual.init(2)
        for k, losses in enumerate(loss_seq):
            wa, sa = auto.update(sa, jnp.asarray(losses))
            wm, sm = manual.update(sm, jnp.asarray(losses))
            np.testing.assert_allclose(wa, wm, rtol=1e-6)
            if (k + 1) % 4 == 0:
                sm = mtopt.dwa_end_epoch(sm)
        # An empty epoch does not shift the statistics.
        before = sm
        sm = mtopt.dwa_end_epoch(sm)
        chex.assert_trees_all_equal(before, sm)

    @chex.variants(with_jit=True, without_jit=True)
    def test_window_variant_matches_nash_mtl(self):
        rng = np.random.default_rng(2)
        loss_seq = rng.uniform(0.2, 3.0, size=(20, 3)).astype(np.float32)
        method = mtopt.dwa(mode="window", window=4)
        update = self.variant(method.update)
        state = method.init(3)
        got = []
        for losses in loss_seq:
            w, state = update(state, jnp.asarray(losses))
            got.append(np.asarray(w))
        np.testing.assert_allclose(got, numpy_dwa_window(loss_seq, 4), rtol=1e-5)

    def test_vmap_over_states(self):
        method = mtopt.dwa(steps_per_epoch=1)
        states = jax.vmap(lambda _: method.init(2))(jnp.arange(3))
        losses = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.5, 0.5]])
        for _ in range(3):
            w, states = jax.vmap(method.update)(states, losses)
        assert w.shape == (3, 2)
        np.testing.assert_allclose(w, np.ones((3, 2)), rtol=1e-6)  # ratios all 1

    def test_bad_options(self):
        with pytest.raises(ValueError, match="temperature"):
            mtopt.dwa(0.0)
        with pytest.raises(ValueError, match="mode"):
            mtopt.dwa(mode="batch")
        with pytest.raises(ValueError, match="steps_per_epoch"):
            mtopt.dwa(steps_per_epoch=0)
        with pytest.raises(ValueError, match=r"shape \(T,\)"):
            mtopt.dwa().update(mtopt.dwa().init(2), jnp.ones((2, 1)))


class UncertaintyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_sgd_step_matches_analytic_gradient(self):
        lr = 0.1
        method = mtopt.uncertainty(optax.sgd(lr), init_log_var=0.3)
        losses = jnp.array([2.0, 0.5, 1e-3])
        w, state = self.variant(method.update)(method.init(3), losses)
        s = np.full(3, 0.3)
        np.testing.assert_allclose(w, 0.5 * np.exp(-s), rtol=1e-6)
        grad = 0.5 * (1.0 - np.exp(-s) * np.asarray(losses))
        np.testing.assert_allclose(state.log_vars, s - lr * grad, rtol=1e-6)

    def test_fixed_point_is_log_loss(self):
        method = mtopt.uncertainty(optax.adam(0.05))
        losses = jnp.array([4.0, 0.25, 1.0])
        state = method.init(3)
        update = jax.jit(method.update)
        for _ in range(600):
            w, state = update(state, losses)
        np.testing.assert_allclose(state.log_vars, np.log(np.asarray(losses)), atol=2e-2)
        np.testing.assert_allclose(w * losses, 0.5 * np.ones(3), atol=2e-2)

    def test_under_strict_dtype_promotion(self):
        method = mtopt.uncertainty()
        with jax.numpy_dtype_promotion("strict"):
            w, state = jax.jit(method.update)(method.init(2), jnp.array([1.0, 2.0]))
        assert np.all(np.isfinite(np.asarray(state.log_vars)))

    def test_vmap_and_default_weights(self):
        method = mtopt.uncertainty()
        states = jax.vmap(lambda _: method.init(2))(jnp.arange(4))
        w, states = jax.vmap(method.update)(states, jnp.ones((4, 2)))
        np.testing.assert_allclose(w, 0.5 * np.ones((4, 2)))
        assert states.log_vars.shape == (4, 2)
