"""Tests of PCGrad (mtopt/_src/methods/pcgrad.py)."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from gramian_cases import gramian, jacobian_cases
from mtopt._src.methods.pcgrad import pcgrad

PAPER_J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def _orders(key, num_tasks):
    """The documented visiting orders: row i of argsort(uniform(key, (T, T)))."""
    return jnp.argsort(jax.random.uniform(key, (num_tasks, num_tasks)), axis=-1)


def _reference(gram, orders, eps=1e-8, reduction="sum"):
    """NumPy PCGrad on explicit vectors, as LibMTL writes it (relative eps, given orders)."""
    gram = np.asarray(gram, np.float64)
    top = gram.diagonal().max()
    gram = gram / (top if top > 0 else 1.0)
    t = gram.shape[0]
    # Realise the gradients as rows of a Cholesky-like factor so we project true vectors.
    vals, vecs = np.linalg.eigh(gram)
    vecs = vecs * np.sqrt(np.clip(vals, 0.0, None))  # rows g_i with g_i . g_j = G_ij
    grads = vecs
    pcs = grads.copy()
    for i in range(t):
        for j in orders[i]:
            inner = pcs[i] @ grads[j]
            if inner < 0:
                pcs[i] = pcs[i] - inner * grads[j] / (grads[j] @ grads[j] + eps)
    merged = pcs.sum(0)
    if reduction == "mean":
        merged = merged / t
    return merged, grads


def _update(method, gram, key):
    num_tasks = gram.shape[-1]
    return method.update(method.init(num_tasks), jnp.ones(num_tasks), gramian=gram, key=key)[0]


def _cases_by_size():
    groups = collections.defaultdict(list)
    for name, j in jacobian_cases():
        groups[j.shape[0]].append((name, j))
    return groups


class PCGradTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_paper_example_known_value(self):
        method = pcgrad()
        update = self.variant(lambda g, k: _update(method, g, k))
        g = jnp.asarray(PAPER_J @ PAPER_J.T, jnp.float32)
        w = update(g, jax.random.key(0))
        # pc_1 = g_1 + 22/38 g_2, pc_2 = g_2 + 22/18 g_1; sum.
        np.testing.assert_allclose(w, [1 + 22 / 18, 1 + 22 / 38], rtol=1e-5)
        self.assertEqual(w.dtype, jnp.float32)

    def test_matches_numpy_reference_on_all_cases(self):
        method = pcgrad()
        run = jax.jit(
            jax.vmap(lambda g, k: (_update(method, g, k), _orders(k, g.shape[-1])))
        )
        for t, cases in _cases_by_size().items():
            grams = jnp.asarray(np.stack([gramian(j) for _, j in cases]), jnp.float32)
            keys = jax.random.split(jax.random.key(t), len(cases))
            weights, all_orders = run(grams, keys)
            weights = np.asarray(weights, np.float64)
            self.assertTrue(np.all(np.isfinite(weights)), f"T={t}")
            for (name, j), w, orders in zip(cases, weights, np.asarray(all_orders)):
                merged, grads = _reference(gramian(j), orders)
                # Compare directions in the normalised frame of the reference.
                np.testing.assert_allclose(
                    w @ grads, merged, atol=2e-4 * t, err_msg=name
                )

    def test_mean_reduction_is_sum_over_t(self):
        g = jnp.asarray(gramian(jacobian_cases()[3][1]), jnp.float32)
        key = jax.random.key(3)
        w_sum = _update(pcgrad("sum"), g, key)
        w_mean = _update(pcgrad("mean"), g, key)
        np.testing.assert_allclose(w_mean, w_sum / g.shape[0], rtol=1e-6)

    def test_no_conflict_weights_are_ones(self):
        j = np.abs(np.random.default_rng(1).normal(size=(4, 6)))  # all inner products > 0
        w = _update(pcgrad(), jnp.asarray(gramian(j), jnp.float32), jax.random.key(0))
        np.testing.assert_allclose(w, np.ones(4), rtol=1e-6)

    def test_two_tasks_deterministic_no_conflict_and_linear_under_scaling(self):
        rng = np.random.default_rng(0)
        method = pcgrad()
        keys = jax.random.split(jax.random.key(0), 8)
        run = jax.jit(jax.vmap(lambda g, k: _update(method, g, k), in_axes=(None, 0)))
        for _ in range(5):
            j = rng.normal(size=(2, 5))
            j[1] -= 1.5 * j[0]  # make the pair conflict
            g = gramian(j)
            ws = np.asarray(run(jnp.asarray(g, jnp.float32), keys), np.float64)
            np.testing.assert_allclose(ws, np.broadcast_to(ws[0], ws.shape), rtol=1e-5)
            w = ws[0]
            # pc_i = g_i + c_ij g_j with c_ij = w_j - 1; no conflict is left.
            pc = np.stack([j[0] + (w[1] - 1) * j[1], j[1] + (w[0] - 1) * j[0]])
            scale = np.linalg.norm(j, axis=1).prod()
            self.assertGreaterEqual(pc[0] @ j[1], -1e-5 * scale)
            self.assertGreaterEqual(pc[1] @ j[0], -1e-5 * scale)
            # Linear under scaling: rows a_i g_i give d = a_1 pc_1 + a_2 pc_2.
            a = rng.uniform(0.1, 10.0, size=2)
            ja = a[:, None] * j
            wa = np.asarray(run(jnp.asarray(gramian(ja), jnp.float32), keys[:1])[0])
            np.testing.assert_allclose(wa @ ja, a @ pc, rtol=1e-4, atol=1e-4)

    def test_fixed_key_linear_under_positive_scaling(self):
        # For a fixed key, D(a) = PCGrad direction of rows a_i g_i is linear in a > 0.
        rng = np.random.default_rng(5)
        j = rng.normal(size=(4, 6))
        key = jax.random.key(11)
        run = jax.jit(jax.vmap(lambda g: _update(pcgrad(), g, key)))

        def directions(scales):
            rows = scales[:, :, None] * j[None]
            grams = jnp.asarray(np.stack([gramian(r) for r in rows]), jnp.float32)
            w = np.asarray(run(grams), np.float64)
            return np.einsum("bi,bip->bp", w, rows)

        a, b = rng.uniform(0.1, 5.0, size=(2, 3, 4))
        d_a, d_b, d_ab = directions(a), directions(b), directions(a + b)
        np.testing.assert_allclose(d_a + d_b, d_ab, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(directions(3.0 * a), 3.0 * d_a, rtol=1e-4, atol=1e-4)

    def test_same_key_same_weights_and_keys_matter(self):
        # Three mutually conflicting gradients: the order changes the result.
        j = np.array([[1.0, 0.0, 0.2], [-0.6, 0.8, 0.1], [-0.5, -0.9, 0.3]])
        g = jnp.asarray(gramian(j), jnp.float32)
        method = pcgrad()
        run = jax.jit(jax.vmap(lambda k: _update(method, g, k)))
        keys = jax.random.split(jax.random.key(7), 16)
        ws = np.asarray(run(keys))
        np.testing.assert_array_equal(ws, np.asarray(run(keys)))
        self.assertGreater(np.ptp(ws, axis=0).max(), 1e-3)

    def test_scale_invariance_and_finite_extremes(self):
        j = np.random.default_rng(2).normal(size=(4, 6))
        key = jax.random.key(1)
        run = jax.jit(lambda g: _update(pcgrad(), g, key))
        w1 = run(jnp.asarray(gramian(j), jnp.float32))
        for scale in (1e-10, 1e-5, 1e5, 1e10):
            ws = run(jnp.asarray(gramian(scale * j), jnp.float32))
            np.testing.assert_allclose(ws, w1, rtol=1e-4, err_msg=str(scale))

    def test_single_task_zero_and_bfloat16(self):
        key = jax.random.key(0)
        w = _update(pcgrad(), jnp.array([[4.0]]), key)
        np.testing.assert_allclose(w, [1.0])
        w0 = _update(pcgrad(), jnp.zeros((3, 3)), key)
        np.testing.assert_allclose(w0, np.ones(3))
        g = jnp.asarray(PAPER_J @ PAPER_J.T, jnp.bfloat16)
        wb = _update(pcgrad(), g, key)
        self.assertEqual(wb.dtype, jnp.float32)
        np.testing.assert_allclose(wb, [1 + 22 / 18, 1 + 22 / 38], rtol=2e-2)

    @parameterized.parameters(
        dict(kwargs=dict(gramian=jnp.eye(2)), match="PRNG key"),
        dict(kwargs=dict(key=jax.random.key(0)), match="needs the Gramian"),
        dict(kwargs=dict(gramian=jnp.eye(3), key=jax.random.key(0)), match=r"\(2, 2\)"),
    )
    def test_bad_inputs(self, kwargs, match):
        method = pcgrad()
        with pytest.raises(ValueError, match=match):
            method.update(method.init(2), jnp.ones(2), **kwargs)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="reduction"):
            pcgrad("max")
        with pytest.raises(ValueError, match="eps"):
            pcgrad(eps=-1.0)
        with pytest.raises(ValueError, match="losses"):
            pcgrad().update((), jnp.ones((2, 2)), gramian=jnp.eye(2), key=jax.random.key(0))
        self.assertTrue(pcgrad().stochastic)
