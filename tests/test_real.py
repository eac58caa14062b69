"""The real built-in model and data (fetched from their packages on first use). Slower: marked `real`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import run_cli

pytestmark = pytest.mark.real


def test_polarity_dataset():
    from ftkit.data import read_table

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


def test_lora_on_polarity_reaches_075(tmp_path):
    """The main job, shortened to 2 epochs: held-out accuracy must clear 0.75."""
    out = tmp_path / "run"
    result = run_cli("train", "--output", out, "--epochs", "2", "--max-length", "64")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["eval"]["accuracy"] >= 0.75, summary["eval"]
    assert summary["train"]["eval_rows"] == 400
