"""Smoke test of benchmarks/step_benchmark.py: it runs and writes a complete JSON.

No timing is asserted (the machine is shared); only that every variant was timed
and every ratio is a positive finite number.
"""

import json
import math
import os

import jax
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.slow
def test_step_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import step_benchmark

    # optax.adam computes `b1 ** count` (Python float ** int32), which conftest's strict
    # dtype promotion rejects; the benchmark is not library code, so relax it here.
    with jax.numpy_dtype_promotion("standard"):
        payload = step_benchmark.main(["--quick", "--reps", "2", "--out", str(tmp_path)])
    path = tmp_path / "step_benchmark.json"
    assert path.exists()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(payload))
    assert data["config"]["tasks"] == [2, 4]
    assert [r["num_tasks"] for r in data["results"]] == [2, 4]

    def positive(x):
        return isinstance(x, float) and math.isfinite(x) and x > 0

    for record in data["results"]:
        assert set(record["variants"]) == set(step_benchmark.VARIANTS)
        for name, v in record["variants"].items():
            assert v["reps"] == 2, name
            assert len(v["samples_ms"]) == 2, name
            for field in ("median_ms", "min_ms", "q25_ms", "q75_ms", "mean_ms", "first_call_ms",
                          "ratio_to_sum", "paired_ratio_to_sum"):
                assert positive(v[field]), (record["num_tasks"], name, field, v[field])
            assert all(positive(s) for s in v["samples_ms"])
            assert v["min_ms"] <= v["median_ms"]
        assert record["variants"]["sum"]["ratio_to_sum"] == 1.0
        assert positive(record["mgda_over_jacobian"])
        assert positive(record["mgda_over_jacobian_paired"])
        checked = {c["variant"]: c for c in record["checks"]}
        assert set(checked) == set(step_benchmark.TARGETS)
        for c in checked.values():
            assert positive(c["ratio"]) and positive(c["paired_ratio"])
            assert c["pass"] == (c["ratio"] <= c["limit"])


@pytest.mark.slow
def test_aggregation_benchmark_quick(tmp_path, monkeypatch):
    """benchmarks/aggregation_benchmark.py --quick on one method of each kind and code path."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import aggregation_benchmark as bench

    # mgda: Gramian method; pmtl and epo: preference (pmtl built with eye(T));
    # equal: loss-only; moco: Jacobian method with state buffers; graddrop: own combine.
    methods = ["mgda", "pmtl", "epo", "equal", "moco", "graddrop"]
    payload = bench.main(["--quick", "--methods", *methods, "--out", str(tmp_path)])
    path = tmp_path / "aggregation_benchmark.json"
    assert path.exists()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(payload))
    assert data["config"]["tasks"] == [2, 8]
    assert [r["num_tasks"] for r in data["results"]] == [2, 8]

    def positive(x):
        return isinstance(x, float) and math.isfinite(x) and x > 0

    kinds = {"mgda": "gramian", "pmtl": "gramian", "epo": "gramian", "equal": "losses",
             "moco": "jacobian", "graddrop": "jacobian"}
    for record in data["results"]:
        assert record["kinds"] == kinds
        assert set(record["single"]) == set(methods)
        assert set(record["batch"]) == {m for m in methods if kinds[m] != "jacobian"}
        assert set(record["skipped"]["batch"]) == {"moco", "graddrop"}
        assert set(record["aggregate"]) == {"gramian", "combine"} | {
            m for m in methods if kinds[m] != "losses"}
        for phase in ("single", "batch", "aggregate"):
            for name, t in record[phase].items():
                assert t["reps"] == 2 and len(t["samples_ms"]) == 2, (phase, name)
                assert all(positive(t[k]) for k in ("median_ms", "min_ms", "first_call_ms"))
        conflict = record["conflict"]
        assert conflict["negative_cosine_fraction"] > 0 and conflict["min_cosine"] < 0
    (ratios,) = data["ratios"]
    assert ratios["num_tasks"] == 8 and positive(ratios["jacobian"]["median_ms"])
    for name, entry in ratios["methods"].items():
        assert positive(entry["ratio"])
        if kinds[name] == "gramian":
            assert entry["pass"] == (entry["ratio"] < ratios["target"])
        else:
            assert entry["pass"] is None
    tables = bench.format_tables(data["results"])
    assert "| `mgda` | gramian |" in tables and "| `gramian` | baseline |" in tables
    assert "PASS" in bench.format_ratios(data["ratios"]) or "MISS" in bench.format_ratios(
        data["ratios"])


@pytest.mark.slow
def test_sweep_benchmark_quick(tmp_path, monkeypatch):
    """benchmarks/sweep_benchmark.py --quick: every variant timed, ratios and HV times sane."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import sweep_benchmark as bench

    payload = bench.main(["--quick", "--methods", "stch", "epo", "--out", str(tmp_path)])
    path = tmp_path / "sweep_benchmark.json"
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(payload))
    assert data["config"]["num_runs"] == 4 and data["config"]["target"] == 3.0

    def positive(x):
        return isinstance(x, float) and math.isfinite(x) and x > 0

    records = data["sweep"]
    assert [(r["config"], r["method"]) for r in records] == [("quick", "stch"), ("quick", "epo")]
    for record in records:
        # The one-program sweep and the sequential baselines trained the same runs.
        assert record["max_loss_diff"] < 1e-4, record["max_loss_diff"]
        expected = {"sweep", "loop", "scan"} | ({"sharded"} if record["devices"] > 1 else set())
        assert set(record["variants"]) == expected
        for name, t in record["variants"].items():
            assert t["reps"] == 2 and len(t["samples_ms"]) == 2, name
            assert all(positive(t[k]) for k in ("median_ms", "min_ms", "first_call_ms")), name
        assert set(record["ratios"]) == expected & set(bench.PROGRAMS)
        for against in record["ratios"].values():
            assert set(against) == set(bench.BASELINES)
            for q in against.values():
                assert positive(q["ratio"]) and positive(q["paired_ratio"])
                assert q["pass"] == (q["ratio"] >= q["target"])
    hv = data["hypervolume"]
    assert [(r["n_obj"], r["kind"]) for r in hv] == [
        (2, "uniform"), (2, "front"), (3, "uniform"), (3, "front")]
    for r in hv:
        assert r["n_points"] == 500 and positive(r["hypervolume"])
        assert positive(r["timing"]["median_ms"])
        if r["kind"] == "front":
            assert r["non_dominated"] == 500
    text = bench.format_sweep_table(records)
    assert "PASS" in text or "MISS" in text


@pytest.mark.slow
def test_scale_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import scale_benchmark

    with jax.numpy_dtype_promotion("standard"):
        payload = scale_benchmark.main(["--tasks", "2", "--params", "1e5", "--reps", "1",
                                        "--seeds", "1", "2", "--no-rss", "--skip-torchjd",
                                        "--out", str(tmp_path)])
    path = tmp_path / "scale_benchmark.json"
    assert path.exists() and (tmp_path / "scale_benchmark.md").stat().st_size > 0
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(payload))


@pytest.mark.slow
def test_gramian_benchmark_quick(tmp_path, monkeypatch):
    """benchmarks/gramian_benchmark.py on the MLP and the transformer at T = 4: every
    variant timed, and the structured and low-memory paths agree with the Jacobian one."""
    monkeypatch.syspath_prepend(BENCHMARKS)
    import gramian_benchmark as bench

    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        payload = bench.main(["--quick", "--models", "mlp", "transformer", "--reps", "2",
                              "--out", str(tmp_path)])
    with open(tmp_path / "gramian_benchmark.json", encoding="utf-8") as f:
        data = json.load(f)
    assert data == json.loads(json.dumps(payload))
    assert [(r["model"], r["num_tasks"]) for r in data["results"]] == [("mlp", 4),
                                                                        ("transformer", 4)]
    for record in data["results"]:
        assert set(record["variants"]) == {"sum", "floor", "jacobian_upgrad",
                                           "low_memory_upgrad", "structured_upgrad"}
        for name, v in record["variants"].items():
            assert v["reps"] == 2 and v["median_ms"] > 0 and v["peak_bytes"] > 0, name
        for name, a in record["agreement"].items():
            assert a["gramian_rel"] < 1e-4 and a["grads_max_leaf_rel"] < 1e-4, (name, a)
    assert {c["target"] for c in data["checks"]} == {
        f"jacobian_upgrad / structured_upgrad >= {bench.JACOBIAN_TARGET}"}
