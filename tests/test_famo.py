"""Tests for FAMO (mtopt/_src/methods/famo.py) against a NumPy re-implementation of the
reference (Liu et al.'s ``famo.py``: softmax logits, torch-style Adam with L2 weight decay)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import base
from mtopt._src.methods.famo import FAMOState, famo, famo_update_logits


class NumpyFAMO:
    """The reference algorithm in float64 NumPy, with an explicit torch.optim.Adam."""

    def __init__(self, num_tasks, w_lr, gamma, min_losses=None, decoupled=False):
        self.w = np.zeros(num_tasks)
        self.m = np.zeros(num_tasks)
        self.v = np.zeros(num_tasks)
        self.t = 0
        self.lr, self.gamma, self.decoupled = w_lr, gamma, decoupled
        self.min_losses = np.zeros(num_tasks) if min_losses is None else np.asarray(min_losses)
        self.prev_loss = None

    @staticmethod
    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    def get_weights(self, losses):
        """Weights of the raw losses in the gradient of sum_i z_i log(D_i) / c."""
        self.prev_loss = losses
        z = self.softmax(self.w)
        d = losses - self.min_losses + 1e-8
        c = (z / d).sum()
        return z / d / c

    def update(self, curr_loss):
        delta = np.log(self.prev_loss - self.min_losses + 1e-8) - np.log(
            curr_loss - self.min_losses + 1e-8
        )
        z = self.softmax(self.w)
        grad = z * delta - z * (z @ delta)  # softmax Jacobian (symmetric) times delta
        if self.decoupled:  # AdamW, for contrast: decay applied to the weights directly
            self.w = self.w * (1 - self.lr * self.gamma)
        else:  # torch.optim.Adam(weight_decay=gamma): L2 term added to the gradient
            grad = grad + self.gamma * self.w
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat = self.m / (1 - 0.9**self.t)
        v_hat = self.v / (1 - 0.999**self.t)
        self.w = self.w - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _loss_sequence(seed, steps, num_tasks):
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.5, 3.0, size=(steps, num_tasks))
    # After the parameter step each loss drops by a task-dependent, noisy fraction.
    new_losses = losses * rng.uniform(0.6, 1.05, size=(steps, num_tasks))
    return losses, new_losses


class FAMOTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_two_phase_matches_reference(self):
        num_tasks, steps = 4, 25
        for gamma in (1e-3, 0.5):
            method = famo(w_lr=0.025, gamma=gamma, lagged=False)
            update = self.variant(method.update)
            update_logits = self.variant(famo_update_logits)
            state = method.init(num_tasks)
            ref = NumpyFAMO(num_tasks, 0.025, gamma)
            losses, new_losses = _loss_sequence(0, steps, num_tasks)
            for t in range(steps):
                weights, state = update(state, jnp.asarray(losses[t], jnp.float32))
                np.testing.assert_allclose(weights, ref.get_weights(losses[t]), rtol=2e-5)
                state = update_logits(state, jnp.asarray(new_losses[t], jnp.float32))
                ref.update(new_losses[t])
                np.testing.assert_allclose(state.logits, ref.w, rtol=1e-4, atol=1e-6)
            self.assertEqual(int(state.logits_opt_state[1].count), steps)

    def test_l2_decay_is_not_decoupled(self):
        # With a large gamma torch-Adam (L2 in the gradient) and AdamW differ clearly;
        # we must match the former.
        num_tasks, steps = 3, 10
        method = famo(gamma=0.5, lagged=False)
        update = jax.jit(method.update)
        update_logits = jax.jit(famo_update_logits)
        state = method.init(num_tasks)
        adam = NumpyFAMO(num_tasks, 0.025, 0.5)
        adamw = NumpyFAMO(num_tasks, 0.025, 0.5, decoupled=True)
        losses, new_losses = _loss_sequence(1, steps, num_tasks)
        for t in range(steps):
            _, state = update(state, jnp.asarray(losses[t], jnp.float32))
            state = update_logits(state, jnp.asarray(new_losses[t], jnp.float32))
            for ref in (adam, adamw):
                ref.get_weights(losses[t])
                ref.update(new_losses[t])
        np.testing.assert_allclose(state.logits, adam.w, rtol=1e-4, atol=1e-6)
        self.assertGreater(np.abs(adam.w - adamw.w).max(), 1e-3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lagged_matches_toy_trainer(self):
        # Official toy trainer: for it > 0, update(f_it) then get_weighted_loss(f_it).
        num_tasks, steps = 2, 20
        min_losses = np.array([-2.0, -1.0])
        method = famo(w_lr=0.025, gamma=0.0, min_losses=min_losses, lagged=True)
        update = self.variant(method.update)
        state = method.init(num_tasks)
        ref = NumpyFAMO(num_tasks, 0.025, 0.0, min_losses)
        rng = np.random.default_rng(2)
        losses = rng.uniform(-0.5, 2.0, size=(steps, num_tasks))
        for t in range(steps):
            weights, state = update(state, jnp.asarray(losses[t], jnp.float32))
            if t > 0:
                ref.update(losses[t])
            np.testing.assert_allclose(weights, ref.get_weights(losses[t]), rtol=2e-5)
            np.testing.assert_allclose(state.logits, ref.w, rtol=1e-4, atol=1e-6)
        self.assertEqual(int(state.logits_opt_state[1].count), steps - 1)

    def test_weight_formula_and_simplex(self):
        method = famo(lagged=False)
        state = method.init(3)
        state = state._replace(logits=jnp.array([0.3, -1.0, 0.5]))
        losses = jnp.array([0.2, 1.5, 4.0])
        weights, new_state = method.update(state, losses)
        z = jax.nn.softmax(state.logits)
        expected = (z / (losses + 1e-8)) / jnp.sum(z / (losses + 1e-8))
        chex.assert_trees_all_close(weights, expected, rtol=1e-6)
        np.testing.assert_allclose(float(weights.sum()), 1.0, rtol=1e-6)
        # The gradient of the reference loss sum_i z_i log D_i / c with respect to L.
        c = jax.lax.stop_gradient(jnp.sum(z / losses))
        ref_grad = jax.grad(lambda l: jnp.sum(z * jnp.log(l + 1e-8)) / c)(losses)
        chex.assert_trees_all_close(weights, ref_grad, rtol=1e-5)
        # update records the losses and does not touch the logits (two-phase mode).
        chex.assert_trees_all_close(new_state.logits, state.logits)
        chex.assert_trees_all_close(new_state.prev_losses, losses)
        self.assertTrue(bool(new_state.has_prev_losses))

    def test_lagging_task_gains_weight(self):
        method = famo(gamma=0.0, lagged=False)
        state = method.init(3)
        _, state = method.update(state, jnp.array([1.0, 1.0, 1.0]))
        state = famo_update_logits(state, jnp.array([0.5, 0.9, 1.0]))
        # delta = (log 2, -log 0.9, 0) is above its z-mean only for task 0; Adam's first
        # step moves each logit by w_lr against the sign of its gradient.
        chex.assert_trees_all_close(state.logits, jnp.array([-0.025, 0.025, 0.025]), rtol=1e-5)
        z = jax.nn.softmax(state.logits)
        self.assertTrue(bool(z[0] < z[1]) and bool(z[0] < z[2]))

    def test_update_logits_without_recorded_losses_is_a_no_op(self):
        method = famo(lagged=False)
        state = method.init(2)
        new_state = famo_update_logits(state, jnp.array([0.5, 1.0]))
        chex.assert_trees_all_close(new_state, state)
        # Same for the first lagged update: weights from zero logits, no step.
        lagged = famo(lagged=True)
        weights, state = lagged.update(lagged.init(2), jnp.array([1.0, 3.0]))
        chex.assert_trees_all_close(state.logits, jnp.zeros(2))
        chex.assert_trees_all_close(weights, jnp.array([0.75, 0.25]), rtol=1e-6)

    def test_degenerate_losses_stay_finite(self):
        method = famo(min_losses=0.0, lagged=False)
        update = jax.jit(method.update)
        update_logits = jax.jit(famo_update_logits)
        cases = [
            [0.0, 0.0, 0.0],
            [-1.0, 2.0, 3.0],  # below the bound: the reference would give NaN
            [1e-10, 1e10, 1.0],
            [1e10, 1e10, 1e10],
            [1e-10, 1e-10, 2e-10],
        ]
        state = method.init(3)
        for losses in cases:
            weights, state = update(state, jnp.array(losses))
            state = update_logits(state, jnp.array(losses[::-1]))
            self.assertTrue(bool(jnp.all(jnp.isfinite(weights))), losses)
            self.assertTrue(bool(jnp.all(weights >= 0)), losses)
            np.testing.assert_allclose(float(weights.sum()), 1.0, rtol=1e-5)
            for leaf in jax.tree.leaves(state):
                self.assertTrue(bool(jnp.all(jnp.isfinite(leaf))), losses)
        # A loss at its bound takes (almost) all the weight.
        weights, _ = update(method.init(2), jnp.array([0.0, 1.0]))
        self.assertGreater(float(weights[0]), 1 - 1e-6)

    def test_single_task(self):
        method = famo(lagged=False)
        weights, state = method.update(method.init(1), jnp.array([2.0]))
        state = famo_update_logits(state, jnp.array([1.0]))
        chex.assert_trees_all_close(weights, jnp.ones(1))
        chex.assert_trees_all_close(state.logits, jnp.zeros(1))

    def test_vmap_over_states_sweeps_gamma(self):
        method = famo(w_lr=0.1, lagged=False)
        num_tasks, steps = 3, 6
        gammas = jnp.array([0.0, 0.1, 1.0])
        states = jax.vmap(lambda g: method.init(num_tasks)._replace(gamma=g))(gammas)
        losses, new_losses = _loss_sequence(3, steps, num_tasks)
        step = jax.jit(
            jax.vmap(
                lambda s, l, n: famo_update_logits(method.update(s, l)[1], n),
                in_axes=(0, None, None),
            )
        )
        refs = [NumpyFAMO(num_tasks, 0.1, float(g)) for g in gammas]
        for t in range(steps):
            states = step(states, jnp.asarray(losses[t], jnp.float32),
                          jnp.asarray(new_losses[t], jnp.float32))
            for ref in refs:
                ref.get_weights(losses[t])
                ref.update(new_losses[t])
        for i, ref in enumerate(refs):
            np.testing.assert_allclose(states.logits[i], ref.w, rtol=1e-4, atol=1e-6)

    def test_scan_keeps_state_types(self):
        method = famo(lagged=True)
        losses = jnp.asarray(_loss_sequence(4, 5, 2)[0], jnp.float32)

        def body(state, l):
            weights, state = method.update(state, l)
            return state, weights

        state, weights = jax.lax.scan(body, method.init(2), losses)
        chex.assert_shape(weights, (5, 2))
        chex.assert_trees_all_equal_dtypes(state, method.init(2))
        self.assertIsInstance(state, FAMOState)

    def test_bfloat16_losses(self):
        method = famo(lagged=False)
        weights, state = method.update(method.init(2), jnp.array([1.0, 3.0], jnp.bfloat16))
        self.assertEqual(weights.dtype, jnp.float32)
        state = famo_update_logits(state, jnp.array([0.5, 3.0], jnp.bfloat16))
        self.assertEqual(state.logits.dtype, jnp.float32)

    def test_metadata(self):
        method = famo(lagged=False)
        self.assertEqual(method.needs, base.Needs.LOSSES)
        self.assertFalse(method.stochastic)
        self.assertEqual(method.name, "famo")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="famo: w_lr must be a non-negative finite float, got -1.0"):
        famo(w_lr=-1.0, lagged=False)
    with pytest.raises(ValueError, match="famo: gamma must be a non-negative finite float, got -0.001"):
        famo(gamma=-1e-3, lagged=False)
    with pytest.raises(ValueError, match=r"min_losses must be a scalar or have shape \(3,\)"):
        famo(min_losses=[0.0, 0.0], lagged=False).init(3)
    method = famo(lagged=False)
    state = method.init(3)
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 2"):
        method.update(state, jnp.ones(2))
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 4"):
        famo_update_logits(state, jnp.ones(4))
    with pytest.raises(ValueError, match=r"new_losses must be a vector of shape \(T,\)"):
        famo_update_logits(state, jnp.ones((3, 1)))


# --- issue 11, item 5: float64 states and weights under x64 ----------------------------------

def _float_dtypes(tree):
    return {np.dtype(x.dtype) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("lagged", [False, True])
def test_float64_state_and_weights_under_x64(lagged):
    # The old code built FAMOState in float32 whatever x64 said.
    with jax.enable_x64(True):
        method = famo(lagged=lagged, min_losses=0.01)
        state = method.init(3)
        assert _float_dtypes(state) == {np.dtype(np.float64)}
        seq = jnp.asarray(np.random.default_rng(0).uniform(0.1, 2.0, (6, 3)))

        def step(s, losses):
            w, s = method.update(s, losses)
            if not lagged:
                s = famo_update_logits(s, 0.9 * losses)
            return s, w

        for dtype in (jnp.float64, jnp.float32):
            final, weights = jax.jit(lambda s, q: jax.lax.scan(step, s, q))(
                state, seq.astype(dtype))
            assert weights.dtype == dtype
            assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
            np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 1.0, rtol=1e-6)
        assert float(jnp.max(jnp.abs(final.logits))) > 0  # the logits did move
    assert _float_dtypes(famo(lagged=False).init(3)) == {np.dtype(np.float32)}


def test_state_and_options_are_checked():
    method = famo(lagged=False)
    with pytest.raises(ValueError, match=r"famo: state is None"):
        method.update(None, jnp.ones(2))
    with pytest.raises(ValueError, match=r"famo_update_logits: state is None"):
        famo_update_logits(None, jnp.ones(2))
    with pytest.raises(TypeError, match=r"famo: expected the FAMOState"):
        method.update(base.EmptyState(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"famo: w_lr must be a non-negative finite float"):
        famo(w_lr=float("nan"))
    with pytest.raises(ValueError, match=r"famo: lagged must be True or False, got 1"):
        famo(lagged=1)
