"""Issue 11, item 16: preferences are checked wherever their values are known, and an
invalid one under jit gives NaN weights instead of a silently repaired answer.

- The drivers that take concrete preferences (``pareto.sweep``, ``mtopt.runner.train``,
  the ``mtopt-bench`` CLI) reject an invalid one before anything runs, naming the row.
- Under ``jax.jit`` (traced preferences) the method's weights are NaN for an invalid
  row, so the step's ``nan_policy`` decides (covered per method in test_epo.py and
  test_scalarization.py; here through a jitted sweep).
- A preference given to a method that reads none is an error (it would be ignored:
  K identical runs); ``preference="optional"`` methods accept one.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtopt
import mtopt.tasks
from mtopt import pareto, problems
from mtopt.runner import train
from mtopt.runner.cli import main

PROBLEM = problems.vlmop2(n_var=2)
SWEEP = dict(optimizer=optax.adam(1e-2), num_steps=2)
SMALL_SPEC = "gradnorm:num_tasks=2,num_train=128,num_val=32,num_test=32"


def _echo_preference(kind):
    """A loss-only weighting that returns its preference (or ones) as the weights."""

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        if kind == "none":
            assert preference is None, "a method that reads no preference was given one"
            return jnp.ones_like(losses), state
        w = jnp.ones_like(losses) if preference is None else jnp.asarray(preference)
        return w.astype(losses.dtype), state

    return mtopt.Weighting(init=lambda num_tasks, params=None: mtopt.EmptyState(num_tasks),
                           update=update, needs=mtopt.Needs.LOSSES, name=f"echo_{kind}",
                           preference=kind)


# --- pareto.sweep ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [mtopt.epo, mtopt.tchebycheff], ids=["epo", "tchebycheff"])
@pytest.mark.parametrize("prefs, row, problem", [
    ([[0.3, 0.3]], "preferences[0]", r"must sum to 1 \(on the simplex\), got sum 0.6"),
    ([[0.5, 0.5], [-0.2, 1.2]], "preferences[1]", r"must be finite and non-negative"),
    ([[0.5, 0.5], [0.5, 0.5], [np.nan, 1.0]], "preferences[2]",
     r"must be finite and non-negative"),
    ([[2.0, 2.0]], "preferences[0]", r"must sum to 1 \(on the simplex\), got sum 4"),
], ids=["sum0.6", "negative", "nan", "sum4"])
def test_sweep_rejects_invalid_rows_eagerly(make, prefs, row, problem):
    # The old code ran these (clipping and renormalising inside the compiled runs).
    method = make()
    escaped = re.escape(row)
    with pytest.raises(ValueError, match=rf"^sweep: {escaped} is not a valid preference for "
                                         rf"{method.name}: the preference {problem}"):
        pareto.sweep(PROBLEM, method, jnp.zeros(2), preferences=jnp.asarray(prefs), **SWEEP)


def test_sweep_under_jit_gives_nan_for_the_invalid_row_only():
    """Traced preferences cannot be checked before the run: the invalid row's weights
    are NaN (nan_policy "propagate": its run diverges visibly), the valid rows train."""

    @jax.jit
    def run(prefs):
        return pareto.sweep(PROBLEM, mtopt.tchebycheff(), jnp.zeros(2), preferences=prefs,
                            record_every=1, **SWEEP)

    result = run(jnp.array([[0.3, 0.7], [-0.2, 1.2], [0.3, 0.3]]))
    weights = np.asarray(result.weights)
    assert np.all(np.isfinite(weights[0])) and np.all(np.isfinite(np.asarray(result.losses[0])))
    assert np.all(np.isnan(weights[1:])), weights
    assert np.all(np.isnan(np.asarray(result.params[1:])))


def test_sweep_preferences_for_a_method_that_reads_none():
    # The old code ran K identical MGDA runs.
    with pytest.raises(ValueError, match=r"sweep \(preferences=\): mgda takes no preference "
                                         r"vector, but preference= was given: it would be "
                                         r"ignored"):
        pareto.sweep(PROBLEM, mtopt.mgda(), jnp.zeros(2),
                     preferences=pareto.uniform_preferences(3), **SWEEP)
    with pytest.raises(ValueError, match=r"echo_none takes no preference vector"):
        pareto.sweep(PROBLEM, _echo_preference("none"), jnp.zeros(2),
                     preferences=pareto.uniform_preferences(3), **SWEEP)


def test_sweep_optional_preference_methods_accept_them():
    method = _echo_preference("optional")
    prefs = jnp.array([[0.5, 3.0], [2.0, 0.0]])  # optional preferences need not be on the simplex
    result = pareto.sweep(PROBLEM, method, jnp.zeros(2), preferences=prefs, record_every=1,
                          **SWEEP)
    np.testing.assert_array_equal(np.asarray(result.weights),
                                  np.broadcast_to(np.asarray(prefs)[:, None], (2, 2, 2)))
    with pytest.raises(ValueError, match=r"sweep: preferences\[1\] is not a valid preference for "
                                         r"echo_optional: every entry must be finite"):
        pareto.sweep(PROBLEM, method, jnp.zeros(2),
                     preferences=jnp.array([[1.0, 1.0], [jnp.inf, 1.0]]), **SWEEP)


# --- pareto.train_psl ------------------------------------------------------------------------


@pytest.mark.slow
def test_train_psl_passes_preferences_only_to_methods_that_read_them():
    kw = dict(key=jax.random.key(0), num_steps=1, batch_size=4, hidden=(4,))
    # A method that reads none is not handed the sampled preferences (the echo asserts
    # it at trace time); its weights are ones, so loss = mean_b sum_i f_i = sum_i losses_i.
    _, none = pareto.train_psl(PROBLEM, _echo_preference("none"), **kw)
    np.testing.assert_allclose(float(none.loss[0]), float(jnp.sum(none.losses[0])), rtol=1e-6)
    # A preference method gets each sampled r (weights r_b on the simplex): the loss is
    # mean_b sum_i r_bi f_i, strictly below sum_i mean_b f_i.
    _, required = pareto.train_psl(PROBLEM, _echo_preference("required"), **kw)
    assert float(required.loss[0]) < 0.9 * float(jnp.sum(required.losses[0]))


# --- mtopt.runner.train and the mtopt-bench CLI ------------------------------------------------


@functools.lru_cache(maxsize=None)
def _small_task():
    return mtopt.tasks.get_task("gradnorm", num_tasks=2, num_train=128, num_val=32, num_test=32)


@pytest.mark.parametrize("method, preference, expected", [
    ("epo", [0.3, 0.3], r"train: preference is not a valid preference for epo: the preference "
                        r"must sum to 1 \(on the simplex\), got sum 0.6"),
    ("tchebycheff", [-1.0, 2.0], r"train: preference is not a valid preference for tchebycheff: "
                                 r"the preference must be finite and non-negative"),
    ("tchebycheff", [2.0, 2.0], r"got sum 4"),
    ("mgda", [0.5, 0.5], r"train \(preference=\): mgda takes no preference vector"),
])
def test_runner_train_checks_the_preference_before_training(method, preference, expected):
    # The old runner trained epo/tchebycheff on the renormalised vector and passed the
    # preference to MGDA, which ignored it. The check runs before any model is built.
    with pytest.raises(ValueError, match=expected):
        train(_small_task(), method, preference=preference, seeds=[0], steps=1, batch_size=8,
              eval_every=1, progress=False)


@pytest.mark.parametrize("spec, expected", [
    ("epo:preference=[0.3,0.3]", ["--methods epo:preference=[0.3,0.3]",
                                  "not a valid preference for epo", "got sum 0.6"]),
    ("tchebycheff:preference=[-1,2]", ["not a valid preference for tchebycheff",
                                       "finite and non-negative"]),
    ("tchebycheff:preference=[2,2]", ["got sum 4"]),
    ("mgda:preference=[0.5,0.5]", ["--methods mgda:preference=[0.5,0.5]",
                                   "mgda takes no preference vector"]),
])
def test_cli_checks_the_preference_before_training(capsys, tmp_path, spec, expected):
    # The old CLI trained epo:preference=[0.3,0.3] (a renormalised run, exit 0).
    with pytest.raises(SystemExit) as exc:
        main(["--tasks", SMALL_SPEC, "--methods", "equal", spec, "--seeds", "0", "--steps", "1",
              "--batch-size", "8", "--eval-every", "1", "--out", str(tmp_path),
              "--no-progress", "--no-plots"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    # Nothing was trained: not even the single-task baseline.
    assert not (tmp_path / "results.md").exists()
    assert not (tmp_path / "single_task_cache.json").exists()
