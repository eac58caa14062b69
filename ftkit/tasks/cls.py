"""Sequence classification (``--task cls``): single sentences or sentence pairs, string or integer labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.data import to_features
from ftkit.errors import UsageError
from ftkit.table import Table
from ftkit.tasks import TASKS
from ftkit.tasks._common import (IGNORE, UNSEEN, LabelledTask, batched_predict, confusion_metrics, label_name,
                                 pad_collate, sort_labels)


@dataclass
class ClsParams:
    baseline: bool = field(default=True, metadata={
        "help": "Also fit a TF-IDF + logistic regression baseline on the same split (seconds, before training) and "
                "report it beside the model's held-out metrics: summary, metrics.json, model card."})


@TASKS.register("cls")
class Classification(LabelledTask):
    name = "cls"
    params = ClsParams
    columns = {"text": "text", "text_pair": "text_pair", "label": "label"}  # role -> default column
    optional = {"text_pair"}
    architectures = ("ForSequenceClassification",)  # checkpoints this task loads (for `eval MODEL`)
    auto_class = "AutoModelForSequenceClassification"
    peft_type = "SEQ_CLS"
    hub_task = "text-classification"
    virtual_tokens_in_loss = True  # one label per row
    classifies = True
    description = "sequence classification (single sentence or sentence pair)"

    # ------------------------------------------------------------------ data
    def label_space(self, table: Table, cfg) -> list[str]:
        col = table.column(self._col(cfg, "label"), "label")
        first_of = {}  # the first row of each kind of value: numbers and text must not mix
        for i, v in enumerate(col):
            first_of.setdefault("text" if isinstance(v, str) else "number", i)
        if len(first_of) > 1:
            raise UsageError(f"{table.source}: the label column mixes numbers ({table.where_is(first_of['number'])}) "
                             f"and text ({table.where_is(first_of['text'])}); use one type for every label")
        labels = sort_labels({label_name(v, table, i) for i, v in enumerate(col)})
        if len(labels) < 2:
            raise UsageError(f"{table.source}: every row has the label {labels[0]!r}; classification needs at "
                             "least two labels")
        return labels

    def texts(self, table: Table, cfg) -> tuple[list[str], list[str] | None]:
        """The text (and pair) columns, validated: every row must have non-empty text."""
        text = table.text_column(self._col(cfg, "text"), "text")
        pair_col = self._col(cfg, "text_pair")
        # a renamed pair column must exist (text_column names the columns found); the default one is optional
        wanted = "text_pair" in cfg.data.columns or pair_col in table.columns
        return text, table.text_column(pair_col, "text_pair") if wanted else None

    def check(self, table: Table, cfg) -> None:
        """Validate the inputs before any model is loaded."""
        self.texts(table, cfg)

    def main_metric(self, labels: list[str], cfg) -> str:
        return "accuracy"

    def encode(self, tokenizer, table: Table, cfg, model_config) -> dict[str, list[list[int]]]:
        text, pair = self.texts(table, cfg)
        enc = tokenizer(text, pair, truncation=True, max_length=cfg.data.max_length)
        return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}

    def baseline(self, train: tuple, held_out: tuple, labels: list[str], cfg) -> dict | None:
        if not cfg.task["baseline"]:
            return None
        from ftkit.baseline import NAME, fit_and_score

        def joined(table, idx):
            text, pair = self.texts(table, cfg)
            return [text[i] if pair is None else f"{text[i]} {pair[i]}" for i in idx]

        (table, targets, idx), (eval_table, eval_targets, eval_idx) = train, held_out
        idx = [i for i in idx if targets[i] != UNSEEN]  # a teacher's label set may lack a gold label
        if len({targets[i] for i in idx}) < 2:
            return None
        preds, seconds = fit_and_score(joined(table, idx), [targets[i] for i in idx], joined(eval_table, eval_idx),
                                       cfg.train.seed)
        scores = self.metrics(preds, [eval_targets[i] for i in eval_idx], labels, cfg)
        return {"method": NAME, **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
                "seconds": round(seconds, 2)}

    def gold_names(self, table: Table, cfg) -> list[str]:
        return [label_name(v, table, i) for i, v in enumerate(table.column(self._col(cfg, "label"), "label"))]

    def targets(self, table: Table, cfg, labels: list[str]) -> list[int]:
        ids = {name: i for i, name in enumerate(labels)}
        return [ids.get(name, UNSEEN) for name in self.gold_names(table, cfg)]

    def features(self, enc: dict, targets: list[int], idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        return to_features(enc, targets, idx)

    def collator(self, tokenizer, cfg):
        return pad_collate(tokenizer.pad_token_id)

    def example(self, length: int) -> dict:
        return {"input_ids": [5] * length, "labels": 0}

    # ------------------------------------------------------------------ model
    # ------------------------------------------------------------------ evaluation
    def eval_batch(self, model, batch):
        """-> (loss per example, predictions, references), all tensors on the batch's device. The loss is plain
        cross-entropy on the logits, so method-specific terms (AdaLoRA's regulariser) stay out of it."""
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        unseen = labels == UNSEEN  # no loss for a label the head has no output for (NaN: left out of the mean)
        nll = F.cross_entropy(logits.float(), labels.masked_fill(unseen, IGNORE), reduction="none")
        return nll.masked_fill(unseen, float("nan")), logits.argmax(-1), labels

    def metrics(self, preds, refs, labels: list[str], cfg) -> dict:
        import numpy as np

        return confusion_metrics(np.asarray(preds), np.asarray(refs), labels)

    # ------------------------------------------------------------------ prediction
    def text_input(self, text: str, cfg) -> Table:
        """A one-row table for ``predict --text``."""
        return Table("--text", {self._col(cfg, "text"): [text]})

    def predict(self, model, tokenizer, table: Table, cfg, batch_size: int = 32, stream: bool = False) -> list[dict]:
        text, pair = self.texts(table, cfg)
        id2label = model.config.id2label

        def run(chunk: list[str], s: int) -> list[dict]:
            enc = tokenizer(chunk, pair[s:s + len(chunk)] if pair else None, truncation=True,
                            max_length=cfg.data.max_length, padding=True, return_tensors="pt")
            rows = []
            for j, p in enumerate(model(**enc.to(model.device)).logits.float().softmax(-1).cpu()):
                row = {"text": chunk[j]} | ({"text_pair": pair[s + j]} if pair else {})
                rows.append(row | {"label": id2label[int(p.argmax())],
                                   "probs": {id2label[c]: round(float(v), 6) for c, v in enumerate(p)}})
            return rows

        return batched_predict(model, text, batch_size, run)
