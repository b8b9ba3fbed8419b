"""Tests for CAGrad (mtopt/_src/methods/cagrad.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from mtopt._src import base
from mtopt._src.methods.cagrad import cagrad
from tests.gramian_cases import gramian, jacobian_cases

PAPER_JAC = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
SIZES = tuple(range(1, 9))  # every case of gramian_cases: one compilation per T
# c = 0.4 on every size above; the other radii on a few sizes (compilations are per (c, T),
# about 5 s each): the default run keeps T = 5 at c = 0.4 (T = 1 and 2, and c >= 1, are
# checked in the default run by the tests below and by tests/test_registry.py).
RADII = (
    (0.4, (5,)),
    pytest.param(0.4, (1, 2, 3, 4, 6, 7, 8), marks=pytest.mark.slow),
    pytest.param(0.9, (3,), marks=pytest.mark.slow),
    pytest.param(2.0, (4,), marks=pytest.mark.slow),
    pytest.param(2.0, (8,), marks=pytest.mark.slow),
)
# The solver matches SLSQP to ~5e-6 here; the tolerance leaves room for float32.


def weights_fn(method):
    return lambda g: method.update(
        method.init(g.shape[0]), jnp.ones(g.shape[0], g.dtype), gramian=g
    )[0]


@functools.cache
def batched(c):
    return jax.jit(jax.vmap(weights_fn(cagrad(c, rescale=0))))


def project_to_dual_cone(j: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``argmin ||d - v||`` s.t. ``J d >= 0``: ``d = v + J^T l`` with ``l = NNLS(J^T, -v)``."""
    lam, _ = nnls(j.T, -v)
    return v + j.T @ lam


def scipy_cagrad_direction(j: np.ndarray, c: float) -> np.ndarray:
    """The reference implementation: SLSQP on the simplex (float64, several starts); when
    ``||g_w|| < 1e-4`` (or, for ``c >= 1``, when ``d(w)`` conflicts) the projection of
    ``g_0`` onto the dual cone (scipy NNLS), moved into the ball, unless ``d(w)`` is better."""
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
    g0 = j.mean(axis=0)
    ball = c * np.linalg.norm(g0)
    normal = g0 + ball * (w @ j) / np.linalg.norm(w @ j) if gw_norm > 0 else g0
    if gw_norm >= 1e-4 and not (c >= 1 and np.min(j @ normal) < 0):
        return normal
    p = project_to_dual_cone(j, g0)
    dist = np.linalg.norm(p - g0)
    if dist > ball:
        p = g0 + ball / dist * (p - g0)
    scale = max(np.max(np.linalg.norm(j, axis=1)), 1e-300) ** 2
    return normal if np.min(j @ normal) > np.min(j @ p) + 1e-9 * scale else p


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
    # One batch, one compilation: the jacobians, their permutations, and both scalings.
    batch = weights_of(
        0.4, jacs + [j[p] for j, p in zip(jacs, perms)]
        + [1e-8 * j for j in jacs] + [1e8 * j for j in jacs]
    )
    w, wp, ws = batch[:6], batch[6:12], batch[12:]
    for k, p in enumerate(perms):
        np.testing.assert_allclose(wp[k], w[k][p], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ws[k], w[k], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ws[k + 6], w[k], rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # T = 64 compiles for ~30 s; the shared solvers' bfloat16 cases run by default
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
    with pytest.raises(ValueError, match="cagrad: c must be a non-negative finite float"):
        cagrad(c=-0.1)
    with pytest.raises(ValueError, match="cagrad: rescale must be one of 0, 1, 2, got 3"):
        cagrad(rescale=3)
    with pytest.raises(ValueError, match="cagrad: reduction must be one of 'mean', 'sum'"):
        cagrad(reduction="max")
    method = cagrad()
    with pytest.raises(ValueError, match="cagrad needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(2, 2\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(4))
    assert method.needs == base.Needs.GRAMIAN and method.name == "cagrad"


# ---------------------------------------------------------------- the exact optimum
#
# CAGrad's primal, max_d min_i <g_i, d> s.t. ||d - g0|| <= c ||g0||, solved by SLSQP on
# (d, t) from several starts (test-only reference); its value is checked against the dual
# (SLSQP on the simplex): the two references agree to ~3e-9 of the scale below.
# Solves are eager calls (one compilation of the jitted solver per (T, dtype), whatever c).

RADII_ALL = (0.0, 0.2, 0.5, 0.9, 1.0, 1.5, 5.0)


def primal_reference(j: np.ndarray, c: float) -> float:
    """``max_d min_i <g_i, d>`` on the ball around the mean gradient (SLSQP, float64)."""
    t, p = j.shape
    g0 = j.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    if radius == 0:
        return float(np.min(j @ g0))
    starts = [g0, g0 - radius * g0 / np.linalg.norm(g0)]
    starts += [g0 + radius * gi / np.linalg.norm(gi) for gi in j if np.linalg.norm(gi) > 0]
    if c >= 1:
        starts.append(np.zeros(p))
    cons = (
        {"type": "ineq", "fun": lambda x: j @ x[:-1] - x[-1],
         "jac": lambda x: np.hstack([j, -np.ones((t, 1))])},
        {"type": "ineq", "fun": lambda x: radius**2 - (x[:-1] - g0) @ (x[:-1] - g0),
         "jac": lambda x: np.append(-2 * (x[:-1] - g0), 0.0)},
    )
    best = -np.inf
    for d0 in starts:
        res = minimize(lambda x: -x[-1], np.append(d0, np.min(j @ d0)),
                       jac=lambda x: np.append(np.zeros(p), -1.0), constraints=cons,
                       method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        d = res.x[:-1]
        dist = np.linalg.norm(d - g0)
        if dist > radius:
            d = g0 + (d - g0) * (radius / dist)  # exactly feasible
        best = max(best, float(np.min(j @ d)))
    return best


def dual_reference(j: np.ndarray, c: float) -> float:
    """``min_w w^T G b + c ||g0|| ||g_w||`` on the simplex (SLSQP, several starts)."""
    g = j @ j.T
    t = g.shape[0]
    b = np.full(t, 1.0 / t)
    radius = c * np.sqrt(max(b @ g @ b, 0.0))

    def f(w):
        return w @ g @ b + radius * np.sqrt(max(w @ g @ w, 0.0))

    best = np.inf
    for start in [b] + list(np.eye(t)):
        res = minimize(f, start, bounds=[(0, 1)] * t,
                       constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
                       method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        w = np.clip(res.x, 0, None)
        best = min(best, f(w / w.sum()))
    return best


ISSUE_JAC = np.array([[1.0], [-2.0]])


def degenerate_and_random_cases():
    """Zero, rank-deficient, opposite, duplicated and collinear rows, 0 inside the hull, the
    issue's example, and random ones (P < T often puts 0 in the hull), T in {2, 3, 5}."""
    cases = [(n, j) for n, j in jacobian_cases(seed=2, num_random=16) if j.shape[0] in (2, 3, 5)]
    cases.append(("issue_example", ISSUE_JAC))
    cases.append(("zero_in_hull", np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])))
    cases.append(("opposite_pair", np.array([[2.0, 1.0, 0.0], [-2.0, -1.0, 0.0]])))
    rng = np.random.default_rng(12)
    cases += [(f"random_T5_P{p}", rng.normal(size=(5, p))) for p in (2, 3, 8)]
    return cases


def cagrad_direction(j, c, dtype, rescale=0):
    method = cagrad(c, rescale=rescale)
    t = j.shape[0]
    w, state = method.update(method.init(t), jnp.ones(t, dtype),
                             gramian=jnp.asarray(gramian(j), dtype))
    assert w.dtype == dtype
    return np.asarray(w, np.float64) @ j, state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_issue_example_does_not_conflict(dtype):
    """J = [[1], [-2]], c = 2: 0 is in the hull, the only non-conflicting direction in the
    ball is d = 0, which is the optimum (the old code returned the mean, J d = [-0.1, 0.2])."""
    atol = 1e-9 if dtype == "float64" else 5e-6  # |J| |w| ~ 4: float32 rounding of w
    with jax.enable_x64(dtype == "float64"):
        for rescale in (0, 1, 2):
            d, state = cagrad_direction(ISSUE_JAC, 2.0, dtype, rescale)
            np.testing.assert_allclose(ISSUE_JAC @ d, [0.0, 0.0], atol=atol)
            assert bool(state.solver.converged)
        method = cagrad(2.0, reduction="sum")
        w, _ = method.update(method.init(2), jnp.ones(2, dtype),
                             gramian=jnp.asarray(gramian(ISSUE_JAC), dtype))
        np.testing.assert_allclose(ISSUE_JAC @ (np.asarray(w, np.float64) @ ISSUE_JAC), 0.0,
                                   atol=2 * atol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_conflicting_for_c_at_least_one(dtype):
    """For c >= 1, d = 0 is feasible, so the optimum never conflicts: J d >= 0 (to rounding)
    on degenerate and random Gramians, and d stays in the ball."""
    tol = 1e-9 if dtype == "float64" else 5e-5
    with jax.enable_x64(dtype == "float64"):
        for c in (1.0, 1.5, 5.0):
            for name, j in degenerate_and_random_cases():
                d, _ = cagrad_direction(j, c, dtype)
                s2 = max(np.max(np.sum(j * j, axis=1)), 1e-300)
                assert np.all(np.isfinite(d)), (c, name)
                assert np.min(j @ d) >= -tol * s2, (c, name, j @ d / s2)
                g0 = j.mean(axis=0)
                assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 10 * tol) + \
                    tol * np.sqrt(s2), (c, name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_primal_optimum_matches_reference(dtype):
    """For every c, mtopt's d is feasible and its value min_i <g_i, d> is the optimum of
    CAGrad's primal (SLSQP reference) to 1e-7 (float64) / 5e-5 (float32) of the scale
    (1 + c) ||g0|| max ||g_i|| (measured: 1e-8, about the references' own agreement, and
    1.1e-5); the certificate bounds the true suboptimality."""
    tol = 1e-7 if dtype == "float64" else 5e-5
    cases = [(n, j) for n, j in degenerate_and_random_cases()
             if n.startswith(("issue", "zero_in", "opposite", "random_T5", "collinear_T3",
                              "rank2_T5", "duplicate_T3", "all_zero_T3", "random1_",
                              "random3_", "paper"))]
    assert len(cases) >= 12
    with jax.enable_x64(dtype == "float64"):
        for c in RADII_ALL:
            for name, j in cases:
                d, state = cagrad_direction(j, c, dtype)
                g0 = j.mean(axis=0)
                scale = (1 + c) * np.linalg.norm(g0) * np.max(np.linalg.norm(j, axis=1))
                if scale == 0:
                    np.testing.assert_allclose(d, 0.0, atol=1e-12)
                    continue
                assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + tol) + tol * scale
                value = np.min(j @ d)
                best = primal_reference(j, c)
                assert abs(value - best) <= tol * scale, (c, name, (value - best) / scale)
                if dtype == "float64" and c > 0:
                    assert value <= dual_reference(j, c) + 1e-8 * scale  # weak duality
                    # The reported certificate bounds the true suboptimality.
                    slack = float(state.solver.residual) + 1e-7
                    assert best - value <= slack * scale, (c, name, state.solver)


def test_solver_state():
    """The state knows T (checked at every step) and carries the certificate."""
    method = cagrad(0.5)
    state = method.init(3)
    assert isinstance(state, base.SolverState) and state.num_tasks == 3
    j = np.random.default_rng(3).normal(size=(3, 4))
    g = jnp.asarray(gramian(j), jnp.float32)
    w, new_state = jax.jit(method.update)(state, jnp.ones(3), gramian=g)
    assert isinstance(new_state, base.SolverState) and new_state.num_tasks == 3
    assert new_state.solver.residual.dtype == jnp.float32 and bool(new_state.solver.converged)
    assert int(new_state.solver.iterations) > 0
    with pytest.raises(ValueError, match="cagrad: the state was initialised for 3 tasks"):
        method.update(method.init(3), jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match="cagrad: state is None"):
        method.update(None, jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(TypeError, match="expected the SolverState"):
        method.update(base.EmptyState(2), jnp.ones(2), gramian=jnp.eye(2))
    for bad in ({"max_iter": True}, {"tol": -1.0}, {"norm_eps": -1.0}, {"c": float("nan")}):
        with pytest.raises(ValueError, match="cagrad: "):
            cagrad(**bad)
