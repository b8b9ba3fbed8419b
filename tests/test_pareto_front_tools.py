"""Tests for mtopt.pareto: dominance, hypervolume, indicators, preference sets."""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mtopt import pareto

# ----------------------------------------------------------------------------------------
# NumPy references (test-only)
# ----------------------------------------------------------------------------------------


def np_dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def np_non_dominated(points: np.ndarray) -> np.ndarray:
    n = len(points)
    return np.array(
        [not any(np_dominates(points[j], points[i]) for j in range(n)) for i in range(n)]
    )


def np_ranks(points: np.ndarray) -> np.ndarray:
    rank = np.full(len(points), -1)
    remaining = np.arange(len(points))
    k = 0
    while remaining.size:
        nd = np_non_dominated(points[remaining])
        rank[remaining[nd]] = k
        remaining = remaining[~nd]
        k += 1
    return rank


def np_hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by coordinate compression: sum the volumes of dominated cells."""
    points = np.asarray(points, np.float64)
    ref = np.asarray(ref, np.float64)
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    axes = [np.unique(np.append(points[:, k], ref[k])) for k in range(points.shape[1])]
    lows = np.stack(np.meshgrid(*[a[:-1] for a in axes], indexing="ij"), -1).reshape(
        -1, points.shape[1]
    )
    sizes = np.stack(np.meshgrid(*[np.diff(a) for a in axes], indexing="ij"), -1).reshape(
        -1, points.shape[1]
    )
    total = 0.0
    for start in range(0, len(lows), 20_000):
        low = lows[start : start + 20_000]
        covered = np.any(np.all(points[None, :, :] <= low[:, None, :], axis=2), axis=1)
        total += float(np.sum(np.prod(sizes[start : start + 20_000], axis=1) * covered))
    return total


def zdt1_front(n: int) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    return np.stack([x, 1.0 - np.sqrt(x)], axis=1)


def random_front(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Points on the positive unit sphere: mutually non-dominated, no ties."""
    v = np.abs(rng.normal(size=(n, m))) + 0.05
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Dominance
# ----------------------------------------------------------------------------------------


class DominanceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dominates_cases(self):
        dominates = self.variant(pareto.dominates)
        a = jnp.array([0.0, 1.0])
        self.assertTrue(bool(dominates(a, jnp.array([0.0, 2.0]))))
        self.assertTrue(bool(dominates(a, jnp.array([1.0, 2.0]))))
        self.assertFalse(bool(dominates(a, a)))
        self.assertFalse(bool(dominates(a, jnp.array([1.0, 0.0]))))
        self.assertFalse(bool(dominates(jnp.array([0.0, 2.0]), a)))

    def test_dominates_vmap(self):
        a = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        b = jnp.array([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
        out = jax.vmap(pareto.dominates)(a, b)
        np.testing.assert_array_equal(out, [True, False, False])

    def test_dominates_shape_error(self):
        with pytest.raises(ValueError, match="same shape"):
            pareto.dominates(jnp.zeros(2), jnp.zeros(3))

    @parameterized.parameters((2, 40), (3, 60), (4, 30), (2, 300))
    def test_mask_and_rank_match_brute_force(self, n_obj, n):
        # Small integer grid: many ties and exact duplicates. n = 300 crosses the
        # 256-row block of the comparison.
        rng = np.random.default_rng(n_obj * 1000 + n)
        points = rng.integers(0, 5, size=(n, n_obj)).astype(np.float32)
        points[-1] = points[0]
        mask = jax.jit(pareto.non_dominated_mask)(points)
        np.testing.assert_array_equal(np.asarray(mask), np_non_dominated(points))
        rank = jax.jit(pareto.non_dominated_rank)(points)
        self.assertEqual(rank.dtype, jnp.int32)
        np.testing.assert_array_equal(np.asarray(rank), np_ranks(points))

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_duplicates_kept_and_examples(self):
        f = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        np.testing.assert_array_equal(
            self.variant(pareto.non_dominated_mask)(f), [True, True, False, True]
        )
        f = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
        np.testing.assert_array_equal(self.variant(pareto.non_dominated_rank)(f), [0, 0, 1, 2])

    def test_mask_and_rank_vmap(self):
        rng = np.random.default_rng(1)
        batch = rng.integers(0, 4, size=(5, 20, 3)).astype(np.float32)
        masks = jax.vmap(pareto.non_dominated_mask)(batch)
        ranks = jax.vmap(pareto.non_dominated_rank)(batch)
        for b in range(5):
            np.testing.assert_array_equal(masks[b], np_non_dominated(batch[b]))
            np.testing.assert_array_equal(ranks[b], np_ranks(batch[b]))

    def test_front_of_a_front_is_everything(self):
        points = random_front(np.random.default_rng(2), 50, 3)
        self.assertTrue(bool(jnp.all(pareto.non_dominated_mask(points))))
        self.assertTrue(bool(jnp.all(pareto.non_dominated_rank(points) == 0)))

    def test_empty_and_bad_inputs(self):
        self.assertEqual(pareto.non_dominated_mask(jnp.zeros((0, 2))).shape, (0,))
        self.assertEqual(pareto.non_dominated_rank(jnp.zeros((0, 2))).shape, (0,))
        with pytest.raises(ValueError, match=r"shape \(n_points, n_obj\)"):
            pareto.non_dominated_mask(jnp.zeros(3))
        with pytest.raises(TypeError, match="floating"):
            pareto.non_dominated_rank(jnp.zeros((3, 2), jnp.int32))


# ----------------------------------------------------------------------------------------
# Hypervolume
# ----------------------------------------------------------------------------------------


class HypervolumeTest(chex.TestCase):
    @parameterized.parameters(1, 2, 3, 4, 5)
    def test_single_point(self, n_obj):
        rng = np.random.default_rng(n_obj)
        p = rng.uniform(0, 1, size=(1, n_obj)).astype(np.float32)
        ref = np.full(n_obj, 1.5, np.float32)
        expected = np.prod(ref - p)
        for method in ("auto", "sweep", "inclusion_exclusion"):
            np.testing.assert_allclose(
                pareto.hypervolume(p, ref, method=method), expected, rtol=1e-6
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_linear_front_closed_form(self):
        # n points evenly spaced on x + y = 1, ref (1, 1): a staircase of area (k-1)/(2k).
        for n in (2, 11, 101):
            k = n - 1
            t = np.linspace(0, 1, n)
            f = np.stack([t, 1 - t], 1).astype(np.float32)
            value = self.variant(pareto.hypervolume)(f, jnp.ones(2))
            np.testing.assert_allclose(value, (k - 1) / (2 * k), rtol=1e-5, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_zdt1_front_pymoo_values(self):
        hv = self.variant(pareto.hypervolume)
        f100 = jnp.asarray(zdt1_front(100), jnp.float32)
        np.testing.assert_allclose(hv(f100, jnp.ones(2)), 0.661409, atol=2e-6)
        np.testing.assert_allclose(hv(f100, jnp.full(2, 1.1)), 0.871409, atol=2e-6)
        f10k = jnp.asarray(zdt1_front(10_000), jnp.float32)
        np.testing.assert_allclose(hv(f10k, jnp.ones(2)), 0.666616, atol=5e-6)
        np.testing.assert_allclose(hv(f10k, jnp.ones(2)), 2 / 3, atol=1e-4)

    def test_pymoo_outside_box_semantics(self):
        f = jnp.array([[0.5, 0.5], [2.0, 0.0]])
        self.assertAlmostEqual(float(pareto.hypervolume(f, jnp.ones(2))), 0.25, places=7)
        # On the box boundary: no volume either.
        f = jnp.array([[0.5, 0.5], [0.0, 1.0], [1.0, 0.2]])
        self.assertAlmostEqual(float(pareto.hypervolume(f, jnp.ones(2))), 0.25, places=7)
        # Everything outside, or NaN: zero.
        f = jnp.array([[2.0, 0.0], [jnp.nan, 0.1]])
        self.assertEqual(float(pareto.hypervolume(f, jnp.ones(2))), 0.0)
        f = jnp.array([[0.5, 0.5], [jnp.nan, 0.1]])
        self.assertAlmostEqual(float(pareto.hypervolume(f, jnp.ones(2))), 0.25, places=7)

    @parameterized.parameters(
        (2, "sweep"), (3, "sweep"), (3, "inclusion_exclusion"), (4, "sweep"), (4, "auto")
    )
    def test_order_and_dominated_points_invariance(self, n_obj, method):
        rng = np.random.default_rng(10 + n_obj)
        front = random_front(rng, 8, n_obj).astype(np.float32)
        ref = np.full(n_obj, 1.1, np.float32)
        base_value = pareto.hypervolume(front, ref, method=method)
        permuted = front[rng.permutation(len(front))]
        np.testing.assert_allclose(
            pareto.hypervolume(permuted, ref, method=method), base_value, rtol=1e-5
        )
        dominated = front[:4] + rng.uniform(0.0, 0.05, size=(4, n_obj)).astype(np.float32)
        outside = np.full((2, n_obj), 0.2, np.float32)
        outside[:, 0] = 2.0
        extended = np.concatenate([dominated, front, front[:3], outside])[::-1]
        np.testing.assert_allclose(
            pareto.hypervolume(extended, ref, method=method), base_value, rtol=1e-5
        )

    @parameterized.parameters((3, 6), (3, 10), (4, 7), (5, 6))
    def test_methods_agree_with_numpy_reference(self, n_obj, n):
        rng = np.random.default_rng(100 * n_obj + n)
        points = rng.uniform(0, 1, size=(n, n_obj)).astype(np.float32)
        ref = np.full(n_obj, 1.0, np.float32)
        expected = np_hypervolume(points, ref)
        for method in ("sweep", "inclusion_exclusion", "auto"):
            np.testing.assert_allclose(
                pareto.hypervolume(points, ref, method=method), expected, rtol=2e-5,
                err_msg=method,
            )

    def test_2d_front_embedded_in_3d_and_4d(self):
        front = zdt1_front(30).astype(np.float32)
        hv2 = float(pareto.hypervolume(front, jnp.full(2, 1.2)))
        np.testing.assert_allclose(hv2, np_hypervolume(front, np.full(2, 1.2)), rtol=1e-5)
        f3 = np.concatenate([front, np.full((30, 1), 0.25, np.float32)], axis=1)
        np.testing.assert_allclose(
            pareto.hypervolume(f3, jnp.full(3, 1.2)), hv2 * 0.95, rtol=1e-5
        )
        f4 = np.concatenate([f3, np.full((30, 1), 0.5, np.float32)], axis=1)
        np.testing.assert_allclose(
            pareto.hypervolume(f4, jnp.full(4, 1.2), method="sweep"), hv2 * 0.95 * 0.7,
            rtol=1e-5,
        )
        # A 1-D "front" is a segment.
        np.testing.assert_allclose(pareto.hypervolume(front[:, :1], jnp.ones(1)), 1.0)

    def test_dtlz2_sphere_converges_to_closed_form(self):
        # Das-Dennis points on the unit-sphere octant. The continuous front has
        # HV = 1.2^3 - pi/6; the gap of the grid with H partitions is O(1/H).
        exact = 1.2**3 - math.pi / 6
        gaps = []
        for n_partitions in (8, 16, 32):
            grid = np.asarray(pareto.das_dennis(n_partitions, 3), np.float64)
            front = (grid / np.linalg.norm(grid, axis=1, keepdims=True)).astype(np.float32)
            value = float(pareto.hypervolume(front, jnp.full(3, 1.2)))
            if n_partitions == 8:
                np.testing.assert_allclose(value, np_hypervolume(front, np.full(3, 1.2)), rtol=1e-5)
            gaps.append(exact - value)
        self.assertTrue(all(g > 0 for g in gaps))
        np.testing.assert_allclose(np.array(gaps[1:]) / np.array(gaps[:-1]), 0.5, atol=0.05)

    @chex.variants(with_jit=True, without_jit=True)
    def test_variants_and_vmap(self):
        rng = np.random.default_rng(5)
        batch = rng.uniform(0, 1, size=(4, 9, 3)).astype(np.float32)
        ref = jnp.ones(3)
        hv = self.variant(lambda p: pareto.hypervolume(p, ref))
        batched = jax.vmap(hv)(batch)
        for b in range(4):
            np.testing.assert_allclose(batched[b], np_hypervolume(batch[b], ref), rtol=1e-5)
            np.testing.assert_allclose(hv(batch[b]), np_hypervolume(batch[b], ref), rtol=1e-5)
        # vmap over reference points too.
        refs = jnp.asarray([[1.0, 1.0], [2.0, 1.5]])
        f = jnp.asarray(zdt1_front(20), jnp.float32)
        values = jax.vmap(lambda r: pareto.hypervolume(f, r))(refs)
        for r, v in zip(np.asarray(refs), values):
            np.testing.assert_allclose(v, np_hypervolume(np.asarray(f), r), rtol=1e-5)

    def test_dtypes(self):
        f = jnp.asarray(zdt1_front(10), jnp.bfloat16)
        value = pareto.hypervolume(f, jnp.ones(2, jnp.bfloat16))
        self.assertEqual(value.dtype, jnp.float32)
        self.assertEqual(pareto.hypervolume(jnp.zeros((0, 2)), jnp.ones(2)), 0.0)
        with jax.enable_x64(True):
            f64 = jnp.asarray(zdt1_front(100), jnp.float64)
            value = pareto.hypervolume(f64, jnp.ones(2, jnp.float64))
            self.assertEqual(value.dtype, jnp.float64)
            np.testing.assert_allclose(value, np_hypervolume(zdt1_front(100), np.ones(2)))

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match=r"ref_point must have shape \(n_obj,\) = \(2,\)"):
            pareto.hypervolume(jnp.zeros((3, 2)), jnp.ones(3))
        with pytest.raises(ValueError, match="method must be one of"):
            pareto.hypervolume(jnp.zeros((3, 2)), jnp.ones(2), method="wfg")
        with pytest.raises(ValueError, match="at most 20 points"):
            pareto.hypervolume(jnp.zeros((21, 3)), jnp.ones(3), method="inclusion_exclusion")
        with pytest.raises(ValueError, match=r"shape \(n_points, n_obj\)"):
            pareto.hypervolume(jnp.zeros(3), jnp.ones(3))

    def _check_large(self, n: int, n_obj: int, seed: int) -> None:
        # Same value as the non-dominated subset, which is checked against NumPy.
        points = np.random.default_rng(seed).uniform(0, 1, size=(n, n_obj)).astype(np.float32)
        ref = jnp.full(n_obj, 1.05)
        value = jax.jit(pareto.hypervolume)(points, ref)
        mask = np.asarray(jax.jit(pareto.non_dominated_mask)(points))
        self.assertLess(mask.sum(), 200)
        expected = np_hypervolume(points[mask], np.asarray(ref))
        np.testing.assert_allclose(value, expected, rtol=1e-5)

    def test_large_sets(self):
        self._check_large(10_000, 2, seed=7)
        self._check_large(2_000, 3, seed=8)

    @pytest.mark.slow
    def test_10k_points_in_3d(self):
        self._check_large(10_000, 3, seed=9)


class HypervolumeGradientTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_2d_closed_form(self):
        # dHV/dx_i = -(y_{i-1} - y_i), dHV/dy_i = -(x_{i+1} - x_i) along the sorted front.
        f = np.array([[0.1, 0.9], [0.3, 0.5], [0.6, 0.2]], np.float32)
        ref = np.array([1.0, 1.0], np.float32)
        grad = self.variant(pareto.hypervolume_gradient)(f[::-1].copy(), ref)[::-1]
        expected = -np.array([[1.0 - 0.9, 0.3 - 0.1], [0.9 - 0.5, 0.6 - 0.3], [0.5 - 0.2, 1 - 0.6]])
        np.testing.assert_allclose(grad, expected, rtol=1e-5)

    @parameterized.parameters((2, "sweep"), (3, "sweep"), (3, "inclusion_exclusion"), (4, "sweep"))
    def test_finite_differences(self, n_obj, method):
        rng = np.random.default_rng(20 + n_obj)
        with jax.enable_x64(True):
            front = random_front(rng, 7, n_obj)
            dominated = front[:2] + 0.1
            points = jnp.asarray(np.concatenate([front, dominated]), jnp.float64)
            ref = jnp.full(n_obj, 1.3, jnp.float64)
            grad = np.asarray(pareto.hypervolume_gradient(points, ref, method=method))
            hv = jax.jit(lambda p: pareto.hypervolume(p, ref, method=method))
            eps = 1e-6
            numeric = np.zeros_like(grad)
            for i, k in itertools.product(range(points.shape[0]), range(n_obj)):
                e = jnp.zeros_like(points).at[i, k].set(eps)
                numeric[i, k] = (hv(points + e) - hv(points - e)) / (2 * eps)
            np.testing.assert_allclose(grad, numeric, atol=1e-7)
            np.testing.assert_allclose(grad[-2:], 0.0, atol=1e-12)
            self.assertTrue(np.all(grad[:-2] < 0))

    @pytest.mark.slow
    def test_large_3d_gradient_runs(self):
        # Gradient of 2,000 points in 3-D: the slab loop is rematerialised, memory O(n).
        rng = np.random.default_rng(3)
        points = jnp.asarray(rng.uniform(0, 1, size=(2_000, 3)), jnp.float32)
        grad = jax.jit(pareto.hypervolume_gradient)(points, jnp.ones(3))
        self.assertEqual(grad.shape, (2_000, 3))
        self.assertTrue(bool(jnp.all(jnp.isfinite(grad))))
        mask = np.asarray(pareto.non_dominated_mask(points))
        np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)

    def test_outside_points_get_zero(self):
        f = jnp.array([[0.5, 0.5], [2.0, 0.0]])
        grad = pareto.hypervolume_gradient(f, jnp.ones(2))
        np.testing.assert_allclose(grad, [[-0.5, -0.5], [0.0, 0.0]])


# ----------------------------------------------------------------------------------------
# Indicators
# ----------------------------------------------------------------------------------------

_F = np.array([[0.0, 1.0], [0.25, 0.5], [1.0, 0.0]], np.float32)


class IndicatorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_pymoo_reference_values(self):
        front = jnp.asarray(zdt1_front(1000), jnp.float32)
        np.testing.assert_allclose(self.variant(pareto.igd)(_F, front), 0.208242, atol=2e-6)
        np.testing.assert_allclose(
            self.variant(pareto.igd_plus)(_F, front), 0.153896, atol=2e-6
        )
        np.testing.assert_allclose(self.variant(pareto.gd)(_F, front), 1.18e-4, atol=5e-7)
        np.testing.assert_allclose(self.variant(pareto.spacing)(_F), 0.235702, atol=1e-6)

    def test_definitions_small(self):
        z = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        a = jnp.array([[0.0, 0.0]])
        self.assertAlmostEqual(float(pareto.igd(a, z)), 1.0, places=6)
        # IGD+ ignores the objectives where the set is better than the front.
        self.assertEqual(float(pareto.igd_plus(a, z)), 0.0)
        self.assertAlmostEqual(float(pareto.gd(jnp.array([[0.0, 2.0]]), z)), 1.0, places=6)
        self.assertAlmostEqual(float(pareto.igd(z, z)), 0.0, places=7)
        # Evenly spaced sets have zero spacing; lmin is the smallest gap.
        t = jnp.linspace(0, 1, 5)
        line = jnp.stack([t, 1 - t], 1)
        self.assertAlmostEqual(float(pareto.spacing(line)), 0.0, places=6)
        self.assertAlmostEqual(float(pareto.lmin(line)), math.sqrt(2) / 4, places=6)
        self.assertAlmostEqual(float(pareto.lmin(jnp.asarray(_F))), math.sqrt(0.3125), places=6)

    def test_duplicates_spacing_and_gradients_finite(self):
        f = jnp.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
        self.assertEqual(float(pareto.lmin(f)), 0.0)
        # pymoo: a duplicate's nearest-neighbour distance is 0. d = (0, 0, 2).
        np.testing.assert_allclose(pareto.spacing(f), math.sqrt(8 / 9), rtol=1e-6)
        for fn in (pareto.spacing, pareto.lmin, lambda p: pareto.igd(p, f)):
            grad = jax.grad(fn)(f)
            self.assertTrue(bool(jnp.all(jnp.isfinite(grad))))

    def test_vmap(self):
        rng = np.random.default_rng(0)
        sets = rng.uniform(0, 1, size=(3, 6, 2)).astype(np.float32)
        front = jnp.asarray(zdt1_front(50), jnp.float32)
        for fn in (pareto.igd, pareto.igd_plus, pareto.gd):
            batched = jax.vmap(lambda s: fn(s, front))(sets)
            for b in range(3):
                np.testing.assert_allclose(batched[b], fn(sets[b], front), rtol=1e-6)
        for fn in (pareto.spacing, pareto.lmin):
            batched = jax.vmap(fn)(sets)
            for b in range(3):
                np.testing.assert_allclose(batched[b], fn(sets[b]), rtol=1e-6)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="same number of objectives"):
            pareto.igd(jnp.zeros((3, 2)), jnp.zeros((4, 3)))
        with pytest.raises(ValueError, match="non-empty"):
            pareto.igd_plus(jnp.zeros((0, 2)), jnp.zeros((4, 2)))
        with pytest.raises(ValueError, match="at least 2 points"):
            pareto.spacing(jnp.zeros((1, 2)))
        with pytest.raises(ValueError, match=r"shape \(n_points, n_obj\)"):
            pareto.lmin(jnp.zeros(4))


# ----------------------------------------------------------------------------------------
# Preferences
# ----------------------------------------------------------------------------------------


class PreferenceTest(chex.TestCase):
    def test_uniform(self):
        r = pareto.uniform_preferences(5)
        np.testing.assert_allclose(r[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
        np.testing.assert_allclose(jnp.sum(r, axis=1), 1.0)
        r = pareto.uniform_preferences(4, margin=0.1)
        self.assertAlmostEqual(float(r.min()), 0.1, places=6)
        np.testing.assert_allclose(jnp.sum(r, axis=1), 1.0)
        np.testing.assert_allclose(pareto.uniform_preferences(1), [[0.5, 0.5]])
        with pytest.raises(ValueError, match="margin"):
            pareto.uniform_preferences(3, margin=0.7)
        with pytest.raises(ValueError, match="n_points"):
            pareto.uniform_preferences(0)

    @parameterized.parameters((1, 2), (4, 2), (12, 3), (5, 4), (3, 6))
    def test_das_dennis(self, n_partitions, n_obj):
        r = np.asarray(pareto.das_dennis(n_partitions, n_obj))
        self.assertEqual(r.shape, (math.comb(n_partitions + n_obj - 1, n_obj - 1), n_obj))
        np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-6)
        self.assertTrue(np.all(r >= 0))
        np.testing.assert_allclose(r * n_partitions, np.round(r * n_partitions), atol=1e-5)
        self.assertEqual(len(np.unique(np.round(r * n_partitions).astype(int), axis=0)), len(r))

    def test_das_dennis_pymoo_order(self):
        r = pareto.das_dennis(2, 3)
        np.testing.assert_allclose(
            r, [[0, 0, 1], [0, 0.5, 0.5], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [1, 0, 0]]
        )
        self.assertEqual(pareto.das_dennis(12, 3).shape, (91, 3))
        with pytest.raises(ValueError, match="n_partitions"):
            pareto.das_dennis(0, 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dirichlet(self):
        alpha = jnp.array([1.0, 2.0, 5.0])
        keys = jax.random.split(jax.random.key(1), 2)
        r = self.variant(jax.vmap(lambda k: pareto.dirichlet(k, alpha, 2000, 3)))(keys)
        chex.assert_shape(r, (2, 2000, 3))
        self.assertFalse(bool(jnp.allclose(r[0], r[1])))
        self.assertTrue(bool(jnp.all(r >= 0)))
        np.testing.assert_allclose(jnp.sum(r, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(jnp.mean(r, axis=(0, 1)), alpha / 8.0, atol=0.02)

    def test_dirichlet_scalar_alpha(self):
        # A scalar alpha is the symmetric distribution; alpha = 1 is uniform on the simplex.
        key = jax.random.key(0)
        r = pareto.dirichlet(key, 1.0, 3000, 3)
        np.testing.assert_allclose(r, pareto.dirichlet(key, jnp.ones(3), 3000, 3))
        np.testing.assert_allclose(jnp.mean(r, axis=0), 1 / 3, atol=0.02)
        with pytest.raises(ValueError, match=r"alpha must be a scalar or have shape"):
            pareto.dirichlet(jax.random.key(0), jnp.ones(2), 4, 3)


def test_distance_indicators_propagate_nan_rows():
    # A diverged run (NaN objectives) must not look like a perfect one.
    front = jnp.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    points = jnp.array([[0.0, 1.0], [jnp.nan, jnp.nan]])
    for indicator in (pareto.igd, pareto.gd, pareto.igd_plus):
        assert np.isnan(float(indicator(points, front))), indicator.__name__
    assert float(pareto.igd(front, front)) == 0.0


def test_nan_rows_are_not_non_dominated():
    f = jnp.array([[0.0, 1.0], [jnp.nan, 0.0], [1.0, 0.0]])
    assert pareto.non_dominated_mask(f).tolist() == [True, False, True]
