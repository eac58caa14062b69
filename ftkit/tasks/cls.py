"""Sequence classification (``--task cls``): single sentences or sentence pairs, and three kinds of problem
(``task.problem``, stored as the model config's ``problem_type``, so stock transformers computes the same loss):

- ``single_label``: one class per row (string or integer labels); softmax + cross-entropy; accuracy.
- ``multi_label``: any number of classes per row, written as a list (JSON/Parquet) or a delimited string
  (``task.label_separator``; an empty label: none); sigmoid + binary cross-entropy per class; a class is predicted
  when its probability reaches ``task.threshold`` (0.5, or tuned on the evaluation split with
  ``task.tune_threshold``, stored in config.json as ``multi_label_threshold``); micro/macro F1 and per-class scores.
- ``regression``: a number per row; one output, mean squared error; R² (the main metric), Pearson, Spearman, MAE."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

from ftkit.data.batches import IGNORE, pad_collate
from ftkit.data.sources import to_features
from ftkit.data.table import Table
from ftkit.errors import UsageError
from ftkit.tasks import TASKS
from ftkit.tasks._common import UNSEEN, LabelledTask, batched_predict, label_config, label_name, sort_labels
from ftkit.tasks._scores import confusion_metrics, multi_label_metrics, regression_metrics

# task.problem -> the model config's problem_type (transformers' names, which pick its loss)
PROBLEMS = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
            "regression": "regression"}
THRESHOLD_KEY = "multi_label_threshold"  # config.json: the threshold a multi-label run was evaluated with
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]  # task.tune_threshold's candidates
AUGMENTATIONS = ("delete", "swap")


@dataclass
class ClsParams:
    baseline: bool = field(default=True, metadata={
        "help": "Also fit a TF-IDF + logistic regression baseline on the same split (seconds, before training) and "
                "report it beside the model's held-out metrics: summary, metrics.json, model card."})
    problem: str | None = field(default=None, metadata={
        "help": "single_label (one class per row), multi_label (a list of classes per row: sigmoid + binary "
                "cross-entropy) or regression (a number per row: mean squared error). Unset: multi_label when the "
                "training labels are lists (JSON/Parquet), else single_label; numbers stay class ids unless "
                "regression is set."})
    label_separator: str = field(default=",", metadata={
        "help": "multi_label: what separates the classes of a label written as one string (e.g. sports,politics); "
                "labels given as lists need none."})
    threshold: float | None = field(default=None, metadata={
        "help": "multi_label: the probability from which a class is predicted; unset: the run's tuned one, or 0.5."})
    augment: list[str] = field(default_factory=list, metadata={
        "help": "Text augmentation of the training rows (never the evaluation rows), needing no external resource: "
                "delete (drop each word with probability augment_prob) and/or swap (swap augment_prob x the words' "
                "count of random word pairs, at least one); each augmented copy uses one of them, drawn with the "
                "seed."})
    augment_prob: float = field(default=0.1, metadata={"help": "Share of the words each augmentation touches."})
    augment_copies: int = field(default=1, metadata={
        "help": "Augmented copies of each training row added to the originals (with task.augment)."})
    tune_threshold: bool = field(default=False, metadata={
        "help": "multi_label: choose the threshold (0.05 to 0.95) that maximises micro-F1 on the evaluation split at "
                "each evaluation; the chosen one is stored with the model and used by eval, predict and serve. The "
                "metrics reported are then on the split it was tuned on."})


def problem(cfg) -> str:
    return cfg.task.get("problem") or "single_label"


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

    # ------------------------------------------------------------------ settings
    def validate(self, cfg) -> None:
        kind = cfg.task.get("problem")  # None: the training labels decide it (from_data)
        if kind is not None and kind not in PROBLEMS:
            raise UsageError(f"config key 'task.problem': got {kind!r}, expected {' or '.join(PROBLEMS)}")
        threshold = cfg.task.get("threshold")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
            raise UsageError(f"config key 'task.threshold': got {threshold!r}, expected a number in (0, 1)")
        if kind not in (None, "multi_label") and (threshold is not None or cfg.task["tune_threshold"]):
            raise UsageError(f"config key 'task.{'threshold' if threshold is not None else 'tune_threshold'}': "
                             f"a multi-label setting; task.problem is {kind}")
        if not cfg.task["label_separator"]:
            raise UsageError("config key 'task.label_separator': expected a non-empty string")
        unknown = [op for op in cfg.task["augment"] if op not in AUGMENTATIONS]
        if unknown:
            raise UsageError(f"config key 'task.augment': got {unknown[0]!r}, expected a list of "
                             f"{' and/or '.join(AUGMENTATIONS)}")
        if not 0 < cfg.task["augment_prob"] < 1:
            raise UsageError(f"config key 'task.augment_prob': got {cfg.task['augment_prob']!r}, expected a number "
                             "in (0, 1)")
        if cfg.task["augment_copies"] < 1:
            raise UsageError(f"config key 'task.augment_copies': got {cfg.task['augment_copies']!r}, expected an "
                             "integer >= 1")

    def single_class(self, cfg) -> bool:
        return problem(cfg) == "single_label"

    def with_model_settings(self, cfg, model_config):
        """The problem kind a trained model carries in its config.json (a plain checkpoint or an export has no
        ftkit.yaml; its head and loss follow it), and its tuned threshold unless --set gives one."""
        kind = {v: k for k, v in PROBLEMS.items()}.get(getattr(model_config, "problem_type", None))
        task = dict(cfg.task)
        if kind and task.get("problem") not in (None, kind):
            raise UsageError(f"config key 'task.problem': got {task['problem']!r}, but the model was trained for "
                             f"{kind} (its head and loss are set by training)")
        if kind:
            task["problem"] = kind
        if task.get("threshold") is None and getattr(model_config, THRESHOLD_KEY, None) is not None:
            task["threshold"] = float(getattr(model_config, THRESHOLD_KEY))
        return dataclasses.replace(cfg, task=task)

    def from_data(self, cfg, table: Table):
        """task.problem left unset is decided by the training labels: a list can only mean several classes per row
        (multi_label); anything else is single_label (numbers are class ids unless regression is set)."""
        if cfg.task.get("problem") is not None:
            return cfg, None
        values = self._values(table, cfg)
        first = next((i for i, v in enumerate(values) if isinstance(v, (list, tuple))), None)
        kind = "single_label" if first is None else "multi_label"
        cfg = dataclasses.replace(cfg, task={**cfg.task, "problem": kind})
        if first is None:
            return cfg, None
        return cfg, (f"note: {table.locate(first)} has a list of labels, so task.problem is multi_label (several "
                     "classes per row; --set task.problem=single_label refuses lists)")

    def config_overrides(self, labels: list[str], cfg=None) -> dict:
        return label_config(labels) | ({"problem_type": PROBLEMS[problem(cfg)]} if cfg is not None else {})

    def saved_config(self, config, metrics: dict, cfg) -> None:
        if problem(cfg) == "multi_label":
            setattr(config, THRESHOLD_KEY, metrics.get("threshold", cfg.task.get("threshold") or 0.5))

    # ------------------------------------------------------------------ data
    def _values(self, table: Table, cfg) -> list:
        return [v.tolist() if hasattr(v, "tolist") else v  # Parquet lists arrive as arrays
                for v in table.column(self._col(cfg, "label"), "label")]

    def label_space(self, table: Table, cfg) -> list[str]:
        kind = problem(cfg)
        if kind == "regression":
            values = self.numbers(table, cfg)
            if len(set(values)) < 2:
                raise UsageError(f"{table.source}: every row has the value {values[0]}; regression needs targets "
                                 "that vary")
            return [self._col(cfg, "label")]
        if kind == "multi_label":
            labels = sort_labels({n for names in self.label_sets(table, cfg) for n in names})
            if not labels:
                raise UsageError(f"{table.source}: no row has a label; multi-label classification needs some")
            return labels
        names, first_of = set(), {}  # first_of: the first row of each kind of value; numbers and text must not mix
        for i, v in enumerate(self._values(table, cfg)):
            if isinstance(v, (list, tuple)):
                raise UsageError(f"{table.locate(i)}: the label is a list {v!r}, but task.problem is single_label; "
                                 "for several classes per row leave task.problem unset or set it to multi_label")
            if isinstance(v, float) and not v.is_integer():
                raise UsageError(f"{table.locate(i)}: label {v!r} is not a class name or an integer; for a number "
                                 "to predict set --set task.problem=regression")
            names.add(label_name(v, table, i))  # a missing label (null, empty) is named at its own line
            first_of.setdefault("text" if isinstance(v, str) else "number", i)
        if len(first_of) > 1:
            raise UsageError(f"{table.source}: the label column mixes numbers ({table.where_is(first_of['number'])}) "
                             f"and text ({table.where_is(first_of['text'])}); use one type for every label")
        labels = sort_labels(names)
        if len(labels) < 2:
            raise UsageError(f"{table.source}: every row has the label {labels[0]!r}; classification needs at "
                             "least two labels")
        return labels

    def numbers(self, table: Table, cfg) -> list[float]:
        """regression: every row's target, a finite number (numeric strings, as CSV gives them, included)."""
        out = []
        for i, v in enumerate(self._values(table, cfg)):
            try:
                x = float(v.strip() if isinstance(v, str) else v) if not isinstance(v, bool) else None
            except (TypeError, ValueError):
                x = None
            if x is None or not math.isfinite(x):
                what = "not a finite number" if x is not None else "not a number"  # nan, inf, 1e400
                raise UsageError(f"{table.locate(i)}: label {v!r} is {what} (task.problem=regression)")
            out.append(x)
        return out

    def label_sets(self, table: Table, cfg) -> list[list[str]]:
        """multi_label: every row's classes, from a list or a delimited string (empty: none)."""
        sep, out = cfg.task["label_separator"], []
        for i, v in enumerate(self._values(table, cfg)):
            if isinstance(v, str):
                v = [] if not v.strip() else v.split(sep)
            elif v is None:
                v = []
            elif not isinstance(v, (list, tuple)):
                v = [v]
            names = [label_name(x, table, i) for x in v]
            out.append(list(dict.fromkeys(names)))
        return out

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
        return {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "r2"}[problem(cfg)]

    def encode(self, tokenizer, table: Table, cfg, model_config) -> dict[str, list[list[int]]]:
        text, pair = self.texts(table, cfg)
        enc = tokenizer(text, pair, truncation=True, max_length=cfg.data.max_length)
        return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}

    def baseline(self, train: tuple, held_out: tuple, labels: list[str], cfg) -> dict | None:
        if not cfg.task["baseline"]:
            return None
        from ftkit.data.baseline import fit_and_score, name

        def joined(table, idx):
            text, pair = self.texts(table, cfg)
            return [text[i] if pair is None else f"{text[i]} {pair[i]}" for i in idx]

        (table, targets, idx), (eval_table, eval_targets, eval_idx) = train, held_out
        kind = problem(cfg)
        if kind == "single_label":
            idx = [i for i in idx if targets[i] != UNSEEN]  # a teacher's label set may lack a gold label
            if len({targets[i] for i in idx}) < 2:
                return None
        fitted = fit_and_score(joined(table, idx), [targets[i] for i in idx], joined(eval_table, eval_idx),
                               cfg.train.seed, kind)
        if fitted is None:
            return None
        preds, seconds = fitted
        scores = self.metrics(preds, [eval_targets[i] for i in eval_idx], labels, cfg)
        return {"method": name(kind), **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
                "seconds": round(seconds, 2)}

    def augmentation(self, table: Table, targets: list, idx: list[int], cfg):
        ops, p, copies = cfg.task.get("augment"), cfg.task.get("augment_prob"), cfg.task.get("augment_copies")
        if not ops:
            return None
        rng = random.Random(cfg.train.seed)
        text, pair = self.texts(table, cfg)
        rows, out_targets = {"text": [], "pair": []}, []
        for _ in range(copies):
            for i in idx:
                op = rng.choice(ops)
                rows["text"].append(augment_words(text[i], op, p, rng))
                if pair is not None:
                    rows["pair"].append(augment_words(pair[i], op, p, rng))
                out_targets.append(targets[i])
        columns = {self._col(cfg, "text"): rows["text"]} | (
            {self._col(cfg, "text_pair"): rows["pair"]} if pair is not None else {})
        note = (f"augmentation (task.augment): {copies} cop{'y' if copies == 1 else 'ies'} of each of the {len(idx)} "
                f"training rows ({' or '.join(ops)}, {p:g} of the words), {len(out_targets)} rows added")
        return Table(f"{table.source} (augmented)", columns), out_targets, note

    def gold_names(self, table: Table, cfg) -> list[str]:
        kind = problem(cfg)
        if kind == "regression":
            return []
        if kind == "multi_label":
            return [n for names in self.label_sets(table, cfg) for n in names]
        return [label_name(v, table, i) for i, v in enumerate(self._values(table, cfg))]

    def unseen_effect(self, cfg) -> str:
        return ("left out of the scores and the loss" if problem(cfg) == "multi_label"
                else super().unseen_effect(cfg))

    def targets(self, table: Table, cfg, labels: list[str]) -> list:
        kind = problem(cfg)
        if kind == "regression":
            return self.numbers(table, cfg)
        ids = {name: i for i, name in enumerate(labels)}
        if kind == "multi_label":  # one 0/1 per class; a class the model has no output for is left out
            hot = []
            for names in self.label_sets(table, cfg):
                row = [0.0] * len(labels)
                for n in names:
                    if n in ids:
                        row[ids[n]] = 1.0
                hot.append(row)
            return hot
        return [ids.get(name, UNSEEN) for name in self.gold_names(table, cfg)]

    def label_counts(self, targets: list, idx: list[int], labels: list[str], cfg) -> dict | None:
        kind = problem(cfg)
        if kind == "regression":
            return None
        if kind == "multi_label":
            return {name: int(sum(targets[i][k] for i in idx)) for k, name in enumerate(labels)}
        return super().label_counts(targets, idx, labels, cfg)

    def features(self, enc: dict, targets: list[int], idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        if notes is not None and (n := sum(len(enc["input_ids"][i]) >= cfg.data.max_length for i in idx)):
            notes.append(f"note: {n} of {len(idx)} {'training' if training else 'evaluation'} rows reach "
                         f"data.max_length={cfg.data.max_length} tokens; the model reads no further"
                         + (" (--max-length raises it, up to the model's positions)" if training else ""))
        return to_features(enc, targets, idx)

    def collator(self, tokenizer, cfg):
        pad = pad_collate(tokenizer.pad_token_id)
        if problem(cfg) == "single_label":
            return pad

        def collate(features: list[dict]) -> dict:  # float targets: a number, or one 0/1 per class
            import torch

            batch = pad([{k: v for k, v in f.items() if k != "labels"} for f in features])
            labels = [f["labels"] for f in features]  # (memory.py's trace gives class ids: the loss is alike)
            batch["labels"] = torch.tensor(labels, dtype=None if isinstance(labels[0], int) else torch.float32)
            return batch

        return collate

    def example(self, length: int) -> dict:
        return {"input_ids": [5] * length, "labels": 0}

    # ------------------------------------------------------------------ evaluation
    def eval_batch(self, model, batch):
        """-> (loss per example, predictions, references), all tensors on the batch's device. The loss is computed
        here from the logits, so method-specific terms (AdaLoRA's regulariser) stay out of it. The kind of problem
        shows in the references: class ids (single-label), one 0/1 row per example (multi-label: the predictions
        are the classes' probabilities), or numbers (regression: the predictions are the outputs)."""
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        if labels.is_floating_point() and labels.dim() == 2:
            nll = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
            return nll, logits.sigmoid(), labels
        if labels.is_floating_point():
            out = logits.squeeze(-1)
            return (out - labels) ** 2, out, labels
        unseen = labels == UNSEEN  # no loss for a label the head has no output for (NaN: left out of the mean)
        nll = F.cross_entropy(logits, labels.masked_fill(unseen, IGNORE), reduction="none")
        return nll.masked_fill(unseen, float("nan")), logits.argmax(-1), labels

    def metrics(self, preds, refs, labels: list[str], cfg) -> dict:
        import numpy as np

        kind = problem(cfg)
        if kind == "multi_label":
            probs, gold = np.asarray(preds, dtype=float).reshape(len(preds), -1), np.asarray(refs) > 0.5
            threshold = cfg.task.get("threshold") or 0.5
            if cfg.task.get("tune_threshold"):
                threshold = max(THRESHOLDS, key=lambda t: (multi_label_metrics(probs >= t, gold, labels)["micro_f1"],
                                                           -abs(t - 0.5)))
            return multi_label_metrics(probs >= threshold, gold, labels) | {"threshold": float(threshold)}
        if kind == "regression":
            return regression_metrics(np.asarray(preds, dtype=float), np.asarray(refs, dtype=float))
        return confusion_metrics(np.asarray(preds), np.asarray(refs), labels)

    # ------------------------------------------------------------------ prediction
    def text_input(self, text: str, cfg) -> Table:
        """A one-row table for ``predict --text``."""
        return Table("--text", {self._col(cfg, "text"): [text]})

    def predict(self, model, tokenizer, table: Table, cfg, batch_size: int = 32, stream: bool = False) -> list[dict]:
        text, pair = self.texts(table, cfg)
        id2label = model.config.id2label
        kind = problem(cfg)
        threshold = cfg.task.get("threshold") or 0.5

        def answer(out) -> dict:
            if kind == "regression":
                return {"value": round(float(out[0]), 6)}
            if kind == "multi_label":
                p = out.sigmoid()
                return {"labels": [id2label[c] for c, v in enumerate(p) if v >= threshold],
                        "probs": {id2label[c]: round(float(v), 6) for c, v in enumerate(p)}}
            p = out.softmax(-1)
            return {"label": id2label[int(p.argmax())],
                    "probs": {id2label[c]: round(float(v), 6) for c, v in enumerate(p)}}

        def run(chunk: list[str], s: int) -> list[dict]:
            pairs = pair[s:s + len(chunk)] if pair else None
            enc = tokenizer(chunk, pairs, truncation=True, max_length=cfg.data.max_length, padding=True,
                            return_tensors="pt")
            mask = enc.get("attention_mask")  # a text that fills max_length may have been cut: its whole length says
            full = mask.sum(-1).tolist() if mask is not None else [cfg.data.max_length] * len(chunk)
            cut = [n >= cfg.data.max_length and len(tokenizer(chunk[j], pairs[j] if pairs else None)["input_ids"])
                   > cfg.data.max_length for j, n in enumerate(full)]
            logits = model(**enc.to(model.device)).logits.float().cpu()
            return [{"text": chunk[j]} | ({"text_pair": pairs[j]} if pairs else {}) | answer(out)
                    | ({"truncated": True} if cut[j] else {}) for j, out in enumerate(logits)]

        return batched_predict(model, text, batch_size, run)


def augment_words(text: str, op: str, p: float, rng) -> str:
    """``text`` with words (split on whitespace) deleted — each with probability ``p``, one kept at least — or
    swapped — round(p x words) random pairs, at least one. A one-word text is left as it is."""
    words = text.split()
    if len(words) < 2:
        return text
    if op == "delete":
        kept = [w for w in words if rng.random() >= p]
        return " ".join(kept or [rng.choice(words)])
    for _ in range(max(1, round(p * len(words)))):
        a, b = rng.sample(range(len(words)), 2)
        words[a], words[b] = words[b], words[a]
    return " ".join(words)
