"""`ftkit export --format onnx`: merged, dynamic axes, verified against PyTorch (and refused when it does not match),
an int8 copy, and `ftkit eval` / `ftkit predict` on the export giving the run's own results."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, train_args


@pytest.fixture(scope="module")
def cls_run(tiny_model, sentiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "cls"
    assert run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "30")).exit_code == 0
    return out


@pytest.fixture(scope="module")
def cls_export(cls_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    result = run_cli("export", cls_run, "--format", "onnx", "--int8", "--output", out)
    assert result.exit_code == 0, result.output
    assert "verified: onnxruntime logits within" in result.output and "int8: model.int8.onnx" in result.output
    return out


def evaluate(model, data, out):
    result = run_cli("eval", model, "--data", data, "--output", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_the_export_is_verified_with_dynamic_axes(cls_export):
    import onnx

    assert {p.name for p in cls_export.iterdir()} >= {"model.onnx", "model.int8.onnx", "onnx.json", "config.json",
                                                     "tokenizer.json"}
    check = json.loads((cls_export / "onnx.json").read_text())["verification"]
    assert check["max_abs_diff"] < check["atol"] and len({tuple(s) for s in check["verified_shapes"]}) == 3
    graph = onnx.load(str(cls_export / "model.onnx")).graph
    for tensor in graph.input:  # batch and sequence are symbolic, not the traced sizes
        dims = tensor.type.tensor_type.shape.dim
        assert all(d.dim_param and not d.dim_value for d in dims), tensor
    assert json.loads((cls_export / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}


def test_eval_and_predict_on_the_export_match_the_run(cls_run, cls_export, sentiment, tmp_path):
    run = evaluate(cls_run, sentiment["eval"], tmp_path / "run.json")
    exported = evaluate(cls_export, sentiment["eval"], tmp_path / "onnx.json")
    assert exported["accuracy"] == run["accuracy"] and exported["confusion_matrix"] == run["confusion_matrix"]
    assert abs(exported["loss"] - run["loss"]) < 1e-5
    int8 = evaluate(cls_export / "model.int8.onnx", sentiment["eval"], tmp_path / "int8.json")
    assert abs(int8["accuracy"] - run["accuracy"]) <= 0.1  # the change int8 costs, as eval reports it

    rows = []
    for model in (cls_run, cls_export):
        result = run_cli("predict", model, "--file", sentiment["eval"], "--output", tmp_path / "p.jsonl")
        assert result.exit_code == 0, result.output
        rows.append([json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()])
    assert [r["label"] for r in rows[0]] == [r["label"] for r in rows[1]]
    assert all(abs(a["probs"][k] - b["probs"][k]) < 1e-4 for a, b in zip(*rows) for k in a["probs"])


def test_a_tagging_model_exports_and_evaluates_the_same(tiny_model, ner, tmp_path):
    run = tmp_path / "tag"
    assert run_cli(*train_args(tiny_model, ner, run, "--task", "tag", "--method", "full",
                               "--max-steps", "20")).exit_code == 0
    result = run_cli("export", run, "--format", "onnx", "--output", tmp_path / "export")
    assert result.exit_code == 0, result.output
    a = evaluate(run, ner["eval"], tmp_path / "a.json")
    b = evaluate(tmp_path / "export", ner["eval"], tmp_path / "b.json")
    assert a["accuracy"] == b["accuracy"] and abs(a["loss"] - b["loss"]) < 1e-5


def test_an_export_that_does_not_match_pytorch_is_refused(cls_run, tmp_path, monkeypatch):
    import torch

    import ftkit.modeling.onnx

    real = ftkit.modeling.onnx.logits_of

    def drifting(model):  # the graph is traced from the real model; PyTorch's answers afterwards are 0.01 off
        inner = real(model)

        class Drift(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask=None, token_type_ids=None):
                out = self.inner(input_ids, attention_mask, token_type_ids)
                return out if torch.compiler.is_exporting() else out + 1e-2

        return Drift().eval()

    monkeypatch.setattr(ftkit.modeling.onnx, "logits_of", drifting)
    out = tmp_path / "export"
    result = run_cli("export", cls_run, "--format", "onnx", "--output", out)
    assert result.exit_code == 1 and "the ONNX model's logits differ from PyTorch's by up to 0.01" in result.output
    assert not out.exists() and not list(tmp_path.glob(".export*"))  # nothing half-written


def test_onnx_refusals(cls_run, cls_export, tiny_model, tiny_causal, sentiment, copy_data, tmp_path):
    prompt_run, gen_run = tmp_path / "prompt", tmp_path / "gen"
    assert run_cli(*train_args(tiny_model, sentiment, prompt_run, "--method", "prompt", "--max-length", "40",
                               "--max-steps", "2")).exit_code == 0
    assert run_cli(*train_args(tiny_causal, copy_data, gen_run, "--task", "gen", "--max-steps", "2")).exit_code == 0
    stray = tmp_path / "stray.onnx"
    stray.write_bytes(b"not a model")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in cls_export.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes()[:200] if f.name == "model.onnx" else f.read_bytes())
    out = str(tmp_path / "out")
    cases = [
        (["export", gen_run, "--format", "onnx", "--output", out], "ONNX export covers cls and tag models"),
        (["export", prompt_run, "--format", "onnx", "--output", out], "it cannot be exported to ONNX"),
        (["export", cls_run, "--int8", "--output", out], "--int8 quantizes an ONNX export; add --format onnx"),
        (["export", cls_run, "--format", "onnx", "--adapter-only", "--output", out], "ONNX needs the merged model"),
        (["export", cls_run, "--format", "tflite", "--output", out], "--format tflite: expected hf or onnx"),
        (["eval", cls_export, "--quant", "8bit", "--data", sentiment["eval"]], "is run as exported"),
        (["eval", cls_export, "--task", "tag", "--data", sentiment["eval"]], "exported as task 'cls', not 'tag'"),
        (["eval", stray, "--data", sentiment["eval"]], "not from `ftkit export --format onnx`"),
        (["eval", damaged, "--data", sentiment["eval"]], "onnxruntime cannot load it"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
    assert not (tmp_path / "out").exists()
