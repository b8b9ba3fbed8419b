"""Tests for DualProj (mtopt/_src/methods/dualproj.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

from mtopt._src import base
from mtopt._src.methods.dualproj import dualproj
from tests.gramian_cases import gramian, jacobian_cases

PAD = 8
PAPER_JAC = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def scipy_dualproj(g: np.ndarray) -> np.ndarray:
    """min v^T G v s.t. v >= 1/T, as an NNLS on a square root of G (float64)."""
    t = g.shape[0]
    u = np.full(t, 1.0 / t)
    trace = np.trace(g)
    if trace <= 0:
        return u
    lam, vec = np.linalg.eigh(g / trace)
    a = np.sqrt(np.maximum(lam, 0.0))[:, None] * vec.T
    x, _ = nnls(a, -a @ u, maxiter=50 * t)
    return u + x


def weights_fn(method):
    return lambda g: method.update(method.init(g.shape[0]), jnp.ones(g.shape[0], g.dtype), gramian=g)[0]


PADDED = jax.jit(jax.vmap(weights_fn(dualproj())))


def padded_weights(jacs) -> list[np.ndarray]:
    """DualProj of Jacobians with T <= 8 padded with zero tasks to T = 8 (one compilation):
    the bound becomes 1/8 on every task, so the first T weights are T/8 times DualProj's."""
    gs = np.zeros((len(jacs), PAD, PAD))
    for k, j in enumerate(jacs):
        gs[k, : j.shape[0], : j.shape[0]] = gramian(j)
    w = np.asarray(PADDED(jnp.asarray(gs, jnp.float32)), np.float64)
    return [w[k, : j.shape[0]] * PAD / j.shape[0] for k, j in enumerate(jacs)]


@pytest.fixture(scope="module")
def all_cases():
    cases = jacobian_cases()
    return cases, padded_weights([j for _, j in cases])


class DualProjTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_values(self):
        jac = jnp.asarray(PAPER_JAC, jnp.float32)
        exact = self.variant(weights_fn(dualproj()))(jac @ jac.T)
        # Exact: task 1 conflicts with the mean, v_1 = 11/18 makes d orthogonal to g_1.
        chex.assert_trees_all_close(exact, jnp.array([11 / 18, 0.5]), rtol=1e-5)
        chex.assert_trees_all_close(exact @ jac, jnp.array([5 / 9, 10 / 9, 10 / 9]), rtol=1e-5)
        torchjd = weights_fn(dualproj(norm_eps=1e-4, reg_eps=1e-4))(jac @ jac.T)
        chex.assert_trees_all_close(torchjd @ jac, jnp.array([0.5563, 1.1109, 1.1109]), atol=1e-4)
        self.assertEqual(exact.dtype, jnp.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_preference(self):
        jac = jnp.asarray(PAPER_JAC, jnp.float32)
        method = dualproj()
        fn = lambda g, p: method.update(method.init(2), jnp.ones(2), gramian=g, preference=p)[0]
        # Projecting g_2 alone: v = (11/18, 1).
        w = self.variant(fn)(jac @ jac.T, jnp.array([0.0, 1.0]))
        chex.assert_trees_all_close(w, jnp.array([11 / 9, 1.0]), rtol=1e-5)


def test_all_cases_match_scipy_non_conflicting_and_finite(all_cases):
    cases, weights = all_cases
    for (name, j), w in zip(cases, weights):
        t = j.shape[0]
        assert np.all(np.isfinite(w)), name
        assert np.all(w >= (1 - 1e-5) / t), name
        norms = np.linalg.norm(j, axis=1)
        size = max(norms.mean(), 1e-300)
        d = w @ j
        d_ref = scipy_dualproj(gramian(j)) @ j
        np.testing.assert_allclose(d / size, d_ref / size, atol=1e-3, err_msg=name)
        assert np.min(j @ d) / max(norms.max() * size, 1e-300) >= -1e-3, name


def test_mean_kept_when_it_conflicts_with_no_task():
    # <g_i, mean> >= 0 for all i although g_1 and g_2 conflict.
    jac = np.array([[1.0, -0.2], [-0.1, 1.0], [1.0, 1.0]])
    assert np.min(jac @ jac.T) < 0 and np.min(jac @ jac.mean(0)) > 0
    np.testing.assert_allclose(padded_weights([jac])[0], np.full(3, 1 / 3), rtol=1e-5)


def test_permutation_equivariant_and_scale_invariant(all_cases):
    rng = np.random.default_rng(1)
    cases, _ = all_cases
    picked = [(n, j) for n, j in cases if np.linalg.matrix_rank(j) == j.shape[0]][:20]
    perms = [rng.permutation(j.shape[0]) for _, j in picked]
    permuted = padded_weights([j[p] for (_, j), p in zip(picked, perms)])
    scaled = padded_weights([1e7 * j for _, j in picked])
    reference = padded_weights([j for _, j in picked])
    for (name, _), w, wp, ws, p in zip(picked, reference, permuted, scaled, perms):
        np.testing.assert_allclose(wp, w[p], rtol=1e-3, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(ws, w, rtol=1e-3, atol=1e-5, err_msg=name)


def test_single_task_zero_gradients_and_vmap():
    w = weights_fn(dualproj())(jnp.array([[4.0]]))
    chex.assert_trees_all_close(w, jnp.ones(1))
    np.testing.assert_allclose(padded_weights([np.zeros((4, 2))])[0], np.full(4, 0.25))
    rng = np.random.default_rng(3)
    jacs = rng.normal(size=(5, 3, 4))
    gs = np.einsum("bij,bkj->bik", jacs, jacs)
    method = dualproj()
    batched = jax.vmap(lambda g, l: method.update(method.init(3), l, gramian=g)[0])(
        jnp.asarray(gs, jnp.float32), jnp.ones((5, 3))
    )
    for k in range(5):
        np.testing.assert_allclose(np.asarray(batched[k]), scipy_dualproj(gs[k]), rtol=1e-4)


@pytest.mark.slow  # the solver's many-task and bfloat16 cases run by default in test_nonneg_qp
def test_many_tasks_and_bfloat16_gramian():
    rng = np.random.default_rng(4)
    jac = rng.normal(size=(64, 30))
    w = np.asarray(weights_fn(dualproj())(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64)
    norms = np.linalg.norm(jac, axis=1)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(
        w @ jac / norms.mean(), scipy_dualproj(jac @ jac.T) @ jac / norms.mean(), atol=1e-3
    )
    assert np.min(jac @ (w @ jac)) >= -1e-3 * norms.max() * norms.mean()

    j16 = jnp.asarray(rng.normal(size=(8, 5)), jnp.bfloat16)
    w16 = PADDED((j16 @ j16.T).astype(jnp.float32)[None])[0]
    j = np.asarray(j16, np.float64)
    norms = np.linalg.norm(j, axis=1)
    assert bool(jnp.all(jnp.isfinite(w16)))
    assert np.min(j @ (np.asarray(w16, np.float64) @ j)) >= -2e-2 * norms.max() * norms.mean()


def test_bad_inputs():
    method = dualproj()
    with pytest.raises(ValueError, match="dualproj needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(3, 3\)"):
        method.update(method.init(3), jnp.ones(3), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match=r"preference must have shape \(2,\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(2), preference=jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="dualproj: norm_eps must be a non-negative finite float"):
        dualproj(norm_eps=-1e-4)
    assert method.needs == base.Needs.GRAMIAN and method.name == "dualproj"
