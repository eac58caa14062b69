"""The benchmark harness's smoke mode: both sides run on a tiny model, so bench/ cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from conftest import sentiment_rows, write_rows

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_harness_runs_both_sides_and_writes_results(tmp_path, tiny_model):
    bench = load_bench()
    data = write_rows(tmp_path / "data.jsonl", sentiment_rows(48, seed=3))
    tiny = {"cls": bench.Workload("cls", "cls", str(tiny_model), str(data), 32, 16, 8, 32, 5e-3)}
    results_md = tmp_path / "RESULTS.md"
    (result,) = bench.main(["--reps", "1", "--ablate", "--results", str(results_md), "--work",
                            str(tmp_path / "work")], workloads=tiny)
    assert set(result["runs"]) == {"ftkit", "reference", "no length grouping"}  # the gen-only one is left out
    for side in result["runs"]:
        runs = result["runs"][side]
        assert len(runs) == 1
        for r in runs:
            assert r["steps"] == 4 and r["timed_steps"] == 3  # 32 rows / batch 8, one epoch
            assert r["samples_per_s"] > 0 and r["startup_s"] > 0 and r["peak_rss_mb"] > 100
            assert 0 <= r["metric"] <= 1
    ratios = bench.ratios(result)
    assert {"samples_per_s", "startup_s", "peak_rss_mb", "metric"} <= set(ratios)
    assert ratios["samples_per_s"]["min"] <= ratios["samples_per_s"]["median"] <= ratios["samples_per_s"]["max"]
    text = results_md.read_text()
    assert "| cls (" in text and "`ftkit --help`:" in text and "torch " in text
    assert "| cls | no length grouping |" in text
    raw = json.loads(text.split("```json\n")[1].split("\n```")[0])
    assert raw[0]["runs"]["ftkit"][0]["steps"] == 4
