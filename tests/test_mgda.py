"""MGDA and its min-norm solver against a reference QP, KKT conditions and known values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import mtopt
from gramian_cases import gramian, jacobian_cases


def reference_min_norm(g: np.ndarray) -> np.ndarray:
    """SLSQP on the simplex QP (float64, test-only)."""
    t = g.shape[0]
    scale = max(np.max(np.diag(g)), 1e-300)
    gn = g / scale
    res = minimize(
        lambda x: x @ gn @ x,
        np.full(t, 1.0 / t),
        jac=lambda x: 2 * gn @ x,
        bounds=[(0, None)] * t,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    return res.x


CASES = jacobian_cases(seed=3, num_random=200)


SOLVE = jax.jit(mtopt.rules.min_norm_simplex)


def _solve_batch(gs: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(SOLVE(jnp.asarray(g, jnp.float32)), np.float64) for g in gs]


def test_min_norm_matches_reference_qp_and_kkt():
    gs = [gramian(j) for _, j in CASES]
    ws = _solve_batch(gs)
    assert len(gs) > 200
    for (name, _), g, w in zip(CASES, gs, ws):
        assert np.all(np.isfinite(w)), name
        np.testing.assert_allclose(w.sum(), 1.0, atol=1e-5, err_msg=name)
        assert w.min() >= -1e-7, name
        scale = max(np.max(np.diag(g)), 1e-300)
        gn = g / scale
        ref = reference_min_norm(g)
        # Objective within tolerance of the reference optimum (the minimiser may
        # not be unique for rank-deficient Gramians, the value is).
        assert w @ gn @ w <= ref @ gn @ ref + 1e-5, name
        # KKT: (G w)_i >= w^T G w for all i, with equality on the support.
        v = gn @ w
        lam = w @ v
        assert np.all(v >= lam - 1e-4), (name, v, lam)
        support = w > 1e-3
        np.testing.assert_allclose(v[support], lam, atol=1e-3, err_msg=name)


def test_two_task_closed_form_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(50):
        j = rng.normal(size=(2, 5))
        g = gramian(j)
        w = np.asarray(mtopt.rules.min_norm_simplex(jnp.asarray(g)), np.float64)
        gammas = np.linspace(0, 1, 100001)
        norms = [(a * j[0] + (1 - a) * j[1]) @ (a * j[0] + (1 - a) * j[1]) for a in gammas[::100]]
        best = gammas[::100][int(np.argmin(norms))]
        assert abs(w[0] - best) <= 1.5e-3


def test_known_value_paper_example():
    jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    method = mtopt.mgda()
    w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
    np.testing.assert_allclose(np.asarray(w @ jac), [0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(w), [0.6, 0.4], atol=1e-6)


def test_common_descent_direction():
    gs = [gramian(j) for _, j in CASES]
    for (name, j), g, w in zip(CASES, gs, _solve_batch(gs)):
        d = w @ j
        scale = max(np.max(np.diag(g)), 1e-300)
        # <d, g_i> >= ||d||^2 >= 0 up to solver tolerance.
        assert np.all(j @ d >= d @ d - 1e-4 * scale), name


def test_scale_invariance_and_permutation():
    rng = np.random.default_rng(1)
    for t in (3, 5, 8):
        j = rng.normal(size=(t, 6))
        g = jnp.asarray(gramian(j), jnp.float32)
        w = SOLVE(g)
        for s in (1e-10, 1e10):
            np.testing.assert_allclose(SOLVE(g * s), w, atol=1e-4)
        perm = rng.permutation(t)
        wp = SOLVE(g[perm][:, perm])
        obj = lambda v, m: float(v @ m @ v)
        np.testing.assert_allclose(obj(wp, g[perm][:, perm]), obj(w, g), rtol=1e-4, atol=1e-6)


def test_collinear_opposite_gives_zero_direction():
    j = np.array([[1.0, 2.0], [-2.0, -4.0], [0.5, 0.1]])
    w = np.asarray(SOLVE(jnp.asarray(gramian(j), jnp.float32)))
    np.testing.assert_allclose(w @ j, 0.0, atol=1e-4)


def test_zero_gramian_uniform():
    for t in (1, 2, 3, 7):
        w = mtopt.rules.min_norm_simplex(jnp.zeros((t, t)))
        np.testing.assert_allclose(w, np.full(t, 1.0 / t), atol=1e-7)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_normalizations_match_definition(normalization):
    rng = np.random.default_rng(2)
    for t in (2, 3, 5):
        j = rng.normal(size=(t, 7)) * rng.uniform(0.1, 10, size=(t, 1))
        losses = rng.uniform(0.5, 3.0, size=t)
        norms = np.linalg.norm(j, axis=1)
        n = {"none": np.ones(t), "l2": norms, "loss": losses, "loss+": losses * norms}[
            normalization
        ]
        jn = j / n[:, None]
        ref = reference_min_norm(gramian(jn))
        method = mtopt.mgda(normalization)
        w, _ = method.update(
            method.init(t), jnp.asarray(losses, jnp.float32),
            gramian=jnp.asarray(gramian(j), jnp.float32),
        )
        w = np.asarray(w, np.float64)
        # Raw weights = simplex weights / normaliser: the direction matches.
        np.testing.assert_allclose(w @ j, ref @ jn, atol=2e-3 * np.abs(ref @ jn).max() + 1e-5)
        np.testing.assert_allclose((w * n).sum(), 1.0, atol=1e-5)


def test_zero_gradient_and_nonpositive_loss_are_finite():
    j = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    for normalization in ("l2", "loss", "loss+"):
        method = mtopt.mgda(normalization)
        w, _ = method.update(
            method.init(3), jnp.array([0.0, -1.0, 2.0]), gramian=jnp.asarray(gramian(j), jnp.float32)
        )
        assert np.all(np.isfinite(np.asarray(w))), normalization


class MGDAVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_variants_match(self):
        method = mtopt.mgda()
        rng = np.random.default_rng(4)
        j = rng.normal(size=(4, 6))
        g = jnp.asarray(gramian(j), jnp.float32)
        update = self.variant(lambda g: method.update(method.init(4), jnp.ones(4), gramian=g)[0])
        w = np.asarray(update(g), np.float64)
        ref = reference_min_norm(gramian(j))
        np.testing.assert_allclose(w @ gramian(j) @ w, ref @ gramian(j) @ ref, rtol=1e-4, atol=1e-6)

    def test_vmap_over_batch_of_gramians(self):
        rng = np.random.default_rng(5)
        js = rng.normal(size=(16, 5, 8))
        gs = jnp.asarray(np.einsum("btp,bsp->bts", js, js), jnp.float32)
        batched = jax.jit(jax.vmap(mtopt.rules.min_norm_simplex))(gs)
        for b in range(16):
            # vmap runs every problem until the slowest stops: agreement up to solver accuracy.
            np.testing.assert_allclose(batched[b], SOLVE(gs[b]), atol=1e-4)


def test_bad_inputs():
    method = mtopt.mgda()
    with pytest.raises(ValueError, match="needs the Gramian"):
        method.update(method.init(2), jnp.ones(2))
    with pytest.raises(ValueError, match=r"expected a Gramian of shape \(2, 2\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(3))
    with pytest.raises(ValueError, match="normalization must be one of"):
        mtopt.mgda("unit")
    with pytest.raises(ValueError, match="square"):
        mtopt.rules.min_norm_simplex(jnp.ones((2, 3)))


def test_state_knows_num_tasks_and_reports_the_solver():
    """mgda's state is a SolverState: it knows T (checked every step) and carries the
    certificate of the last solve; its dtypes do not change across steps (scan carry)."""
    method = mtopt.mgda()
    state = method.init(3)
    assert isinstance(state, mtopt.SolverState) and state.num_tasks == 3
    assert bool(state.solver.converged) and int(state.solver.iterations) == 0
    with pytest.raises(ValueError, match="mgda: the state was initialised for 3 tasks but the "
                                         "step received 2 task losses"):
        method.update(state, jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match="mgda: state is None"):
        method.update(None, jnp.ones(3), gramian=jnp.eye(3))
    with pytest.raises(TypeError, match="expected the SolverState"):
        method.update(mtopt.EmptyState(3), jnp.ones(3), gramian=jnp.eye(3))
    rng = np.random.default_rng(9)
    gs = jnp.asarray(np.stack([gramian(rng.normal(size=(3, 5))) for _ in range(4)]), jnp.float32)

    def step(state, g):
        w, state = method.update(state, jnp.ones(3), gramian=g)
        return state, (w, state.solver)

    final, (ws, infos) = jax.jit(lambda s: jax.lax.scan(step, s, gs))(state)
    assert final.num_tasks == 3 and infos.residual.dtype == jnp.float32
    assert bool(jnp.all(infos.converged)) and int(jnp.min(infos.iterations)) > 0
    assert ws.shape == (4, 3)


def test_options_are_validated():
    for bad, message in (
        ({"max_iter": True}, "mgda: max_iter must be a positive int, got True"),
        ({"max_iter": 0}, "mgda: max_iter must be a positive int, got 0"),
        ({"tol": -1e-3}, "mgda: tol must be a non-negative finite float, got -0.001"),
        ({"tol": float("inf")}, "mgda: tol must be a non-negative finite float, got inf"),
    ):
        with pytest.raises(ValueError, match=message):
            mtopt.mgda(**bad)
