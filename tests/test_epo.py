"""EPO search: the JAX simplex LP against scipy's linprog, the EPO LPs on degenerate
Gramians, the fallback, convergence onto the preference ray, vmap and bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from gramian_cases import gramian, jacobian_cases
from mtopt._src import base
from mtopt._src.methods.epo import epo, epo_step, solve_simplex_lp

SOLVE_LP = jax.jit(jax.vmap(solve_simplex_lp))
EPO_STEP = jax.jit(epo_step)


def scipy_lp(c, a, b, active, slack=0.0):
    """max c^T x over the simplex with a x >= b - slack on active rows (None if infeasible)."""
    b = b - slack
    t = c.shape[0]
    kwargs = {}
    if np.any(active):
        kwargs = dict(A_ub=-a[active], b_ub=-b[active])
    res = linprog(-c, A_eq=np.ones((1, t)), b_eq=[1.0], bounds=(0, None), method="highs",
                  **kwargs)
    return None if res.status == 2 else res


def check_against_scipy(c, a, b, active, x, feasible, name, atol=1e-4, slack=0.0):
    ref = scipy_lp(c, a, b, active, slack)
    b = b - slack
    if ref is None:
        assert not feasible, name
        return
    assert feasible, name
    np.testing.assert_allclose(x.sum(), 1.0, atol=1e-5, err_msg=name)
    assert x.min() >= 0, name
    viol = np.maximum(b[active] - a[active] @ x, 0.0)
    assert np.all(viol <= atol), (name, viol)
    np.testing.assert_allclose(c @ x, -ref.fun, atol=atol, err_msg=name)


def test_simplex_lp_matches_linprog():
    rng = np.random.default_rng(0)
    infeasible = 0
    for t in (2, 3, 6):
        n, rows = 40, t + 1
        c = rng.normal(size=(n, t))
        a = rng.normal(size=(n, rows, t))
        b = 0.5 * rng.normal(size=(n, rows))
        active = rng.random((n, rows)) < 0.6
        res = SOLVE_LP(*(jnp.asarray(v, jnp.float32) for v in (c, a, b)), jnp.asarray(active))
        for k in range(n):
            check_against_scipy(c[k], a[k], b[k], active[k], np.asarray(res.x[k], np.float64),
                                bool(res.feasible[k]), f"T{t}_{k}")
            infeasible += not bool(res.feasible[k])
    assert infeasible > 5  # the random set exercises the infeasibility detection


def test_simplex_lp_iteration_bound_keeps_feasibility():
    # Once phase 1 has finished, stopping phase 2 early still gives a feasible vertex,
    # never better than the optimum. (A phase 1 cut short reports infeasible.)
    rng = np.random.default_rng(5)
    c, a = rng.normal(size=(30, 5)), rng.normal(size=(30, 6, 5))
    b = np.minimum(a @ np.full(5, 0.2) - rng.uniform(size=(30, 6)), 0.0)  # uniform x feasible
    active = np.ones((30, 6), bool)
    args = tuple(jnp.asarray(v, jnp.float32) for v in (c, a, b)) + (jnp.asarray(active),)
    full = SOLVE_LP(*args)
    short = jax.jit(jax.vmap(lambda *v: solve_simplex_lp(*v, max_iter=2)))(*args)
    assert np.all(np.asarray(full.feasible))
    feasible = np.flatnonzero(np.asarray(short.feasible))
    assert feasible.size >= 5
    gaps = [c[k] @ np.asarray(full.x[k] - short.x[k], np.float64) for k in feasible]
    assert max(gaps) > 1e-3  # some runs were stopped before the optimum
    for k in feasible:
        x = np.asarray(short.x[k], np.float64)
        assert np.all(a[k] @ x >= b[k] - 1e-5)
        assert c[k] @ x <= c[k] @ np.asarray(full.x[k], np.float64) + 1e-5


def test_simplex_lp_float64():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        solve = jax.jit(jax.vmap(solve_simplex_lp))
        c, a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 5, 4)), rng.normal(size=(20, 5))
        active = np.ones((20, 5), bool)
        res = solve(jnp.asarray(c), jnp.asarray(a), jnp.asarray(0.3 * b), jnp.asarray(active))
        assert res.x.dtype == jnp.float64
        for k in range(20):
            check_against_scipy(c[k], a[k], 0.3 * b[k], active[k], np.asarray(res.x[k]),
                                bool(res.feasible[k]), str(k), atol=1e-9)


def test_epo_lps_on_degenerate_gramians_match_linprog():
    rng = np.random.default_rng(2)
    modes = set()
    for name, j in jacobian_cases(seed=4, num_random=16):
        t = j.shape[0]
        g = gramian(j)
        r = rng.dirichlet(np.ones(t))
        # Half the cases near the ray (descent mode), half off it (balance mode).
        l = (1.0 / r) * (1.0 + (0.002 if rng.random() < 0.5 else 0.5) * rng.normal(size=t))
        l = np.abs(l)
        step = EPO_STEP(jnp.asarray(l, jnp.float32), jnp.asarray(g, jnp.float32),
                        jnp.asarray(r, jnp.float32))
        alpha = np.asarray(step.alpha, np.float64)
        assert np.all(np.isfinite(alpha)), name
        np.testing.assert_allclose(alpha.sum(), 1.0, atol=1e-5, err_msg=name)
        assert alpha.min() >= 0, name
        if np.max(np.diag(g)) == 0:
            np.testing.assert_allclose(alpha, r, rtol=1e-5, err_msg=name)
            continue
        modes.add(bool(step.balance))
        c, a, b, active = (np.asarray(v, np.float64) for v in
                           (step.objective, step.lhs, step.rhs, step.active))
        active = active.astype(bool)
        slack = float(step.slack)  # > 0 when the exact LP looked infeasible
        if bool(step.feasible):
            check_against_scipy(c, a, b, active, alpha, True, name, atol=2e-4, slack=slack)
        else:
            assert scipy_lp(c, a, b, active, slack) is None, name
            np.testing.assert_allclose(alpha, r, rtol=1e-5, err_msg=name)
    assert modes == {True, False}


def test_singular_gramians_in_descent_mode_use_the_relaxation():
    # Rank-3 Gramians of 8 tasks: C alpha >= 0 often holds only on a single point in
    # exact arithmetic (0 in the convex hull), which float32 rounding can remove.
    rng = np.random.default_rng(0)
    js = rng.normal(size=(50, 8, 3))
    gs = np.einsum("kip,kjp->kij", js, js)
    rs = rng.dirichlet(np.ones(8), size=50)
    steps = jax.jit(jax.vmap(epo_step))(jnp.asarray(1 / rs, jnp.float32),
                                        jnp.asarray(gs, jnp.float32), jnp.asarray(rs, jnp.float32))
    slack = np.asarray(steps.slack)
    assert np.all(~np.asarray(steps.balance)) and np.all(np.asarray(steps.feasible))
    assert np.sum(slack > 0) >= 1
    for k in np.flatnonzero(slack > 0):
        c, a, b, active = (np.asarray(v[k], np.float64) for v in
                           (steps.objective, steps.lhs, steps.rhs, steps.active))
        check_against_scipy(c, a, b, active.astype(bool), np.asarray(steps.alpha[k], np.float64),
                            True, str(k), atol=2e-4, slack=float(slack[k]))


def test_infeasible_descent_lp_falls_back_to_preference():
    j = np.array([[-0.15922501, 0.54084558], [0.21465912, 0.35537271],
                  [-0.65382861, -0.12961363], [0.78397547, 1.49343115],
                  [-1.25906553, 1.51392377]])
    r = np.array([0.46896665, 0.14799778, 0.11580171, 0.2018893, 0.06534456])
    l = np.array([2.17414733, 6.87859181, 8.74901657, 4.97091121, 15.11857768])
    step = EPO_STEP(jnp.asarray(l, jnp.float32), jnp.asarray(j @ j.T, jnp.float32),
                    jnp.asarray(r, jnp.float32))
    assert not bool(step.balance) and not bool(step.feasible)
    c, a, b, active = (np.asarray(v, np.float64) for v in
                       (step.objective, step.lhs, step.rhs, step.active))
    assert scipy_lp(c, a, b, active.astype(bool)) is None
    method = epo()
    update = jax.jit(lambda l_, g_, r_: method.update(method.init(5), l_, gramian=g_,
                                                      preference=r_)[0])
    w = update(jnp.asarray(l, jnp.float32), jnp.asarray(j @ j.T, jnp.float32), jnp.asarray(r))
    np.testing.assert_allclose(np.asarray(w), 5 * r, rtol=1e-5)


class EPOWeightsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_known_balance_step(self):
        method = epo()
        fn = self.variant(jax.vmap(
            lambda l, g, r: method.update(method.init(2), l, gramian=g, preference=r)[0]
        ))
        # r * L = (0.8, 0.2): all weight on task 1; mirrored preference, mirrored weights.
        w = fn(jnp.ones((2, 2)), jnp.stack([jnp.eye(2)] * 2), jnp.array([[0.8, 0.2], [0.2, 0.8]]))
        np.testing.assert_allclose(np.asarray(w), [[2.0, 0.0], [0.0, 2.0]], atol=1e-6)

    def test_descent_mode_decreases_every_loss(self):
        # On the ray the step must not increase any loss to first order: J d >= 0.
        rng = np.random.default_rng(3)
        method = epo()
        fn = jax.jit(jax.vmap(
            lambda l, g, r: method.update(method.init(3), l, gramian=g, preference=r)[0]
        ))
        js = rng.normal(size=(10, 3, 6))
        rs = rng.dirichlet(np.ones(3), size=10)
        gs = np.einsum("kip,kjp->kij", js, js)
        ws = np.asarray(fn(jnp.asarray(1 / rs, jnp.float32), jnp.asarray(gs, jnp.float32),
                           jnp.asarray(rs, jnp.float32)), np.float64)
        for j, g, w in zip(js, gs, ws):
            np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-5)
            assert w.min() >= 0
            assert np.all(j @ (w @ j) >= -1e-4 * np.max(np.abs(g)))

    def test_gramian_scale_invariance(self):
        rng = np.random.default_rng(6)
        method = epo()
        fn = jax.jit(lambda l, g, r: method.update(method.init(4), l, gramian=g,
                                                   preference=r)[0])
        j = rng.normal(size=(4, 6))
        r = jnp.asarray(rng.dirichlet(np.ones(4)), jnp.float32)
        l = jnp.asarray(rng.uniform(0.5, 2, size=4), jnp.float32)
        base_w = np.asarray(fn(l, jnp.asarray(gramian(j), jnp.float32), r))
        for s in (1e-10, 1e-4, 1e4, 1e10):
            w = fn(l, jnp.asarray(gramian(s * j), jnp.float32), r)
            np.testing.assert_allclose(np.asarray(w), base_w, atol=1e-4)

    def test_zero_negative_and_single_task_inputs(self):
        method = epo()
        update = jax.jit(lambda l, g, r: method.update(method.init(l.shape[0]), l, gramian=g,
                                                       preference=r)[0])
        r = jnp.array([0.3, 0.7])
        w = update(jnp.array([1.0, 2.0]), jnp.zeros((2, 2)), r)
        np.testing.assert_allclose(np.asarray(w), 2 * np.asarray(r), rtol=1e-6)
        for losses in ([0.0, 0.0], [-1.0, 2.0], [0.0, 3.0], [1e-30, 1e30]):
            w = update(jnp.array(losses), jnp.eye(2), r)
            assert np.all(np.isfinite(np.asarray(w))), losses
            np.testing.assert_allclose(float(jnp.sum(w)), 2.0, rtol=1e-6)
        w = update(jnp.array([0.5]), jnp.ones((1, 1)), jnp.ones(1))
        np.testing.assert_allclose(np.asarray(w), [1.0])
        w = update(jnp.array([1.0, 2.0], jnp.bfloat16), jnp.eye(2, dtype=jnp.bfloat16), r)
        assert w.dtype == jnp.float32
        with jax.enable_x64(True):
            w = update(jnp.array([1.0, 2.0], jnp.float64), jnp.eye(2, dtype=jnp.float64),
                       jnp.array([0.3, 0.7], jnp.float64))
            assert w.dtype == jnp.float64


def _quadratic_problem(anchors):
    def losses_fn(x):
        return jnp.sum((x[None, :] - anchors) ** 2, axis=1)

    return losses_fn


def _train_epo(anchors, prefs, x0, steps=300, lr=0.02):
    """Gradient descent with the EPO weights, one run per preference, under jit + scan + vmap."""
    method = epo()
    losses_fn = _quadratic_problem(anchors)
    t = anchors.shape[0]

    def run(r):
        def step(x, _):
            l = losses_fn(x)
            jac = jax.jacrev(losses_fn)(x)
            w, _ = method.update(method.init(t), l, gramian=jac @ jac.T, preference=r)
            return x - lr * w @ jac, None

        x, _ = jax.lax.scan(step, x0, None, length=steps)
        return losses_fn(x)

    return np.asarray(jax.jit(jax.vmap(run))(prefs), np.float64)


@pytest.mark.parametrize(
    "anchors, prefs",
    [
        (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
         [[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.7, 0.3]]),
        (np.eye(3), [[1 / 3, 1 / 3, 1 / 3], [0.4, 0.35, 0.25], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]),
    ],
)
def test_epo_reaches_the_preference_ray(anchors, prefs):
    prefs = np.asarray(prefs)
    final = _train_epo(jnp.asarray(anchors, jnp.float32), jnp.asarray(prefs, jnp.float32),
                       jnp.array([0.3, -0.5, 0.8]))
    rl = prefs * final
    # r_i L_i equal across tasks (losses proportional to 1 / r), within the eps = 1e-4
    # non-uniformity at which EPO switches to pure descent.
    np.testing.assert_allclose(rl / rl.mean(axis=1, keepdims=True), 1.0, atol=0.03)
    # And on the Pareto front: the losses cannot all be reduced (the anchors' convex hull).
    for row in final:
        assert np.all(row <= 2.0)
    # Different preferences end at different points of the front.
    assert np.min(np.abs(np.diff(final[:, 0]))) > 1e-2


def test_vmap_over_preferences_matches_loop():
    rng = np.random.default_rng(7)
    method = epo()
    j = rng.normal(size=(3, 5))
    g = jnp.asarray(gramian(j), jnp.float32)
    l = jnp.array([0.5, 1.0, 2.0])
    prefs = jnp.asarray(rng.dirichlet(np.ones(3), size=8), jnp.float32)
    fn = jax.jit(lambda l_, g_, r_: method.update(method.init(3), l_, gramian=g_,
                                                  preference=r_)[0])
    looped = np.stack([np.asarray(fn(l, g, r)) for r in prefs])
    batched = np.asarray(jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(l, g, prefs))
    np.testing.assert_allclose(batched, looped, atol=1e-5)
    # And over a batch of Gramians, losses and preferences together.
    gs = jnp.stack([g, 2.0 * g, jnp.eye(3)])
    ls = jnp.stack([l, l[::-1], jnp.ones(3)])
    batched = np.asarray(jax.jit(jax.vmap(fn))(ls, gs, prefs[:3]))
    looped = np.stack([np.asarray(fn(ls[k], gs[k], prefs[k])) for k in range(3)])
    np.testing.assert_allclose(batched, looped, atol=1e-5)


def test_bad_input():
    method = epo()
    state = method.init(2)
    with pytest.raises(ValueError, match="needs the Gramian"):
        method.update(state, jnp.ones(2), preference=jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"Gramian of shape \(2, 2\).*got shape \(3, 3\)"):
        method.update(state, jnp.ones(2), gramian=jnp.eye(3), preference=jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="needs a preference vector"):
        method.update(state, jnp.ones(2), gramian=jnp.eye(2))
    with pytest.raises(ValueError, match="must sum to 1"):
        method.update(state, jnp.ones(2), gramian=jnp.eye(2), preference=jnp.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="epo: eps must be a non-negative finite float, got -1.0"):
        epo(eps=-1.0)
    with pytest.raises(ValueError, match="epo: max_iter must be a positive int, got 0"):
        epo(max_iter=0)
    with pytest.raises(ValueError, match="epo: tol must be a positive finite float, got 0.0"):
        epo(tol=0.0)
    with pytest.raises(ValueError, match=r"rhs and active of shape \(2,\)"):
        solve_simplex_lp(jnp.ones(3), jnp.ones((2, 3)), jnp.ones(3), jnp.ones(2, bool))


# --- issue 11, item 12: how the preference is read (the paper's r or LibMOON's pref) ---------

ISSUE_G = np.array([[1.0, -0.875], [-0.875, 6.25]])
ISSUE_L = np.array([1.3, 0.6])
ISSUE_P = np.array([0.8, 0.2])


def libmoon_epo_alpha(losses, gram, pref, eps=1e-4):
    """A transcription of LibMOON's EPO step (libmoon/solver/gradient/methods/epo_solver.py,
    commit b43d825): EPOCore builds EPO_LP(r=1/pref); adjustments() clips T l_hat at 1e-3
    in the log; mu() keeps l_hat > machine eps; GLPK replaced by scipy's HiGHS; the fallback
    of solve_epo is pref / sum(pref). Returns alpha (sums to 1, as LibMOON applies it)."""
    r = 1.0 / pref
    m = len(losses)
    rl = r * losses
    l_hat = rl / rl.sum()
    kept = np.clip(l_hat, 0, np.inf)
    kept = kept[kept > np.finfo(kept.dtype).eps]
    mu = np.sum(kept * np.log(kept * m))
    a = r * (np.log(np.clip(l_hat * m, 1e-3, np.inf)) - mu)
    ca = gram @ a
    if mu > eps:
        rhs = ca.copy()
        if np.any(ca > 0):
            rhs[ca > 0] = -np.inf
            rhs[np.where(rl == np.max(rl))[0]] = 0
        else:
            rhs = np.zeros_like(ca)
        act = np.isfinite(rhs)
        res = linprog(-ca, A_ub=-gram[act], b_ub=-rhs[act], A_eq=np.ones((1, m)), b_eq=[1.0],
                      bounds=(0, None), method="highs")
    else:
        a_ub = np.vstack([gram, ca[None]])
        b_ub = np.concatenate([np.zeros(m), [min(ca.max(), 0.0)]])
        res = linprog(-gram.sum(0), A_ub=-a_ub, b_ub=-b_ub, A_eq=np.ones((1, m)), b_eq=[1.0],
                      bounds=(0, None), method="highs")
    return (pref / pref.sum()) if res.status != 0 else res.x


@functools.lru_cache(maxsize=None)
def _batched_epo(convention):
    method = epo(convention=convention)
    return jax.jit(jax.vmap(lambda l, g, r: method.update(method.init(l.shape[0]), l,
                                                          gramian=g, preference=r)[0]))


def _epo_weights(convention, losses, gram, pref, batch=12):
    """EPO weights for a batch of (losses, Gramian, preference) rows, padded to ``batch``
    rows so that the tests of one T share one compiled program."""
    losses, gram, pref = (np.atleast_1d(np.asarray(v, np.float64)) for v in (losses, gram, pref))
    if losses.ndim == 1:
        losses, gram, pref = losses[None], gram[None], pref[None]
    n, t = losses.shape
    pad = max(batch - n, 0)
    stack = lambda v, fill: np.concatenate([v, np.repeat(fill[None], pad, 0)])  # noqa: E731
    args = (stack(losses, np.ones(t)), stack(gram, np.eye(t)), stack(pref, np.full(t, 1 / t)))
    out = _batched_epo(convention)(*(jnp.asarray(a, jnp.float32) for a in args))
    return np.asarray(out, np.float64)[:n]


def test_issue_example_both_conventions():
    # The old docstring said preference=(1/p)/sum(1/p) reproduces LibMOON; it does not:
    # LibMOON's LP uses the raw r = 1/p = (1.25, 5), whose balance constraint is 6.25x
    # larger, and gives alpha = (0, 1); the normalised r = (0.2, 0.8) gives (0.344, 0.656).
    normalised = (1 / ISSUE_P) / np.sum(1 / ISSUE_P)
    np.testing.assert_allclose(_epo_weights("libmoon", ISSUE_L, ISSUE_G, ISSUE_P)[0] / 2,
                               [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(_epo_weights("paper", ISSUE_L, ISSUE_G, normalised)[0] / 2,
                               [0.34382483, 0.65617517], atol=1e-5)
    # The transcription of LibMOON gives the same alpha.
    np.testing.assert_allclose(libmoon_epo_alpha(ISSUE_L, ISSUE_G, ISSUE_P), [0.0, 1.0],
                               atol=1e-9)


def test_libmoon_convention_reproduces_libmoon_step():
    """On random problems (balance and descent modes, tiny weighted losses where the
    1e-3 log clip matters), convention="libmoon" equals the transcribed LibMOON step."""
    rng = np.random.default_rng(11)
    cases, modes, clipped = 0, set(), 0
    for t in (2, 3):
        batch = []
        for k in range(12):
            j = rng.normal(size=(t, 5))
            pref = rng.dirichlet(np.ones(t)) * 0.9 + 0.1 / t
            if k % 3 == 0:   # near the ray: descent mode
                losses = pref * (1 + 1e-3 * rng.normal(size=t))
            elif k % 3 == 1:  # one weighted loss far below the others: the clip is active
                losses = rng.uniform(0.5, 2.0, size=t)
                losses[0] = 1e-5
            else:
                losses = rng.uniform(0.1, 3.0, size=t)
            batch.append((losses, j @ j.T, pref))
        losses_b, gram_b, pref_b = (np.stack(v) for v in zip(*batch))
        got_b = _epo_weights("libmoon", losses_b, gram_b, pref_b) / t
        for k, ((losses, g, pref), got) in enumerate(zip(batch, got_b)):
            ref = libmoon_epo_alpha(losses, g, pref)
            # Compare the LP values: the optimum can be a face with several vertices.
            r = 1 / pref
            l_hat = r * losses / np.sum(r * losses)
            clipped += bool(np.any(l_hat * t < 1e-3))
            mu = np.sum(l_hat * np.log(l_hat * t))
            modes.add(bool(mu > 1e-4))
            a = r * (np.log(np.clip(l_hat * t, 1e-3, np.inf)) - mu)
            obj = g @ a if mu > 1e-4 else g.sum(0)
            scale = np.max(np.abs(obj)) + 1e-12
            np.testing.assert_allclose(obj @ got, obj @ ref, atol=2e-4 * scale,
                                       err_msg=f"T{t} case {k}")
            np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)
            if np.allclose(ref, np.round(ref), atol=1e-9):  # a unique vertex: same alpha
                np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"T{t} case {k}")
            cases += 1
    assert modes == {True, False} and clipped >= 4 and cases == 24


@pytest.mark.slow
def test_conventions_converge_to_their_rays():
    # paper: r_i L_i equal (L ∝ 1/r); libmoon: L ∝ pref.
    anchors = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pref = jnp.array([0.7, 0.3])
    losses_fn = _quadratic_problem(anchors)
    for convention, expected in (("paper", 1 / np.asarray(pref)), ("libmoon", np.asarray(pref))):
        method = epo(convention=convention)

        def step(x, _):
            l = losses_fn(x)
            jac = jax.jacrev(losses_fn)(x)
            w, _ = method.update(method.init(2), l, gramian=jac @ jac.T, preference=pref)
            return x - 0.02 * w @ jac, None

        x, _ = jax.jit(lambda x0: jax.lax.scan(step, x0, None, length=300))(
            jnp.array([0.3, -0.5, 0.8]))
        final = np.asarray(losses_fn(x), np.float64)
        np.testing.assert_allclose(final / final.sum(), expected / expected.sum(), atol=0.02,
                                   err_msg=convention)


# --- issue 11, item 16: invalid preferences under jit; items 9/17: options and state ----------

@pytest.mark.parametrize("convention", ["paper", "libmoon"])
def test_invalid_traced_preference_gives_nan(convention):
    # Old code: under jit [0.3, 0.3] was renormalised and gave weights [0.73, 1.27].
    bad = [[0.3, 0.3], [-0.2, 1.2], [np.nan, 1.0]]
    if convention == "libmoon":
        bad.append([1.0, 0.0])  # r = 1 / pref needs positive entries
    rows = np.array(bad + [[0.5, 0.5]])
    n = len(rows)
    w = _epo_weights(convention, np.tile([1.0, 2.0], (n, 1)),
                     np.tile([[2.0, 0.5], [0.5, 1.0]], (n, 1, 1)), rows)
    assert np.all(np.isnan(w[:-1])), w
    assert np.all(np.isfinite(w[-1]))
    one = epo(convention=convention)
    assert np.all(np.isnan(np.asarray(jax.jit(lambda r: one.update(
        one.init(1), jnp.ones(1), gramian=jnp.ones((1, 1)), preference=r)[0])(jnp.array([0.5])))))
    with pytest.raises(ValueError, match="must sum to 1"):
        one.update(one.init(2), jnp.ones(2), gramian=jnp.eye(2), preference=jnp.array([0.3, 0.3]))


def test_libmoon_convention_needs_positive_preferences():
    method = epo(convention="libmoon")
    with pytest.raises(ValueError, match=r"every preference entry must be positive \(the LP "
                                         r"uses r = 1 / pref\)"):
        method.update(method.init(2), jnp.ones(2), gramian=jnp.eye(2),
                      preference=jnp.array([1.0, 0.0]))


def test_state_options_and_preference_field():
    method = epo()
    assert method.preference == "required"
    assert method.init(5) == base.SolverState(5, base.exact_solver_info())
    with pytest.raises(ValueError, match="epo: the state was initialised for 5 tasks but the "
                                         "step received 2 task losses"):
        jax.jit(lambda s: method.update(s, jnp.ones(2), gramian=jnp.eye(2),
                                        preference=jnp.array([0.5, 0.5])))(method.init(5))
    with pytest.raises(ValueError, match="epo: state is None"):
        method.update(None, jnp.ones(2), gramian=jnp.eye(2), preference=jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"epo: convention must be one of 'paper', 'libmoon'"):
        epo(convention="LibMOON")
    with pytest.raises(ValueError, match="epo: max_iter must be a positive int, got True"):
        epo(max_iter=True)
