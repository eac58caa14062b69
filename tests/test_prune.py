"""`ftkit prune`: importance that means something, a really smaller model that stock transformers loads, outputs
equal to the masked original before recovery, the chain train -> distill -> prune -> ONNX -> eval, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_bert, run_cli, train_args


def tiny_classifier(layers: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 60, (8, 12), generator=g), "attention_mask": torch.ones(8, 12,
                                                                                                  dtype=torch.long),
             "labels": torch.randint(0, 3, (8,), generator=g)} for _ in range(n)]


def test_a_dead_neuron_and_a_skipped_layer_score_zero():
    from ftkit.modeling.pruning import feed_forwards, importance, plan

    model = tiny_classifier()
    with torch.no_grad():
        feed_forwards(model)[0].down.weight[:, 7] = 0  # neuron 7 of layer 0 reaches nothing
    neurons, layers = importance(model, batches())
    assert neurons[0][7] == 0 and (neurons[0] > 0).sum() == 63
    assert all(v > 0 for v in layers)
    kept_layers, kept = plan(neurons, layers, ffn=0.25, drop_layers=1)
    assert len(kept_layers) == 2 and all(len(k) == 48 for k in kept)
    assert 0 not in kept_layers or 7 not in kept[kept_layers.index(0)].tolist()
    assert kept_layers == sorted(sorted(range(3), key=lambda i: -layers[i])[:2])  # the two most important


def test_the_pruned_model_is_smaller_loads_in_stock_transformers_and_equals_the_masked_original(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ftkit.modeling.pruning import feed_forwards, importance, keep_layers, keep_neurons, plan

    model = tiny_classifier()
    data = batches()
    kept_layers, kept = plan(*importance(model, data), ffn=0.5, drop_layers=1)
    masked = copy.deepcopy(model)  # the original with the removed units switched off, not removed
    blocks = feed_forwards(masked)
    with torch.no_grad():
        for layer, idx in zip(kept_layers, kept):
            off = torch.ones(64, dtype=torch.bool)
            off[idx] = False
            blocks[layer].down.weight[:, off] = 0
    keep_layers(masked, kept_layers)
    keep_layers(model, kept_layers)
    keep_neurons(model, kept)
    model.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    assert loaded.config.num_hidden_layers == 2 and loaded.config.intermediate_size == 32
    assert loaded.bert.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    assert loaded.bert.encoder.layer[0].output.dense.weight.shape == (32, 32)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in tiny_classifier().parameters())
    masked.eval()
    with torch.no_grad():
        for batch in data:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            assert torch.allclose(loaded(**inputs).logits, masked(**inputs).logits, atol=1e-5)


@pytest.fixture(scope="module")
def run(tiny_model, sentiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    assert run_cli(*train_args(tiny_model, sentiment, out, "--method", "lora", "--max-steps", "20")).exit_code == 0
    return out


def test_train_distill_prune_export_evaluate(run, sentiment, tmp_path, cli):
    from transformers import AutoModelForSequenceClassification

    student = tmp_path / "student"
    assert cli("distill", run, "--output", student, "--max-steps", "10", "--batch-size", "16").exit_code == 0
    pruned = tmp_path / "pruned"
    result = cli("prune", student, "--output", pruned, "--ffn", "0.5", "--max-steps", "10", "--batch-size", "16",
                 "--distil")
    assert result.exit_code == 0, result.output
    report = json.loads((pruned / "prune.json").read_text())
    assert report["intermediate_size"] == {"before": 64, "after": 32}
    assert report["parameters"]["after"] < report["parameters"]["before"]
    stock = AutoModelForSequenceClassification.from_pretrained(pruned)
    assert stock.config.intermediate_size == 32 and stock.config.num_hidden_layers == 1
    assert f"teacher: {student}" in (pruned / "ftkit.yaml").read_text()  # recovered by distillation
    assert cli("export", pruned, "--format", "onnx", "--output", tmp_path / "onnx").exit_code == 0
    result = cli("eval", tmp_path / "onnx", "--data", sentiment["eval"], "--output", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    held_out = json.loads((pruned / "metrics.json").read_text())["eval"]
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == held_out["accuracy"]


@pytest.fixture(scope="module")
def deep_run(sentiment, tmp_path_factory):
    """A fully fine-tuned 4-layer tiny classifier."""
    model = build_tiny_bert(tmp_path_factory.mktemp("deep-bert"), layers=4)
    out = tmp_path_factory.mktemp("deep") / "run"
    assert run_cli(*train_args(model, sentiment, out, "--method", "full", "--max-steps", "20")).exit_code == 0
    return out


def test_gradual_pruning_is_the_chain_of_one_layer_prunings(deep_run, tmp_path, cli):
    """--layers 2 --gradual gives what two `prune --layers 1`, the second from the first, give by hand: the same
    weights, layers and held-out metrics; the first stage is a cached run dir, reused by a rerun."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from ftkit.data import catalog

    common = ["--max-steps", "8", "--batch-size", "16", "--distil", "--seed", "3"]
    hand, by_hand = tmp_path / "one", tmp_path / "two"
    assert cli("prune", deep_run, "--output", hand, "--layers", "1", *common).exit_code == 0
    assert cli("prune", hand, "--output", by_hand, "--layers", "1", "--ffn", "0.5", *common).exit_code == 0
    gradual = tmp_path / "gradual"
    result = cli("prune", deep_run, "--output", gradual, "--layers", "2", "--ffn", "0.5", "--gradual", *common)
    assert result.exit_code == 0, result.output

    report = json.loads((gradual / "prune.json").read_text())
    first, second = (json.loads((d / "prune.json").read_text()) for d in (hand, by_hand))
    assert report["layers"] == {"before": 4, "kept": [first["layers"]["kept"][i] for i in second["layers"]["kept"]]}
    assert report["parameters"] == {"before": first["parameters"]["before"], "after": second["parameters"]["after"]}
    assert report["intermediate_size"] == {"before": 64, "after": 32} and report["layers_removed"] == 2
    stage = report["stages"][0]
    assert stage["held_out"] == json.loads((hand / "metrics.json").read_text())["eval"]
    assert f"teacher: {deep_run.resolve()}" in (Path(stage["recovered"]) / "ftkit.yaml").read_text()
    assert f"teacher: {stage['recovered']}" in (gradual / "ftkit.yaml").read_text()  # each from the stage before
    expected, got = load_file(by_hand / "model.safetensors"), load_file(gradual / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert json.loads((gradual / "metrics.json").read_text())["eval"] == \
        json.loads((by_hand / "metrics.json").read_text())["eval"]
    stock = AutoModelForSequenceClassification.from_pretrained(gradual)
    assert stock.config.num_hidden_layers == 2 and stock.config.intermediate_size == 32

    stages = catalog.cache_dir() / "prune-stages"
    built = sorted(stages.iterdir())
    result = cli("prune", deep_run, "--output", gradual, "--layers", "2", "--ffn", "0.5", "--gradual", "--overwrite",
                 *common)
    assert result.exit_code == 0 and sorted(stages.iterdir()) == built  # the first stage is not trained again
    assert "stage 1 of 2" in result.output and f"stage 2 of 2, one layer removed and recovered into {gradual}" \
        in result.output


def test_bad_input_is_refused(run, tiny_model, tmp_path, cli, monkeypatch):
    import ftkit.rundir.runs

    def never(*a, **k):
        raise AssertionError("the run was loaded to measure importance")

    monkeypatch.setattr(ftkit.rundir.runs, "load_trained", never)
    cases = [(["--ffn", "0.3", "--set", "train.max_steps=-2"], "train.max_steps"),
             (["--ffn", "0.3", "--epochs", "0"], "'--epochs': got 0, expected a number > 0"),
             (["--heads", "0.5", "--ffn", "0.2"], "attention heads are not pruned"),
             (["--layers", "2"], "remove 0 to 1"), (["--ffn", "1.0"], "'--ffn': got 1, expected a number >= 0 and < 1"),
             ([], "nothing to prune"), (["--ffn", "0.3", "--samples", "0"], "--samples"),
             (["--ffn", "0.3", "--gradual"], "give --layers N")]
    for extra, message in cases:
        result = cli("prune", run, "--output", tmp_path / "out", *extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("prune", run, "--output", tmp_path / "out", "--layers", "1", "--gradual")
    assert result.exit_code == 2 and "without a launcher" in result.output, result.output
    monkeypatch.delenv("WORLD_SIZE")
    result = cli("prune", tiny_model, "--output", tmp_path / "out", "--ffn", "0.3")
    assert result.exit_code == 2 and "not a finished ftkit run dir" in result.output
    assert not (tmp_path / "out").exists()
