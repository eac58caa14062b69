"""Padding-free (packed, prefix-shared) training batches for decoder-only models: ftkit/data/packing.py."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, train_args
from ftkit import config
from ftkit.data import packing
from ftkit.data.packing import IGNORE

PREFIX = [5, 6, 7, 8]


def _rows(seed: int = 0) -> list[dict]:
    """Rows sharing a 4-token prompt prefix, then their own prompt tail (unscored) and response (scored)."""
    import random

    rng = random.Random(seed)
    rows = []
    for n_prompt, n_reply in [(3, 4), (1, 6), (5, 2), (2, 3)]:
        prompt = PREFIX + [rng.randrange(9, 40) for _ in range(n_prompt)]
        reply = [rng.randrange(9, 40) for _ in range(n_reply)]
        rows.append({"input_ids": prompt + reply, "labels": [IGNORE] * len(prompt) + reply})
    return rows


def test_the_shared_prefix_stops_before_anything_scored_or_a_row_end():
    rows = _rows()
    assert packing.shared_prefix([r["input_ids"] for r in rows], [r["labels"] for r in rows]) == 4
    one = rows[0]
    assert packing.shared_prefix([one["input_ids"]], [one["labels"]]) == 0  # nothing to share
    text = PREFIX + [9, 10]  # plain text: every token is scored, so position 0's logits already count, per row
    assert packing.shared_prefix([text, text], [text, text]) == 0
    same = rows[1]  # identical rows still keep a token of their own, and their scored positions
    # not the last prompt token: its logits are scored, per row
    assert packing.shared_prefix([same["input_ids"]] * 3, [same["labels"]] * 3) == 4


def test_a_packed_batch_has_no_padding_and_scores_only_the_labelled_positions():
    rows = _rows()
    batch = packing.pack(rows)
    tokens = sum(len(r["input_ids"]) for r in rows)
    inputs = batch["packed"]
    assert inputs["input_ids"].shape == (1, tokens - 3 * len(PREFIX))  # the prefix once, not four times
    # positions restart after the prefix for every row: those of the row in a padded batch
    assert inputs["position_ids"][0].tolist() == [*range(4)] + [j for r in rows for j in range(4, len(r["input_ids"]))]
    assert batch["targets"].tolist() == [t for r in rows for t in r["labels"][1:] if t != IGNORE]
    assert batch["target_rows"].tolist() == [r for r, row in enumerate(rows) for t in row["labels"][1:] if t != IGNORE]
    flat = inputs["input_ids"][0]  # each kept position holds the token before its target
    kept = [flat[i].item() for i in inputs["logits_to_keep"]]
    assert kept == [r["input_ids"][j - 1] for r in rows for j in range(1, len(r["labels"])) if r["labels"][j] != IGNORE]


@pytest.fixture()
def causal(tiny_causal):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal)


def _padded_loss(model, rows):
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
    att = (torch.arange(width)[None] < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]).long()
    return model(input_ids=ids, attention_mask=att, labels=labels).loss


@pytest.mark.parametrize("method", ["full", "lora"])
def test_packed_loss_and_gradients_equal_the_padded_batch(causal, method, tmp_path):
    import torch

    model = causal
    cfg = config.build({"task": "gen", "method": method, "data": {"max_length": 32}})
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"))
    rows = _rows()
    model.train()
    want = _padded_loss(model, rows)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    assert packing.enable(model, cfg, rows) is None
    got = packing.loss(model, packing.pack(rows))
    got.backward()
    assert abs(got.item() - want.item()) < 1e-5
    for name, g in want_grads.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, g, atol=1e-5), name
    # the padded batches of evaluation still go through plain SDPA with the same result
    with torch.no_grad():
        assert abs(_padded_loss(model, rows).item() - want.item()) < 1e-6
    model.save_pretrained(tmp_path)  # the attention choice is not saved
    saved = json.loads((tmp_path / ("adapter_config.json" if method == "lora" else "config.json")).read_text())
    assert packing.ATTENTION not in json.dumps(saved)


def test_models_and_methods_it_cannot_serve_are_named(tiny_causal, tiny_seq2seq):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, EncoderDecoderModel

    cfg = config.build({"task": "gen", "method": "prefix", "data": {"max_length": 32}})
    eager = AutoModelForCausalLM.from_pretrained(tiny_causal, attn_implementation="eager")
    assert "eager attention" in packing.enable(eager, cfg, _rows())
    prefix = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_causal),
                            PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    assert "virtual tokens" in packing.enable(prefix, cfg, _rows())
    assert "encoder-decoder" in packing.enable(EncoderDecoderModel.from_pretrained(tiny_seq2seq), cfg, _rows())
    windowed = AutoModelForCausalLM.from_pretrained(tiny_causal)
    windowed.config.sliding_window = 8
    assert "sliding attention window" in packing.enable(windowed, cfg, _rows())


def test_a_model_whose_packed_logits_differ_keeps_padded_batches(causal, monkeypatch):
    cfg = config.build({"task": "gen", "data": {"max_length": 32}})

    def ignores_the_rows(module, query, key, value, attention_mask, ftkit_segments=None, **kw):  # attends across
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kw)

    monkeypatch.setattr(packing, "attention", ignores_the_rows)
    assert "differ" in packing.enable(causal, cfg, _rows())
    assert causal.config._attn_implementation == "sdpa"


def test_training_with_and_without_packing_gives_the_same_run(tiny_causal, copy_data, tmp_path):
    """Without dropout the two batch layouts are the same computation: same losses step by step (the same batches:
    grouping by length is set, as it defaults to off for packed batches only)."""
    runs = {}
    for packed in ("true", "false"):
        out = tmp_path / packed
        result = run_cli(*train_args(tiny_causal, copy_data, out, "--task", "gen", "--max-steps", "6",
                                     "--set", "method.dropout=0", "--set", f"task.padding_free={packed}",
                                     "--set", "train.log_every=1", "--set", "train.group_by_length=true",
                                     "--gradient-checkpointing"))
        assert result.exit_code == 0, result.output
        runs[packed] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert ("padding-free batches" in result.output) == (packed == "true")
    losses = {k: [r["loss"] for r in v if r["type"] == "train"] for k, v in runs.items()}
    assert len(losses["true"]) == 6
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-4)
    evals = {k: json.loads((tmp_path / k / "metrics.json").read_text())["eval"] for k in runs}
    assert evals["true"]["perplexity"] == pytest.approx(evals["false"]["perplexity"], rel=1e-5)
    assert evals["true"]["tokens"] == evals["false"]["tokens"]
    # `ftkit eval` scores the same tokens the same way in either layout
    scored = {}
    for packed in ("true", "false"):
        out = tmp_path / f"eval-{packed}.json"
        result = run_cli("eval", tmp_path / "true", "--data", copy_data["eval"], "--output", out,
                         "--set", f"task.padding_free={packed}")
        assert result.exit_code == 0, result.output
        scored[packed] = json.loads(out.read_text())
    assert scored["true"]["loss"] == pytest.approx(scored["false"]["loss"], rel=1e-5)
    assert scored["true"]["tokens"] == scored["false"]["tokens"] == evals["true"]["tokens"]
