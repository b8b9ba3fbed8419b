"""Tests for FairGrad (mtopt/_src/methods/fairgrad.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

from mtopt._src import base
from mtopt._src.alpha_fair import solve_alpha_fair
from mtopt._src.methods.fairgrad import fairgrad
from tests.gramian_cases import gramian, jacobian_cases

PAD = 8
ALPHAS = (0.5, 2.0, 5.0)  # 2.0 is reused by the other tests: one compilation each


def weights_fn(method):
    return lambda g: method.update(method.init(g.shape[0]), jnp.ones(g.shape[0], g.dtype), gramian=g)[0]


@functools.cache
def batched(alpha):
    return jax.jit(jax.vmap(weights_fn(fairgrad(alpha))))


def padded_weights(alpha, jacs):
    """FairGrad weights of Jacobians with T <= 8, padded with zero tasks (weight 0, decoupled)."""
    gs = np.zeros((len(jacs), PAD, PAD))
    for k, j in enumerate(jacs):
        gs[k, : j.shape[0], : j.shape[0]] = gramian(j)
    x = np.asarray(batched(alpha)(jnp.asarray(gs, jnp.float32)), np.float64)
    for k, j in enumerate(jacs):
        np.testing.assert_array_equal(x[k, j.shape[0] :], 0.0)
    return [x[k, : j.shape[0]] for k, j in enumerate(jacs)]


def scipy_fairgrad(g: np.ndarray, alpha: float) -> np.ndarray:
    """The reference implementation's solve (float64, tight tolerances), on G / max_i G_ii:
    unnormalised, least_squares stops far from the root for gradients of 1e-10."""
    t = g.shape[0]
    s = np.max(np.diag(g))
    gn = g / s
    res = least_squares(
        lambda x: gn @ x - np.power(1 / x, 1 / alpha),
        np.ones(t) / t,
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=1000 * t,
    )
    return res.x * s ** (-alpha / (alpha + 1))


class FairGradTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_orthogonal_tasks_closed_form(self):
        jac = jnp.diag(jnp.array([1.0, 2.0, 0.5]))
        norms = np.array([1.0, 2.0, 0.5])
        for alpha in (0.5, 1.0, 3.0):
            x = self.variant(weights_fn(fairgrad(alpha)))(jac @ jac.T)
            # (G x)_i = ||g_i||^2 x_i = x_i^(-1/alpha)  =>  x_i = ||g_i||^(-2 alpha / (alpha + 1)).
            chex.assert_trees_all_close(
                x, jnp.asarray(norms ** (-2 * alpha / (alpha + 1)), jnp.float32), rtol=1e-5
            )
            self.assertEqual(x.dtype, jnp.float32)

    def test_alpha_one_is_nash_mtl_without_clipping(self):
        jac = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-0.5, 0.5, 1.0]])
        x = weights_fn(fairgrad(1.0))(jac @ jac.T)
        chex.assert_trees_all_close(x, jnp.array([1.248302, 0.400544, 0.894427]), rtol=1e-4)

    def test_alpha_zero_is_the_mean(self):
        x = weights_fn(fairgrad(0.0))(jnp.array([[1.0, -2.0], [-2.0, 9.0]]))
        chex.assert_trees_all_close(x, jnp.array([0.5, 0.5]))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_scipy_least_squares(alpha):
    cases = jacobian_cases()
    xs = padded_weights(alpha, [j for _, j in cases])
    for (name, j), x in zip(cases, xs):
        assert np.all(np.isfinite(x)) and np.all(x >= 0), name
        g = gramian(j)
        if np.linalg.matrix_rank(j) < j.shape[0] or np.linalg.cond(g) > 1e3:
            continue  # no solution, or beyond float32
        # Every task improves at the prescribed rate: <g_i, d> = x_i^(-1/alpha) > 0.
        np.testing.assert_allclose(g @ x, x ** (-1 / alpha), rtol=2e-3, err_msg=name)
        np.testing.assert_allclose(x, scipy_fairgrad(g, alpha), rtol=2e-3, err_msg=name)


def test_scaling_and_permutation():
    rng = np.random.default_rng(0)
    jacs = [rng.normal(size=(t, 7)) for t in (1, 3, 5)]
    perms = [rng.permutation(j.shape[0]) for j in jacs]
    alpha = 2.0
    xs = padded_weights(alpha, jacs)
    scaled = padded_weights(alpha, [1e3 * j for j in jacs])
    permuted = padded_weights(alpha, [j[p] for j, p in zip(jacs, perms)])
    factor = (1e6) ** (-alpha / (alpha + 1))  # G -> s G: x -> s^(-alpha/(alpha+1)) x
    for x, xs_, xp, p in zip(xs, scaled, permuted, perms):
        np.testing.assert_allclose(xs_, factor * x, rtol=1e-4)
        np.testing.assert_allclose(xp, x[p], rtol=1e-4)


def test_degenerate_cases_finite_and_float64_mixed_scales():
    opposite = np.array([[1.0, 2.0], [-1.0, -2.0]])
    zero_row = np.array([[0.0, 0.0], [0.0, 2.0]])
    for alpha in (0.5, 2.0):
        x_opp, x_zero = padded_weights(alpha, [opposite, zero_row])
        assert np.all(np.isfinite(x_opp)) and np.linalg.norm(x_opp @ opposite) < 1e-1
        np.testing.assert_allclose(x_zero, [0.0, 4.0 ** (-alpha / (alpha + 1))], rtol=1e-5)
    j16 = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.bfloat16)
    x16 = weights_fn(fairgrad(2.0))((j16 @ j16.T).astype(jnp.float32))
    assert bool(jnp.all(jnp.isfinite(x16)))
    # Gradients from 1e-6 to 1e6 are beyond float32 for alpha != 1; float64 solves them.
    j = dict(jacobian_cases())["mixed_scales"]
    g = gramian(j)
    with jax.enable_x64(True):
        x, info = solve_alpha_fair(jnp.asarray(g, jnp.float64), 0.5, max_iter=100)
        x = np.asarray(x)
    assert x.dtype == np.float64 and float(info.residual) < 1e-8
    np.testing.assert_allclose(x * (g @ x) / x ** (1 - 1 / 0.5), 1.0, rtol=1e-6)


def test_many_tasks_and_vmap():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(64, 90))
    x = np.asarray(weights_fn(fairgrad(2.0))(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64)
    assert np.all(np.isfinite(x)) and np.all(x > 0)
    np.testing.assert_allclose(jac @ jac.T @ x, x ** (-0.5), rtol=2e-2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="fairgrad: alpha must be a non-negative finite float"):
        fairgrad(-1.0)
    with pytest.raises(ValueError, match="fairgrad: max_iter must be a positive int"):
        fairgrad(max_iter=0)
    method = fairgrad()
    with pytest.raises(ValueError, match="fairgrad needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(2, 2\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="alpha must be a positive float"):
        solve_alpha_fair(jnp.eye(2), 0.0)
    assert method.needs == base.Needs.GRAMIAN and method.name == "fairgrad"
