"""The benchmark harness's smoke mode: both sides run on a tiny model, so bench/ cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
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
    assert set(result["runs"]) == {"ftkit", "reference", "no length grouping", "no tokenization cache",
                                   "no LoRA dropout"}
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
    assert all(f"| cls | {name} |" in text for name in ("no length grouping", "no tokenization cache",
                                                           "no LoRA dropout"))
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


def gpu_sh(*args, env=None, timeout=60):
    import os
    import subprocess

    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_gpu_script_refuses_bad_arguments(tmp_path):
    for args in ([], ["run"], ["frobnicate"], ["prepare", "extra"], ["run", tmp_path, "--device", "tpu"]):
        p = gpu_sh(*args)
        assert p.returncode == 2 and p.stderr.startswith("usage: bench/gpu.sh"), (args, p.stderr)
    # the GPU run on a machine without one: one line, exit 2, before anything is built
    p = gpu_sh("run", tmp_path / "out", "--work", tmp_path / "work", env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 2 and "torch sees no CUDA device" in p.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.real
def test_gpu_script_smoke_run_on_cpu(tmp_path):
    """bench/gpu.sh's --device cpu run: every check runs on the tiny models; CUDA-only paths are refused."""
    p = gpu_sh("run", tmp_path / "out", "--device", "cpu", "--work", tmp_path / "work", timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = {r["check"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["results"]}
    assert len(results) == 19 and all(r["status"] in ("pass", "skip") for r in results.values())
    for check in ("lora gen fp16 + grad scaler", "smol gen 4bit QLoRA: memory"):
        assert results[check]["refused_on_cpu"].startswith("error:")
    assert results["resume after SIGTERM"]["bit_identical"] is True
    assert results["accelerate FSDP, 1 process"]["loss_last"] < results["accelerate FSDP, 1 process"]["loss_first"]
    assert results["export --merge of the 8bit run"]["merge_diff_over_std"] < 1e-3
    assert results["cls 8bit LoRA + eval/predict"]["head_dtype"] == "float32"
    for check in ("lora cls fp32", "lora tag bf16", "lora gen fp32"):
        assert results[check]["loss_last"] < results[check]["loss_first"]
    assert "| resume after SIGTERM | pass |" in (tmp_path / "out" / "results.md").read_text()
    assert "$ " in (tmp_path / "out" / "logs.txt").read_text()


@pytest.mark.real
def test_defaults_study_scores_every_setting_and_seed_on_an_unseen_corpus(tmp_path, tiny_model):
    """bench/defaults.py end to end on a corpus no default was chosen on: the corpus file as the docstring says,
    one trial per setting and seed, the table's figures the runs' own."""
    study = load_bench("defaults")
    results, work = tmp_path / "DEFAULTS.md", tmp_path / "work"
    study.main(["--study", "unseen", "--seeds", "1,2", "--datasets", "uncertainty,oanc", "--results", str(results),
                "--work", str(work), "--extra", f"--model {tiny_model} --max-steps 2 --batch-size 8"])
    rows = [json.loads(line) for line in (work / "uncertainty.jsonl").read_text().splitlines()]
    assert len(rows) == 3000 and {r["label"] for r in rows} == {"certain", "uncertain"}
    assert sum(r["label"] == "certain" for r in rows) == 1500
    tagged = [json.loads(line) for line in (work / "oanc.jsonl").read_text().splitlines()]
    assert len(tagged) == study.OANC_SENTENCES and all(len(r["tokens"]) == len(r["tags"]) > 0 for r in tagged)
    text = results.read_text()
    for name, task in (("uncertainty", "cls"), ("oanc", "tag")):
        for i, label in enumerate(study.STUDIES["unseen"]):
            figures = [json.loads((work / f"{name}-{i}-{s}" / "metrics.json").read_text())["eval"]["accuracy"]
                       for s in (1, 2)]
            assert f"| {label} | {figures[0]:.4f} / {figures[1]:.4f} |" in text
        assert f"**{name}** ({task}; held-out accuracy)" in text
    assert "TF-IDF + logistic regression on the same splits" in text  # cls only: once
    assert text.count("TF-IDF") == 1


def test_the_readme_shows_the_recorded_figures():
    """The README's figure blocks are what bench/figures.py renders from bench/FIGURES.json (whose demo figure
    tests/test_real.py checks against a real run): edited by hand, or recorded without rewriting, they fail here."""
    figures = load_bench("figures")
    record = json.loads(figures.RECORD.read_text())
    assert set(record) == {f.name for f in figures.FIGURES}
    text = figures.README.read_text()
    assert figures.rewrite(text, figures.render(record)) == text, "run `python bench/figures.py --render`"
    for f in figures.FIGURES:
        assert record[f.name]["command"] == "ftkit " + " ".join(f.command)


def test_the_install_docs_state_what_the_lock_pins():
    """docs/install.md's count of pinned dependencies and the versions it names are the lock's."""
    import re

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements" / "lock.txt").read_text(), re.M))
    text = (ROOT / "docs" / "install.md").read_text()
    line = re.search(r"`requirements/lock.txt` pins all (\d+) dependencies but torch \(([^)]*)\)", text, re.S)
    assert line, "docs/install.md names the lock's count and versions"
    assert int(line.group(1)) == len(pins) and "torch" not in pins
    named = re.findall(r"([a-z][\w-]*) (\d[\w.]*)", line.group(2))
    assert named and {name: version for name, version in named} == {name: pins[name] for name, _ in named}
