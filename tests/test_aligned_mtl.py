"""Tests for Aligned-MTL (mtopt/_src/methods/aligned_mtl.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtopt._src import base
from mtopt._src.methods.aligned_mtl import aligned_mtl
from tests.gramian_cases import gramian, jacobian_cases

PAD = 8
F32_EPS = float(np.finfo(np.float32).eps)


def numpy_aligned_mtl(g: np.ndarray, scale_mode: str = "min") -> np.ndarray:
    """LibMTL's Aligned_MTL weights, B.sum(0), in float64 (with eigh for the removed symeig)."""
    lam, vec = np.linalg.eigh(g)
    tol = lam.max() * g.shape[0] * F32_EPS
    keep = lam > tol
    if not keep.any():
        return np.ones(g.shape[0])
    lam, vec = lam[keep][::-1], vec[:, keep][:, ::-1]
    scale = {"min": lam[-1], "median": np.sort(lam)[(len(lam) - 1) // 2], "rmse": lam.mean()}[
        scale_mode
    ]
    b = np.sqrt(scale) * vec @ np.diag(1 / np.sqrt(lam)) @ vec.T
    return b.sum(axis=0)


def weights_fn(method, preference=None):
    return lambda g: method.update(
        method.init(g.shape[0]), jnp.ones(g.shape[0], g.dtype), gramian=g, preference=preference
    )[0]


PADDED = {
    mode: jax.jit(jax.vmap(weights_fn(aligned_mtl(mode)))) for mode in ("min", "median", "rmse")
}


def padded_weights(jacs, mode="min"):
    """Weights of Jacobians with T <= 8 padded with zero tasks (zero eigenvalues, dropped)."""
    gs = np.zeros((len(jacs), PAD, PAD))
    for k, j in enumerate(jacs):
        gs[k, : j.shape[0], : j.shape[0]] = gramian(j)
    w = np.asarray(PADDED[mode](jnp.asarray(gs, jnp.float32)), np.float64)
    return [w[k, : j.shape[0]] for k, j in enumerate(jacs)]


def well_conditioned(j: np.ndarray) -> bool:
    return np.linalg.matrix_rank(j) == j.shape[0] and np.linalg.cond(j @ j.T) < 1e4


class AlignedMTLTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_values(self):
        jac = jnp.array([[1.0, 0.0], [0.0, 3.0]])
        w = self.variant(weights_fn(aligned_mtl()))(jac @ jac.T)
        chex.assert_trees_all_close(w, jnp.array([1.0, 1.0 / 3.0]), rtol=1e-6)
        paper = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        w = self.variant(weights_fn(aligned_mtl()))(jnp.asarray(paper @ paper.T, jnp.float32))
        np.testing.assert_allclose(np.asarray(w), numpy_aligned_mtl(paper @ paper.T), rtol=1e-4)
        self.assertEqual(w.dtype, jnp.float32)

    def test_balance_transformation_aligns_the_gradients(self):
        # Columns of B from preference = e_k: B G B = lambda_min I at full rank.
        rng = np.random.default_rng(0)
        jac = rng.normal(size=(4, 6))
        g = jnp.asarray(jac @ jac.T, jnp.float32)
        method = aligned_mtl()
        columns = jax.vmap(
            lambda p: method.update(method.init(4), jnp.ones(4), gramian=g, preference=p)[0]
        )(jnp.eye(4))
        b = np.asarray(columns, np.float64).T
        lam_min = np.linalg.eigvalsh(jac @ jac.T)[0]
        np.testing.assert_allclose(b @ (jac @ jac.T) @ b, lam_min * np.eye(4), atol=1e-4 * lam_min)
        w = np.asarray(weights_fn(method)(g), np.float64)
        np.testing.assert_allclose(w, b.sum(axis=0), rtol=1e-5)
        np.testing.assert_allclose(w @ (jac @ jac.T) @ w, 4 * lam_min, rtol=1e-4)


@pytest.mark.parametrize("mode", ("min", "median", "rmse"))
def test_all_cases_match_numpy_reference(mode):
    cases = jacobian_cases()
    weights = padded_weights([j for _, j in cases], mode)
    for (name, j), w in zip(cases, weights):
        assert np.all(np.isfinite(w)), name
        if well_conditioned(j):
            np.testing.assert_allclose(
                w, numpy_aligned_mtl(gramian(j), mode), rtol=1e-3, atol=1e-5, err_msg=name
            )


def test_permutation_equivariant_and_scale_invariant():
    rng = np.random.default_rng(1)
    jacs = [rng.normal(size=(t, 9)) for t in (2, 5, 8)]
    perms = [rng.permutation(j.shape[0]) for j in jacs]
    w = padded_weights(jacs)
    wp = padded_weights([j[p] for j, p in zip(jacs, perms)])
    ws = padded_weights([1e-10 * j for j in jacs] + [1e10 * j for j in jacs])
    for k, p in enumerate(perms):
        np.testing.assert_allclose(wp[k], w[k][p], rtol=1e-4)
        np.testing.assert_allclose(ws[k], w[k], rtol=1e-4)
        np.testing.assert_allclose(ws[k + 3], w[k], rtol=1e-4)


def test_degenerate_inputs():
    w_single, w_zero, w_dup = padded_weights(
        [np.array([[3.0, 4.0]]), np.zeros((3, 2)), np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])]
    )
    np.testing.assert_allclose(w_single, [1.0], rtol=1e-5)
    np.testing.assert_allclose(w_zero, np.ones(3))  # rank 0: B = I, as TorchJD
    assert np.all(np.isfinite(w_dup))
    # Duplicated tasks: rank 2, both copies get the same weight.
    np.testing.assert_allclose(w_dup[0], w_dup[1], rtol=1e-4)

    rng = np.random.default_rng(2)
    jac = rng.normal(size=(64, 100))
    w = np.asarray(weights_fn(aligned_mtl())(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64)
    np.testing.assert_allclose(w, numpy_aligned_mtl(jac @ jac.T), rtol=1e-3)
    j16 = jnp.asarray(rng.normal(size=(5, 7)), jnp.bfloat16)
    w16 = weights_fn(aligned_mtl())((j16 @ j16.T).astype(jnp.float32))
    assert w16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(w16)))


def test_vmap_over_gramians():
    rng = np.random.default_rng(3)
    jacs = rng.normal(size=(5, 3, 4))
    gs = np.einsum("bij,bkj->bik", jacs, jacs)
    method = aligned_mtl()
    w = jax.vmap(lambda g, l: method.update(method.init(3), l, gramian=g)[0])(
        jnp.asarray(gs, jnp.float32), jnp.ones((5, 3))
    )
    for k in range(5):
        np.testing.assert_allclose(np.asarray(w[k]), numpy_aligned_mtl(gs[k]), rtol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="aligned_mtl: scale_mode must be one of 'min', 'median', 'rmse'"):
        aligned_mtl("max")
    method = aligned_mtl()
    with pytest.raises(ValueError, match="aligned_mtl needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"preference must have shape \(2,\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(2), preference=jnp.ones(3))
    assert method.needs == base.Needs.GRAMIAN and method.name == "aligned_mtl"
