"""Preference scalarizations: weights are the gradient of the scalarization, checked
against independent NumPy formulas, limits, invariances, vmap and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt
from mtopt._src.methods import scalarization as sc

T_MAX = 6


def np_linear(l, r, z):
    return float(np.sum(r * l))


def np_tche(l, r, z):
    return float(np.max(r * (l - z)))


def np_stch(l, r, z, mu):
    v = r * (l - z) / mu
    m = v.max()
    return float(mu * (m + np.log(np.sum(np.exp(v - m)))))


def np_pbi(l, r, z, theta):
    u = r / np.linalg.norm(r)
    d1 = (l - z) @ u
    return float(d1 + theta * np.linalg.norm(l - z - d1 * u))


def np_cosmos(l, r, lam):
    u = r / np.linalg.norm(r)
    d1 = l @ u
    return float(d1 - lam * d1 / np.linalg.norm(l))


def numeric_grad(f, l, h=1e-6):
    g = np.zeros_like(l)
    for i in range(l.size):
        e = np.zeros_like(l)
        e[i] = h
        g[i] = (f(l + e) - f(l - e)) / (2 * h)
    return g


def random_case(rng, t):
    l = rng.uniform(0.1, 3.0, size=t)
    r = rng.dirichlet(np.ones(t))
    z = rng.uniform(-0.5, 0.05, size=t)
    return l, r, z


def weights_of(method, losses, preference):
    w, state = method.update(method.init(losses.shape[0]), losses, preference=preference)
    assert state == method.init(losses.shape[0])
    return w


class DefinitionTest(chex.TestCase):
    """Each weighting returns the gradient of its scalarization (numerical, float64 NumPy)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_smooth_methods_match_numerical_gradient(self):
        rng = np.random.default_rng(0)
        theta, lam, mu = 2.5, 6.0, 0.3
        for t in (2, 5):
            z = rng.uniform(-0.5, 0.05, size=t)
            cases = [
                (sc.preference_linear(), lambda x, r: np_linear(x, r, z)),
                (sc.smooth_tchebycheff(mu=mu, ideal=z), lambda x, r: np_stch(x, r, z, mu)),
                (sc.pbi(theta=theta, ideal=z), lambda x, r: np_pbi(x, r, z, theta)),
                (sc.cosmos(lam=lam), lambda x, r: np_cosmos(x, r, lam)),
            ]
            for method, f in cases:
                fn = self.variant(lambda l_, r_, m=method: weights_of(m, l_, r_))
                for _ in range(4):
                    l, r, _ = random_case(rng, t)
                    w = fn(jnp.asarray(l, jnp.float32), jnp.asarray(r, jnp.float32))
                    chex.assert_shape(w, (t,))
                    assert w.dtype == jnp.float32
                    np.testing.assert_allclose(
                        np.asarray(w), numeric_grad(lambda x: f(x, r), l), rtol=2e-3,
                        atol=2e-4, err_msg=method.name,
                    )

    @chex.variants(with_jit=True, without_jit=True)
    def test_tchebycheff_is_weighted_one_hot(self):
        rng = np.random.default_rng(1)
        for t in (1, 4):
            z = rng.uniform(-0.5, 0.05, size=t)
            eps = 0.1
            method = sc.tchebycheff(ideal=z, eps=eps)
            fn = self.variant(lambda l_, r_: weights_of(method, l_, r_))
            for _ in range(8):
                l, r, _ = random_case(rng, t)
                w = np.asarray(fn(jnp.asarray(l, jnp.float32), jnp.asarray(r, jnp.float32)))
                k = int(np.argmax(r * (l - z + eps)))
                expected = np.zeros(t)
                expected[k] = r[k]
                np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
                # The subgradient of the value: numerical gradient away from ties.
                np.testing.assert_allclose(
                    w, numeric_grad(lambda x: np_tche(x, r, z - eps), l), rtol=1e-4, atol=1e-6
                )

    def test_tchebycheff_ties_split_evenly(self):
        method = sc.tchebycheff()
        w = weights_of(method, jnp.array([1.0, 2.0, 1.0]), jnp.array([0.5, 0.25, 0.25]))
        # r * L = (0.5, 0.5, 0.25): tasks 0 and 1 tie and share, each r_i / 2.
        np.testing.assert_allclose(np.asarray(w), [0.25, 0.125, 0.0])

    def test_tchebycheff_does_not_copy_libmoon_unweighted_quirk(self):
        # LibMOON's tche returns L_k itself, whose gradient is e_k. Ours is r_k e_k.
        w = weights_of(sc.tchebycheff(), jnp.array([1.0, 3.0]), jnp.array([0.4, 0.6]))
        np.testing.assert_allclose(np.asarray(w), [0.0, 0.6])
        assert float(jnp.sum(w)) < 1.0

    def test_pbi_closed_form(self):
        rng = np.random.default_rng(2)
        z = rng.uniform(-0.5, 0.05, size=4)
        fn = jax.jit(lambda l_, r_, m=sc.pbi(theta=2.5, ideal=z): weights_of(m, l_, r_))
        for _ in range(8):
            l, r, _ = random_case(rng, 4)
            u = r / np.linalg.norm(r)
            p = (l - z) - ((l - z) @ u) * u
            expected = u + 2.5 * p / np.linalg.norm(p)
            w = fn(jnp.asarray(l, jnp.float32), jnp.asarray(r, jnp.float32))
            np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-5, atol=1e-6)


class LimitAndInvarianceTest(chex.TestCase):
    def test_stch_tends_to_tchebycheff(self):
        rng = np.random.default_rng(3)
        for _ in range(20):
            t = int(rng.integers(2, T_MAX + 1))
            l, r, z = random_case(rng, t)
            v = np.sort(r * (l - z))
            if v[-1] - v[-2] < 1e-2:  # a near tie needs mu far below the gap
                continue
            tche = weights_of(sc.tchebycheff(ideal=z), jnp.asarray(l), jnp.asarray(r))
            errors = []
            for mu in (1.0, 1e-1, 1e-2, 1e-3):
                w = weights_of(sc.smooth_tchebycheff(mu=mu, ideal=z), jnp.asarray(l),
                               jnp.asarray(r))
                errors.append(float(jnp.max(jnp.abs(w - tche))))
            assert errors[-1] < 1e-4, errors
            assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors

    def test_stch_value_bounds(self):
        rng = np.random.default_rng(4)
        for _ in range(20):
            t = int(rng.integers(1, T_MAX + 1))
            l, r, z = random_case(rng, t)
            mu = float(rng.uniform(1e-3, 1.0))
            s = float(sc.scalarize_smooth_tchebycheff(jnp.asarray(l), jnp.asarray(r), mu,
                                                      jnp.asarray(z)))
            m = np_tche(l, r, z)
            assert m - 1e-5 <= s <= m + mu * np.log(t) + 1e-5

    def test_permutation_equivariance(self):
        rng = np.random.default_rng(5)
        for _ in range(10):
            t = int(rng.integers(2, T_MAX + 1))
            l, r, z = random_case(rng, t)
            perm = rng.permutation(t)
            for make in (
                lambda z_: sc.preference_linear(),
                lambda z_: sc.tchebycheff(ideal=z_),
                lambda z_: sc.smooth_tchebycheff(ideal=z_),
                lambda z_: sc.pbi(ideal=z_),
                lambda z_: sc.cosmos(),
            ):
                w = weights_of(make(jnp.asarray(z)), jnp.asarray(l), jnp.asarray(r))
                wp = weights_of(make(jnp.asarray(z[perm])), jnp.asarray(l[perm]),
                                jnp.asarray(r[perm]))
                np.testing.assert_allclose(np.asarray(wp), np.asarray(w)[perm], rtol=1e-5,
                                           atol=1e-6)

    def test_scale_invariance(self):
        rng = np.random.default_rng(6)
        for _ in range(10):
            t = int(rng.integers(2, T_MAX + 1))
            l, r, z = random_case(rng, t)
            for s in (1e-6, 1e-2, 7.0, 1e6):
                # PBI and Tchebycheff weights are homogeneous of degree 0 in L - z.
                for make in (sc.pbi, sc.tchebycheff):
                    w = weights_of(make(ideal=jnp.asarray(z)), jnp.asarray(l), jnp.asarray(r))
                    ws = weights_of(make(ideal=jnp.asarray(s * z)), jnp.asarray(s * l),
                                    jnp.asarray(r))
                    np.testing.assert_allclose(np.asarray(ws), np.asarray(w), rtol=1e-4,
                                               atol=1e-6)
                # STCH: scaling L - z and mu together leaves the weights unchanged.
                w = weights_of(sc.smooth_tchebycheff(0.3, jnp.asarray(z)), jnp.asarray(l),
                               jnp.asarray(r))
                ws = weights_of(sc.smooth_tchebycheff(0.3 * s, jnp.asarray(s * z)),
                                jnp.asarray(s * l), jnp.asarray(r))
                np.testing.assert_allclose(np.asarray(ws), np.asarray(w), rtol=1e-4, atol=1e-6)

    def test_linear_weights_are_the_preference(self):
        rng = np.random.default_rng(7)
        r = rng.dirichlet(np.ones(4))
        for scale in (1e-10, 1.0, 1e10):
            w = weights_of(sc.preference_linear(), jnp.asarray(scale * rng.uniform(size=4)),
                           jnp.asarray(r, jnp.float32))
            np.testing.assert_allclose(np.asarray(w), r, rtol=1e-6)

    def test_degenerate_points_are_finite(self):
        r = jnp.array([0.5, 0.3, 0.2])
        u = r / jnp.linalg.norm(r)
        # On the PBI ray, d2 = 0: the weights are u (zero subgradient of the norm).
        w = weights_of(sc.pbi(theta=5.0), 2.0 * u, r)
        np.testing.assert_allclose(np.asarray(w), np.asarray(u), rtol=1e-5)
        # COSMOS at L = 0: cosine taken as 0, weights u.
        w = weights_of(sc.cosmos(), jnp.zeros(3), r)
        np.testing.assert_allclose(np.asarray(w), np.asarray(u), rtol=1e-6)
        for method in (sc.preference_linear(), sc.tchebycheff(), sc.smooth_tchebycheff(),
                       sc.pbi(), sc.cosmos()):
            for scale in (0.0, 1e-10, 1e10):
                w = weights_of(method, jnp.full((3,), scale), r)
                assert np.all(np.isfinite(np.asarray(w))), (method.name, scale)
            # A zero preference entry.
            w = weights_of(method, jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.5, 0.5]))
            assert np.all(np.isfinite(np.asarray(w))), method.name

    def test_single_task(self):
        for method in (sc.preference_linear(), sc.tchebycheff(), sc.smooth_tchebycheff(),
                       sc.pbi(), sc.cosmos()):
            w = weights_of(method, jnp.array([0.7]), jnp.array([1.0]))
            np.testing.assert_allclose(np.asarray(w), [1.0], rtol=1e-6, err_msg=method.name)

    def test_bfloat16_losses_give_float32_weights(self):
        for method in (sc.tchebycheff(), sc.smooth_tchebycheff(), sc.pbi(), sc.cosmos()):
            w = weights_of(method, jnp.array([1.0, 2.0], jnp.bfloat16), jnp.array([0.5, 0.5]))
            assert w.dtype == jnp.float32

    def test_float64(self):
        with jax.enable_x64(True):
            w = weights_of(sc.smooth_tchebycheff(), jnp.array([1.0, 2.0], jnp.float64),
                           jnp.array([0.5, 0.5], jnp.float64))
            assert w.dtype == jnp.float64


class VmapTest(chex.TestCase):
    def test_vmap_over_preferences_matches_loop(self):
        rng = np.random.default_rng(8)
        prefs = jnp.asarray(rng.dirichlet(np.ones(3), size=16), jnp.float32)
        losses = jnp.array([0.5, 1.5, 1.0])
        for method in (sc.preference_linear(), sc.tchebycheff(), sc.smooth_tchebycheff(),
                       sc.pbi(), sc.cosmos()):
            fn = jax.jit(jax.vmap(lambda r, m=method: weights_of(m, losses, r)))
            batched = np.asarray(fn(prefs))
            looped = np.stack([np.asarray(weights_of(method, losses, r)) for r in prefs])
            np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-7,
                                       err_msg=method.name)

    def test_stch_descent_reaches_the_ray(self):
        # Minimising max_i r_i f_i on a convex problem ends where r_i f_i are equal.
        a = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        method = sc.smooth_tchebycheff(mu=1e-3)

        def solve(r):
            def losses_fn(x):
                return jnp.sum((x[None, :] - a) ** 2, axis=1)

            def step(x, _):
                w, _ = method.update(method.init(3), losses_fn(x), preference=r)
                return x - 0.02 * jax.grad(lambda y: jnp.sum(w * losses_fn(y)))(x), None

            x, _ = jax.lax.scan(step, jnp.zeros(3), None, length=600)
            return losses_fn(x)

        prefs = jnp.array([[1 / 3, 1 / 3, 1 / 3], [0.4, 0.35, 0.25], [0.3, 0.3, 0.4]])
        final = np.asarray(jax.jit(jax.vmap(solve))(prefs))
        rl = np.asarray(prefs) * final
        np.testing.assert_allclose(rl / rl.mean(axis=1, keepdims=True), 1.0, atol=0.02)


class BadInputTest(chex.TestCase):
    def test_preference_errors(self):
        method = sc.tchebycheff()
        state = method.init(3)
        losses = jnp.ones(3)
        with pytest.raises(ValueError, match="needs a preference vector"):
            method.update(state, losses)
        with pytest.raises(ValueError, match=r"shape \(3,\).*got shape \(2,\)"):
            method.update(state, losses, preference=jnp.array([0.5, 0.5]))
        with pytest.raises(ValueError, match="non-negative"):
            method.update(state, losses, preference=jnp.array([-0.2, 0.6, 0.6]))
        with pytest.raises(ValueError, match="must sum to 1"):
            method.update(state, losses, preference=jnp.array([0.2, 0.2, 0.2]))
        with pytest.raises(ValueError, match="non-negative"):
            method.update(state, losses, preference=jnp.array([np.nan, 0.5, 0.5]))
        with pytest.raises(ValueError, match=r"shape \(T,\)"):
            method.update(state, jnp.ones((3, 1)), preference=jnp.ones(3) / 3)

    def test_traced_invalid_preference_gives_nan_weights(self):
        # Item 16: under jit the values cannot be checked before the step runs; an
        # invalid preference (negative, non-finite, or a sum off 1 by more than
        # PREFERENCE_ATOL) gives NaN weights, never a silently repaired vector. The
        # old code clipped and renormalised: [-1, 1, 3] -> [0, 0.25, 0.75].
        bad = jnp.array([[-1.0, 1.0, 3.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0],
                         [0.3, 0.3, 0.3], [jnp.nan, 0.5, 0.5], [jnp.inf, 0.0, 0.0],
                         [-0.2, 0.6, 0.6]])
        for make in (sc.preference_linear, sc.tchebycheff, sc.smooth_tchebycheff, sc.pbi,
                     sc.cosmos):
            method = make()
            fn = jax.jit(jax.vmap(lambda r: weights_of(method, jnp.array([1.0, 2.0, 3.0]), r)))
            w = np.asarray(fn(bad))
            assert np.all(np.isnan(w)), (method.name, w)
            # Valid ones (within the tolerance) are finite, in the same compiled program.
            good = jnp.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0],
                              [0.2, 0.3, 0.5 + 0.9 * sc.PREFERENCE_ATOL]])
            assert np.all(np.isfinite(np.asarray(fn(good)))), method.name
        # Just outside the tolerance: NaN; just inside: the vector divided by its sum.
        fn = jax.jit(lambda r: weights_of(sc.preference_linear(), jnp.ones(2), r))
        assert np.all(np.isnan(np.asarray(fn(jnp.array([0.5, 0.5 + 1.5e-3])))))
        np.testing.assert_allclose(np.asarray(fn(jnp.array([0.5, 0.5005]))),
                                   [0.5 / 1.0005, 0.5005 / 1.0005], rtol=1e-6)

    def test_traced_invalid_preference_under_the_nan_policies(self):
        # The NaN weights reach the step's nan_policy: "propagate" shows NaN gradients,
        # "skip" skips the step (zero gradient, info.skipped), "raise" raises.
        fn = lambda p: jnp.stack([jnp.sum((p - 1.0) ** 2), jnp.sum((p + 1.0) ** 2)])  # noqa: E731
        method = sc.tchebycheff()
        params = jnp.zeros(2)
        for policy in ("propagate", "skip", "raise"):
            step = jax.jit(mtopt.value_and_grad(fn, method, nan_policy=policy))
            grads, info, _ = step(params, method.init(2), preference=jnp.array([0.5, 0.5]))
            assert np.all(np.isfinite(np.asarray(grads))), policy
            if policy == "raise":
                with pytest.raises(Exception, match="not finite"):
                    out = step(params, method.init(2), preference=jnp.array([2.0, 2.0]))
                    jax.block_until_ready(out)
                continue
            grads, info, _ = step(params, method.init(2), preference=jnp.array([-1.0, 2.0]))
            assert np.all(np.isnan(np.asarray(info.weights))), policy
            if policy == "propagate":
                assert np.all(np.isnan(np.asarray(grads)))
                assert not bool(info.finite)
            else:
                assert bool(info.skipped)
                np.testing.assert_array_equal(np.asarray(grads), np.zeros(2))

    def test_hyperparameter_errors(self):
        with pytest.raises(ValueError, match="mu must be a positive"):
            sc.smooth_tchebycheff(mu=0.0)
        with pytest.raises(ValueError, match="theta must be a non-negative"):
            sc.pbi(theta=-1.0)
        with pytest.raises(ValueError, match="lam must be a non-negative"):
            sc.cosmos(lam=float("nan"))
        with pytest.raises(ValueError, match="eps must be a non-negative"):
            sc.tchebycheff(eps=-0.1)
        method = sc.tchebycheff(ideal=jnp.zeros(2))
        with pytest.raises(ValueError, match=r"ideal point of shape \(3,\).*got shape \(2,\)"):
            method.update(method.init(3), jnp.ones(3), preference=jnp.ones(3) / 3)
        with pytest.raises(ValueError, match="num_tasks"):
            method.init(0)


ALL_SCALARIZATIONS = (sc.preference_linear, sc.tchebycheff, sc.smooth_tchebycheff, sc.pbi,
                      sc.cosmos)


@pytest.mark.parametrize("make", ALL_SCALARIZATIONS)
def test_state_knows_its_task_count_and_preference_is_required(make):
    # Issue 11, item 17: EmptyState(T), checked at every step; item 16: the method
    # declares that it reads a preference, so drivers can refuse to drop one.
    method = make()
    assert method.preference == "required"
    assert method.init(5) == mtopt.EmptyState(5)
    r2 = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match=rf"{method.name}: the state was initialised for 5 "
                                         r"tasks but the step received 2 task losses"):
        jax.jit(lambda s, l: method.update(s, l, preference=r2))(method.init(5), jnp.ones(2))
    with pytest.raises(ValueError, match=rf"{method.name}: state is None"):
        method.update(None, jnp.ones(2), preference=r2)


def test_tchebycheff_rejects_the_issue_preferences():
    # Issue 11, item 16: tchebycheff accepted [2, 2] and [-1, 2] under jit.
    method = sc.tchebycheff()
    fn = jax.jit(lambda r: method.update(method.init(2), jnp.array([1.0, 2.0]), preference=r)[0])
    for bad in ([2.0, 2.0], [-1.0, 2.0]):
        assert np.all(np.isnan(np.asarray(fn(jnp.array(bad))))), bad
        with pytest.raises(ValueError, match="tchebycheff: the preference must"):
            method.update(method.init(2), jnp.array([1.0, 2.0]), preference=jnp.array(bad))


def test_ideal_option_is_checked():
    with pytest.raises(ValueError, match=r"tchebycheff: ideal must be finite"):
        sc.tchebycheff(ideal=jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match=r"pbi: ideal must be a real vector of shape \(T,\)"):
        sc.pbi(ideal=jnp.zeros((2, 2)))
