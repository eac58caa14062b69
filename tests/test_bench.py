"""The benchmark harness's smoke mode: both sides run on a tiny model, so bench/ cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from conftest import sentiment_rows, write_rows

ROOT = Path(__file__).resolve().parent.parent


def load_bench(name: str = "run"):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_harness_runs_both_sides_and_writes_results(tmp_path, tiny_model):
    bench = load_bench()
    data = write_rows(tmp_path / "data.jsonl", sentiment_rows(48, seed=3))
    tiny = {"cls": bench.Workload("cls", "cls", str(tiny_model), str(data), 32, 16, 8, 32, 5e-3)}
    results_md = tmp_path / "RESULTS.md"
    (result,) = bench.main(["--reps", "1", "--ablate", "--results", str(results_md), "--work",
                            str(tmp_path / "work")], workloads=tiny)
    # the gen-only ablation is left out
    assert set(result["runs"]) == {"ftkit", "reference", "no length grouping", "no tokenization cache"}
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
    assert "| cls | no length grouping |" in text and "| cls | no tokenization cache |" in text
    raw = json.loads(text.split("```json\n")[1].split("\n```")[0])
    assert raw[0]["runs"]["ftkit"][0]["steps"] == 4


def test_parts_time_each_choice_against_its_alternatives(tmp_path, tiny_model):
    parts = load_bench("parts")
    data = write_rows(tmp_path / "data.jsonl", sentiment_rows(24, seed=4))
    results_md = tmp_path / "PARTS.md"
    rows = parts.main(["--model", str(tiny_model), "--data", str(data), "--rounds", "2", "--rows", "16",
                       "--batch-size", "8", "--results", str(results_md)])
    assert [(r["ftkit"], r["alternative"]) for r in rows] == [
        ("fused", "foreach"), ("fused", "one parameter at a time"), ("fused", "foreach"),
        ("fused", "one parameter at a time"), ("sdpa", "eager"),
        ("fused with the down-projection", "peft's Dropout + Linear"), ("summed on the device", ".item() every step")]
    for r in rows:
        assert [len(t) for t in r["times"].values()] == [2, 2] and all(x > 0 for t in r["times"].values() for x in t)
    text = results_md.read_text()
    assert "| LoRA training step, attention (2 batches of 8) | sdpa | eager |" in text and "torch " in text
