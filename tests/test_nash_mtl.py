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
        alpha, state = self.variant(lambda g: first_step(nash_mtl(max_norm=1.0), g))(g)
        # The weights are the bargaining solution; ||d||^2 = alpha^T G alpha = T = 3 at the
        # solution, so the shared gradient is rescaled by 1/sqrt(3) to norm 1.
        chex.assert_trees_all_close(alpha, jnp.asarray(KNOWN[2][1], jnp.float32), rtol=1e-4)
        chex.assert_trees_all_close(state.shared_scale, jnp.float32(1 / np.sqrt(3.0)), rtol=1e-4)
        shared = state.shared_scale * alpha
        chex.assert_trees_all_close(shared @ g @ shared, jnp.float32(1.0), rtol=1e-4)
        alpha, state = first_step(nash_mtl(max_norm=5.0), g)  # already shorter: unchanged
        chex.assert_trees_all_close(alpha, jnp.asarray(KNOWN[2][1], jnp.float32), rtol=1e-4)
        chex.assert_trees_all_close(state.shared_scale, jnp.float32(1.0))

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
        # max_norm = 1 < sqrt(3): the shared direction has norm 1.
        shared = new_states.shared_scale[k] * alphas[k]
        np.testing.assert_allclose(float(shared @ gs[k] @ shared), 1.0, rtol=1e-4)

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
    with pytest.raises(ValueError, match="max_norm must be a non-negative finite float"):
        nash_mtl(max_norm=-1.0)
    with pytest.raises(ValueError, match="optim_niter must be a positive int"):
        nash_mtl(optim_niter=0)
    with pytest.raises(ValueError, match="update_weights_every must be a positive int"):
        nash_mtl(update_weights_every=0)
    with pytest.raises(ValueError, match=r"init must have shape \(2,\)"):
        solve_alpha_fair(jnp.eye(2), 1.0, jnp.ones(3))
    assert isinstance(method.init(2), NashMTLState)
    assert method.needs == base.Needs.GRAMIAN and method.name == "nash_mtl"


def _two_head_problem():
    """A trunk shared by two heads: task i's loss reads head i only."""
    rng = np.random.default_rng(3)
    params = {"trunk": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "heads": [jnp.asarray(rng.normal(size=4), jnp.float32) for _ in range(2)]}
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    targets = (1.0, -2.0)

    def fn(p, x):
        z = jnp.tanh(x @ p["trunk"])
        return jnp.stack([jnp.mean((z @ p["heads"][i] - targets[i]) ** 2) for i in range(2)])

    return params, x, fn


@pytest.mark.parametrize("path", ["full", "low_memory", "representation", "aggregator"])
def test_max_norm_clips_the_shared_gradient_only(path):
    """The reference clips the shared parameters' gradient: heads keep alpha_i grad L_i."""
    params, x, fn = _two_head_problem()
    method = nash_mtl(max_norm=0.05)
    is_trunk = lambda path, leaf: "trunk" in jax.tree_util.keystr(path)  # noqa: E731
    state = method.init(2)
    if path == "representation":
        encode = lambda p, x: jnp.tanh(x @ p["trunk"])  # noqa: E731
        heads = lambda p, z, x: jnp.stack(  # noqa: E731
            [jnp.mean((z @ p["heads"][i] - t) ** 2) for i, t in enumerate((1.0, -2.0))])
        import mtopt
        step = mtopt.representation_value_and_grad(encode, heads, method)
        grads, info, new_state = jax.jit(step)(params, state, x)
    elif path == "aggregator":
        import mtopt
        losses, jac, _ = mtopt.task_jacobian(fn)(params, x)
        agg = mtopt.as_aggregator(method, num_tasks=2, shared=is_trunk)
        grads, agg_state = agg.update(jac, agg.init(params), params, losses=losses)
        new_state, alpha = agg_state.method_state, agg_state.weights
        info = None
    else:
        import mtopt
        step = mtopt.value_and_grad(fn, method, shared=is_trunk,
                                    low_memory=path == "low_memory")
        grads, info, new_state = jax.jit(step)(params, state, x)
    alpha = info.weights if info is not None else alpha
    scale = float(new_state.shared_scale)
    assert scale < 0.5  # the clip is active
    per_task = [jax.grad(lambda p, i=i: fn(p, x)[i])(params) for i in range(2)]
    for i in range(2):  # head i: alpha_i grad L_i, unscaled
        np.testing.assert_allclose(grads["heads"][i], alpha[i] * per_task[i]["heads"][i],
                                   rtol=2e-4, atol=1e-7)
    if path != "representation":  # trunk: scale * sum_i alpha_i grad L_i, of norm max_norm
        trunk = scale * sum(alpha[i] * per_task[i]["trunk"] for i in range(2))
        np.testing.assert_allclose(grads["trunk"], trunk, rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(float(jnp.linalg.norm(grads["trunk"])), 0.05, rtol=1e-3)
    else:  # representation mode: the trunk gets J_enc^T (scale * sum_i alpha_i dL_i/dz)
        unscaled = sum(alpha[i] * per_task[i]["trunk"] for i in range(2))
        np.testing.assert_allclose(grads["trunk"], scale * unscaled, rtol=2e-4, atol=1e-7)
