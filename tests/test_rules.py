"""mtopt.rules: each Gramian method's weights as a pure function of the Gramian.

The rule is what the method's ``update`` computes (same weights, bit for bit),
it runs under ``jit`` and ``vmap`` with the same answers as one call at a time,
it checks its inputs, and every stateless Gramian method of the registry has one
(a new Gramian method is its rule plus the shared adapter).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt
from mtopt import rules

T = 3
KEY = jax.random.key(7)
PREF = jnp.array([0.5, 0.3, 0.2])


def _case(seed: int, num_tasks: int = T, dim: int = 5):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(num_tasks, dim)) * rng.uniform(0.1, 10.0, size=(num_tasks, 1))
    losses = rng.uniform(0.5, 2.0, size=num_tasks)
    return jnp.asarray(jac @ jac.T, jnp.float32), jnp.asarray(losses, jnp.float32)


# name -> (rule called as the method's update calls it, registry options, preference given)
RULES = {
    "aligned_mtl": (lambda g, l, p, k: rules.aligned_mtl_weights(g, preference=p), {}, PREF),
    "cagrad": (lambda g, l, p, k: rules.cagrad_weights(g), {}, None),
    "config": (lambda g, l, p, k: rules.config_weights(g, preference=p), {}, PREF),
    "dualproj": (lambda g, l, p, k: rules.dualproj_weights(g, preference=p), {}, PREF),
    "epo": (lambda g, l, p, k: rules.epo_weights(g, l, p), {}, PREF),
    "fairgrad": (lambda g, l, p, k: rules.fairgrad_weights(g), {}, None),
    "imtl_g": (lambda g, l, p, k: rules.imtl_g_weights(g), {}, None),
    "mgda": (lambda g, l, p, k: rules.mgda_weights(g, l, normalization="loss+"),
             {"normalization": "loss+"}, None),
    "pcgrad": (lambda g, l, p, k: rules.pcgrad_weights(g, k), {}, None),
    "upgrad": (lambda g, l, p, k: rules.upgrad_weights(g, preference=p), {}, PREF),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_is_what_the_method_computes(name):
    call, opts, pref = RULES[name]
    method = mtopt.method(name, **opts)
    gram, losses = _case(0)
    w_method, state = method.update(method.init(T), losses, gramian=gram, key=KEY,
                                    preference=pref)
    w_rule, info = call(gram, losses, pref, KEY)
    np.testing.assert_array_equal(np.asarray(w_rule), np.asarray(w_method))
    assert isinstance(info, mtopt.SolverInfo)
    if isinstance(state, mtopt.SolverState):
        np.testing.assert_array_equal(np.asarray(info.iterations),
                                      np.asarray(state.solver.iterations))


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_under_jit_and_vmap(name):
    call, _, pref = RULES[name]
    cases = [_case(seed) for seed in range(4)]
    grams = jnp.stack([g for g, _ in cases])
    losses = jnp.stack([l for _, l in cases])
    prefs = None if pref is None else jnp.stack([pref] * 4)
    keys = jax.random.split(KEY, 4)
    batched = jax.jit(jax.vmap(lambda g, l, p, k: call(g, l, p, k)[0]))(grams, losses, prefs, keys)
    assert batched.shape == (4, T)
    for i in range(4):
        one = call(grams[i], losses[i], None if pref is None else pref, keys[i])[0]
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one), rtol=2e-5,
                                   atol=1e-6)


def test_every_stateless_gramian_method_has_a_rule():
    """A stateless Gramian method is its rule wrapped by the shared adapter: the registry
    cannot grow one that has no ``mtopt.rules.<name>_weights``."""
    stateless = []
    for name in mtopt.method_names():
        try:
            method = mtopt.method(name)
        except (TypeError, ValueError):
            continue  # needs options (fixed weights): loss-only methods
        if method.needs is not mtopt.Needs.GRAMIAN:
            continue
        if isinstance(method.init(2), (mtopt.EmptyState, mtopt.SolverState)):
            stateless.append(name)
    assert sorted(stateless) == sorted(RULES)
    for name in stateless:
        assert hasattr(rules, f"{name}_weights"), name
    assert hasattr(rules, "nash_mtl_weights")  # the stateful Nash-MTL's core too


def test_rules_are_documented_and_exported():
    for name in rules.__all__:
        fn = getattr(rules, name)
        assert inspect.isfunction(fn), name
        assert "Example:" in (fn.__doc__ or ""), name


def test_nash_mtl_rule_solves_the_bargaining_equation_from_any_start():
    gram, _ = _case(3)
    alpha, info = rules.nash_mtl_weights(gram)
    assert bool(info.converged)
    np.testing.assert_allclose(np.asarray(alpha * (gram @ alpha)), 1.0, rtol=1e-4)
    warm, _ = rules.nash_mtl_weights(gram, 2.0 * alpha)
    np.testing.assert_allclose(np.asarray(warm), np.asarray(alpha), rtol=1e-4)


def test_epo_rule_reports_its_lp():
    gram, losses = _case(1)
    _, info = rules.epo_weights(gram, losses, PREF)
    assert bool(info.converged) and int(info.iterations) > 0


@pytest.mark.parametrize("bad, error, message", [
    (jnp.ones((2, 3)), ValueError, r"upgrad: the Gramian must be a square \(T, T\) matrix"),
    (jnp.ones(3), ValueError, r"upgrad: the Gramian must be a square"),
    (jnp.eye(2, dtype=jnp.int32), TypeError, r"upgrad: the Gramian must have a floating dtype"),
])
def test_rules_check_the_gramian(bad, error, message):
    with pytest.raises(error, match=message):
        rules.upgrad_weights(bad)


def test_rules_check_their_other_inputs():
    gram, losses = _case(0)
    with pytest.raises(ValueError, match=r"preference must have shape \(3,\)"):
        rules.upgrad_weights(gram, preference=jnp.ones(2))
    with pytest.raises(ValueError, match=r"mgda: normalization='loss' divides by the losses"):
        rules.mgda_weights(gram, normalization="loss")
    with pytest.raises(ValueError, match=r"mgda: expected 3 losses for a \(3, 3\) Gramian"):
        rules.mgda_weights(gram, jnp.ones(2), normalization="loss")
    with pytest.raises(ValueError, match=r"pcgrad draws randomness and needs an explicit PRNG"):
        rules.pcgrad_weights(gram, None)
    with pytest.raises(ValueError, match=r"epo.*preference"):
        rules.epo_weights(gram, losses, None)
    with pytest.raises(ValueError, match=r"cagrad: c must be"):
        rules.cagrad_weights(gram, c=-1.0)


def test_unit_diagonal_scale_keeps_huge_and_tiny_gramians_finite():
    from mtopt._src import rule

    for factor in (1e-30, 1e30):
        gram = jnp.asarray(np.diag([1.0, 4.0]) * factor, jnp.float32)
        scaled, scale = rule.unit_diagonal_scale(gram)
        np.testing.assert_allclose(np.asarray(scaled), [[0.25, 0.0], [0.0, 1.0]], rtol=1e-6)
        assert np.isfinite(float(scale))
    scaled, scale = rule.unit_diagonal_scale(jnp.zeros((2, 2)))
    assert float(scale) == 0.0 and not np.any(np.asarray(scaled))  # divided by 1, not 0
    scaled, _ = rule.unit_diagonal_scale(jnp.array([[jnp.nan, 0.0], [0.0, 1.0]]))
    assert np.isnan(np.asarray(scaled)[0, 0])


@pytest.mark.parametrize("name, new_home", [
    ("FAMOState", "mtopt.states.FAMOState"),
    ("AggregatorState", "mtopt.states.AggregatorState"),
    ("min_norm_simplex", "mtopt.rules.min_norm_simplex"),
    ("famo_update_logits", "method.after_step"),
    ("dwa_end_epoch", "method.end_epoch"),
])
def test_names_moved_off_the_top_level_warn_and_still_work(name, new_home):
    with pytest.warns(DeprecationWarning, match=rf"mtopt.{name} has moved .*{new_home}"):
        obj = getattr(mtopt, name)
    assert callable(obj)
    assert name not in mtopt.__all__
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        mtopt.not_a_name  # noqa: B018


def test_moved_helpers_are_the_methods_declared_calls():
    with pytest.warns(DeprecationWarning):
        famo_update_logits, dwa_end_epoch = mtopt.famo_update_logits, mtopt.dwa_end_epoch
    assert mtopt.famo(lagged=False).after_step is famo_update_logits
    assert mtopt.dwa(steps_per_epoch="manual").end_epoch is dwa_end_epoch
    for name in mtopt.states.__all__:
        assert getattr(mtopt.states, name).__name__ == name
