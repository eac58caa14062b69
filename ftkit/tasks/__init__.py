"""Task families. Each module registers one task object in TASKS; nothing else enumerates them.

Every task object provides what ``Task`` below lists. Heavy imports (torch, transformers) stay inside the methods
so that importing this package (and so ``ftkit --help``) stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Protocol

from ftkit.registry import Registry


class Task(Protocol):
    name: str
    description: str
    params: type  # dataclass of the task's config keys (``task.KEY``)
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

    # data, before any model is loaded
    def check(self, table, cfg) -> None: ...
    def label_space(self, table, cfg) -> list[str]: ...
    def targets(self, table, cfg, labels: list[str]) -> list: ...  # a gold label not in ``labels``: UNSEEN
    def unseen_labels(self, table, cfg, labels: list[str]) -> dict[str, int]: ...  # labelled tasks only
    # encoding (cached on disk) and model-ready features
    def encode(self, tokenizer, table, cfg, model_config) -> dict[str, list[list[int]]]: ...
    def features(self, enc: dict, targets: list, idx: list[int], cfg, training: bool) -> list[dict]: ...
    def collator(self, tokenizer, cfg): ...
    def example(self, length: int) -> dict: ...  # one feature of ``length`` tokens (memory.py's trace)
    # model
    def model_class(self, model_config): ...
    def peft_task_type(self, model_config) -> str: ...
    def config_overrides(self, labels: list[str]) -> dict: ...
    def head_modules(self, model) -> list[str]: ...
    def prepare_model(self, model, tokenizer) -> None: ...
    # evaluation and prediction
    def main_metric(self, labels: list[str], cfg) -> str: ...
    def eval_batch(self, model, batch): ...  # -> (loss, predictions, references), one entry per example
    def metrics(self, preds: list, refs: list, labels: list[str], cfg) -> dict: ...
    def text_input(self, text: str, cfg): ...
    def predict(self, model, tokenizer, table, cfg, batch_size: int, stream: bool = False) -> list[dict]: ...

TASKS: Registry[Task] = Registry("task")


@dataclass
class Batching:
    """How batches are built and scored once the model is known: a task may offer a ``batching(model, tokenizer,
    cfg, features)`` method for layouts that depend on the model (gen's padding-free batches)."""

    collate: Callable[[list[dict]], dict]  # training and evaluation batches (the task's eval_batch reads them)
    loss: Callable | None = None  # (model, batch) -> training loss; None: the model's own, model(**batch).loss
    note: str | None = None  # what the run log says about it
    packed: bool = False  # one packed row per batch: no padding for length grouping to cut (train.group_by_length)


def unseen_labels(task: Task, table, cfg, labels: list[str]) -> str | None:
    """A warning naming the gold labels of ``table`` the model was not trained on (scored as errors), or None."""
    unseen = task.unseen_labels(table, cfg, labels) if task.labelled else {}
    if not unseen:
        return None
    listed = ", ".join(f"{name!r} ({n})" for name, n in unseen.items())
    return (f"warning: {table.source}: {len(unseen)} label{'s' if len(unseen) > 1 else ''} the model was not trained "
            f"on, scored as errors (they take no loss): {listed}")


def batching(task: Task, model, tokenizer, cfg, features: list[dict]) -> Batching:
    if hasattr(task, "batching"):
        return task.batching(model, tokenizer, cfg, features)
    return Batching(task.collator(tokenizer, cfg))

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
