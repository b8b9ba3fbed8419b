"""Tests for GradNorm (mtopt/_src/methods/gradnorm.py) against a NumPy re-implementation of
LibMTL's rule (w = T softmax(s), |G^W_i - sg(mean G^W r_i^alpha)|, torch-style Adam on s)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gramian_cases import gramian, jacobian_cases
from mtopt._src import base
from mtopt._src.methods.gradnorm import GradNormState, gradnorm


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


class NumpyGradNorm:
    """GradNorm in float64 NumPy; the gradient of L_grad by central finite differences."""

    def __init__(self, num_tasks, alpha, lr, initial_losses=None):
        self.s = np.ones(num_tasks)
        self.m = np.zeros(num_tasks)
        self.v = np.zeros(num_tasks)
        self.t = 0
        self.alpha, self.lr = alpha, lr
        self.initial_losses = initial_losses

    def _weights(self, s):
        return len(s) * _softmax(s)

    def step(self, losses, norms):
        if self.initial_losses is None:
            self.initial_losses = losses.copy()
        weights = self._weights(self.s)
        ratios = losses / self.initial_losses
        rates = ratios / ratios.mean()
        target = (weights * norms).mean() * rates**self.alpha  # detached: fixed below

        def grad_loss(s):
            return np.abs(self._weights(s) * norms - target).sum()

        h = 1e-6
        grad = np.array(
            [
                (grad_loss(self.s + h * e) - grad_loss(self.s - h * e)) / (2 * h)
                for e in np.eye(len(self.s))
            ]
        )
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat = self.m / (1 - 0.9**self.t)
        v_hat = self.v / (1 - 0.999**self.t)
        self.s = self.s - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        return weights


def _diag_gramian(norms):
    return jnp.diag(jnp.asarray(norms, jnp.float32) ** 2)


class GradNormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reference(self):
        num_tasks, steps = 3, 15
        rng = np.random.default_rng(0)
        for initial_losses in (None, np.array([2.0, 1.0, 4.0])):
            method = gradnorm(alpha=1.5, lr=0.025, initial_losses=initial_losses)
            update = self.variant(method.update)
            state = method.init(num_tasks)
            ref = NumpyGradNorm(num_tasks, 1.5, 0.025, initial_losses)
            for _ in range(steps):
                losses = rng.uniform(0.2, 3.0, num_tasks)
                norms = rng.uniform(0.1, 5.0, num_tasks)
                weights, state = update(
                    state, jnp.asarray(losses, jnp.float32), gramian=_diag_gramian(norms)
                )
                np.testing.assert_allclose(weights, ref.step(losses, norms), rtol=1e-5)
                np.testing.assert_allclose(state.logits, ref.s, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.initial_losses, ref.initial_losses, rtol=1e-6)
            self.assertTrue(bool(state.has_initial_losses))

    def test_closed_form_gradient_matches_autodiff(self):
        # With SGD(1) the logit step is exactly -grad L_grad(s).
        alpha = 0.7
        method = gradnorm(
            alpha=alpha, optimizer=optax.sgd(1.0), initial_losses=[1.0, 2.0, 0.5, 1.0]
        )
        rng = np.random.default_rng(1)
        jac = rng.normal(size=(4, 6))
        losses = jnp.array([0.8, 1.1, 0.4, 2.0])
        state = method.init(4)._replace(logits=jnp.array([0.2, -0.3, 1.0, 0.0]))
        _, new_state = method.update(state, losses, gramian=jnp.asarray(gramian(jac), jnp.float32))
        norms = jnp.asarray(np.linalg.norm(jac, axis=1), jnp.float32)
        ratios = losses / state.initial_losses
        rates = ratios / jnp.mean(ratios)

        def grad_loss(s):
            weighted = 4.0 * jax.nn.softmax(s) * norms
            target = jax.lax.stop_gradient(jnp.mean(weighted) * rates**alpha)
            return jnp.sum(jnp.abs(weighted - target))

        expected = jax.grad(grad_loss)(state.logits)
        chex.assert_trees_all_close(state.logits - new_state.logits, expected, rtol=1e-5)

    def test_returned_weights_are_before_the_step(self):
        method = gradnorm()
        state = method.init(3)._replace(logits=jnp.array([0.5, 1.0, 2.0]))
        weights, new_state = method.update(
            state, jnp.ones(3), gramian=_diag_gramian([1.0, 2.0, 3.0])
        )
        chex.assert_trees_all_close(weights, 3.0 * jax.nn.softmax(state.logits), rtol=1e-6)
        self.assertFalse(bool(jnp.allclose(new_state.logits, state.logits)))

    def test_equalises_weighted_gradient_norms(self):
        norms = np.array([2.0, 1.0, 0.5])
        method = gradnorm(alpha=1.5)
        gram = _diag_gramian(norms)

        def body(state, _):
            weights, state = method.update(state, jnp.ones(3), gramian=gram)
            return state, weights

        _, weights = jax.lax.scan(body, method.init(3), None, length=400)
        final = np.asarray(weights[-1])
        np.testing.assert_allclose(final.sum(), 3.0, rtol=1e-5)
        # Equal rates: the fixed point is w_i ||g_i|| equal, i.e. w prop. to 1 / ||g_i||.
        expected = 3.0 * (1 / norms) / (1 / norms).sum()
        np.testing.assert_allclose(final, expected, rtol=0.05)

    def test_slower_task_gains_weight(self):
        method = gradnorm(alpha=1.5, initial_losses=[1.0, 1.0])
        gram = _diag_gramian([1.0, 1.0])
        # Task 0 has not improved (ratio 1), task 1 halved: r_0 > r_1.
        _, state = method.update(method.init(2), jnp.array([1.0, 0.5]), gramian=gram)
        weights, _ = method.update(state, jnp.array([1.0, 0.5]), gramian=gram)
        self.assertGreater(float(weights[0]), float(weights[1]))
        # With alpha = 0 the training rates are ignored and equal norms stay balanced.
        method0 = gradnorm(alpha=0.0, initial_losses=[1.0, 1.0])
        _, state = method0.update(method0.init(2), jnp.array([1.0, 0.5]), gramian=gram)
        chex.assert_trees_all_close(state.logits, jnp.ones(2))

    def test_reads_only_the_diagonal(self):
        method = gradnorm()
        state = method.init(3)
        rng = np.random.default_rng(2)
        jac = rng.normal(size=(3, 5))
        gram = jnp.asarray(gramian(jac), jnp.float32)
        diag = jnp.diag(jnp.diagonal(gram))
        losses = jnp.array([1.0, 2.0, 3.0])
        _, s1 = method.update(state, losses, gramian=gram)
        _, s2 = method.update(state, losses, gramian=diag)
        chex.assert_trees_all_close(s1.logits, s2.logits)

    def test_scale_of_the_gradients_does_not_matter_with_adam(self):
        method = gradnorm()
        update = jax.jit(method.update)
        base_gram = _diag_gramian([2.0, 1.0, 0.3])
        results = []
        for scale in (1e-3, 1.0, 1e3):
            state = method.init(3)
            for t in range(5):
                losses = jnp.array([1.0, 0.9, 0.8]) ** t
                weights, state = update(state, losses, gramian=scale**2 * base_gram)
            results.append(weights)
        for w in results[1:]:
            chex.assert_trees_all_close(w, results[0], rtol=1e-4)

    def test_degenerate_gramians_and_losses_stay_finite(self):
        update = jax.jit(gradnorm().update)
        rng = np.random.default_rng(3)
        loss_cases = ["random", "zeros", "negative"]
        for name, jac in jacobian_cases(seed=4, num_random=10):
            t = jac.shape[0]
            method = gradnorm()
            state = method.init(t)
            gram = jnp.asarray(gramian(jac), jnp.float32)
            for kind in loss_cases:
                if kind == "random":
                    losses = rng.uniform(0.1, 2.0, t)
                elif kind == "zeros":
                    losses = np.zeros(t)
                else:
                    losses = rng.normal(size=t)
                weights, state = update(state, jnp.asarray(losses, jnp.float32), gramian=gram)
                self.assertTrue(bool(jnp.all(jnp.isfinite(weights))), (name, kind))
                np.testing.assert_allclose(float(weights.sum()), t, rtol=1e-5, err_msg=name)
                for leaf in jax.tree.leaves(state):
                    self.assertTrue(bool(jnp.all(jnp.isfinite(leaf))), (name, kind))

    def test_zero_gradients_leave_the_logits(self):
        method = gradnorm()
        _, state = method.update(method.init(3), jnp.ones(3), gramian=jnp.zeros((3, 3)))
        chex.assert_trees_all_close(state.logits, jnp.ones(3))

    def test_single_task(self):
        method = gradnorm()
        state = method.init(1)
        for loss in (1.0, 0.5, 0.0):
            weights, state = method.update(state, jnp.array([loss]), gramian=jnp.array([[4.0]]))
            chex.assert_trees_all_close(weights, jnp.ones(1))
        chex.assert_trees_all_close(state.logits, jnp.ones(1))

    def test_vmap_over_problems(self):
        method = gradnorm()
        rng = np.random.default_rng(5)
        grams = jnp.asarray(
            np.stack([gramian(rng.normal(size=(3, 4))) for _ in range(4)]), jnp.float32
        )
        losses = jnp.asarray(rng.uniform(0.5, 2.0, size=(4, 3)), jnp.float32)
        states = jax.vmap(lambda _: method.init(3))(jnp.arange(4))
        batched = jax.jit(jax.vmap(lambda s, l, g: method.update(s, l, gramian=g)))
        for _ in range(3):
            weights, states = batched(states, losses, grams)
        for i in range(4):
            state = method.init(3)
            for _ in range(3):
                w, state = method.update(state, losses[i], gramian=grams[i])
            chex.assert_trees_all_close(weights[i], w, rtol=1e-5)
            chex.assert_trees_all_close(states.logits[i], state.logits, rtol=1e-5)
        self.assertIsInstance(states, GradNormState)

    def test_bfloat16_inputs(self):
        method = gradnorm()
        weights, state = method.update(
            method.init(2),
            jnp.array([1.0, 2.0], jnp.bfloat16),
            gramian=jnp.eye(2, dtype=jnp.bfloat16),
        )
        self.assertEqual(weights.dtype, jnp.float32)
        chex.assert_trees_all_equal_dtypes(state, method.init(2))

    def test_metadata(self):
        method = gradnorm()
        self.assertEqual(method.needs, base.Needs.GRAMIAN)
        self.assertFalse(method.stochastic)
        self.assertEqual(method.name, "gradnorm")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="gradnorm: alpha must be a non-negative finite float, got -1.0"):
        gradnorm(alpha=-1.0)
    with pytest.raises(ValueError, match=r"initial_losses must have shape \(3,\)"):
        gradnorm(initial_losses=[1.0, 2.0]).init(3)
    method = gradnorm()
    state = method.init(3)
    with pytest.raises(ValueError, match="needs the Gramian"):
        method.update(state, jnp.ones(3))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(3, 3\)"):
        method.update(state, jnp.ones(3), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 2"):
        method.update(state, jnp.ones(2), gramian=jnp.eye(2))


# --- issue 11, item 5: float64 states and weights under x64 ----------------------------------

def test_float64_state_and_weights_under_x64():
    # The old code built GradNormState in float32 whatever x64 said.
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        method = gradnorm(initial_losses=[1.0, 2.0, 3.0])
        state = method.init(3)
        floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert {x.dtype for x in floats} == {jnp.dtype(jnp.float64)}
        losses = jnp.asarray(rng.uniform(0.1, 2.0, (6, 3)))
        js = rng.normal(size=(6, 3, 4))
        grams = jnp.asarray(np.einsum("kip,kjp->kij", js, js))

        def step(s, inputs):
            l, g = inputs
            w, s = method.update(s, l, gramian=g)
            return s, w

        for dtype in (jnp.float64, jnp.float32):
            final, weights = jax.jit(lambda s, q: jax.lax.scan(step, s, q))(
                state, (losses.astype(dtype), grams.astype(dtype)))
            assert weights.dtype == dtype
            assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
            np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 3.0, rtol=1e-6)
    floats = [x for x in jax.tree.leaves(gradnorm().init(3))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}


def test_state_and_options_are_checked():
    method = gradnorm()
    with pytest.raises(ValueError, match=r"gradnorm: state is None"):
        method.update(None, jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(TypeError, match=r"gradnorm: expected the GradNormState"):
        method.update(base.EmptyState(2), jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match=r"gradnorm: lr must be a positive finite float"):
        gradnorm(lr=0.0)
    with pytest.raises(ValueError, match=r"gradnorm: alpha must be a non-negative finite"):
        gradnorm(alpha=True)
    with pytest.raises(TypeError, match=r"gradnorm: optimizer must be an optax"):
        gradnorm(optimizer="adam")
