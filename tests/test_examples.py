"""The examples run end to end with few steps; full runs (marked slow) check the anchors."""

import importlib.util
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mtopt import problems  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOY_METHODS = ["LS", "MGDA", "PCGrad", "CAGrad (c=0.4)", "Nash-MTL", "UPGrad", "FAMO"]


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-based modules (flax.linen) look themselves up
    spec.loader.exec_module(module)
    return module


def run_main(module, argv):
    # Examples are user code: they run under JAX's default (standard) dtype promotion,
    # which optax's Adam needs; the suite's conftest turns on strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        return module.main(argv)


def assert_png(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def check_toy_outputs(out, payload, steps):
    for ext in ("md", "json", "png"):
        assert (out / f"toy_trajectories.{ext}").exists()
    assert_png(out / "toy_trajectories.png")
    saved = json.loads((out / "toy_trajectories.json").read_text())
    assert saved["args"]["steps"] == steps
    rows = saved["rows"]
    assert len(rows) == len(TOY_METHODS) * 5
    assert sorted({r["method"] for r in rows}) == sorted(TOY_METHODS)
    toy = problems.toy(scale=0.1)
    starts = np.asarray(toy.start_points)
    for r in rows:
        x, f = np.asarray(r["x"]), np.asarray(r["f"])
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(f))
        assert any(np.array_equal(r["start"], s) for s in starts)
        np.testing.assert_allclose(f, np.asarray(toy.f(jax.numpy.asarray(x, "float32"))),
                                   rtol=1e-4, atol=1e-4)
        assert r["front_distance"] >= 0.0
        assert r["reached_front"] == (r["front_distance"] < 0.05)
        assert r["x2_gap"] == pytest.approx(abs(x[1] + 8.3552), abs=1e-5)
    assert set(saved["anchors"]) == {"ls_stuck_from_9_9", "mgda_reaches_front_from_all_starts"}
    assert payload["rows"] == rows
    return rows


def test_toy_trajectories_few_steps(tmp_path, capsys):
    steps = 300
    module = load("toy_trajectories")
    payload = run_main(module, ["--steps", str(steps), "--out", str(tmp_path)])
    rows = check_toy_outputs(tmp_path, payload, steps)
    printed = capsys.readouterr().out
    assert "| method | start | final x |" in printed and "Anchors" in printed
    for r in rows:
        moved = np.max(np.abs(np.asarray(r["x"]) - np.asarray(r["start"])))
        # Adam moves a coordinate by at most about lr per step (<= 3.2 lr in the worst case).
        assert 0.0 < moved <= 3.2 * module.LR * steps
    # 300 steps are far too few to reach the front from any start (it is > 7 away).
    assert not any(r["reached_front"] for r in rows)


def test_pareto_front_quick(tmp_path, capsys):
    module = load("pareto_front")
    payload = run_main(module, ["--quick", "--steps", "200", "--k", "6", "--partitions", "3",
                                "--out", str(tmp_path)])
    for name in ("pareto_front.md", "pareto_front.json", "pareto_front_2d.png",
                 "pareto_front_3d.png"):
        assert (tmp_path / name).exists()
    assert_png(tmp_path / "pareto_front_2d.png")
    assert_png(tmp_path / "pareto_front_3d.png")
    assert "| problem | method | K |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "pareto_front.json").read_text())
    rows = saved["results"]
    assert [(r["problem"], r["method"]) for r in rows] == [
        ("zdt1", "EPO"), ("zdt1", "STCH"), ("dtlz2", "EPO"), ("dtlz2", "STCH")]
    for r in rows:
        k = 6 if r["problem"] == "zdt1" else 10  # Das-Dennis H = 3, 3 objectives: 10
        assert r["k"] == k and r["finite"] == k
        points = np.asarray(saved["points"][r["problem"]][r["method"]])
        assert points.shape == (k, 2 if r["problem"] == "zdt1" else 3)
        assert 0.0 < r["hv"] <= r["hv_true"] * (1 + 1e-5)
        assert r["hv_ratio"] == pytest.approx(r["hv"] / r["hv_true"])
        assert r["hv_ratio"] > 0.6
        assert r["gd"] < 0.05  # already close to the front after 200 steps
        assert 0.0 < r["igd"] < 1.0
        assert 1 <= r["non_dominated"] <= k
    # the true fronts' hypervolumes for ref 1.2: ZDT1 1.44 - 1/3 (continuous), DTLZ2
    # 1.728 - pi/6; the dense samples are slightly below
    hv_true = {r["problem"]: r["hv_true"] for r in rows}
    assert hv_true["zdt1"] == pytest.approx(1.44 - 1.0 / 3.0, abs=2e-3)
    assert hv_true["dtlz2"] == pytest.approx(1.728 - np.pi / 6.0, abs=2e-2)
    assert hv_true["dtlz2"] < 1.728 - np.pi / 6.0
    assert payload["results"] == rows


@pytest.mark.slow
def test_toy_trajectories_full_protocol_anchors(tmp_path):
    module = load("toy_trajectories")
    payload = run_main(module, ["--out", str(tmp_path)])  # 35,000 steps
    rows = check_toy_outputs(tmp_path, payload, 35000)
    anchors = payload["anchors"]
    assert anchors["ls_stuck_from_9_9"]["holds"]
    assert anchors["mgda_reaches_front_from_all_starts"]["holds"]
    ls_stuck = next(r for r in rows if r["method"] == "LS" and r["start"] == [9.0, 9.0])
    assert ls_stuck["distance_to_reference_x"] < 0.1
    for r in rows:
        if r["method"] == "MGDA":
            assert r["distance_to_reference_x"] < 0.2


@pytest.mark.slow
def test_pareto_front_full(tmp_path):
    module = load("pareto_front")
    payload = run_main(module, ["--no-plot", "--out", str(tmp_path)])
    for r in payload["results"]:
        assert r["finite"] == r["k"]
        if r["problem"] != "zdt3":
            assert r["non_dominated"] == r["k"]
            assert r["hv_target_ratio"] > 0.98
            assert r["gd"] < 0.01


@pytest.mark.parametrize("name", ["equinox_two_heads", "linen_two_heads"])
def test_model_library_examples(name, tmp_path, capsys):
    """The equinox and linen loops train every method; the low-memory path gives the full
    path's weights; the JSON holds what was printed."""
    payload = run_main(load(name), ["--steps", "40", "--out", str(tmp_path)])
    results = payload["results"]
    full, light = results["upgrad"], results["upgrad (low_memory)"]
    for task in ("cls", "reg"):
        assert full["mean_weights"][task] == pytest.approx(light["mean_weights"][task], rel=1e-4)
    assert results["equal"]["mean_weights"] == {"cls": 1.0, "reg": 1.0}
    for row in results.values():
        assert np.isfinite(row["reg_mse"]) and 0.0 <= row["cls_acc"] <= 1.0
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["results"] == results
    assert "upgrad (low_memory)" in capsys.readouterr().out


def test_nnx_two_heads_runs_every_setting(tmp_path):
    """Every setting trains; the linear weights given by task name land on their tasks
    (the loss dict is built in the order reg, cls); the optax-chain route reports the
    weights through mtopt.aggregator_info."""
    results = run_main(load("nnx_two_heads"), ["--steps", "25", "--out", str(tmp_path)])
    assert len(results) == 7
    assert results["linear[1,0.2]"]["mean_w_reg"] == pytest.approx(1.0)
    assert results["linear[1,0.2]"]["mean_w_cls"] == pytest.approx(0.2)
    assert 0.0 < results["mgda(aggregator)"]["mean_w_reg"] < 1.0
    for row in results.values():
        assert np.isfinite(row["test_mse"]) and 0.0 <= row["test_acc"] <= 1.0
    assert_png(tmp_path / "nnx_two_heads.png")
