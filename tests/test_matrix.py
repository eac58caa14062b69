"""Every task x every method on tiny models: each supported cell trains, saves, reloads and predicts; each
unsupported cell is refused up front (exit 2, before any model is loaded) with the reason and what to use."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, sentiment_rows, train_args, write_rows
from ftkit import config
from ftkit.errors import UsageError
from ftkit.methods import METHODS
from ftkit.tasks import TASKS

QUANTS = ("none", "8bit", "4bit")
CELLS = [(t, m, q) for t in TASKS.names() for m in METHODS.names() for q in QUANTS]


def refusal(task: str, method: str, quant: str = "none") -> str | None:
    """Why a cell is unsupported (the methods' own up-front checks, then the machine's), or None."""
    try:
        config.build({"task": task, "method": method, "model": {"quant": quant}})
    except UsageError as e:
        return str(e)
    if quant == "4bit" and not torch.cuda.is_available():
        return "--quant 4bit: training needs a CUDA GPU"
    return None


@pytest.fixture
def data_for(tiny_model, tiny_causal, sentiment, ner, copy_data):
    return {"cls": (tiny_model, sentiment, "the film was superb"),
            "tag": (tiny_model, ner, "mary was in london"),
            "gen": (tiny_causal, copy_data, "what word : the plot was dull"),
            "mlm": (tiny_model, sentiment, "the film was [MASK]")}  # the text column, labels unused


@pytest.mark.parametrize("task, method, quant", CELLS)
def test_cell(task, method, quant, data_for, tmp_path):
    model, data, text = data_for[task]
    out = tmp_path / "run"
    # a rate that moves every method in 12 steps; full fine-tuning oscillates at the adapters' 1e-2 (its loss
    # doubled at step 2 on cls), so it takes a tenth of it
    lr = "1e-3" if method == "full" else "1e-2"
    result = run_cli(*train_args(model, data, out, "--task", task, "--method", method, "--quant", quant,
                                 "--max-steps", "12", "--lr", lr, "--set", "train.log_every=1",
                                 "--set", "train.warmup_ratio=0"))
    reason = refusal(task, method, quant)
    if reason:
        assert result.exit_code == 2 and reason in result.output
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    assert min(losses[-4:]) < losses[0], losses
    extra = ["--max-new-tokens", "2"] if task == "gen" else []
    result = run_cli("predict", out, "--text", text, "--output", tmp_path / "p.jsonl", *extra)
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1


def test_matrix_has_refusals_that_say_what_to_use():
    assert "use lora or full" in refusal("gen", "head")
    assert "use an adapter method such as lora" in refusal("cls", "full", "8bit")
    assert "prefix tuning does not support; use lora or prompt" in refusal("cls", "prefix", "8bit")


def test_readme_support_table_is_current():
    from pathlib import Path

    from ftkit.commands import support

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert support.block() in readme, "README support table is stale: run `python -m ftkit.commands.support --write`"


@pytest.mark.parametrize("task", TASKS.names())
@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_trains_the_same_model(task, method, data_for, tmp_path):
    """Recomputing activations (RNG state preserved) must not change what is learned, only the memory."""
    from ftkit.rundir.base import load_for_training

    model, data, _ = data_for[task]
    losses = {}
    for gc in (False, True):
        out = tmp_path / f"gc-{gc}"
        result = run_cli(*train_args(model, data, out, "--task", task, "--method", method, "--max-steps", "6",
                                     "--lr", "1e-2", "--set", "train.log_every=1",
                                     *(["--gradient-checkpointing"] if gc else [])))
        assert result.exit_code == 0, result.output
        losses[gc] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                      if r["type"] == "train"]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    cfg = config.build({"task": task, "model": {"name": str(model)}, "train": {"gradient_checkpointing": True}})
    loaded, *_ = load_for_training(cfg, TASKS.get(task), ["negative", "positive"] if task != "gen" else [])
    assert loaded.is_gradient_checkpointing


def test_prefix_refuses_gradient_checkpointing():
    with pytest.raises(UsageError, match="prefix.*gradient_checkpointing"):
        config.build({"method": "prefix", "train": {"gradient_checkpointing": True}})


@pytest.mark.parametrize("task", TASKS.names())
def test_bf16_trains_every_task(task, data_for, tmp_path):
    model, data, _ = data_for[task]
    out = tmp_path / "run"
    result = run_cli(*train_args(model, data, out, "--task", task, "--precision", "bf16", "--max-steps", "12",
                                 "--lr", "1e-2", "--set", "train.log_every=1", "--set", "train.warmup_ratio=0"))
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    assert min(losses[-4:]) < losses[0], losses



@pytest.mark.parametrize("name", list(__import__("ftkit.config.recipes", fromlist=["shipped"]).shipped()))
def test_shipped_recipe_trains_on_a_tiny_model(name, data_for, tmp_path):
    """Each recipe's own task/method settings, on the tiny model and data of its task, for a few steps."""
    from ftkit.config import recipes

    cfg = config.resolve(recipes.find(name), {}, [])
    model, data, _ = data_for[cfg.task_name]
    kind = cfg.task.get("problem") or "single_label"
    if kind != "single_label":  # the sentiment rows' labels as the recipe's kind of problem wants them
        as_kind = {"regression": lambda y: 1.0 if y == "positive" else -1.0, "multi_label": lambda y: [y]}[kind]
        data = {split: write_rows(tmp_path / f"{split}.jsonl", [r | {"label": as_kind(r["label"])} for r in
                                                               sentiment_rows(n, seed=seed)])
                for split, n, seed in (("train", 64, 1), ("eval", 16, 2))}
    out = tmp_path / "run"
    result = run_cli("train", name, *train_args(model, data, out, "--max-steps", "4", "--batch-size", "8")[1:])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4


@pytest.mark.parametrize("task", TASKS.names())
def test_dry_run_describes_without_loading_or_writing(task, data_for, tmp_path, monkeypatch):
    import ftkit.rundir.base

    def never(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(ftkit.rundir.base, "load_for_training", never)
    model, data, _ = data_for[task]
    out = tmp_path / "run"
    result = run_cli(*train_args(model, data, out, "--task", task, "--max-length", "6", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "# resolved config" in result.output and f"task:\n  name: {task}" in result.output
    fate = TASKS.get(task).long_rows
    assert f"rows would be {fate} at data.max_length=6" in result.output
    long_rows = int(result.output.split(f" rows would be {fate}")[0].rsplit(";", 1)[1])
    assert long_rows > 0
    assert ("labels: " in result.output) == TASKS.get(task).labelled
    assert "trainable" in result.output and not out.exists()
