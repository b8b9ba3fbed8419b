"""Tests for Nash-MTL (mtopt/_src/methods/nash_mtl.py) and its solver (mtopt/_src/alpha_fair.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import fsolve

from mtopt._src import base
from mtopt._src.alpha_fair import solve_alpha_fair
from mtopt._src.methods.nash_mtl import NashMTLState, nash_mtl
from tests.gramian_cases import gramian, jacobian_cases

PAD = 8

# Reference alpha values (nash-mtl's CCP re-run in cvxpy; equal to fsolve of G alpha = 1/alpha).
KNOWN = (
    (np.diag([1.0, 2.0]), [1.0, 0.5]),
    (10 * np.array([[3.0, 1.0], [-1.0, 2.0]]), [0.034128, 0.048264]),
    (np.array([[1.0, 0, 0], [0, 2.0, 0], [-0.5, 0.5, 1.0]]), [1.248302, 0.400544, 0.894427]),
)


def first_step(method, g):
    return method.update(method.init(g.shape[0]), jnp.ones(g.shape[0], g.dtype), gramian=g)


SOLVE_PADDED = jax.jit(jax.vmap(lambda g: first_step(nash_mtl(max_norm=None), g)))


def padded_alphas(jacs):
    """Nash-MTL weights of Jacobians with T <= 8, padded with zero tasks (weight 0, decoupled)."""
    gs = np.zeros((len(jacs), PAD, PAD))
    for k, j in enumerate(jacs):
        gs[k, : j.shape[0], : j.shape[0]] = gramian(j)
    alpha, _ = SOLVE_PADDED(jnp.asarray(gs, jnp.float32))
    alpha = np.asarray(alpha, np.float64)
    for k, j in enumerate(jacs):
        np.testing.assert_array_equal(alpha[k, j.shape[0] :], 0.0)
    return [alpha[k, : j.shape[0]] for k, j in enumerate(jacs)]


def has_solution(j: np.ndarray) -> bool:
    # Linearly independent gradients: a direction improving every task exists.
    return np.linalg.matrix_rank(j) == j.shape[0]


class NashMTLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_alpha_values(self):
        method = nash_mtl(max_norm=None)
        for jac, expected in KNOWN:
            g = jnp.asarray(jac @ jac.T, jnp.float32)
            alpha, state = self.variant(lambda g: first_step(method, g))(g)
            chex.assert_trees_all_close(alpha, jnp.asarray(expected, jnp.float32), rtol=1e-4)
            chex.assert_trees_all_close(state.alpha, alpha)
            self.assertEqual(int(state.step), 1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_max_norm_rescales_the_direction(self):
        jac = jnp.asarray(KNOWN[2][0], jnp.float32)
        g = jac @ jac.T
        alpha, _ = self.variant(lambda g: first_step(nash_mtl(max_norm=1.0), g))(g)
        # ||d||^2 = alpha^T G alpha = T = 3 at the solution: rescaled to norm 1.
        chex.assert_trees_all_close(
            alpha, jnp.asarray(KNOWN[2][1], jnp.float32) / np.sqrt(3.0), rtol=1e-4
        )
        chex.assert_trees_all_close(alpha @ g @ alpha, jnp.float32(1.0), rtol=1e-4)
        alpha, _ = first_step(nash_mtl(max_norm=5.0), g)  # already shorter: unchanged
        chex.assert_trees_all_close(alpha, jnp.asarray(KNOWN[2][1], jnp.float32), rtol=1e-4)

    def test_warm_start_and_scaling(self):
        method = nash_mtl(max_norm=None)
        jac = jnp.asarray(KNOWN[2][0], jnp.float32)
        g = jac @ jac.T
        step = jax.jit(lambda s, g: method.update(s, jnp.ones(3), gramian=g))
        alpha, state = step(method.init(3), g)
        # Scaling the gradients by 100 scales alpha by 1/100; the warm start is rescaled exactly.
        alpha2, state2 = step(state, 1e4 * g)
        chex.assert_trees_all_close(alpha2, alpha / 100.0, rtol=1e-5)
        _, info = solve_alpha_fair(1e4 * g, 1.0, state.alpha)
        self.assertEqual(int(info.iterations), 0)
        self.assertEqual(int(state2.step), 2)


def test_all_cases_solve_the_bargaining_equation():
    cases = jacobian_cases()
    alphas = padded_alphas([j for _, j in cases])
    for (name, j), alpha in zip(cases, alphas):
        assert np.all(np.isfinite(alpha)), name
        assert np.all(alpha >= 0), name
        norms = np.linalg.norm(j, axis=1)
        np.testing.assert_array_equal(alpha[norms == 0], 0.0)
        if has_solution(j) and np.linalg.cond(j @ j.T) < 1e4:
            g = gramian(j)
            products = alpha * (g @ alpha)  # alpha_i (G alpha)_i = 1: every task improves
            np.testing.assert_allclose(products, 1.0, atol=2e-3, err_msg=name)
            ref = fsolve(
                lambda a, g=g: g @ a - 1.0 / a, 1.0 / np.maximum(norms, 1e-300), xtol=1e-12
            )
            np.testing.assert_allclose(alpha, ref, rtol=2e-3, err_msg=name)
            np.testing.assert_allclose(alpha @ g @ alpha, j.shape[0], rtol=2e-3)  # ||d||^2 = T


def test_permutation_equivariant_and_scale():
    rng = np.random.default_rng(0)
    jacs = [rng.normal(size=(t, 8)) for t in (2, 4, 6, 8)]
    perms = [rng.permutation(j.shape[0]) for j in jacs]
    base_alpha = padded_alphas(jacs)
    permuted = padded_alphas([j[p] for j, p in zip(jacs, perms)])
    scaled = padded_alphas([1e-5 * j for j in jacs])
    for a, ap, asc, p in zip(base_alpha, permuted, scaled, perms):
        np.testing.assert_allclose(ap, a[p], rtol=1e-4)
        np.testing.assert_allclose(asc, 1e5 * a, rtol=1e-4)  # weights scale like 1/||g||


def test_degenerate_cases_stay_finite():
    opposite = np.array([[1.0, 2.0], [-1.0, -2.0]])
    zero_and_one = np.array([[0.0, 0.0], [0.0, 2.0]])
    single = np.array([[3.0, 4.0]])
    a_opp, a_zero, a_single = padded_alphas([opposite, zero_and_one, single])
    assert np.all(np.isfinite(a_opp)) and np.linalg.norm(a_opp @ opposite) < 1e-2
    np.testing.assert_allclose(a_zero, [0.0, 0.5], rtol=1e-5)
    np.testing.assert_allclose(a_single, [0.2], rtol=1e-5)  # 1 / ||g||
    # With the default max_norm the step stays bounded.
    alpha, _ = first_step(nash_mtl(), jnp.asarray(gramian(opposite), jnp.float32))
    assert float(alpha @ jnp.asarray(gramian(opposite), jnp.float32) @ alpha) <= 1.0 + 1e-5


def test_update_weights_every_and_scan():
    method = nash_mtl(max_norm=None, update_weights_every=3)
    rng = np.random.default_rng(1)
    jacs = rng.normal(size=(6, 3, 5))
    gs = jnp.asarray(np.einsum("bij,bkj->bik", jacs, jacs), jnp.float32)

    def body(state, g):
        alpha, state = method.update(state, jnp.ones(3), gramian=g)
        return state, alpha

    state, alphas = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(method.init(3), gs)
    alphas = np.asarray(alphas, np.float64)
    assert int(state.step) == 6
    for k in (0, 3):  # solved on these steps ...
        g = np.asarray(gs[k], np.float64)
        np.testing.assert_allclose(alphas[k] * (g @ alphas[k]), 1.0, atol=1e-3)
    for k in (1, 2):  # ... reused in between
        np.testing.assert_array_equal(alphas[k], alphas[0])
    np.testing.assert_array_equal(alphas[5], alphas[3])
    assert not np.allclose(alphas[3], alphas[0])


def test_vmap_over_states_and_gramians_and_many_tasks():
    method = nash_mtl()
    rng = np.random.default_rng(2)
    jacs = rng.normal(size=(4, 3, 6))
    gs = jnp.asarray(np.einsum("bij,bkj->bik", jacs, jacs), jnp.float32)
    states = jax.vmap(lambda _: method.init(3))(jnp.arange(4))
    alphas, new_states = jax.vmap(lambda s, g: method.update(s, jnp.ones(3), gramian=g))(states, gs)
    chex.assert_shape(alphas, (4, 3))
    chex.assert_shape(new_states.alpha, (4, 3))
    for k in range(4):
        # max_norm = 1 < sqrt(3): the direction has norm 1.
        np.testing.assert_allclose(float(alphas[k] @ gs[k] @ alphas[k]), 1.0, rtol=1e-4)

    jac = rng.normal(size=(64, 80))
    alpha, _ = first_step(
        nash_mtl(max_norm=None, optim_niter=50), jnp.asarray(jac @ jac.T, jnp.float32)
    )
    alpha = np.asarray(alpha, np.float64)
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (jac @ jac.T @ alpha), 1.0, atol=2e-2)

    j16 = jnp.asarray(rng.normal(size=(5, 7)), jnp.bfloat16)
    alpha16, _ = first_step(nash_mtl(), (j16 @ j16.T).astype(jnp.float32))
    assert alpha16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(alpha16)))


def test_bad_inputs():
    method = nash_mtl()
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 2"):
        method.update(method.init(3), jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match="nash_mtl needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match="max_norm must be a non-negative float or None"):
        nash_mtl(max_norm=-1.0)
    with pytest.raises(ValueError, match="optim_niter must be a positive int"):
        nash_mtl(optim_niter=0)
    with pytest.raises(ValueError, match="update_weights_every must be a positive int"):
        nash_mtl(update_weights_every=0)
    with pytest.raises(ValueError, match=r"init must have shape \(2,\)"):
        solve_alpha_fair(jnp.eye(2), 1.0, jnp.ones(3))
    assert isinstance(method.init(2), NashMTLState)
    assert method.needs == base.Needs.GRAMIAN and method.name == "nash_mtl"
