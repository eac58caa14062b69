"""Task families. Each module registers one ``Task`` subclass in TASKS; nothing else enumerates them.

To add a task: one module here whose class subclasses ``Task`` (or ``_common.LabelledTask`` for a new head sized by
a label set), declares the attributes and implements the methods below that have no default, plus a recipe in
tasks/. Heavy imports (torch, transformers) stay inside the methods so that importing this package (and so
``ftkit --help``) stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from ftkit.util.registry import Registry


@dataclass
class Batching:
    """How batches are built and scored once the model is known (``Task.batching``)."""

    collate: Callable[[list[dict]], dict]  # training and evaluation batches (the task's eval_batch reads them)
    loss: Callable | None = None  # (model, batch) -> training loss; None: the model's own, model(**batch).loss
    note: str | None = None  # what the run log says about it
    packed: bool = False  # one packed row per batch: no padding for length grouping to cut (train.group_by_length)


class Task:
    name: str
    description: str
    params: type  # dataclass of the task's config keys (``task.KEY``), each documented at its field
    columns: dict[str, str]  # data role -> default column name (overridable with data.columns.ROLE)
    architectures: tuple[str, ...]  # architecture-name endings this task loads, for `ftkit eval MODEL`
    maximize: bool  # whether a higher main metric is better
    labelled: bool  # has a label set stored as id2label/label2id in config.json
    streams: bool  # `predict --text` streams its output
    head_names: tuple[str, ...]  # module names of the task head, kept out of k-bit quantization
    long_rows: str  # what data.max_length does to a longer row: "truncated" or "split into windows"
    onnx: bool  # `ftkit export --format onnx` supports it
    hub_task: str  # the model card's pipeline_tag (Hugging Face task name)
    # peft's model for this task lines the labels up with prompt tuning's virtual tokens (its token-classification
    # and feature-extraction models prepend them to the logits only, so a per-token loss fails on every batch)
    virtual_tokens_in_loss: bool
    # its model scores classes, per input or per token: `ftkit distill` and `ftkit prune` work on its runs, and the
    # classification objectives (ftkit/training/objectives.py) train it
    classifies: bool = False

    def validate(self, cfg) -> None:
        """Refuse bad ``task.*`` settings (config.validate calls it) with a UsageError naming the key."""

    def single_class(self, cfg) -> bool:
        """Whether its model picks one class per row (or token) under ``cfg``: the classification objectives and
        distillation need that."""
        return self.classifies

    def with_model_settings(self, cfg, model_config):
        """``cfg`` completed with what a trained model's config.json says of the task (for a plain checkpoint or an
        export, which carry no ftkit.yaml). Default: nothing to add."""
        return cfg

    def from_data(self, cfg, table):
        """``cfg`` completed with the task settings the training data decides when the user left them unset (cls:
        lists of labels mean multi-label) -> (cfg, a note for the log or None). Default: nothing to decide."""
        return cfg, None

    def saved_config(self, config, metrics: dict, cfg) -> None:
        """Write into the finished run's model config what eval/predict/serve need from training (``metrics``: the
        best evaluation's). Default: nothing."""

    # data, before any model is loaded
    def check(self, table, cfg) -> None:
        """Refuse bad rows with a UsageError naming the file and line."""
        raise NotImplementedError

    def label_space(self, table, cfg) -> list[str]:
        raise NotImplementedError

    def targets(self, table, cfg, labels: list[str]) -> list:
        """One target per row; a gold label not in ``labels`` becomes ``_common.UNSEEN``."""
        raise NotImplementedError

    def baseline(self, train: tuple, held_out: tuple, labels: list[str], cfg) -> dict | None:
        """A cheap non-neural model's held-out metrics on the same split, to report beside the run's; ``train`` and
        ``held_out`` are (table, targets, row indices). Default: none."""
        return None

    def augmentation(self, table, targets: list, idx: list[int], cfg):
        """Extra training rows made from rows ``idx`` of ``table`` (``task.augment``): (a table of them, their
        targets, a line for the log), or None. Default: none."""
        return None

    def unseen_labels(self, table, cfg, labels: list[str]) -> dict[str, int]:
        """Gold labels of ``table`` the model was not trained on, with their counts. Default: none (no labels)."""
        return {}

    def unseen_effect(self, cfg) -> str:
        """What scoring does with such a label."""
        return "scored as errors (they take no loss)"

    def label_counts(self, targets: list, idx: list[int], labels: list[str], cfg) -> dict[str, int] | None:
        """How often each label occurs in rows ``idx`` (`train --dry-run`); None: no labels to count."""
        return None

    # encoding (cached on disk) and model-ready features
    def encode(self, tokenizer, table, cfg, model_config) -> dict[str, list[list[int]]]:
        raise NotImplementedError

    def features(self, enc: dict, targets: list, idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        """Model-ready rows ``idx``; what the user should know about them (rows cut or skipped) is appended to
        ``notes``, which the caller shows through its reporter (once, respecting --quiet)."""
        raise NotImplementedError

    def collator(self, tokenizer, cfg):
        raise NotImplementedError

    def batching(self, model, tokenizer, cfg, features: list[dict]) -> Batching:
        """Batches whose layout depends on the model (gen's padding-free ones). Default: the task's collator and
        the model's own loss."""
        return Batching(self.collator(tokenizer, cfg))

    def packs(self, model_config, cfg, virtual_tokens: bool) -> bool:
        """Whether training batches will be packed (``Batching.packed``), told from the base model's config before
        its weights load; decides train.group_by_length's default (packed rows leave no padding to cut). Default:
        no packing."""
        return False

    def example(self, length: int) -> dict:
        """One feature of ``length`` tokens (memory.py's trace)."""
        raise NotImplementedError

    # model
    def model_class(self, model_config):
        raise NotImplementedError

    def peft_task_type(self, model_config) -> str:
        raise NotImplementedError

    def config_overrides(self, labels: list[str], cfg=None) -> dict:
        """Model-config keys for ``labels`` (and, given ``cfg``, the training settings that shape the loss)."""
        raise NotImplementedError

    def head_modules(self, model) -> list[str]:
        raise NotImplementedError

    def prepare_model(self, model, tokenizer) -> None:
        """Adjust a loaded model for the task (e.g. a pad token). Default: nothing."""

    # evaluation and prediction
    def main_metric(self, labels: list[str], cfg) -> str:
        raise NotImplementedError

    def eval_batch(self, model, batch):
        """-> (loss, predictions, references), one entry per example."""
        raise NotImplementedError

    def metrics(self, preds: list, refs: list, labels: list[str], cfg) -> dict:
        raise NotImplementedError

    def text_input(self, text: str, cfg):
        raise NotImplementedError

    def predict(self, model, tokenizer, table, cfg, batch_size: int, stream: bool = False) -> list[dict]:
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


def unseen_warning(task: Task, table, cfg, labels: list[str]) -> str | None:
    """A warning naming the gold labels of ``table`` the model was not trained on (scored as errors), or None."""
    unseen = task.unseen_labels(table, cfg, labels)
    if not unseen:
        return None
    listed = ", ".join(f"{name!r} ({n})" for name, n in unseen.items())
    return (f"warning: {table.source}: {len(unseen)} label{'s' if len(unseen) > 1 else ''} the model was not trained "
            f"on, {task.unseen_effect(cfg)}: {listed}")


for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
