"""Knowledge distillation inside a training run (config section ``distill``): the teacher run, its checks, the loss.

The student learns ``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(gold)`` (Hinton et al. 2015), where
``_T`` is a softmax at temperature T; for token tagging over the tokens that carry a label. With
``distill.hidden_weight`` it also matches hidden states: student layer i (of S) to teacher layer round(i * L / S),
MSE over real tokens — through a learned projection when the widths differ (``add_projection``). Rows without a gold
label (-100) count in the KL term only."""

from __future__ import annotations

import json
from pathlib import Path

from ftkit.data.batches import IGNORE
from ftkit.errors import UsageError
from ftkit.rundir import layout


def teacher_target(cfg, task):
    """The teacher run ``distill.teacher`` names, checked before any weights load."""
    from ftkit.rundir.runs import locate

    where = f"distill.teacher {cfg.distill.teacher}"
    if not layout.is_run(cfg.distill.teacher):
        raise UsageError(f"{where}: not an ftkit run dir (a finished `ftkit train` output is needed)")
    target = locate(cfg.distill.teacher)
    if target.task.name != task.name:
        raise UsageError(f"{where}: a {target.task.name} run; the student is trained for task {task.name}")
    return target


def teacher_labels(cfg, task, tables) -> list[str]:
    """The student's label set is the teacher's, in the teacher's order (its outputs are the targets); labels in
    the data the teacher does not know are refused."""
    target = teacher_target(cfg, task)
    id2label = json.loads((target.path / layout.MODEL_CONFIG).read_text(encoding="utf-8")).get("id2label") or {}
    labels = [id2label[str(i)] for i in range(len(id2label))]
    for table in tables:
        unknown = task.unseen_labels(table, cfg, labels)
        if unknown:
            raise UsageError(f"{table.source}: labels the teacher {target.path} was not trained on: "
                             f"{', '.join(sorted(unknown))} (it knows {', '.join(labels)})")
    return labels


def check_student(cfg, task, student_tokenizer, student_config) -> None:
    """Before any weights load: the student reads text into the teacher's token ids, and both models have a width
    to match hidden states by."""
    from ftkit.modeling.loading import load_tokenizer

    target = teacher_target(cfg, task)
    teacher = load_tokenizer(target.path, target.cfg.model.trust_remote_code)
    same = teacher.get_vocab() == student_tokenizer.get_vocab() and all(
        getattr(teacher, k) == getattr(student_tokenizer, k) for k in ("cls_token_id", "sep_token_id", "pad_token_id"))
    if not same:
        raise UsageError(f"model.name {cfg.model.name}: its tokenizer differs from the teacher's "
                         f"({target.path}); distillation needs the same vocabulary (use the teacher's base, "
                         "`--student layers=N`, or a model of the same family)")
    teacher_width = json.loads((target.path / layout.MODEL_CONFIG).read_text(encoding="utf-8")).get("hidden_size")
    if cfg.distill.hidden_weight > 0 and not (teacher_width and getattr(student_config, "hidden_size", None)):
        raise UsageError("distill.hidden_weight: the teacher's or the student's config has no hidden_size to match "
                         "hidden states by; set distill.hidden_weight=0")


def add_projection(model, teacher) -> str | None:
    """With hidden states matched between different widths: a learned linear map from the student's width to the
    teacher's (TinyBERT's W_h, Jiao et al. 2020), attached to ``model`` as its training-only submodule — it trains
    with the student and is checkpointed with it, but is not part of the saved model. -> a line for the log."""
    import torch

    from ftkit.modeling.loading import TRAINING_ONLY

    student, wanted = model.config.hidden_size, teacher.config.hidden_size
    if student == wanted:
        return None
    model.add_module(TRAINING_ONLY, torch.nn.ModuleDict({"hidden": torch.nn.Linear(student, wanted)}))
    return (f"distillation: hidden states {student} wide -> the teacher's {wanted} through a learned projection "
            "(trained with the student, not saved with it)")


def load_teacher(cfg, task, device):
    from ftkit.rundir.runs import load_trained

    loaded = load_trained(teacher_target(cfg, task))
    teacher = loaded.model.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) for each student layer (0 is the embeddings)."""
    return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def distilling_loss(teacher, params):
    """The training loss (model, batch) -> scalar for the loop (``Batching.loss``)."""
    import torch
    import torch.nn.functional as F

    from ftkit.modeling.loading import TRAINING_ONLY

    alpha, temp, hidden_weight = params.alpha, params.temperature, params.hidden_weight

    def loss(model, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**batch, output_hidden_states=hidden_weight > 0)
        with torch.no_grad():
            ref = teacher(**inputs, output_hidden_states=hidden_weight > 0)
        student, target = out.logits.float(), ref.logits.float()
        if student.dim() == 3:  # per token (tagging): only the tokens that carry a label; -100 marks the others
            keep = batch["labels"] != IGNORE
            student, target = student[keep], target[keep]
        kl = F.kl_div(F.log_softmax(student / temp, -1), F.log_softmax(target / temp, -1), log_target=True,
                      reduction="batchmean") * temp ** 2
        labelled = (batch["labels"] != IGNORE).any()
        total = alpha * kl + ((1 - alpha) * out.loss if labelled else 0.0)
        if hidden_weight > 0:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pairs = layer_map(len(out.hidden_states) - 1, len(ref.hidden_states) - 1)
            own = model.module if hasattr(model, "module") else model  # DDP's wrapper
            extra = getattr(own, TRAINING_ONLY, None)
            project = extra["hidden"] if extra is not None else (lambda h: h)
            mse = sum(((project(out.hidden_states[s]) - ref.hidden_states[t]) ** 2 * mask).sum() for s, t in pairs)
            total = total + hidden_weight * mse / (mask.sum() * ref.hidden_states[-1].shape[-1] * len(pairs))
        return total

    return loss


def drop_layers(model, keep: int) -> list[int]:
    """Keep ``keep`` evenly spaced transformer layers of ``model`` (the top one included), in place; -> the kept
    indices."""
    from ftkit.modeling.pruning import evenly_spaced, keep_layers

    n = model.config.num_hidden_layers
    if not 1 <= keep < n:
        raise UsageError(f"--student layers={keep}: the teacher has {n} layers; keep 1 to {n - 1}")
    kept = evenly_spaced(n, keep)
    keep_layers(model, kept)
    return kept
