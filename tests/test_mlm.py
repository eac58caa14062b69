"""Masked-LM pre-training (--task mlm) on raw text, and fine-tuning from its run dir (domain adaptation)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_cli, sentiment_rows

from ftkit import config
from ftkit.tasks import TASKS


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """Unlabelled sentences as .txt (one per line) for training and jsonl `text` for evaluation."""
    d = tmp_path_factory.mktemp("mlm-data")
    train = d / "train.txt"
    train.write_text("\n".join(r["text"] for r in sentiment_rows(200, seed=3)) + "\n", encoding="utf-8")
    ev = d / "eval.jsonl"
    ev.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in sentiment_rows(40, seed=4)))
    return {"train": train, "eval": ev}


def mlm_args(model, data, out, *more):
    return ["train", "--task", "mlm", "--model", model, "--data", data["train"], "--eval-data", data["eval"],
            "--output", out, "--batch-size", "16", "--max-length", "32", "--epochs", "4", "--lr", "1e-2", *more]


@pytest.fixture(scope="module")
def mlm_run(tiny_model, text_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm") / "lora"
    result = run_cli(*mlm_args(tiny_model, text_data, out, "--method", "lora"))
    assert result.exit_code == 0, result.output
    return out


def collate(tiny_model, features, **task):
    from ftkit.modeling.loading import load_tokenizer

    cfg = config.resolve(None, {"task": "mlm"}, [f"task.{k}={v}" for k, v in task.items()])
    return TASKS.get("mlm").collator(load_tokenizer(tiny_model), cfg)(features)


def test_masking_is_bert_80_10_10_and_never_touches_special_tokens(tiny_model):
    from ftkit.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    n = 4000
    ids = [tok.cls_token_id] + [tok.convert_tokens_to_ids("film")] * n + [tok.sep_token_id]
    words = [-1] + list(range(n)) + [-1]
    torch.manual_seed(0)
    batch = collate(tiny_model, [{"input_ids": ids, "word_ids": words}])
    labels, inputs = batch["labels"][0], batch["input_ids"][0]
    chosen = labels != -100
    assert labels[0] == -100 and labels[-1] == -100  # [CLS] and [SEP] are never targets
    assert abs(chosen.float().mean().item() - 0.15) < 0.02
    share = lambda m: (m & chosen).sum().item() / chosen.sum().item()  # noqa: E731
    assert abs(share(inputs == tok.mask_token_id) - 0.8) < 0.05
    assert abs(share(inputs == ids[1]) - 0.1) < 0.05  # kept (or, rarely, replaced by itself)
    assert (labels[chosen] == ids[1]).all()  # the labels are the original tokens
    assert (inputs[~chosen] == torch.tensor(ids)[~chosen]).all()  # nothing else changes


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tiny_model):
    from ftkit.modeling.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    enc = tok(" ".join(["zebra"] * 300))  # not in the vocabulary: z ##e ##b ##r ##a
    words = [-1 if w is None else w for w in enc.word_ids()]
    torch.manual_seed(0)
    labels = collate(tiny_model, [{"input_ids": enc["input_ids"], "word_ids": words}], whole_word_mask="true")[
        "labels"][0]
    per_word: dict[int, set[bool]] = {}
    for w, lab in zip(words, labels.tolist()):
        if w >= 0:
            per_word.setdefault(w, set()).add(lab != -100)
    assert all(len(v) == 1 for v in per_word.values())  # all pieces of a word, or none
    assert 0.08 < sum(True in v for v in per_word.values()) / len(per_word) < 0.22


def test_evaluation_masks_are_fixed_and_training_masks_are_drawn_anew(tiny_model):
    task = TASKS.get("mlm")
    cfg = config.resolve(None, {"task": "mlm"}, [])
    enc = {"input_ids": [[2] + [10] * 30 + [3]] * 3, "word_ids": [[-1] + list(range(30)) + [-1]] * 3,
           "row": [[0], [1], [2]]}
    ev = task.features(enc, [None] * 3, [0, 2], cfg, training=False)
    assert len(ev) == 2
    a, b = collate(tiny_model, ev), collate(tiny_model, ev)
    assert a["labels"].equal(b["labels"]) and a["input_ids"].equal(b["input_ids"])
    tr = task.features(enc, [None] * 3, [0, 1, 2], cfg, training=True)
    draws = {tuple(collate(tiny_model, tr)["labels"].flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1


def test_long_documents_become_windows_not_truncated(tiny_model, tmp_path):
    from ftkit.data.sources import read_table
    from ftkit.modeling.loading import load_tokenizer

    doc = tmp_path / "doc.txt"
    doc.write_text("the film was good\nthe plot was dull and the acting was weak\n\n" + "a story " * 40 + "\n")
    table = read_table(str(doc))
    assert len(table) == 2  # blank-line-separated paragraphs: two documents
    cfg = config.resolve(None, {"task": "mlm", "data": {"max_length": 16}}, [])
    tok = load_tokenizer(tiny_model)
    enc = TASKS.get("mlm").encode(tok, table, cfg, None)
    assert max(map(len, enc["input_ids"])) == 16
    sizes = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in table.columns["text"]]
    rows = [r for (r,) in enc["row"]]
    assert [rows.count(0), rows.count(1)] == [-(-n // 14) for n in sizes]  # windows of 14 tokens + [CLS] [SEP]
    pieces = [i[1:-1] for i in enc["input_ids"]]
    assert sum(pieces[:rows.count(0)], []) == tok(table.columns["text"][0], add_special_tokens=False)["input_ids"]
    assert sum(pieces[rows.count(0):], []) == tok(table.columns["text"][1], add_special_tokens=False)["input_ids"]


def test_mlm_training_lowers_perplexity_and_predicts_masked_words(mlm_run, tiny_model, text_data, tmp_path):
    base = run_cli("eval", tiny_model, "--task", "mlm", "--data", text_data["eval"], "--output", tmp_path / "b.json")
    assert base.exit_code == 0, base.output
    tuned = run_cli("eval", mlm_run, "--data", text_data["eval"], "--output", tmp_path / "t.json")
    assert tuned.exit_code == 0, tuned.output
    before, after = (json.loads((tmp_path / f).read_text()) for f in ("b.json", "t.json"))
    assert after["perplexity"] < before["perplexity"] / 2, (before, after)
    assert after["masked_accuracy"] > before["masked_accuracy"]
    # the run's own held-out figure is what `ftkit eval` reproduces (same fixed masks)
    summary = json.loads((mlm_run / "metrics.json").read_text())["eval"]
    assert abs(summary["perplexity"] - after["perplexity"]) < 1e-3 * after["perplexity"]

    result = run_cli("predict", mlm_run, "--text", "the movie was [MASK] [MASK]", "--output", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.output
    (row,) = map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())
    assert len(row["masks"]) == 2 and all(len(m) == 5 for m in row["masks"])
    assert all(m[0]["score"] >= m[1]["score"] for m in row["masks"])
    refused = run_cli("predict", mlm_run, "--text", "no mask here")
    assert refused.exit_code == 2 and "no [MASK] in the text" in refused.output


def test_every_mask_of_a_text_longer_than_max_length_is_filled(mlm_run, tmp_path):
    """A text past data.max_length (32 here) is read in windows, as in training: a [MASK] beyond the first window is
    filled too (it came back with no prediction), and a short text batched with it gets what it gets alone."""
    short = "the movie was [MASK]"
    long = " ".join(["good"] * 40 + ["[MASK]"] + ["bad"] * 40 + ["[MASK]"] * 3)
    outs = []
    for i, texts in enumerate([[short], [long, short]]):
        args = [a for t in texts for a in ("--text", t)]
        result = run_cli("predict", mlm_run, *args, "--output", tmp_path / f"{i}.jsonl")
        assert result.exit_code == 0, result.output
        outs.append([json.loads(line) for line in (tmp_path / f"{i}.jsonl").read_text().splitlines()])
    (alone,), (long_row, batched) = outs
    assert len(long_row["masks"]) == 4 and all(len(m) == 5 for m in long_row["masks"])
    tokens, scores = ([[c[k] for m in row["masks"] for c in m] for row in (batched, alone)] for k in ("token", "score"))
    assert tokens[0] == tokens[1] and scores[0] == pytest.approx(scores[1], abs=1e-3)  # padding's rounding apart


def test_lora_mlm_trains_the_new_head_transform_but_not_the_tied_decoder(mlm_run):
    from safetensors import safe_open

    with safe_open(mlm_run / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("cls.predictions.transform" in k for k in keys)
    assert not any("decoder" in k or "word_embeddings" in k for k in keys)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tuning_starts_from_the_adapted_encoder(method, mlm_run, tiny_model, text_data, sentiment, tmp_path):
    """Stage 2 (`--model MLM_RUN`) starts from the MLM-adapted encoder: merged when stage 1 trained an adapter."""
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from ftkit.rundir.runs import base_model_path, load_trained

    stage1 = mlm_run
    if method == "full":
        stage1 = tmp_path / "mlm-full"
        assert run_cli(*mlm_args(tiny_model, text_data, stage1, "--method", "full", "--epochs", "1")).exit_code == 0
    base = base_model_path(str(stage1))
    adapted = load_trained(str(stage1)).model
    adapted = adapted.merge_and_unload() if method == "lora" else adapted
    key = "bert.encoder.layer.0.attention.self.query.weight"
    start = AutoModelForMaskedLM.from_pretrained(base).state_dict()[key]
    assert start.equal(adapted.state_dict()[key])
    assert not start.equal(load_file(tiny_model / "model.safetensors")[key.removeprefix("bert.")])
    assert base_model_path(str(stage1)) == base  # cached: merged once

    out = tmp_path / "cls"
    result = run_cli("train", "--task", "cls", "--method", "lora", "--model", stage1, "--data", sentiment["train"],
                     "--eval-data", sentiment["eval"], "--output", out, "--max-steps", "10", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    accuracy = json.loads((out / "metrics.json").read_text())["eval"]["accuracy"]
    if method == "lora":  # the merged base is a cache entry: when it is gone, it is made again
        shutil.rmtree(base)
    result = run_cli("eval", out, "--data", sentiment["eval"], "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == accuracy


def test_mlm_refusals(tiny_model, tiny_causal, text_data, tmp_path):
    cases = [
        (["--method", "prompt"], tiny_model, "method 'prompt' does not support task 'mlm'"),
        (["--method", "head"], tiny_model, "method 'head' needs a task with a new head"),
        (["--set", "task.mlm_probability=1.5"], tiny_model, "'task.mlm_probability': got 1.5"),
        ([], tiny_causal, "has no AutoModelForMaskedLM architecture"),
    ]
    for extra, model, expected in cases:
        out = tmp_path / "run"
        result = run_cli(*mlm_args(model, text_data, out, *extra))
        assert result.exit_code == 2 and expected in result.output, (extra, result.output)
        assert not out.exists()


def test_the_model_card_says_how_to_load_the_adapter_without_ftkit(mlm_run):
    import re

    import yaml

    from ftkit.rundir.runs import load_trained

    text = (mlm_run / "README.md").read_text()
    assert yaml.safe_load(text.split("---\n")[1])["pipeline_tag"] == "fill-mask"
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope = {"RUN_DIR": str(mlm_run)}
    exec(snippet, scope)  # the card's own lines (peft has no AutoPeftModelForMaskedLM)
    ids = torch.tensor([[2, 10, 4, 11, 3]])
    with torch.no_grad():
        expected = load_trained(str(mlm_run)).model(input_ids=ids).logits
        assert torch.allclose(scope["model"].eval()(input_ids=ids).logits, expected, atol=1e-5)
