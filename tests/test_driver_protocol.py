"""What a method needs from the loop that drives it, honoured by every driver.

``Weighting.after_step`` (FAMO's two-phase form) and ``Weighting.end_epoch``
(DWA with manual epochs) are declared by the methods; the hand-written loop of
the README, :func:`mtopt.pareto.sweep`, :func:`mtopt.as_aggregator` in optax,
:func:`mtopt.pareto.train_psl` and the runner either honour them or refuse the
method when they are built. The defaults need nothing from the driver, so the
simplest loop runs every method as itself (before, FAMO in ``sweep`` ran as log
scalarisation and DWA without an epoch length as equal weighting).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.experimental import aggregating

import mtopt
from mtopt import pareto

TARGETS = jnp.array([[1.0, 0.0], [-1.0, 2.0], [0.5, -1.5]])
SCALES = jnp.array([1.0, 3.0, 0.3])
START = jnp.array([2.0, 2.0])
STEPS = 12
LR = 0.05


def losses_fn(p):
    """Three deterministic (full-batch) quadratic tasks of different scales."""
    return jnp.sum((p[None, :] - TARGETS) ** 2, axis=1) * SCALES + 0.1


def hand_loop(method, end_epoch_every=None):
    """The README's loop: value_and_grad, an optax step, the state threaded, and the
    calls the method declares (after_step, end_epoch). Returns the final parameters
    and, per step, the weights and the losses they were computed from."""
    grad_fn = mtopt.value_and_grad(losses_fn, method)
    opt = optax.sgd(LR)

    def step(carry, t):
        p, o, s = carry
        g, info, s = grad_fn(p, s)
        u, o = opt.update(g, o, p)
        p = optax.apply_updates(p, u)
        if method.after_step is not None:
            s = method.after_step(s, losses_fn(p))
        if method.end_epoch is not None:
            closed = method.end_epoch(s)
            s = jax.tree.map(lambda a, b: jnp.where((t + 1) % end_epoch_every == 0, a, b),
                             closed, s)
        return (p, o, s), (info.weights, info.losses)

    carry = (START, opt.init(START), method.init(3))
    (p, _, _), (weights, losses) = jax.jit(
        lambda c: jax.lax.scan(step, c, jnp.arange(STEPS)))(carry)
    return np.asarray(p), np.asarray(weights), np.asarray(losses)


def sweep_run(method):
    out = pareto.sweep(losses_fn, method, START[None], optimizer=optax.sgd(LR),
                       num_steps=STEPS, batched_params=True, record_every=1)
    return np.asarray(out.params[0]), np.asarray(out.weights[0])


def aggregator_run(method):
    tx = aggregating.process(optax.with_extra_args_support(optax.identity()),
                             mtopt.as_aggregator(method, num_tasks=3), optax.sgd(LR))

    def step(carry, _):
        p, o = carry
        losses, jac, _ = mtopt.task_jacobian(losses_fn)(p)
        updates, o = tx.update(jac, o, p, losses=losses)
        return (optax.apply_updates(p, updates), o), None

    (p, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=STEPS))((START, tx.init(START)))
    return np.asarray(p)


# --- FAMO ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lagged", [True, False], ids=["default_lagged", "two_phase"])
def test_famo_runs_as_itself_in_the_hand_loop_and_sweep(lagged):
    method = mtopt.famo(lagged=lagged)
    assert (method.after_step is None) == lagged
    p_loop, w_loop, losses = hand_loop(method)
    p_sweep, w_sweep = sweep_run(method)
    np.testing.assert_allclose(p_sweep, p_loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_sweep, w_loop, rtol=1e-5, atol=1e-6)
    # Not log scalarisation: the logits moved, so the weights left (1/L) / sum(1/L).
    degraded = (1.0 / losses) / np.sum(1.0 / losses, axis=1, keepdims=True)
    assert np.abs(w_loop[-1] - degraded[-1]).max() > 1e-3, (w_loop[-1], degraded[-1])


def test_famo_forms_agree_on_deterministic_losses():
    """On full-batch losses the lagged step reads the very losses the second phase
    would: both forms give the same trajectory (documented in famo's docstring)."""
    p_lagged, w_lagged, _ = hand_loop(mtopt.famo())
    p_two, w_two, _ = hand_loop(mtopt.famo(lagged=False))
    np.testing.assert_allclose(w_lagged, w_two, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p_lagged, p_two, rtol=1e-5, atol=1e-7)


def test_famo_default_in_optax_matches_the_hand_loop():
    np.testing.assert_allclose(aggregator_run(mtopt.famo()), hand_loop(mtopt.famo())[0],
                               rtol=1e-5, atol=1e-6)


def test_drivers_that_cannot_make_the_second_phase_refuse_it():
    two_phase = mtopt.famo(lagged=False)
    with pytest.raises(ValueError, match=r"as_aggregator: famo has a second phase .*lagged=True"):
        mtopt.as_aggregator(two_phase, num_tasks=3)
    with pytest.raises(ValueError, match=r"train_psl: the weights of famo depend on its earlier"):
        pareto.train_psl(mtopt.problems.vlmop2(n_var=2), two_phase, key=jax.random.key(0),
                         num_steps=2, batch_size=4, hidden=(4,))


# --- DWA ----------------------------------------------------------------------------------


def test_dwa_without_an_epoch_length_is_an_error():
    for make in (mtopt.dwa, lambda: mtopt.method("dwa")):
        with pytest.raises(ValueError, match=r"dwa: mode='epoch' needs steps_per_epoch"):
            make()
    with pytest.raises(ValueError, match=r"positive int or 'manual', got 'auto'"):
        mtopt.dwa(steps_per_epoch="auto")
    assert mtopt.dwa(mode="window").end_epoch is None


def test_dwa_epochs_in_every_driver():
    method = mtopt.dwa(steps_per_epoch=2)
    p_loop, w_loop, _ = hand_loop(method)
    p_sweep, w_sweep = sweep_run(method)
    np.testing.assert_allclose(w_sweep, w_loop, rtol=1e-6)
    np.testing.assert_allclose(p_sweep, p_loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregator_run(method), p_loop, rtol=1e-5, atol=1e-6)
    # Weights 1 during the first two epochs (4 steps), then DWA's rule: not equal weighting.
    np.testing.assert_array_equal(w_loop[:4], 1.0)
    assert np.abs(w_loop[4:] - 1.0).max() > 1e-2, w_loop
    np.testing.assert_allclose(w_loop.sum(axis=1), 3.0, rtol=1e-6)


def test_dwa_manual_epochs_equal_fixed_epochs_and_are_refused_without_epochs():
    manual = mtopt.dwa(steps_per_epoch="manual")
    assert manual.end_epoch is not None and mtopt.dwa(steps_per_epoch=2).end_epoch is None
    _, w_manual, _ = hand_loop(manual, end_epoch_every=2)
    _, w_fixed, _ = hand_loop(mtopt.dwa(steps_per_epoch=2))
    np.testing.assert_array_equal(w_manual, w_fixed)
    with pytest.raises(ValueError, match=r"sweep: dwa closes its epochs only when the driver"):
        sweep_run(manual)
    with pytest.raises(ValueError,
                       match=r"as_aggregator: dwa closes its epochs .*steps_per_epoch=k"):
        mtopt.as_aggregator(manual, num_tasks=3)
    # train_psl has no runs at all: DWA is refused for its history, in any form.
    with pytest.raises(ValueError, match=r"train_psl: the weights of dwa depend on its earlier"):
        pareto.train_psl(mtopt.problems.vlmop2(n_var=2), manual, key=jax.random.key(0),
                         num_steps=2, batch_size=4, hidden=(4,))


# --- the runner ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _runner_task():
    return mtopt.tasks.get_task("gradnorm", num_tasks=2, num_train=64, num_val=16,
                                num_test=16)


def _run(method, options):
    from mtopt.runner import train

    # batch 32 of 64 examples: an epoch is 2 steps
    return train(_runner_task(), method, options, steps=8, batch_size=32, eval_every=1,
                 progress=False)


def test_runner_closes_manual_epochs_and_fills_the_epoch_length():
    manual = _run("dwa", {"steps_per_epoch": "manual"})
    filled = _run("dwa", {})  # the runner gives steps_per_epoch = 2
    assert filled.settings["method_options"]["steps_per_epoch"] == 2
    np.testing.assert_array_equal(manual.weights, filled.weights)
    # (the first two epochs weigh 1; equal weighting would stay exactly 1)
    assert np.abs(manual.weights[0, 4:] - 1.0).min() > 1e-5, manual.weights


def test_runner_makes_famo_second_phase():
    result = _run("famo", {"lagged": False})
    assert np.abs(np.asarray(result.method_state.logits)).max() > 1e-4


def name_comparisons(source: str, names: set) -> list[tuple[int, str]]:
    """(line, name) of every comparison in ``source`` that involves one of ``names``."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                out += [(node.lineno, sub.value) for sub in ast.walk(operand)
                        if isinstance(sub, ast.Constant) and sub.value in names]
    return out


def test_drivers_compare_no_method_names():
    """No code in the runner or in mtopt.pareto compares anything with a registry name:
    every method is driven through what it declares (the CLI's lists of methods to run
    are data, not branches)."""
    import pathlib

    names = set(mtopt.method_names())
    # the scan finds the branches this issue removed
    assert name_comparisons('if method == "famo" and x in ("dwa", 1): pass', names) == [
        (1, "famo"), (1, "dwa")]
    root = pathlib.Path(mtopt.__file__).parent
    found = [(path.name, hit)
             for path in sorted((root / "runner").glob("*.py"))
             + sorted((root / "pareto").glob("*.py"))
             for hit in name_comparisons(path.read_text(), names)]
    assert not found, found
