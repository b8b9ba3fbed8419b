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
