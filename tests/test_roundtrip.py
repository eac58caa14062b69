"""train -> eval -> predict -> export for every registered method, through the real CLI."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, train_args
from ftkit.methods import METHODS


@pytest.fixture(scope="module", params=METHODS.names())
def trained(request, tiny_model, sentiment, tmp_path_factory):
    method = request.param
    out = tmp_path_factory.mktemp(f"run-{method}") / "run"
    # measured on this tiny model over seeds 1, 2, 3, 42: LoRA at 1e-2 x 12 epochs ends at 0.85-0.95 accuracy, at
    # 2e-2 x 8 epochs anywhere in 0.55-0.85 (the dropout stream decides)
    lr = {"full": "5e-3", "head": "5e-2", "prompt": "5e-2", "prefix": "2e-2"}.get(method, "1e-2")
    epochs = {"head": "20"}.get(method, "12")  # a linear probe on random frozen features needs more passes
    result = run_cli(*train_args(tiny_model, sentiment, out, "--method", method, "--epochs", epochs, "--lr", lr,
                                 "--set", "train.log_every=2"))
    assert result.exit_code == 0, result.output
    return method, out, result


def test_run_dir_is_complete(trained):
    method, out, result = trained
    names = {p.name for p in out.iterdir()}
    assert {"ftkit.yaml", "metrics.json", "metrics.jsonl", "README.md", "config.json", "tokenizer.json"} <= names
    if method not in ("full", "head"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        assert "model.safetensors" not in names
    else:
        assert "model.safetensors" in names
    assert "checkpoints" not in names  # the best checkpoint became the run's weights
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert "held-out: " in result.output


def test_loss_goes_down_and_model_learns(trained):
    method, out, _ = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses) >= 5
    summary = json.loads((out / "metrics.json").read_text())
    # Every method lowers the loss. On a tiny *random* backbone only the methods that change most of it learn the
    # task well in a few steps; the frozen-backbone ones (head, prompt, prefix, IA3's rescaling, AdaLoRA's pruned
    # ranks) have little to steer, so only the loss is asserted for them.
    assert sum(losses[-3:]) < sum(losses[:3])
    if method in ("full", "lora", "dora"):
        assert sum(losses[-3:]) < 0.85 * sum(losses[:3])
        assert summary["eval"]["accuracy"] >= 0.7  # chance is 0.5; p < 0.01 on 40 rows
    evals = [r for r in records if r["type"] == "eval"]
    assert summary["eval"]["accuracy"] == max(r["eval_accuracy"] for r in evals)  # the best one is kept


def test_trainable_parameters_match_the_method(trained):
    method, out, _ = trained
    train = json.loads((out / "metrics.json").read_text())["train"]
    hidden, labels = 32, 2
    head = hidden * labels + labels
    expected = {"full": train["total_params"], "head": head,
                # LoRA r=8 on query+value of 2 layers: (A: r x 32 + B: 32 x r) x 2 modules x 2 layers, plus head
                "lora": 2 * 2 * (8 * hidden + hidden * 8) + head,
                # DoRA adds a magnitude vector per adapted output: 32 x 2 modules x 2 layers
                "dora": 2 * 2 * (8 * hidden + hidden * 8 + hidden) + head,
                # IA3 on BERT (peft's default): key, value, and the inputs of both `output.dense` layers
                # (attention output: 32, feed-forward output: intermediate 64)
                "ia3": 2 * (hidden + hidden + hidden + 64) + head,
                # prompt tuning: 20 virtual tokens x 32
                "prompt": 20 * hidden + head,
                # prefix tuning: 20 virtual tokens x 2 layers x (key + value) x 32
                "prefix": 20 * 2 * 2 * hidden + head}
    if method not in expected:
        pytest.skip(f"no hand count for {method}")
    assert train["trainable_params"] == expected[method]


def test_eval_and_predict(trained, sentiment, tmp_path):
    _, out, _ = trained
    result = run_cli("eval", out, "--data", sentiment["eval"], "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["rows"] == 40
    assert metrics["accuracy"] == json.loads((out / "metrics.json").read_text())["eval"]["accuracy"]
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 40
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert "precision" in result.output and "negative" in result.output  # the rich table

    result = run_cli("predict", out, "--text", "the film was superb")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip())
    assert row["label"] == max(row["probs"], key=row["probs"].get)
    assert set(row["probs"]) == {"negative", "positive"}
    assert abs(sum(row["probs"].values()) - 1) < 1e-4

    texts = ["the film was superb", "a very dull plot", "nice story"]  # several --text: one result each, in order
    several = run_cli("predict", out, *[a for t in texts for a in ("--text", t)])
    assert several.exit_code == 0, several.output
    rows = [json.loads(line) for line in several.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts and rows[0]["label"] == row["label"]
    assert rows[0]["probs"] == pytest.approx(row["probs"], abs=1e-4)  # batched with others: rounding may differ
    empty = run_cli("predict", out, "--text", "good", "--text", " ")
    assert empty.exit_code == 2 and "--text: text 2 of 2 is empty" in empty.output

    result = run_cli("predict", out, "--file", sentiment["eval"], "--output", tmp_path / "p.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith(f"wrote 40 predictions to {tmp_path / 'p.jsonl'}")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    # predict agrees with eval: the predicted labels score exactly eval's accuracy
    import csv

    truth = [r["label"] for r in csv.DictReader(sentiment["eval"].open())]
    assert sum(r["label"] == t for r, t in zip(rows, truth)) / 40 == pytest.approx(metrics["accuracy"])


def test_export_merge_equals_run(trained, sentiment, tmp_path):
    """The merged export is a plain transformers checkpoint whose logits equal the run's (adapter) model's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftkit.rundir.runs import load_trained

    method, out, _ = trained
    result = run_cli("export", out, "--output", tmp_path / "merged", "--merge")
    if not METHODS.get(method).mergeable:
        assert result.exit_code == 2 and "cannot be merged into the base weights; use --adapter-only" in result.output
        assert not (tmp_path / "merged").exists()
        return
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    run_model = load_trained(str(out)).model
    batch = tok(["the film was superb", "a very dull plot", "the acting is really weak"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**batch).logits - run_model(**batch).logits).abs().max().item()
    assert diff <= 1e-4
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    # ftkit eval works on the plain exported checkpoint and agrees with the run dir
    for target, name in ((out, "run.json"), (tmp_path / "merged", "export.json")):
        assert run_cli("eval", target, "--data", sentiment["eval"], "--output", tmp_path / name).exit_code == 0
    run_metrics, export_metrics = (json.loads((tmp_path / n).read_text()) for n in ("run.json", "export.json"))
    assert export_metrics["accuracy"] == run_metrics["accuracy"]
    assert abs(export_metrics["loss"] - run_metrics["loss"]) < 1e-4


def test_export_adapter_only(trained, tmp_path):
    method, out, _ = trained
    result = run_cli("export", out, "--output", tmp_path / "adapter", "--adapter-only")
    if method not in ("full", "head"):
        assert result.exit_code == 0, result.output
        assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json",
                                                                      "adapter_model.safetensors"}
        import os

        mask = os.umask(0o022)
        os.umask(mask)  # the export folder has the user's usual permissions, not mkdtemp's owner-only ones
        assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o777 & ~mask
    else:
        assert result.exit_code == 2
        assert "has no adapter" in result.output
        assert not (tmp_path / "adapter").exists()


def test_export_refuses_non_empty_output(trained, tmp_path):
    _, out, _ = trained
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = run_cli("export", out, "--output", tmp_path / "x")
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_head_only_leaves_the_backbone_untouched(trained, tiny_model):
    method, out, _ = trained
    if method != "head":
        pytest.skip("head-only runs")
    from safetensors.torch import load_file

    base, tuned = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    backbone = {k: v for k, v in tuned.items() if k.startswith("bert.")}
    assert len(backbone) == len(base)
    assert all((v == base[k.removeprefix("bert.")]).all() for k, v in backbone.items())
    assert set(tuned) - set(backbone) == {"classifier.weight", "classifier.bias"}


def test_reload_with_plain_peft(trained):
    """A LoRA run dir loads with stock peft (no ftkit) and predicts what ftkit predicts."""
    method, out, _ = trained
    if method in ("full", "head"):
        pytest.skip("adapter runs only")
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoConfig, AutoTokenizer

    labels = AutoConfig.from_pretrained(out)  # the label maps the run stored in config.json
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        out, num_labels=labels.num_labels, id2label=labels.id2label, label2id=labels.label2id).eval()
    if method == "prefix":  # the line the run's model card gives for transformers >= 5.24 with peft <= 0.21.2
        from ftkit.util.compat import accept_past_key_values

        assert "accept_past_key_values(model.get_base_model())" in (out / "README.md").read_text()
        accept_past_key_values(model.get_base_model())
    config = json.loads((out / "adapter_config.json").read_text())
    assert len(config["modules_to_save"]) == len(set(config["modules_to_save"])), config["modules_to_save"]
    tok = AutoTokenizer.from_pretrained(out)
    texts = ["the film was superb", "a very dull plot", "the acting is really weak", "nice story"]
    with torch.no_grad():
        probs = model(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for text, p in zip(texts, probs):
        row = json.loads(run_cli("predict", out, "--text", text).stdout)
        assert row["label"] == model.config.id2label[int(p.argmax())]
        assert abs(row["probs"]["positive"] - float(p[1])) < 1e-4


def test_reproduce_from_saved_config(trained, tmp_path):
    """`ftkit train RUN/ftkit.yaml` reruns the same config: same seed, same data -> the same metrics on CPU."""
    _, out, _ = trained
    result = run_cli("train", out / "ftkit.yaml", "--output", tmp_path / "again")
    assert result.exit_code == 0, result.output
    first = json.loads((out / "metrics.json").read_text())["eval"]
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())["eval"]
    assert second["accuracy"] == first["accuracy"]
    assert abs(second["loss"] - first["loss"]) < 1e-6


def test_model_card_is_a_hub_model_card(trained):
    import yaml

    method, out, _ = trained
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    summary = json.loads((out / "metrics.json").read_text())
    assert header["library_name"] == ("transformers" if method in ("full", "head") else "peft")
    assert header["pipeline_tag"] == "text-classification" and method in header["tags"]
    results = header["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]}["accuracy"] == summary["eval"]["accuracy"]
    assert "## Hyper-parameters" in text and "| train.lr |" in text and "ftkit train ftkit.yaml" in text
