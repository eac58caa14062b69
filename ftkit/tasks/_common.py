"""Pieces shared by the task modules: windowed encoding, batched prediction, head discovery, label-space helpers
(scoring: ``_scores``; batch helpers shared beyond the tasks: ``ftkit.data.batches``)."""

from __future__ import annotations

from ftkit.data.table import Table
from ftkit.errors import UsageError
from ftkit.tasks import Task

UNSEEN = -1  # the reference of a gold label the model was not trained on: takes no loss, scored as an error
UNSEEN_ROW = "(not seen in training)"  # its row in the per-class table


def encode_windows(tokenizer, texts: list, max_length: int, device, **kwargs):
    """``texts`` as one padded batch of windows of at most ``max_length`` tokens each, so that no part of a long
    text is cut off -> (the batch on ``device``, the index in ``texts`` of each window, in order)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                    return_overflowing_tokens=True, **kwargs)
    windows = enc.pop("overflow_to_sample_mapping").tolist()
    return enc.to(device), windows


def batched_predict(model, items: list, batch_size: int, run) -> list[dict]:
    """The output rows of ``run(chunk, start)`` over successive ``batch_size`` chunks of ``items`` (``start``: the
    chunk's first index), in order, with the model in evaluation mode and no gradients."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            out.extend(run(items[s:s + batch_size], s))
    return out


def head_modules(model) -> list[str]:
    """Names of the top-level modules outside the pretrained backbone (e.g. ``classifier``, ``score``).

    The backbone is ``model.<base_model_prefix>``; everything else with parameters is the task head.
    """
    prefix = model.base_model_prefix
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def label_name(value, table: Table, i: int) -> str:
    """Labels are kept as strings ("positive", "3"); ints and integral floats are accepted too."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise UsageError(f"{table.locate(i)}: missing or invalid label {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise UsageError(f"{table.locate(i)}: label {value!r} is not a class name or an integer")
        value = int(value)
    if not isinstance(value, (str, int)):
        raise UsageError(f"{table.locate(i)}: label {value!r} must be a string or an integer")
    return str(value).strip()


def sort_labels(names: set[str]) -> list[str]:
    """Integer labels in numeric order (so label i gets id i when labels are 0..K-1), others alphabetically."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def label_config(labels: list[str]) -> dict:
    """Model-config overrides that give a labelled head its size and the label maps stored in config.json."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)}}


class LabelledTask(Task):
    """What the classification-style tasks (cls, tag) share: a new head over a pretrained backbone, sized by the
    label set, whose label maps go into config.json. A subclass names its transformers auto class and peft task
    type."""

    auto_class: str  # e.g. "AutoModelForSequenceClassification"
    peft_type: str  # e.g. "SEQ_CLS"
    columns: dict[str, str]
    maximize = True  # accuracy / F1: higher is better
    streams = False
    labelled = True
    head_names = ("classifier", "score", "pooler")  # kept out of quantization (a pooler may be new: see models)
    long_rows = "truncated"
    onnx = True  # `export --format onnx`: logits of (input_ids, attention_mask, token_type_ids)

    def _col(self, cfg, role: str) -> str:
        return cfg.data.columns.get(role, self.columns[role])

    def model_class(self, model_config):
        import transformers

        return getattr(transformers, self.auto_class)

    def peft_task_type(self, model_config) -> str:
        return self.peft_type

    def config_overrides(self, labels: list[str], cfg=None) -> dict:
        return label_config(labels)

    def label_counts(self, targets: list, idx: list[int], labels: list[str], cfg) -> dict[str, int] | None:
        from collections import Counter

        counts = Counter()
        for i in idx:
            t = targets[i]
            counts.update(x for x in (t if isinstance(t, list) else [t]) if x >= 0)
        return {labels[k]: n for k, n in sorted(counts.items())}

    def head_modules(self, model) -> list[str]:
        return head_modules(model)

    def gold_names(self, table: Table, cfg) -> list[str]:
        """Every gold label of ``table`` (one per row, or per word), in order."""
        raise NotImplementedError

    def unseen_labels(self, table: Table, cfg, labels: list[str]) -> dict[str, int]:
        """The gold labels of ``table`` the model was not trained on, each with how often it occurs. Real annotated
        data has them (a rare class, an ambiguous tag written as ``VBG|NN``): they are scored as errors
        (``UNSEEN``), and the caller says which."""
        from collections import Counter

        known = set(labels)
        return dict(sorted(Counter(n for n in self.gold_names(table, cfg) if n not in known).items()))
