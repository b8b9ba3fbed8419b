"""Tests for the dual-cone QP solver (mtopt/_src/nonneg_qp.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

from mtopt._src import nonneg_qp
from tests.gramian_cases import gramian, jacobian_cases

PAD = 8  # every case is padded with zero tasks to this many tasks: one compilation


def scipy_projection(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Reference: min v^T G v s.t. v >= u as the NNLS min ||A (u + x)|| s.t. x >= 0, A^T A = G."""
    trace = np.trace(g)
    if trace <= 0:
        return np.maximum(u, 0.0)
    lam, vec = np.linalg.eigh(g / trace)
    a = np.sqrt(np.maximum(lam, 0.0))[:, None] * vec.T
    x, _ = nnls(a, -a @ u, maxiter=50 * len(u))
    return u + x


def pad(g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = g.shape[0]
    gp = np.zeros((PAD, PAD))
    gp[:t, :t] = g
    up = np.zeros(PAD)
    up[:t] = u
    return gp, up


def solve_all_cases(dtype, tol=1e-6):
    """All gramian_cases, with u = e_i / T for each task and one random u with signs."""
    rng = np.random.default_rng(1)
    gs, us, js = [], [], []
    for _, j in jacobian_cases():
        t = j.shape[0]
        bounds = [np.eye(t)[i] / t for i in range(t)] + [rng.normal(size=t)]
        for u in bounds:
            gp, up = pad(gramian(j), u)
            gs.append(gp)
            us.append(up)
            js.append(j)
    solve = jax.jit(
        jax.vmap(lambda g, u: nonneg_qp.project_to_dual_cone(g, u, tol=tol, max_iter=2000))
    )
    v, info = solve(jnp.asarray(np.stack(gs), dtype), jnp.asarray(np.stack(us), dtype))
    return js, np.stack(gs), np.stack(us), np.asarray(v, np.float64), info


@pytest.fixture(scope="module")
def batch():
    return solve_all_cases(jnp.float32)


@pytest.fixture(scope="module")
def batch64():
    with jax.enable_x64(True):
        return solve_all_cases(jnp.float64, tol=1e-12)


class KnownValuesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mean_of_paper_example(self):
        jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        v, info = self.variant(nonneg_qp.project_to_dual_cone)(jac @ jac.T, jnp.array([0.5, 0.5]))
        # Task 1 conflicts with the mean: v_1 = 11/18 makes d orthogonal to g_1.
        chex.assert_trees_all_close(v, jnp.array([11.0 / 18.0, 0.5]), rtol=1e-5)
        chex.assert_trees_all_close(
            v @ jac, jnp.array([5.0 / 9.0, 10.0 / 9.0, 10.0 / 9.0]), rtol=1e-5
        )
        self.assertLessEqual(float(info.residual), 1e-6)
        self.assertEqual(v.dtype, jnp.float32)

    def test_no_conflict_returns_u(self):
        jac = jnp.array([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]])
        u = jnp.array([0.2, 0.5, 0.3])
        v, _ = nonneg_qp.project_to_dual_cone(jac @ jac.T, u)
        chex.assert_trees_all_close(v, u, rtol=1e-6)

    def test_mixed_scales_give_the_exact_huge_weight(self):
        # Projecting g_big / 2 so that it no longer conflicts with g_small needs
        # v_small = 0.5e6 / 1e-6 = 5e11: the Jacobi rescaling finds it.
        jac = np.array([[1e-6, 0.0], [-1e6, 1e6]])
        v, _ = nonneg_qp.project_to_dual_cone(
            jnp.asarray(jac @ jac.T, jnp.float32), jnp.array([0.0, 0.5])
        )
        np.testing.assert_allclose(np.asarray(v), [5e11, 0.5], rtol=1e-5)

    def test_single_task_and_zero_gramian(self):
        v, _ = nonneg_qp.project_to_dual_cone(jnp.array([[4.0]]), jnp.array([0.7]))
        chex.assert_trees_all_close(v, jnp.array([0.7]))
        v, _ = nonneg_qp.project_to_dual_cone(jnp.zeros((3, 3)), jnp.array([0.5, -1.0, 0.0]))
        # Zero gradients: any v >= u is optimal; the least-norm choice max(u, 0).
        chex.assert_trees_all_close(v, jnp.array([0.5, 0.0, 0.0]))


def check_kkt_and_scipy(batch, atol):
    js, gs, us, vs, _ = batch
    for j, g, u, v in zip(js, gs, us, vs):
        t = j.shape[0]
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v[t:], 0.0)  # the padded zero tasks stay out
        v, u, g = v[:t], u[:t], g[:t, :t]
        norms = np.linalg.norm(j, axis=1)
        scale = max(norms.max(), 1e-300)
        size = max(np.abs(u) @ norms, 1e-300)  # an upper bound on ||J^T u||
        d = v @ j
        v_ref = scipy_projection(g, u)
        d_ref = v_ref @ j
        # The same projection as the NNLS reference, unless the reference is the
        # inaccurate side: a feasible v with a lower objective than the reference's
        # (NNLS stalls on 1e12 norm spreads; both objectives computed in float64).
        objective, objective_ref = float(d @ d), float(d_ref @ d_ref)
        if not (np.all(v >= u) and objective < objective_ref * (1.0 - 1e-12)):
            np.testing.assert_allclose(d / size, d_ref / size, atol=atol)
        # KKT: primal feasibility, dual feasibility (J d >= 0), complementarity.
        assert np.all(v >= u - 1e-6 * np.abs(u))
        conflict = j @ d / max(scale * size, 1e-300)  # <g_i, d>, relative
        assert np.all(conflict >= -atol)
        complementarity = (v - u) * norms / size * conflict
        assert np.max(np.abs(complementarity)) < 10 * atol


def test_kkt_and_scipy_on_all_cases(batch):
    # float32: a rank-deficient Gramian fixes the direction only to about
    # sqrt(eps) (the objective is flat to eps around it).
    check_kkt_and_scipy(batch, atol=1e-3)


def test_kkt_and_scipy_on_all_cases_float64(batch64):
    # The KKT conditions (sufficient for this convex QP) hold to 1e-9; the NNLS
    # reference itself is only accurate to ~1e-5 on the 1e-6 .. 1e6 mixed scales.
    js, gs, us, vs, _ = batch64
    assert vs.dtype == np.float64
    check_kkt_and_scipy(batch64, atol=1e-5)
    for j, g, u, v in zip(js, gs, us, vs):
        t = j.shape[0]
        v, u, g = v[:t], u[:t], g[:t, :t]
        norms = np.linalg.norm(j, axis=1)
        size = max(np.abs(u) @ norms, 1e-300)
        conflict = j @ (v @ j) / max(norms.max() * size, 1e-300)
        assert np.all(v >= u)
        assert np.all(conflict >= -1e-9)
        assert np.max(np.abs((v - u) * norms / size * conflict)) < 1e-9
        ref = scipy_projection(g, u)
        assert (v @ j) @ (v @ j) <= (ref @ j) @ (ref @ j) + 1e-12 * size**2


def test_well_conditioned_cases_converge(batch):
    js, _, _, _, info = batch
    residual = np.asarray(info.residual)
    assert np.all(np.asarray(info.iterations) <= 2000 + 9)
    full_rank = np.array([np.linalg.matrix_rank(j) == j.shape[0] for j in js])
    assert np.max(residual[full_rank]) < 1e-5


class PropertiesTest(chex.TestCase):
    def test_invariant_to_the_gradient_scale(self):
        rng = np.random.default_rng(2)
        jac = rng.normal(size=(5, 4))
        u = jnp.full((5,), 0.2)
        scales = np.array([1e-10, 1e-5, 1.0, 1e5, 1e10])
        gs = jnp.asarray(scales[:, None, None] ** 2 * (jac @ jac.T)[None], jnp.float32)
        v, _ = jax.vmap(nonneg_qp.project_to_dual_cone, in_axes=(0, None))(gs, u)
        for k in range(1, len(scales)):
            chex.assert_trees_all_close(v[k], v[2], rtol=2e-5)

    def test_permutation_equivariant(self):
        rng = np.random.default_rng(3)
        jac = rng.normal(size=(6, 4))
        u = rng.uniform(size=6)
        perm = rng.permutation(6)
        g = jnp.asarray(jac @ jac.T, jnp.float32)
        gp = jnp.asarray(jac[perm] @ jac[perm].T, jnp.float32)
        solve = jax.vmap(nonneg_qp.project_to_dual_cone)
        v, _ = solve(jnp.stack([g, gp]), jnp.asarray(np.stack([u, u[perm]]), jnp.float32))
        chex.assert_trees_all_close(v[1], v[0][perm], rtol=1e-4, atol=1e-6)

    def test_vmap_over_bounds_with_one_gramian(self):
        jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        bounds = jnp.eye(2) / 2
        v, _ = jax.jit(jax.vmap(nonneg_qp.project_to_dual_cone, in_axes=(None, 0)))(
            jac @ jac.T, bounds
        )
        # UPGrad's two projections: g_1 / 2 needs 11/38 of g_2; g_2 / 2 needs 11/18 of g_1.
        chex.assert_trees_all_close(v, jnp.array([[0.5, 11 / 38], [11 / 18, 0.5]]), rtol=1e-5)

    def test_bfloat16_gramian(self):
        # A Gramian accumulated in bfloat16 is not exactly PSD; the solver must not diverge.
        rng = np.random.default_rng(4)
        jac = jnp.asarray(rng.normal(size=(6, 3)), jnp.bfloat16)  # 6 gradients in R^3
        g16 = jac @ jac.T
        v, _ = nonneg_qp.project_to_dual_cone(g16, jnp.full((6,), 1.0 / 6))
        self.assertEqual(v.dtype, jnp.float32)
        self.assertTrue(bool(jnp.all(jnp.isfinite(v))))
        self.assertTrue(bool(jnp.all(v >= 1.0 / 6 - 1e-7)))
        j32 = np.asarray(jac, np.float64)
        d = np.asarray(v, np.float64) @ j32
        # Non-conflicting up to the bfloat16 rounding of the Gramian (8 bits).
        norms = np.linalg.norm(j32, axis=1)
        self.assertGreaterEqual((j32 @ d).min(), -2e-2 * norms.max() * norms.mean())

    def test_many_tasks(self):
        rng = np.random.default_rng(5)
        for t, p in ((64, 100), (64, 10)):
            jac = rng.normal(size=(t, p))
            u = np.full(t, 1.0 / t)
            v, _ = nonneg_qp.project_to_dual_cone(
                jnp.asarray(jac @ jac.T, jnp.float32), jnp.asarray(u, jnp.float32)
            )
            v = np.asarray(v, np.float64)
            self.assertTrue(np.all(np.isfinite(v)))
            size = np.linalg.norm(jac, axis=1).sum() / t
            d, d_ref = v @ jac, scipy_projection(jac @ jac.T, u) @ jac
            np.testing.assert_allclose(d / size, d_ref / size, atol=1e-3)
            self.assertGreaterEqual(
                (jac @ d).min() / (np.linalg.norm(jac, axis=1).max() * size), -1e-3
            )

    def test_scale_gramian(self):
        jac = np.array([[3.0, 0.0], [0.0, 0.0], [-3e-3, 4e-3]])
        scaled = nonneg_qp.scale_gramian(jnp.asarray(jac @ jac.T, jnp.float32))
        np.testing.assert_allclose(np.asarray(scaled.norms), [1.0, 0.0, 5e-3 / 3], rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(scaled.is_zero), [False, True, False])
        np.testing.assert_allclose(float(scaled.scale), 9.0, rtol=1e-6)
        expected = np.array([[1.0, 0.0, -0.6], [0.0, 1.0, 0.0], [-0.6, 0.0, 1.0]])
        np.testing.assert_allclose(np.asarray(scaled.correlation), expected, atol=1e-6)
        self.assertGreaterEqual(float(jnp.linalg.eigvalsh(scaled.correlation)[0]), -1e-6)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match=r"square \(T, T\) matrix.*got shape \(2, 3\)"):
            nonneg_qp.project_to_dual_cone(jnp.ones((2, 3)), jnp.ones(2))
        with pytest.raises(ValueError, match=r"u must have shape \(2,\).*got shape \(3,\)"):
            nonneg_qp.project_to_dual_cone(jnp.eye(2), jnp.ones(3))
        with pytest.raises(ValueError, match="max_iter must be a positive int"):
            nonneg_qp.project_to_dual_cone(jnp.eye(2), jnp.ones(2), max_iter=0)
        with pytest.raises(ValueError, match="tol must be non-negative"):
            nonneg_qp.project_to_dual_cone(jnp.eye(2), jnp.ones(2), tol=-1.0)
