"""DWA (both variants) against hand-computed values; uncertainty weighting's update and fixed point."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtopt


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def numpy_dwa_epoch(loss_seq, steps_per_epoch, temp=2.0):
    """LibMTL: lambda = T softmax((L(e-1)/L(e-2))/temp) from epoch-mean losses; 1 for e < 2."""
    t = len(loss_seq[0])
    epoch_means = []
    weights = []
    for k, losses in enumerate(loss_seq):
        epoch = k // steps_per_epoch
        if epoch >= 2:
            r = np.asarray(epoch_means[epoch - 1]) / np.asarray(epoch_means[epoch - 2])
            weights.append(t * softmax(r / temp))
        else:
            weights.append(np.ones(t))
        if (k + 1) % steps_per_epoch == 0:
            block = loss_seq[k + 1 - steps_per_epoch : k + 1]
            epoch_means.append(np.mean(block, axis=0))
    return np.array(weights)


def numpy_dwa_window(loss_seq, window, temp=2.0):
    """Nash-MTL's DynamicWeightAverage, transcribed (costs init to ones, FIFO of 2 windows)."""
    t = len(loss_seq[0])
    costs = np.ones((2 * window, t))
    w = np.ones(t)
    out = []
    for it, losses in enumerate(loss_seq):
        costs[:-1] = costs[1:]
        costs[-1] = losses
        if it > window:
            ws = costs[window:].mean(0) / costs[:window].mean(0)
            w = t * np.exp(ws / temp) / np.exp(ws / temp).sum()
        out.append(w.copy())
    return np.array(out)


class DWATest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_epoch_variant_matches_libmtl_formula(self):
        rng = np.random.default_rng(0)
        loss_seq = rng.uniform(0.2, 3.0, size=(15, 3)).astype(np.float32)
        method = mtopt.dwa(steps_per_epoch=3)
        update = self.variant(method.update)
        state = method.init(3)
        got = []
        for losses in loss_seq:
            w, state = update(state, jnp.asarray(losses))
            got.append(np.asarray(w))
        np.testing.assert_allclose(got, numpy_dwa_epoch(loss_seq, 3), rtol=1e-5)
        self.assertEqual(int(state.epochs), 5)

    def test_hand_computed_epoch_value(self):
        # Epoch means (1, 1) then (0.5, 1): r = (0.5, 1), w = 2 softmax(r / 2).
        method = mtopt.dwa(steps_per_epoch=1)
        state = method.init(2)
        for losses in ([1.0, 1.0], [0.5, 1.0]):
            w, state = method.update(state, jnp.array(losses))
            np.testing.assert_allclose(w, [1.0, 1.0])
        w, _ = method.update(state, jnp.array([9.0, 9.0]))
        e1, e2 = np.exp(0.25), np.exp(0.5)
        np.testing.assert_allclose(w, [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)
        np.testing.assert_allclose(float(jnp.sum(w)), 2.0, rtol=1e-6)

    def test_manual_epochs_equal_fixed_epochs(self):
        rng = np.random.default_rng(1)
        loss_seq = rng.uniform(0.2, 3.0, size=(12, 2)).astype(np.float32)
        auto, manual = mtopt.dwa(steps_per_epoch=4), mtopt.dwa(steps_per_epoch="manual")
        sa, sm = auto.init(2), manual.init(2)
        for k, losses in enumerate(loss_seq):
            wa, sa = auto.update(sa, jnp.asarray(losses))
            wm, sm = manual.update(sm, jnp.asarray(losses))
            np.testing.assert_allclose(wa, wm, rtol=1e-6)
            if (k + 1) % 4 == 0:
                sm = manual.end_epoch(sm)
        # An empty epoch does not shift the statistics.
        before = sm
        sm = manual.end_epoch(sm)
        chex.assert_trees_all_equal(before, sm)

    @chex.variants(with_jit=True, without_jit=True)
    def test_window_variant_matches_nash_mtl(self):
        rng = np.random.default_rng(2)
        loss_seq = rng.uniform(0.2, 3.0, size=(20, 3)).astype(np.float32)
        method = mtopt.dwa(mode="window", window=4)
        update = self.variant(method.update)
        state = method.init(3)
        got = []
        for losses in loss_seq:
            w, state = update(state, jnp.asarray(losses))
            got.append(np.asarray(w))
        np.testing.assert_allclose(got, numpy_dwa_window(loss_seq, 4), rtol=1e-5)

    def test_vmap_over_states(self):
        method = mtopt.dwa(steps_per_epoch=1)
        states = jax.vmap(lambda _: method.init(2))(jnp.arange(3))
        losses = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.5, 0.5]])
        for _ in range(3):
            w, states = jax.vmap(method.update)(states, losses)
        assert w.shape == (3, 2)
        np.testing.assert_allclose(w, np.ones((3, 2)), rtol=1e-6)  # ratios all 1

    def test_bad_options(self):
        with pytest.raises(ValueError, match="temperature"):
            mtopt.dwa(0.0)
        with pytest.raises(ValueError, match="mode"):
            mtopt.dwa(mode="batch")
        with pytest.raises(ValueError, match="steps_per_epoch"):
            mtopt.dwa(steps_per_epoch=0)
        with pytest.raises(ValueError, match=r"shape \(T,\)"):
            mtopt.dwa(steps_per_epoch=3).update(mtopt.dwa(steps_per_epoch=3).init(2),
                                                jnp.ones((2, 1)))


class UncertaintyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_sgd_step_matches_analytic_gradient(self):
        lr = 0.1
        method = mtopt.uncertainty(optax.sgd(lr), init_log_var=0.3)
        losses = jnp.array([2.0, 0.5, 1e-3])
        w, state = self.variant(method.update)(method.init(3), losses)
        s = np.full(3, 0.3)
        np.testing.assert_allclose(w, 0.5 * np.exp(-s), rtol=1e-6)
        grad = 0.5 * (1.0 - np.exp(-s) * np.asarray(losses))
        np.testing.assert_allclose(state.log_vars, s - lr * grad, rtol=1e-6)

    def test_fixed_point_is_log_loss(self):
        method = mtopt.uncertainty(optax.adam(0.05))
        losses = jnp.array([4.0, 0.25, 1.0])
        state = method.init(3)
        update = jax.jit(method.update)
        for _ in range(600):
            w, state = update(state, losses)
        np.testing.assert_allclose(state.log_vars, np.log(np.asarray(losses)), atol=2e-2)
        np.testing.assert_allclose(w * losses, 0.5 * np.ones(3), atol=2e-2)

    def test_under_strict_dtype_promotion(self):
        method = mtopt.uncertainty()
        with jax.numpy_dtype_promotion("strict"):
            w, state = jax.jit(method.update)(method.init(2), jnp.array([1.0, 2.0]))
        assert np.all(np.isfinite(np.asarray(state.log_vars)))

    def test_vmap_and_default_weights(self):
        method = mtopt.uncertainty()
        states = jax.vmap(lambda _: method.init(2))(jnp.arange(4))
        w, states = jax.vmap(method.update)(states, jnp.ones((4, 2)))
        np.testing.assert_allclose(w, 0.5 * np.ones((4, 2)))
        assert states.log_vars.shape == (4, 2)


# --- issue 11, item 3: zero losses never give NaN weights ------------------------------------

F32_MAX = float(np.finfo(np.float32).max)


def _dwa_run(method, num_tasks, manual_epochs):
    """jit(scan) over a (steps, T) loss sequence; returns the (steps, T) weights."""

    def run(seq):
        def step(state, losses):
            w, state = method.update(state, losses)
            if manual_epochs:
                state = method.end_epoch(state)
            return state, w

        return jax.lax.scan(step, method.init(num_tasks), seq)[1]

    return jax.jit(run)


class DWAZeroLossTest(chex.TestCase):
    def test_issue_example_gives_the_limit_not_nan(self):
        # Epoch means (1, 0), (1, 5), then ratio (1/1, 5/0): the old code divided by
        # `tiny`, 5 / tiny overflowed to inf in float32 and the softmax gave [nan, nan].
        # Convention: x/0 = +inf, and the softmax at its limit gives all of T to it.
        for x64 in (False, True):
            with jax.enable_x64(x64):
                method = mtopt.dwa(steps_per_epoch="manual")
                state = method.init(2)
                for losses in ([1.0, 0.0], [1.0, 5.0], [1.0, 1.0]):
                    w, state = method.update(state, jnp.array(losses))
                    state = method.end_epoch(state)
                np.testing.assert_array_equal(np.asarray(w), [0.0, 2.0])

    def test_zero_over_zero_is_one(self):
        # A loss at 0 in both epochs has ratio 1 (unchanged): w = 2 softmax((1, 1/2) / 2).
        method = mtopt.dwa(steps_per_epoch=1)
        state = method.init(2)
        for losses in ([0.0, 2.0], [0.0, 1.0], [7.0, 7.0]):
            w, state = method.update(state, jnp.array(losses))
        e1, e2 = np.exp(0.5), np.exp(0.25)
        np.testing.assert_allclose(np.asarray(w), [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)],
                                   rtol=1e-6)

    def test_window_mode_zero_losses(self):
        # Window 1: the ratio is L(t) / L(t-1). 0 -> 0 is 1, 0 -> 3 is +inf, 3 -> 0 is 0.
        method = mtopt.dwa(mode="window", window=1)
        run = _dwa_run(method, 2, manual_epochs=False)
        w = np.asarray(run(jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0], [2.0, 0.0],
                                      [2.0, 1e-30], [2.0, F32_MAX]])))
        assert np.all(np.isfinite(w))
        np.testing.assert_allclose(w[2:], [[0.0, 2.0], [2.0, 0.0], [1.0, 1.0], [0.0, 2.0]],
                                   atol=1e-6)

    def test_infinite_ratios_share_the_weight(self):
        method = mtopt.dwa(steps_per_epoch=1)
        run = _dwa_run(method, 3, manual_epochs=False)
        w = np.asarray(run(jnp.array([[0.0, 0.0, 1.0], [1.0, 4.0, 1.0], [1.0, 1.0, 1.0]])))
        np.testing.assert_allclose(w[-1], [1.5, 1.5, 0.0], rtol=1e-6)

    def test_nan_loss_still_propagates(self):
        # Only 0/0 is redefined: a NaN loss must reach the step's nan_policy.
        method = mtopt.dwa(steps_per_epoch=1)
        run = _dwa_run(method, 2, manual_epochs=False)
        w = np.asarray(run(jnp.array([[1.0, 1.0], [jnp.nan, 1.0], [1.0, 1.0]])))
        assert np.all(np.isnan(w[-1]))


_DWA_VARIANTS = {
    "epoch-manual": (dict(steps_per_epoch="manual"), True),
    "epoch-1": (dict(steps_per_epoch=1), False),
    "epoch-2": (dict(steps_per_epoch=2), False),
    "window-1": (dict(mode="window", window=1), False),
    "window-2": (dict(mode="window", window=2), False),
}


@functools.lru_cache(maxsize=None)
def _compiled_dwa(variant, x64):
    options, manual = _DWA_VARIANTS[variant]
    return _dwa_run(mtopt.dwa(**options), 3, manual)


def _loss_values(width):
    top = float(np.finfo(np.float32 if width == 32 else np.float64).max)
    tiny = float(np.finfo(np.float32 if width == 32 else np.float64).tiny)
    return st.one_of(
        st.sampled_from([0.0, tiny, 1.0, top]),
        st.floats(0.0, float(np.float32(1e-30)), width=width),
        st.floats(0.0, top, width=width),
    )


@pytest.mark.parametrize("variant", sorted(_DWA_VARIANTS))
@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_dwa_weights_finite_for_any_nonnegative_losses(variant, x64):
    """Property (item 3): finite, non-negative losses (zeros, subnormals, the largest
    floats included) give finite weights summing to T, in every mode and dtype."""
    width = 64 if x64 else 32
    dtype = np.float64 if x64 else np.float32

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.lists(_loss_values(width), min_size=3, max_size=3),
                    min_size=7, max_size=7))
    def check(seq):
        with jax.enable_x64(x64):
            w = np.asarray(_compiled_dwa(variant, x64)(jnp.asarray(np.array(seq, dtype))))
            assert w.dtype == dtype
        assert np.all(np.isfinite(w)), (seq, w)
        assert np.all(w >= 0)
        np.testing.assert_allclose(w.sum(axis=1), 3.0, rtol=1e-5)

    check()


# --- issue 11, item 5: float64 states and weights under x64 ----------------------------------

def _scan_updates(method, num_tasks, losses_seq):
    """Several updates in a lax.scan: the carry (the state) must keep its type."""

    def step(state, losses):
        w, state = method.update(state, losses)
        return state, w

    return jax.jit(lambda s, seq: jax.lax.scan(step, s, seq))(method.init(num_tasks), losses_seq)


def _float_dtypes(tree):
    return {np.dtype(x.dtype) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("make", [
    lambda: mtopt.dwa(steps_per_epoch=2), lambda: mtopt.dwa(mode="window", window=2),
    lambda: mtopt.uncertainty(), lambda: mtopt.uncertainty(optax.sgd(0.1, momentum=0.9)),
], ids=["dwa-epoch", "dwa-window", "uncertainty", "uncertainty-sgd"])
def test_float64_state_and_weights_under_x64(make):
    # The old code built these states in float32 and returned float32 weights for
    # float64 losses.
    with jax.enable_x64(True):
        method = make()
        state = method.init(3)
        assert _float_dtypes(state) == {np.dtype(np.float64)}
        seq = jnp.asarray(np.random.default_rng(0).uniform(0.1, 2.0, (6, 3)))
        final, weights = _scan_updates(method, 3, seq)
        assert weights.dtype == jnp.float64
        assert jax.tree.map(lambda x: x.dtype, final) == jax.tree.map(lambda x: x.dtype, state)
        assert np.all(np.isfinite(np.asarray(weights)))
        # float32 losses under x64: the state stays float64, the weights follow the losses.
        final32, weights32 = _scan_updates(method, 3, seq.astype(jnp.float32))
        assert weights32.dtype == jnp.float32
        assert jax.tree.map(lambda x: x.dtype, final32) == jax.tree.map(lambda x: x.dtype, state)
        np.testing.assert_allclose(np.asarray(weights32), np.asarray(weights), rtol=1e-5)
    # Without x64 everything stays float32.
    method = make()
    assert _float_dtypes(method.init(3)) == {np.dtype(np.float32)}


@pytest.mark.parametrize("make", [lambda: mtopt.dwa(steps_per_epoch=2),
                                  lambda: mtopt.dwa(mode="window"), mtopt.uncertainty],
                         ids=["dwa-epoch", "dwa-window", "uncertainty"])
def test_state_is_checked(make):
    method = make()
    with pytest.raises(ValueError, match=r"state is None; pass the state returned by"):
        method.update(None, jnp.ones(2))
    with pytest.raises(TypeError, match=r"expected the .*State returned by"):
        method.update(mtopt.EmptyState(2), jnp.ones(2))
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 2"):
        jax.jit(method.update)(method.init(3), jnp.ones(2))


def test_dwa_and_uncertainty_options_are_validated():
    for bad in (dict(temperature=True), dict(temperature=float("nan")), dict(window=2.0),
                dict(steps_per_epoch=True), dict(mode="Epoch")):
        with pytest.raises(ValueError, match=r"^dwa: "):
            mtopt.dwa(**bad)
    with pytest.raises(ValueError, match=r"uncertainty: init_log_var must be a finite float"):
        mtopt.uncertainty(init_log_var=float("inf"))
    with pytest.raises(TypeError, match=r"uncertainty: optimizer must be an optax"):
        mtopt.uncertainty(0.1)
