"""Tests of the benchmark runner: train(), the baseline, Δm, reports, checkpoints and the CLI."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import mtopt
import mtopt.tasks
from mtopt.runner import delta_m, effective_options, mean_std, single_task_baseline, train
from mtopt.runner.cli import main, parse_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = dict(num_train=128, num_val=32, num_test=32)
SMALL_SPEC = "gradnorm:num_tasks=2,num_train=128,num_val=32,num_test=32"
# A loss-only, a stateful loss method, a Gramian, a stochastic, a preference method, FAMO.
FAST_METHODS = ("equal", "uncertainty", "mgda", "pcgrad", "epo", "famo")


@functools.lru_cache(maxsize=None)
def _small_task():
    return mtopt.tasks.get_task("gradnorm", num_tasks=2, **SMALL)


@pytest.fixture(scope="module")
def task():
    return _small_task()


@functools.lru_cache(maxsize=None)
def _two_seed_run(method):
    """Every fast test that needs this run shares it (compilation dominates the cost)."""
    return train(_small_task(), method, seeds=[0, 1], steps=3, batch_size=8, eval_every=3,
                 progress=False)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_trees_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


# --- Δm --------------------------------------------------------------------------------------


def test_delta_m_hand_made_numbers():
    # accuracy 0.9 vs 0.8 (+12.5 %: better), error 0.5 vs 0.4 (+25 %: worse)
    assert delta_m([0.9, 0.5], [0.8, 0.4], [True, False]) == pytest.approx(
        100 / 2 * (-(0.9 - 0.8) / 0.8 + (0.5 - 0.4) / 0.4)
    )
    assert delta_m([0.9, 0.5], [0.8, 0.4], [True, False]) == pytest.approx(6.25)
    # better on both tasks: negative
    assert delta_m([0.9, 0.3], [0.8, 0.4], [True, False]) < 0
    # equal to the baseline: exactly 0
    assert delta_m([0.8, 0.4], [0.8, 0.4], [True, False]) == 0.0
    # lower-is-better only: a 10 % lower error everywhere is -10
    assert delta_m([0.9, 1.8], [1.0, 2.0], [False, False]) == pytest.approx(-10.0)


def test_delta_m_keeps_leading_axes_and_checks_input():
    per_seed = delta_m(np.array([[0.9, 0.5], [0.8, 0.4]]), [0.8, 0.4], [True, False])
    np.testing.assert_allclose(per_seed, [6.25, 0.0])
    with pytest.raises(ValueError, match="shape"):
        delta_m([0.9, 0.5, 0.1], [0.8, 0.4], [True, False])
    with pytest.raises(ValueError, match="contain 0"):
        delta_m([0.9, 0.5], [0.0, 0.4], [True, False])


def test_mean_std():
    assert mean_std([2.0]) == (2.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)


# --- options ---------------------------------------------------------------------------------


def test_parse_spec():
    assert parse_spec("mgda") == ("mgda", {})
    assert parse_spec("cagrad:c=0.4,rescale=1") == ("cagrad", {"c": 0.4, "rescale": 1})
    assert parse_spec("linear:weights=[1, 0.5],x='a,b'") == (
        "linear", {"weights": [1, 0.5], "x": "a,b"},
    )
    assert parse_spec("mgda:normalization=l2") == ("mgda", {"normalization": "l2"})
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("cagrad:0.4")


def test_effective_options_fill_required_factory_arguments():
    opts = effective_options("linear", {}, num_tasks=3, steps_per_epoch=7, preference=[1 / 3] * 3)
    assert opts == {"weights": [1.0, 1.0, 1.0]}
    # any factory with a steps_per_epoch option gets the run's epoch length (DWA needs it
    # in epoch mode, its window mode ignores it); no method name is involved
    assert effective_options("dwa", {}, num_tasks=2, steps_per_epoch=7,
                             preference=[0.5, 0.5]) == {"steps_per_epoch": 7}
    assert effective_options("dwa", {"steps_per_epoch": "manual"}, num_tasks=2,
                             steps_per_epoch=7, preference=[0.5, 0.5]) == {
        "steps_per_epoch": "manual"}
    pm = effective_options("pmtl", {}, num_tasks=2, steps_per_epoch=7, preference=[0.3, 0.7])
    np.testing.assert_allclose(pm["preferences"], [[1, 0], [0, 1], [0.3, 0.7]])
    # user options are kept as given
    assert effective_options("cagrad", {"c": 0.2}, num_tasks=2, steps_per_epoch=7,
                             preference=[0.5, 0.5]) == {"c": 0.2}


# --- train -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FAST_METHODS)
def test_representative_methods_run(method):
    result = _two_seed_run(method)
    assert result.train_loss.shape == (2, 1, 2)
    assert result.weights.shape == (2, 1, 2)
    assert result.val_metrics.shape == (2, 1, 2)
    assert result.cosines.shape == (2, 1, 2, 2)
    assert result.test_metrics.shape == (2, 2)
    for array in (result.train_loss, result.weights, result.val_metrics, result.cosines,
                  result.test_metrics):
        assert np.all(np.isfinite(array))
    assert all(np.all(np.isfinite(x)) for x in _leaves(result.params))
    np.testing.assert_allclose(np.diagonal(result.cosines, axis1=-2, axis2=-1), 1.0, atol=1e-5)
    assert result.eval_steps.tolist() == [3]


@pytest.mark.slow
@pytest.mark.parametrize("method", mtopt.method_names())
def test_every_registry_method_runs(task, method):
    result = train(task, method, seeds=[0, 1], steps=3, batch_size=8, eval_every=3,
                   progress=False)
    for array in (result.train_loss, result.weights, result.val_metrics, result.cosines,
                  result.test_metrics):
        assert np.all(np.isfinite(array)), method
    assert all(np.all(np.isfinite(x)) for x in _leaves(result.params))


def test_records_per_chunk_and_weights(task):
    result = train(task, "linear", {"weights": [1.0, 0.25]}, seeds=[3, 4], steps=6, batch_size=8,
                   eval_every=4, progress=False)
    assert result.eval_steps.tolist() == [4, 6]  # the last chunk is shorter
    np.testing.assert_allclose(result.weights, np.broadcast_to([1.0, 0.25], (2, 2, 2)))
    assert result.method_options == {"weights": [1.0, 0.25]}
    assert result.settings["preference"] == [0.5, 0.5]
    assert result.seeds == (3, 4)
    first = _leaves(result.params)[0]  # different seeds: different models and batches
    assert not np.array_equal(first[0], first[1])


def test_seeds_vmapped_equal_separate_runs(task):
    both = _two_seed_run("pcgrad")  # stochastic: the method keys must follow the seed too
    for i, seed in enumerate((0, 1)):
        alone = train(task, "pcgrad", seeds=[seed], steps=3, batch_size=8, eval_every=3,
                      progress=False)
        for x, y in zip(_leaves(both.params), _leaves(alone.params)):
            # vmapped and single-seed programs round their matmuls differently: after
            # three Adam steps that reaches 2.4e-6 on O(0.1) parameters on some CPUs.
            np.testing.assert_allclose(x[i], y[0], rtol=1e-5, atol=5e-6)
        np.testing.assert_allclose(both.test_metrics[i], alone.test_metrics[0], rtol=1e-5)
        np.testing.assert_allclose(both.train_loss[i], alone.train_loss[0], rtol=1e-5)


@pytest.mark.slow  # covered in the default run by test_checkpoint and the CLI resume
def test_resume_is_bit_identical(task, tmp_path):
    kw = dict(seeds=[0, 1], batch_size=8, eval_every=2, progress=False)
    full = train(task, "famo", steps=6, **kw)
    first = train(task, "famo", steps=4, checkpoint_dir=tmp_path, **kw)
    assert first.resumed_from is None
    resumed = train(task, "famo", steps=6, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.resumed_from == 4
    _assert_trees_equal(full.params, resumed.params)
    _assert_trees_equal(full.opt_state, resumed.opt_state)
    _assert_trees_equal(full.method_state, resumed.method_state)
    assert np.array_equal(full.test_metrics, resumed.test_metrics)
    assert np.array_equal(full.eval_steps, resumed.eval_steps)
    assert np.array_equal(full.train_loss, resumed.train_loss)
    assert np.array_equal(full.weights, resumed.weights)

    # An existing checkpoint is never overwritten silently, and settings must match.
    with pytest.raises(ValueError, match="resume=True"):
        train(task, "famo", steps=6, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        train(task, "famo", steps=8, checkpoint_dir=tmp_path, resume=True,
              **dict(kw, batch_size=4))
    with pytest.raises(ValueError, match="past steps"):
        train(task, "famo", steps=2, checkpoint_dir=tmp_path, resume=True, **kw)


@pytest.mark.slow
def test_resume_stochastic_stateful_gramian_method(task, tmp_path):
    kw = dict(seeds=[0, 1], batch_size=8, eval_every=2, progress=False)
    full = train(task, "gradvac", steps=4, **kw)
    train(task, "gradvac", steps=2, checkpoint_dir=tmp_path, **kw)
    resumed = train(task, "gradvac", steps=4, checkpoint_dir=tmp_path, resume=True, **kw)
    _assert_trees_equal(full.params, resumed.params)
    _assert_trees_equal(full.opt_state, resumed.opt_state)
    _assert_trees_equal(full.method_state, resumed.method_state)


def test_single_task_baseline(task):
    base = single_task_baseline(task, seeds=[0, 1], steps=2, batch_size=8, eval_every=2,
                                progress=False)
    assert list(base) == list(task.task_names)
    for values in base.values():
        assert values.shape == (2,) and np.all(np.isfinite(values))


@pytest.mark.slow
def test_single_task_baseline_is_one_hot_linear(task):
    base = single_task_baseline(task, seeds=[0, 1], steps=2, batch_size=8, eval_every=2,
                                progress=False)
    alone = train(task, "linear", {"weights": [0.0, 1.0]}, seeds=[0, 1], steps=2, batch_size=8,
                  eval_every=2, progress=False)
    np.testing.assert_array_equal(base[task.task_names[1]], alone.test_metrics[:, 1])


def test_train_rejects_bad_input(task):
    with pytest.raises(ValueError, match="Valid names"):
        train(task, "not_a_method", progress=False)
    with pytest.raises(ValueError, match="Valid options"):
        train(task, "cagrad", {"nope": 1}, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(task, "equal", steps=0, progress=False)
    with pytest.raises(ValueError, match="preference"):
        train(task, "epo", preference=[1.0, 0.0, 0.0], progress=False)
    with pytest.raises(TypeError, match="Task"):
        train(object(), "equal", progress=False)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--tasks", "--methods", "--seeds", "--resume", "--quick", "--checkpoint-dir"):
        assert flag in out


def test_cli_lists(capsys):
    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    for name in mtopt.method_names():
        assert name in out
    assert main(["--list-tasks"]) == 0
    assert capsys.readouterr().out.split() == list(mtopt.tasks.task_names())


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--methods", "not_a_method"], ["not_a_method", "mgda", "upgrad", "famo"]),
        (["--methods", "cagrad:nope=1"], ["nope", "Valid options", "rescale"]),
        (["--tasks", "not_a_task"], ["not_a_task", "multidigits", "gradnorm", "wine"]),
        (["--tasks", "gradnorm:nope=1"], ["nope", "Valid options", "num_tasks"]),
        (["--methods", "epo:preference=[1,0,0]", "--tasks", SMALL_SPEC], ["preference"]),
        (["--steps", "0"], ["--steps"]),
        (["--resume"], ["--checkpoint-dir"]),
    ],
)
def test_cli_bad_input_exits_2(capsys, tmp_path, argv, expected):
    if "--tasks" not in argv:
        argv = argv + ["--tasks", SMALL_SPEC]
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert not (tmp_path / "results.md").exists()


def test_cli_end_to_end_then_resume(tmp_path, capsys):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    argv = ["--tasks", SMALL_SPEC, "--methods", "equal", "cagrad:c=0.4,rescale=1",
            "--seeds", "0", "1", "--steps", "20", "--batch-size", "8", "--eval-every", "10",
            "--out", str(out), "--no-progress", "--checkpoint-dir", str(ckpt)]
    assert main(argv) == 0
    assert "single-task" in capsys.readouterr().out
    md = (out / "results.md").read_text()
    assert "mtopt-bench --tasks" in md and "Δm" in md
    assert "| equal |" in md and "| cagrad:c=0.4,rescale=1 |" in md
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("mtopt-bench --tasks")
    (entry,) = results["tasks"].values()
    assert set(entry["methods"]) == {"equal", "cagrad:c=0.4,rescale=1"}
    for method in entry["methods"].values():
        assert set(method["metrics"]) == {"task_0", "task_1"}
        for summary in method["metrics"].values():
            assert len(summary["per_seed"]) == 2 and summary["mean"] is not None
        assert len(method["delta_m"]["per_seed"]) == 2
        assert np.isfinite(method["delta_m"]["mean"])
        assert method["history"]["eval_steps"] == [10, 20]
        assert np.asarray(method["history"]["cosines"]).shape == (2, 2, 2, 2)
    assert set(entry["single_task"]) == {"task_0", "task_1"}
    # Δm recomputed from the JSON numbers
    cagrad = entry["methods"]["cagrad:c=0.4,rescale=1"]
    metrics = np.array([cagrad["metrics"][n]["per_seed"] for n in ("task_0", "task_1")]).T
    base = [entry["single_task"][n]["mean"] for n in ("task_0", "task_1")]
    np.testing.assert_allclose(delta_m(metrics, base, [False, False]),
                               cagrad["delta_m"]["per_seed"])
    pngs = sorted(out.glob("*/*.png"))
    assert {p.name for p in pngs} == {"training_curves.png", "weights.png", "cosines.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
    # The baseline is cached, keyed by its settings.
    assert len(json.loads((out / "single_task_cache.json").read_text())) == 1

    # A non-empty checkpoint directory without --resume is refused.
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--resume" in capsys.readouterr().err
    # With --resume every run is already finished: nothing retrains, same numbers, and the
    # baseline comes from the cache.
    assert main(argv + ["--resume", "--no-plots"]) == 0
    assert "reusing" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    (entry2,) = again["tasks"].values()
    for label, method in entry["methods"].items():
        assert entry2["methods"][label]["metrics"] == method["metrics"]
        assert entry2["methods"][label]["history"] == method["history"]
        assert entry2["methods"][label]["resumed_from"] == 20


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "mtopt.runner", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "python -m mtopt.runner" in proc.stdout and "--methods" in proc.stdout
