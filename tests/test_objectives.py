"""The classification objectives (ftkit/training/objectives.py) and the learning-rate schedules: each changes training
as it claims, checked against hand computations on known logits and a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, train_args

from ftkit import config
from ftkit.training.objectives import class_weights, classification_loss, symmetric_kl


class Toy(torch.nn.Module):
    """Embeddings -> (dropout) -> linear head, with the interface the objectives use."""

    def __init__(self, dropout: float = 0.0, per_token: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(10, 4)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(4, 3)
        self.per_token = per_token

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None):
        h = self.drop(self.embed(input_ids))
        logits = self.head(h if self.per_token else h.mean(1))
        return type("Out", (), {"logits": logits})()


def train_cfg(**kw):
    return config.build({"train": kw}).train


BATCH = {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "labels": torch.tensor([0, 2])}


def test_label_smoothing_and_class_weights_reach_the_loss():
    model = Toy()
    logits = model(BATCH["input_ids"]).logits
    w = [0.5, 1.0, 2.0]
    loss = classification_loss(train_cfg(label_smoothing=0.2), None)(model, BATCH)
    # by hand: the target distribution puts 0.8 + 0.2/3 on the gold label, 0.2/3 on each other
    logp = F.log_softmax(logits, -1)
    target = torch.full_like(logp, 0.2 / 3)
    target[0, 0] += 0.8
    target[1, 2] += 0.8
    assert loss.item() == pytest.approx(-(target * logp).sum(-1).mean().item(), rel=1e-6)
    weighted = classification_loss(train_cfg(), w)(model, BATCH)
    by_hand = -(w[0] * logp[0, 0] + w[2] * logp[1, 2]) / (w[0] + w[2])
    assert weighted.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_auto_class_weights_are_inverse_frequencies_with_mean_one():
    features = [{"labels": 0}] * 6 + [{"labels": 1}] * 2 + [{"labels": [2, -100, 2, 0]}]  # a tag row counts per token
    w = class_weights(features, 4)
    # counts 7, 2, 2, 0 -> raw 11/21, 11/6, 11/6; mean over the seen three is 1; label 3 never occurs: 1
    assert sum(w[:3]) / 3 == pytest.approx(1.0) and w[3] == 1.0
    assert w[1] == w[2] and w[0] / w[1] == pytest.approx(2 / 7)


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes():
    model = Toy(dropout=0.5)
    torch.manual_seed(1)
    loss = classification_loss(train_cfg(rdrop=2.0), None)(model, BATCH)
    torch.manual_seed(1)  # the same two dropout draws, by hand
    a, b = model(BATCH["input_ids"]).logits, model(BATCH["input_ids"]).logits
    assert not torch.equal(a, b)
    ce = (F.cross_entropy(a, BATCH["labels"]) + F.cross_entropy(b, BATCH["labels"])) / 2
    kl = (F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="batchmean") +
          F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="batchmean")) / 2
    assert symmetric_kl(a, b).item() == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ce + 2.0 * kl).item(), rel=1e-5)


@pytest.mark.parametrize("kind, steps", [("fgm", 1), ("pgd", 3)])
def test_adversarial_training_perturbs_the_embeddings_along_the_gradient_with_the_set_norm(kind, steps,
                                                                                             monkeypatch):
    from ftkit.training import objectives

    model = Toy(per_token=True)
    batch = {"input_ids": BATCH["input_ids"], "labels": torch.tensor([[0, 2, -100], [1, 1, 0]])}
    shifts = []
    real = objectives.Shift.__init__
    monkeypatch.setattr(objectives.Shift, "__init__", lambda self, d: (shifts.append(d.detach().clone()),
                                                                        real(self, d))[1])
    loss = classification_loss(train_cfg(adversarial=kind, adversarial_epsilon=0.5, adversarial_steps=steps),
                               None)(model, batch)
    assert len(shifts) == steps
    final = shifts[-1]
    norms = final.flatten(1).norm(dim=1)
    if kind == "fgm":  # each row moved by exactly the set norm
        assert torch.allclose(norms, torch.tensor([0.5, 0.5]), atol=1e-5)
    else:  # three steps of 0.5/3 in turning directions, kept inside the ball
        assert (norms <= 0.5 + 1e-6).all() and (norms > 0.5 / 3).all()
    # the first step points along the clean loss's gradient at the embeddings' output
    emb = model.embed(batch["input_ids"]).detach().requires_grad_(True)
    logits = model.head(emb)
    clean = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    grad, = torch.autograd.grad(clean, emb)
    first = shifts[0]
    cos = F.cosine_similarity(first.flatten(1), grad.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones(2), atol=1e-5)
    # the loss is the clean one plus the perturbed one
    perturbed = F.cross_entropy(model.head(emb.detach() + final).flatten(0, 1), batch["labels"].flatten(),
                                ignore_index=-100)
    assert loss.item() == pytest.approx((clean + perturbed).item(), rel=1e-5)
    assert perturbed.item() > clean.item()  # uphill


def test_the_objectives_train_end_to_end_and_are_refused_where_they_do_not_apply(tiny_model, sentiment, ner,
                                                                                 tiny_causal, copy_data, tmp_path):
    extra = ["--max-steps", "3", "--set", "train.label_smoothing=0.1", "--set", "train.class_weights=auto",
             "--set", "train.rdrop=0.5", "--set", "train.adversarial=pgd"]
    for name, data, task in (("cls", sentiment, "cls"), ("tag", ner, "tag")):
        result = run_cli(*train_args(tiny_model, data, tmp_path / name, "--task", task, *extra))
        assert result.exit_code == 0, result.output
        assert math.isfinite(json.loads((tmp_path / name / "metrics.json").read_text())["eval"]["loss"])
    result = run_cli(*train_args(tiny_causal, copy_data, tmp_path / "gen", "--task", "gen", "--set",
                                 "train.rdrop=0.5"))
    assert result.exit_code == 2 and "train.rdrop" in result.output and "one class per row or token" in result.output
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "bad", "--set", "train.adversarial=free"))
    assert result.exit_code == 2 and "expected none or fgm or pgd" in result.output


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_learning_rate_schedules(scheduler, tiny_model, sentiment, tmp_path):
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "run", "--max-steps", "20", "--lr", "1e-2",
                                 "--set", "train.log_every=1", "--set", "train.warmup_ratio=0.1",
                                 "--set", f"train.scheduler={scheduler}"))
    assert result.exit_code == 0, result.output
    lr = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
          if r["type"] == "train"}
    assert lr[2] == pytest.approx(1e-2)  # the peak after 2 warm-up steps
    # the rate after step 11 (half of the 18 decay steps done)
    expected = {"linear": 1e-2 * 9 / 18, "cosine": 1e-2 * 0.5 * (1 + math.cos(math.pi * 9 / 18)),
                "constant": 1e-2}[scheduler]
    assert lr[11] == pytest.approx(expected, rel=1e-6)


def test_min_steps_is_a_floor_on_the_run_length(tiny_model, sentiment, tmp_path):
    from ftkit.training.loop import plan_steps

    cfg = config.build({"train": {"batch_size": 16, "epochs": 2, "min_steps": 45}})
    assert plan_steps(160, cfg, 1) == (10, 45)  # 2 epochs are 20 steps: the floor decides
    assert plan_steps(4000, cfg, 1) == (250, 500)  # larger data: the epochs do
    assert plan_steps(160, config.build({"train": {"min_steps": 45, "max_steps": 7}}), 1)[1] == 7
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "run", "--epochs", "1", "--set",
                                 "train.min_steps=25"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["train"]["steps"] == 25  # 10 steps an epoch: two and a half epochs
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 25]


@pytest.mark.parametrize("per_epoch, total, max_evals, every", [
    (10, 300, 10, 30),  # 30 short epochs: every third, 10 evaluations
    (29, 300, 10, 29),  # 10 epochs and a bit: every epoch
    (7, 300, 10, 28),  # 42 epochs: every fourth (10 evaluations), not every fifth (8)
    (10, 300, 0, 10),  # 0: every epoch
    (113, 339, 10, 113),
])
def test_max_evals_caps_the_evaluations_in_whole_epochs(per_epoch, total, max_evals, every):
    from ftkit.training.loop import eval_interval

    t = config.build({"train": {"max_evals": max_evals}}).train
    assert eval_interval(per_epoch, total, t) == every
    assert max_evals == 0 or total // every <= max_evals < total // (every - per_epoch or 1)
    assert eval_interval(per_epoch, total, config.build({"train": {"eval_every": 5}}).train) == 5


def test_a_run_stretched_by_the_floor_evaluates_at_most_max_evals_times(tiny_model, sentiment, tmp_path):
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "run", "--epochs", "1", "--set",
                                 "train.min_steps=60", "--set", "train.max_evals=2"))
    assert result.exit_code == 0, result.output
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60]  # 6 epochs of 10 steps: every third
