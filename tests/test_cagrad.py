"""Tests for CAGrad (mtopt/_src/methods/cagrad.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from mtopt._src import base
from mtopt._src.methods.cagrad import cagrad
from tests.gramian_cases import gramian, jacobian_cases

PAPER_JAC = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
SIZES = tuple(range(1, 9))  # every case of gramian_cases: one compilation per T
# c = 0.4 on every size above; the other radii on a few sizes (compilations are per (c, T)).
RADII = ((0.4, SIZES), (0.9, (3,)), (2.0, (4, 8)))
# The solver matches SLSQP to ~5e-6 here; the tolerance leaves room for float32.


def weights_fn(method):
    return lambda g: method.update(base.EmptyState(), jnp.ones(g.shape[0], g.dtype), gramian=g)[0]


@functools.cache
def batched(c):
    return jax.jit(jax.vmap(weights_fn(cagrad(c, rescale=0))))


def scipy_cagrad_direction(j: np.ndarray, c: float) -> np.ndarray:
    """The reference implementation: SLSQP on the simplex (float64, several starts)."""
    g = j @ j.T
    t = g.shape[0]
    trace = np.trace(g)
    if trace == 0:
        return np.zeros(j.shape[1])
    gn = g / trace
    b = np.full(t, 1.0 / t)
    radius = c * np.sqrt(max(b @ gn @ b, 0.0))

    def objective(w):
        return w @ gn @ b + radius * np.sqrt(max(w @ gn @ w, 0.0) + 1e-14)

    best = None
    for start in [b] + list(np.eye(t)):
        res = minimize(
            objective,
            start,
            bounds=[(0, 1)] * t,
            constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    w = best.x
    gw_norm = np.sqrt(max(w @ gn @ w, 0.0))
    coef = radius / gw_norm if gw_norm >= 1e-4 else 0.0
    return (b + coef * w) @ j


@pytest.fixture(scope="module")
def cases_by_size():
    groups = {}
    for name, j in jacobian_cases():
        if j.shape[0] in SIZES:
            groups.setdefault(j.shape[0], []).append((name, j))
    return groups


def weights_of(c, jacs):
    gs = jnp.asarray(np.stack([gramian(j) for j in jacs]), jnp.float32)
    return np.asarray(batched(c)(gs), np.float64)


class CAGradTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_value_and_conventions(self):
        jac = jnp.asarray(PAPER_JAC, jnp.float32)
        g = jac @ jac.T
        w0 = self.variant(weights_fn(cagrad(c=0.5, rescale=0)))(g)
        # TorchJD's value; here w* = e_1 and w = 1/2 + (sqrt(3)/2 / sqrt(18)) e_1.
        chex.assert_trees_all_close(w0 @ jac, jnp.array([0.1835, 1.2041, 1.2041]), atol=1e-4)
        chex.assert_trees_all_close(
            w0, jnp.array([0.5 + np.sqrt(3) / 2 / np.sqrt(18), 0.5]), rtol=1e-5
        )
        w1 = weights_fn(cagrad(c=0.5))(g)
        chex.assert_trees_all_close(w1, w0 / 1.25, rtol=1e-6)  # rescale=1: / (1 + c^2)
        w2 = weights_fn(cagrad(c=0.5, rescale=2))(g)
        chex.assert_trees_all_close(w2, w0 / 1.5, rtol=1e-6)  # rescale=2: / (1 + c)
        ws = weights_fn(cagrad(c=0.5, rescale=0, reduction="sum"))(g)
        chex.assert_trees_all_close(ws, 2 * w0, rtol=1e-6)  # nash-mtl: x T
        self.assertEqual(w0.dtype, jnp.float32)

    def test_c_zero_is_the_mean_and_single_task(self):
        jac = jnp.asarray(PAPER_JAC, jnp.float32)
        chex.assert_trees_all_close(weights_fn(cagrad(c=0.0))(jac @ jac.T), jnp.array([0.5, 0.5]))
        w = weights_fn(cagrad(c=0.4))(jnp.array([[9.0]]))
        chex.assert_trees_all_close(w, jnp.array([1.4 / 1.16]), rtol=1e-5)
        w = weights_fn(cagrad(c=0.4))(jnp.zeros((3, 3)))
        chex.assert_trees_all_close(w, jnp.full((3,), 1 / 3 / 1.16), rtol=1e-6)


@pytest.mark.parametrize("c,sizes", RADII)
def test_matches_scipy_and_solves_the_primal(c, sizes, cases_by_size):
    for t in sizes:
        cases = cases_by_size[t]
        weights = weights_of(c, [j for _, j in cases])
        for (name, j), w in zip(cases, weights):
            assert np.all(np.isfinite(w)), name
            norms = np.linalg.norm(j, axis=1)
            scale = max(norms.max(), 1e-300)
            d = w @ j
            np.testing.assert_allclose(
                d / scale, scipy_cagrad_direction(j, c) / scale, atol=2e-4, err_msg=name
            )
            # Primal: d is in the ball around g_0 and improves the worst task at least as
            # much as g_0 does (g_0 is feasible).
            g0 = j.mean(axis=0)
            assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-3) + 1e-6 * scale, (
                name
            )
            assert np.min(j @ d) >= np.min(j @ g0) - 1e-3 * scale**2, name


def test_permutation_equivariant_and_scale_invariant():
    rng = np.random.default_rng(0)
    jacs = [rng.normal(size=(5, 4)) for _ in range(6)]
    perms = [rng.permutation(5) for _ in jacs]
    w = weights_of(0.4, jacs)
    wp = weights_of(0.4, [j[p] for j, p in zip(jacs, perms)])
    ws = weights_of(0.4, [1e-8 * j for j in jacs] + [1e8 * j for j in jacs])
    for k, p in enumerate(perms):
        np.testing.assert_allclose(wp[k], w[k][p], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ws[k], w[k], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ws[k + 6], w[k], rtol=1e-3, atol=1e-5)


def test_many_tasks_and_bfloat16():
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(64, 30))
    w = np.asarray(
        weights_fn(cagrad(0.4, rescale=0))(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64
    )
    assert np.all(np.isfinite(w))
    g0 = jac.mean(axis=0)
    d = w @ jac
    assert np.linalg.norm(d - g0) <= 0.4 * np.linalg.norm(g0) * (1 + 1e-3)
    assert np.min(jac @ d) >= np.min(jac @ g0)
    j16 = jnp.asarray(rng.normal(size=(5, 3)), jnp.bfloat16)
    w16 = batched(0.4)((j16 @ j16.T).astype(jnp.float32)[None])
    assert w16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(w16)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="c must be a non-negative float"):
        cagrad(c=-0.1)
    with pytest.raises(ValueError, match="rescale must be 0, 1 or 2"):
        cagrad(rescale=3)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        cagrad(reduction="max")
    method = cagrad()
    with pytest.raises(ValueError, match="cagrad needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(2, 2\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(4))
    assert method.needs == base.Needs.GRAMIAN and method.name == "cagrad"
