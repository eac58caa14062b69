"""`ftkit distill`: the loss against a hand computation, the dropped-layer student built from the teacher's weights,
the chain teacher -> student -> eval/predict/export, unlabelled text, reproduction from ftkit.yaml, bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import run_cli, train_args, write_rows


@pytest.fixture(scope="module")
def teacher(tiny_model, sentiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "teacher"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--method", "lora", "--max-steps", "30"))
    assert result.exit_code == 0, result.output
    return out


def test_the_loss_is_alpha_t2_kl_plus_the_gold_cross_entropy():
    from ftkit.config import DistillConfig
    from ftkit.training.distill_loss import distilling_loss

    s_logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t_logits = torch.tensor([[1.0, 1.5, -0.5], [-1.0, 0.0, 2.0]])
    labels = torch.tensor([0, 2])

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, input_ids, attention_mask, labels=None, output_hidden_states=False):
            loss = torch.nn.functional.cross_entropy(self.logits, labels) if labels is not None else None
            return SimpleNamespace(logits=self.logits, loss=loss)

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "labels": labels}
    got = distilling_loss(Fixed(t_logits), DistillConfig(alpha=0.7, temperature=3.0))(
        Fixed(s_logits), batch)
    # by hand: KL(p_t || p_s) at T = 3, averaged over the 2 rows, times T^2; CE on the gold labels
    want_kl = 0.0
    for s, t in zip(s_logits.tolist(), t_logits.tolist()):
        ps = [math.exp(x / 3) for x in s]
        pt = [math.exp(x / 3) for x in t]
        ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
        want_kl += sum(q * math.log(q / p) for p, q in zip(ps, pt)) / 2
    ce = sum(-math.log(math.exp(s[y]) / sum(math.exp(x) for x in s)) for s, y in zip(s_logits.tolist(), [0, 2])) / 2
    assert float(got) == pytest.approx(0.7 * 9 * want_kl + 0.3 * ce, rel=1e-5)


def test_the_dropped_layer_student_starts_from_the_teachers_weights(teacher):
    from transformers import AutoModelForSequenceClassification

    from ftkit.commands.distill import layers_dropped
    from ftkit.rundir.runs import load_trained, locate, merged

    path = layers_dropped(locate(str(teacher)), 1)
    student = AutoModelForSequenceClassification.from_pretrained(path)  # stock transformers loads it
    full = merged(load_trained(str(teacher), quant="none"))
    assert student.config.num_hidden_layers == 1 and full.config.num_hidden_layers == 2
    s, t = student.state_dict(), full.state_dict()
    assert torch.equal(s["bert.encoder.layer.0.attention.self.query.weight"],
                       t["bert.encoder.layer.1.attention.self.query.weight"])  # the top layer kept
    for key in ("classifier.weight", "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight"):
        assert torch.equal(s[key], t[key])
    assert not any(k.startswith("bert.encoder.layer.1.") for k in s)


def test_distil_then_evaluate_predict_export_and_reproduce(teacher, sentiment, tmp_path, cli):
    out = tmp_path / "student"
    result = cli("distill", teacher, "--output", out, "--student", "layers=1", "--max-steps", "20", "--batch-size",
                 "16", "--alpha", "0.8")
    assert result.exit_code == 0, result.output
    saved = (out / "ftkit.yaml").read_text()
    assert f"teacher: {teacher}" in saved and "alpha: 0.8" in saved and "name: full" in saved
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == json.loads(
        (teacher / "config.json").read_text())["id2label"]
    first = json.loads((out / "metrics.json").read_text())["eval"]
    assert cli("eval", out, "--data", sentiment["eval"], "--output", tmp_path / "e.json").exit_code == 0
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == first["accuracy"]
    assert json.loads(cli("predict", out, "--text", "a good film").stdout)["label"] in ("positive", "negative")
    assert cli("export", out, "--output", tmp_path / "merged").exit_code == 0
    again = cli("train", out / "ftkit.yaml", "--output", tmp_path / "again")  # ftkit.yaml holds the distillation
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["eval"]["loss"] == pytest.approx(
        first["loss"], abs=1e-6)


def test_unlabelled_text_is_labelled_by_the_teacher(teacher, tmp_path, cli):
    texts = tmp_path / "more.txt"
    texts.write_text("a great story\nthe dull plot\nreally superb acting\n")
    out = tmp_path / "student"
    result = cli("distill", teacher, "--output", out, "--unlabelled", texts, "--max-steps", "4", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((out / "ftkit.yaml").read_text())["data"]
    rows = [json.loads(line) for line in open(data["train"])]
    assert rows[-1]["text"] == "really superb acting" and rows[-1]["label"] in ("positive", "negative")
    assert len(rows) == 160 + 3  # the teacher's training rows + the new texts
    assert len(open(data["eval"]).readlines()) == 40  # its evaluation rows, apart


def test_bad_input_is_refused_before_weights_load(teacher, tiny_model, tiny_causal, copy_data, sentiment, tmp_path,
                                                  cli, monkeypatch):
    import ftkit.rundir.base
    import ftkit.rundir.runs

    gen = tmp_path / "gen"
    assert cli(*train_args(tiny_causal, copy_data, gen, "--task", "gen", "--max-steps", "2")).exit_code == 0

    def never(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(ftkit.rundir.base, "load_for_training", never)
    monkeypatch.setattr(ftkit.rundir.runs, "load_trained", never)  # the teacher, to build a student or label text
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a fine film\ncaf\xe9 au lait\n")
    cases = [(["distill", gen, "--output", tmp_path / "a"], "a gen run; distillation covers cls and tag"),
             (["distill", tiny_model, "--output", tmp_path / "b"], "not a finished ftkit run dir"),
             (["distill", teacher, "--output", tmp_path / "c", "--student", "layers=5"], "keep 1 to 1"),
             (["distill", teacher, "--output", tmp_path / "d", "--student", "layers=x"], "expected layers=N"),
             (["distill", teacher, "--output", tmp_path / "e", "--student", tiny_causal], "tokenizer differs"),
             (["distill", teacher, "--output", tmp_path / "f", "--set", "distill.alpha=2"], "distill.alpha"),
             (["distill", teacher, "--output", tmp_path / "f", "--set", "train.max_steps=-2"], "train.max_steps"),
             (["distill", teacher, "--output", tmp_path / "f", "--unlabelled", __file__, "--set",
               "train.epochs=x"], "train.epochs"),
             (["distill", teacher, "--output", tmp_path / "g", "--unlabelled", tmp_path / "none.txt"], "no such file"),
             (["distill", teacher, "--output", tmp_path / "g", "--unlabelled", latin], "latin.txt: line 2: not UTF-8"),
             (["train", "--task", "gen", "--model", tiny_causal, "--data", copy_data["train"], "--output",
               tmp_path / "h", "--set", f"distill.teacher={teacher}"], "distillation need one class per row or token")]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    other = write_rows(tmp_path / "other.csv", [{"text": "a fine film", "label": lab} for lab in ("neutral",
                                                                                                 "positive") * 20])
    result = cli(*train_args(tiny_model, {"train": other, "eval": sentiment["eval"]}, tmp_path / "i"),
                 "--set", f"distill.teacher={teacher}")
    assert result.exit_code == 2 and "labels the teacher" in result.output and "neutral" in result.output


def test_a_tagger_distils_with_hidden_states_matched(tiny_model, ner, tmp_path, cli):
    teacher = tmp_path / "tagger"
    assert cli(*train_args(tiny_model, ner, teacher, "--task", "tag", "--method", "full", "--max-steps", "20")
               ).exit_code == 0
    out = tmp_path / "student"
    result = cli("distill", teacher, "--output", out, "--student", "layers=1", "--max-steps", "10", "--batch-size",
                 "16", "--set", "distill.hidden_weight=1.0")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["main_metric"] == json.loads((teacher / "metrics.json").read_text())["main_metric"]
    assert math.isfinite(metrics["eval"]["loss"])


def test_hidden_states_of_another_width_are_matched_through_a_learned_projection():
    from ftkit.config import DistillConfig
    from ftkit.modeling.loading import TRAINING_ONLY
    from ftkit.training.distill_loss import distilling_loss

    torch.manual_seed(0)
    s_hidden = [torch.randn(2, 3, 4) for _ in range(3)]  # embeddings + 2 layers, 4 wide
    t_hidden = [torch.randn(2, 3, 6) for _ in range(5)]  # embeddings + 4 layers, 6 wide
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])

    class Fixed(torch.nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.hidden = hidden

        def forward(self, input_ids, attention_mask, labels=None, output_hidden_states=False):
            return SimpleNamespace(logits=torch.zeros(2, 2), loss=torch.tensor(0.0), hidden_states=self.hidden)

    student = Fixed(s_hidden)
    student.add_module(TRAINING_ONLY, torch.nn.ModuleDict({"hidden": torch.nn.Linear(4, 6)}))
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask,
             "labels": torch.tensor([0, 1])}
    got = distilling_loss(Fixed(t_hidden), DistillConfig(alpha=0.0, hidden_weight=2.0))(student, batch)
    w = getattr(student, TRAINING_ONLY)["hidden"]
    want = 0.0  # student layer i -> teacher layer 2i; squared error over real tokens, per token and teacher unit
    for s, t in ((1, 2), (2, 4)):
        want += (((w(s_hidden[s]) - t_hidden[t]) ** 2) * mask.unsqueeze(-1)).sum() / (5 * 6 * 2)
    assert float(got.detach()) == pytest.approx(2.0 * float(want.detach()), rel=1e-5)
    got.backward()
    assert w.weight.grad is not None and w.weight.grad.abs().sum() > 0  # the projection learns


def test_a_narrower_student_distils_hidden_states_resumes_and_saves_no_projection(teacher, tiny_model, sentiment,
                                                                                  tmp_path, cli, monkeypatch):
    import shutil

    from conftest import fail_at_evaluation
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    narrow = tmp_path / "narrow"  # the teacher's tokenizer, half its width
    narrow.mkdir()
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, narrow / f.name)
    config = BertConfig.from_pretrained(tiny_model)
    config.hidden_size, config.intermediate_size = 16, 32
    torch.manual_seed(0)
    BertModel(config).save_pretrained(narrow)

    out = tmp_path / "student"
    args = (*train_args(narrow, sentiment, out, "--method", "full", "--max-steps", "20"), "--set",
            f"distill.teacher={teacher}", "--set", "distill.hidden_weight=1.0", "--set", "train.eval_every=5")
    fail_at_evaluation(monkeypatch, 3)
    assert cli(*args).exit_code != 0  # stopped at step 15, checkpoints at 5 and 10
    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert "ftkit_training_only.hidden.weight" in set(f.keys())  # resumable with its projection
    monkeypatch.undo()
    result = cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "hidden states 16 wide -> the teacher's 32 through a learned projection" in result.output, result.output
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any(k.startswith("ftkit_training_only") for k in f.keys())
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train"]["steps"] == 20 and summary["train"]["trainable_params"] == sum(
        p.numel() for p in AutoModelForSequenceClassification.from_pretrained(out).parameters())
