"""Tests for mtopt.problems: values, gradients, true fronts, jit / vmap."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mtopt import pareto, problems

ALL = {
    "zdt1": problems.zdt1,
    "zdt2": problems.zdt2,
    "zdt3": problems.zdt3,
    "dtlz1": problems.dtlz1,
    "dtlz2": problems.dtlz2,
    "vlmop2": problems.vlmop2,
    "toy": problems.toy,
    "regression": problems.regression,
}


def np_non_dominated(points: np.ndarray) -> np.ndarray:
    le = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    lt = np.any(points[:, None, :] < points[None, :, :], axis=2)
    return ~np.any(le & lt, axis=0)


def interior_points(problem: problems.Problem, n: int, seed: int) -> np.ndarray:
    lower, upper = (np.asarray(b, np.float64) for b in problem.bounds)
    u = np.random.default_rng(seed).uniform(0.1, 0.9, size=(n, problem.n_var))
    return lower + u * (upper - lower)


class ProblemContractTest(chex.TestCase):
    @parameterized.parameters(*ALL)
    def test_contract_front_and_reference_point(self, name):
        problem = ALL[name]()
        self.assertEqual(problem.name, name)
        lower, upper = problem.bounds
        chex.assert_shape([lower, upper], (problem.n_var,))
        self.assertTrue(bool(jnp.all(lower < upper)))
        chex.assert_shape(problem.ref_point, (problem.n_obj,))
        front = np.asarray(problem.pareto_front(60))
        self.assertEqual(front.shape[1], problem.n_obj)
        self.assertLessEqual(len(front), 60)
        self.assertTrue(np.all(np.isfinite(front)))
        if name not in ("dtlz1", "dtlz2"):
            self.assertEqual(len(front), 60)
        # The true front is non-dominated, inside the reference box, with positive HV.
        self.assertTrue(np.all(np_non_dominated(front)))
        self.assertTrue(bool(jnp.all(pareto.non_dominated_mask(front))))
        self.assertTrue(np.all(front < np.asarray(problem.ref_point)))
        self.assertGreater(float(pareto.hypervolume(front, problem.ref_point)), 0.0)
        if problem.n_obj == 2:
            self.assertTrue(np.all(np.diff(front[:, 0]) > 0))

    @parameterized.parameters(*ALL)
    def test_jit_vmap_and_gradients(self, name):
        problem = ALL[name]()
        x = jnp.asarray(interior_points(problem, 4, seed=0), jnp.float32)
        batched = jax.vmap(problem)(x)
        chex.assert_shape(batched, (4, problem.n_obj))
        np.testing.assert_allclose(problem.f(x[2]), batched[2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(jax.jit(jax.vmap(problem.f))(x), batched, rtol=1e-5, atol=1e-6)
        self.assertEqual(problem.f(x[0].astype(jnp.bfloat16)).dtype, jnp.float32)
        # Jacobians: finite in float32, equal to central differences in float64.
        jac = jax.jit(jax.vmap(jax.jacrev(problem.f)))(x)
        chex.assert_shape(jac, (4, problem.n_obj, problem.n_var))
        self.assertTrue(bool(jnp.all(jnp.isfinite(jac))))
        with jax.enable_x64(True):
            x64 = jnp.asarray(interior_points(problem, 2, seed=1), jnp.float64)
            f64 = jax.jit(jax.vmap(problem.f))
            self.assertEqual(f64(x64).dtype, jnp.float64)
            jac64 = np.asarray(jax.jit(jax.vmap(jax.jacfwd(problem.f)))(x64))
            eps = 1e-6
            for k in range(problem.n_var):
                e = jnp.zeros(problem.n_var, jnp.float64).at[k].set(eps)
                numeric = (f64(x64 + e[None, :]) - f64(x64 - e[None, :])) / (2 * eps)
                np.testing.assert_allclose(jac64[:, :, k], numeric, rtol=1e-5, atol=1e-5)

    @parameterized.parameters(*ALL)
    def test_bad_inputs(self, name):
        problem = ALL[name]()
        with pytest.raises(ValueError, match=rf"shape \({problem.n_var},\)"):
            problem.f(jnp.zeros((2, problem.n_var)))
        with pytest.raises(TypeError, match="floating"):
            problem.f(jnp.zeros(problem.n_var, jnp.int32))
        with pytest.raises(ValueError, match="n_points"):
            problem.pareto_front(0)


class ZDTTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_values_on_and_off_the_pareto_set(self):
        x = jnp.zeros(30).at[0].set(0.25)
        np.testing.assert_allclose(self.variant(problems.zdt1().f)(x), [0.25, 0.5], rtol=1e-6)
        np.testing.assert_allclose(self.variant(problems.zdt2().f)(x), [0.25, 0.9375], rtol=1e-6)
        expected3 = 1 - 0.5 - 0.25 * math.sin(2.5 * math.pi)
        np.testing.assert_allclose(self.variant(problems.zdt3().f)(x), [0.25, expected3], rtol=1e-6)
        # Off the Pareto set: g = 1 + 9 mean(x_2..n) = 5.5 for x_i = 0.5.
        x = jnp.full(30, 0.5).at[0].set(0.2)
        g = 5.5
        np.testing.assert_allclose(
            self.variant(problems.zdt1().f)(x), [0.2, g * (1 - math.sqrt(0.2 / g))], rtol=1e-6
        )
        np.testing.assert_allclose(
            self.variant(problems.zdt2().f)(x), [0.2, g * (1 - (0.2 / g) ** 2)], rtol=1e-6
        )

    def test_pareto_set_maps_onto_front(self):
        for factory in (problems.zdt1, problems.zdt2, problems.zdt3):
            problem = factory(n_var=5)
            front = problem.pareto_front(40)
            x = jnp.zeros((40, 5)).at[:, 0].set(front[:, 0])
            np.testing.assert_allclose(jax.vmap(problem.f)(x), front, rtol=1e-5, atol=1e-6)

    def test_zdt1_front_hypervolume_pymoo(self):
        front = problems.zdt1().pareto_front(100)
        np.testing.assert_allclose(pareto.hypervolume(front, jnp.ones(2)), 0.661409, atol=2e-6)

    def test_zdt3_front_is_the_non_dominated_part_of_the_curve(self):
        # Dense samples of the g = 1 curve: the front returned must be non-dominated
        # against all of them, and cover all five pieces.
        f1 = np.linspace(0.0, 1.0, 200_001)
        curve = np.stack([f1, 1 - np.sqrt(f1) - f1 * np.sin(10 * np.pi * f1)], 1)
        front = np.asarray(problems.zdt3().pareto_front(200), np.float64)
        running_min = np.minimum.accumulate(curve[:, 1])
        index = np.searchsorted(f1, front[:, 0], side="left")
        # Points of the curve strictly left of each front point are not below it.
        previous_best = np.where(index > 0, running_min[np.maximum(index - 1, 0)], np.inf)
        self.assertTrue(np.all(front[:, 1] <= previous_best + 1e-6))
        gaps = np.diff(front[:, 0])
        self.assertEqual(int(np.sum(gaps > 0.05)), 4)
        # Same front as pymoo's region table (to 1e-6).
        pymoo_right_ends = [0.0830015349, 0.2577623634, 0.4538821041, 0.6525117038, 0.8518328654]
        pieces = np.split(front[:, 0], np.flatnonzero(gaps > 0.05) + 1)
        np.testing.assert_allclose([p[-1] for p in pieces], pymoo_right_ends, atol=1e-6)

    def test_zdt1_gradient(self):
        problem = problems.zdt1(n_var=3)
        jac = jax.jacrev(problem.f)(jnp.array([0.25, 0.5, 0.0]))
        # g = 1 + 4.5 (x2 + x3) = 3.25 and f2 = g - sqrt(x1 g).
        g = 3.25
        d_x1 = -0.5 * math.sqrt(g / 0.25)
        d_g = 4.5 * (1 - 0.5 * math.sqrt(0.25 / g))
        np.testing.assert_allclose(jac, [[1.0, 0.0, 0.0], [d_x1, d_g, d_g]], rtol=1e-5)
        # At x1 = 0 only df2/dx1 is infinite (no NaN).
        jac0 = jax.jacrev(problem.f)(jnp.array([0.0, 0.5, 0.5]))
        self.assertEqual(float(jac0[1, 0]), -math.inf)
        self.assertTrue(bool(jnp.all(jnp.isfinite(jac0[:, 1:]))))


class DTLZTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_values(self):
        x = jnp.full(7, 0.5)
        np.testing.assert_allclose(self.variant(problems.dtlz1().f)(x), [0.125, 0.125, 0.25])
        # Off the Pareto set: distance variables 0, g = 100 (5 + 5 / 4 - 5 cos(10 pi)).
        x = jnp.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
        g = 100 * (5 + 5 * 0.25 - 5)
        np.testing.assert_allclose(
            self.variant(problems.dtlz1().f)(x), np.array([0.125, 0.125, 0.25]) * (1 + g), rtol=1e-5
        )
        x = jnp.full(12, 0.5)
        np.testing.assert_allclose(
            self.variant(problems.dtlz2().f)(x), [0.5, 0.5, math.sqrt(0.5)], rtol=1e-6
        )
        x = jnp.zeros(12)
        np.testing.assert_allclose(self.variant(problems.dtlz2().f)(x), [3.5, 0.0, 0.0], atol=1e-6)

    def test_pareto_set_lies_on_front_surface(self):
        rng = np.random.default_rng(0)
        for n_obj in (2, 3, 4):
            position = rng.uniform(0, 1, size=(50, n_obj - 1))
            p1, p2 = problems.dtlz1(n_obj), problems.dtlz2(n_obj)
            x1 = np.concatenate([position, np.full((50, p1.n_var - n_obj + 1), 0.5)], 1)
            x2 = np.concatenate([position, np.full((50, p2.n_var - n_obj + 1), 0.5)], 1)
            f1 = jax.jit(jax.vmap(p1.f))(jnp.asarray(x1, jnp.float32))
            f2 = jax.jit(jax.vmap(p2.f))(jnp.asarray(x2, jnp.float32))
            np.testing.assert_allclose(jnp.sum(f1, axis=1), 0.5, rtol=1e-5)
            np.testing.assert_allclose(jnp.linalg.norm(f2, axis=1), 1.0, rtol=1e-5)
            self.assertTrue(bool(jnp.all(f1 >= 0)) and bool(jnp.all(f2 >= -1e-7)))

    def test_fronts(self):
        front1 = problems.dtlz1().pareto_front(100)
        front2 = problems.dtlz2().pareto_front(100)
        chex.assert_shape([front1, front2], (91, 3))
        np.testing.assert_allclose(front1, 0.5 * pareto.das_dennis(12, 3), rtol=1e-6)
        np.testing.assert_allclose(jnp.linalg.norm(front2, axis=1), 1.0, rtol=1e-6)
        self.assertEqual(problems.dtlz2(n_obj=2).pareto_front(17).shape, (17, 2))
        # Hypervolume below the continuous front's 1.2^3 - 0.5^3 / 3!, and close to it.
        value = float(pareto.hypervolume(front1, problems.dtlz1().ref_point))
        exact = 1.2**3 - 0.5**3 / 6
        self.assertLess(value, exact)
        self.assertGreater(value, exact - 0.01)
        with pytest.raises(ValueError, match="n_points"):
            problems.dtlz2().pareto_front(2)
        with pytest.raises(ValueError, match="n_var"):
            problems.dtlz2(n_obj=3, n_var=2)


class VLMOP2Test(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_values_and_front(self):
        problem = problems.vlmop2(n_var=4)
        f = self.variant(problem.f)
        np.testing.assert_allclose(f(jnp.full(4, 0.5)), [0.0, 1 - math.exp(-4)], atol=1e-6)
        np.testing.assert_allclose(f(jnp.zeros(4)), [1 - math.exp(-1)] * 2, rtol=1e-6)
        t = np.linspace(1, -1, 9)
        x = jnp.asarray(t[:, None] * np.full((1, 4), 0.5), jnp.float32)
        np.testing.assert_allclose(jax.vmap(problem.f)(x), problem.pareto_front(9), atol=1e-6)


class ToyTest(chex.TestCase):
    # Verified values from the reference notes (scale = 1): x, f, grad f1, grad f2.
    TABLE = (
        ((-8.5, 7.5), (6.552363, 7.900798), (-0.285399, 0.007249), (-0.073992, 0.008739)),
        ((9.0, 9.0), (7.943949, 6.691495), (0.071411, 0.001961), (0.249938, 0.001652)),
        ((-7.5, -0.5), (0.388808, -4.754484), (-0.710264, -0.709399), (-0.024492, 9.160757)),
        ((9.0, -1.0), (-8.831059, 2.814293), (0.184847, 7.579204), (1.478775, -2.330037)),
        ((0.0, 0.0), (0.0, 0.0), (0.0, 10.856381), (0.0, 10.856381)),
    )

    @chex.variants(with_jit=True, without_jit=True)
    def test_reference_values_and_torch_gradients(self):
        problem = problems.toy(scale=1.0)
        value_and_jac = self.variant(lambda x: (problem.f(x), jax.jacrev(problem.f)(x)))
        for x, f, g1, g2 in self.TABLE:
            value, jac = value_and_jac(jnp.asarray(x))
            np.testing.assert_allclose(value, f, atol=2e-6, err_msg=str(x))
            np.testing.assert_allclose(jac, [g1, g2], atol=2e-6, err_msg=str(x))

    def test_jnp_clip_would_halve_the_tie_gradient(self):
        # The pitfall the implementation avoids: at x = (0, 0) jnp.maximum splits the
        # gradient of max(tanh(x2/2), 0) and gives 5.428191.
        def f2_with_maximum(x):
            c1 = jnp.maximum(jnp.tanh(0.5 * x[1]), 0.0)
            c2 = jnp.maximum(jnp.tanh(-0.5 * x[1]), 0.0)
            h2 = jnp.log(jnp.abs(0.5 * (-x[0] + 3.0) + jnp.tanh(-x[1]) + 2.0)) + 6.0
            q2 = ((-x[0] - 7.0) ** 2 + 0.1 * (-x[1] - 8.0) ** 2) / 10.0 - 20.0
            return h2 * c1 + q2 * c2

        np.testing.assert_allclose(jax.grad(f2_with_maximum)(jnp.zeros(2))[1], 5.428191, atol=1e-5)
        ours = jax.jacrev(problems.toy(scale=1.0).f)(jnp.zeros(2))
        np.testing.assert_allclose(ours[1, 1], 2 * 5.428191, atol=2e-5)

    def test_scale_start_points_and_front(self):
        default, unscaled = problems.toy(), problems.toy(scale=1.0)
        x = jnp.array([-7.5, -0.5])
        np.testing.assert_allclose(
            default.f(x), unscaled.f(x) * jnp.array([0.1, 1.0]), rtol=1e-6
        )
        np.testing.assert_allclose(
            default.start_points,
            [[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]],
        )
        front = unscaled.pareto_front(101)
        # Ends of the plotted segment: f(+-7, -8.3552) = (-0.39855, -19.98933) mirrored.
        np.testing.assert_allclose(front[0], [-19.98933, -0.39855], atol=2e-4)
        np.testing.assert_allclose(front[-1], [-0.39855, -19.98933], atol=2e-4)
        # The segment is within 0.01 of the true per-task minima -19.98943.
        self.assertLess(float(front[0, 0]) - (-19.98943), 0.01)
        self.assertTrue(bool(jnp.all(default.pareto_front(50) < default.ref_point[None, :])))
        with pytest.raises(ValueError, match="scale must be positive"):
            problems.toy(scale=0.0)


class RegressionTest(chex.TestCase):
    def test_data_matches_numpy_seed_0(self):
        np.random.seed(0)
        x_ref = np.random.rand(40, 5).astype(np.float32)
        y_ref = np.random.rand(40, 2).astype(np.float32)
        x, y = problems.regression_data(2)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)

    @chex.variants(with_jit=True, without_jit=True)
    def test_values_are_least_squares_residuals(self):
        x_data, y_data = (a.astype(np.float64) for a in problems.regression_data(2))
        for n_var in (5, 10):
            problem = problems.regression(n_var=n_var)
            w = np.random.default_rng(n_var).uniform(-1, 1, size=n_var)
            z = x_data @ w.reshape(5, n_var // 5)
            coef = np.linalg.lstsq(z, y_data, rcond=None)[0]
            expected = np.sum((y_data - z @ coef) ** 2, axis=0)
            value = self.variant(problem.f)(jnp.asarray(w, jnp.float32))
            np.testing.assert_allclose(value, expected, rtol=1e-4)
            # Scale invariance.
            np.testing.assert_allclose(
                self.variant(problem.f)(jnp.asarray(-3.0 * w, jnp.float32)), expected, rtol=1e-4
            )

    def test_front_is_the_true_front(self):
        problem = problems.regression()
        front = np.asarray(problem.pareto_front(200), np.float64)
        x_data, y_data = (a.astype(np.float64) for a in problems.regression_data(2))
        coef = np.linalg.lstsq(x_data, y_data, rcond=None)[0]
        best = np.sum((y_data - x_data @ coef) ** 2, axis=0)
        # Ends: each task's own least-squares optimum (3.080088, 4.667414).
        np.testing.assert_allclose(front[0, 0], best[0], rtol=1e-5)
        np.testing.assert_allclose(front[-1, 1], best[1], rtol=1e-5)
        np.testing.assert_allclose(best, [3.080088, 4.667414], atol=1e-5)
        # No random direction dominates a front point.
        w = np.random.default_rng(0).normal(size=(20_000, 5))
        sampled = np.asarray(jax.jit(jax.vmap(problem.f))(jnp.asarray(w, jnp.float32)))
        dominated = np.all(sampled[:, None, :] < front[None, :, :] - 1e-4, axis=2)
        self.assertFalse(dominated.any())
        # Random directions approach the front's hypervolume from below.
        np.testing.assert_array_equal(problem.ref_point, [8.0, 8.0])
        hv_front = float(pareto.hypervolume(front, problem.ref_point))
        hv_samples = float(pareto.hypervolume(sampled, problem.ref_point))
        self.assertLess(hv_samples, hv_front + 1e-4)
        self.assertGreater(hv_samples, hv_front - 0.1)

    def test_sizes(self):
        self.assertEqual(problems.regression(n_var=10).pareto_front(3).shape, (3, 2))
        self.assertEqual(problems.regression(n_obj=3).f(jnp.ones(5)).shape, (3,))
        with pytest.raises(NotImplementedError, match="n_obj = 3"):
            problems.regression(n_obj=3).pareto_front(10)
        with pytest.raises(ValueError, match="multiple of 5"):
            problems.regression(n_var=7)
