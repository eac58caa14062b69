"""Token tagging (``--task tag``): NER, POS and the like, one tag per word.

Words are split into sub-tokens by the fast tokenizer; its ``word_ids`` align them: the word's tag goes on its
first sub-token and -100 (ignored by the loss) on the rest, unless ``task.label_all_subtokens``. Evaluation always
scores one prediction per word (the first sub-token's), every word of a sentence longer than data.max_length
included (read in windows, as predict reads it); training reads a sentence's first data.max_length tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftkit.data.batches import IGNORE, pad_collate, real_positions
from ftkit.data.table import Table
from ftkit.errors import UsageError
from ftkit.tasks import TASKS
from ftkit.tasks._common import UNSEEN, LabelledTask, batched_predict, encode_windows, sort_labels
from ftkit.tasks._scores import confusion_metrics

SCHEMES = ("auto", "iob2", "iobes", "none")
_ENTITY_TAG = re.compile(r"^(O|[BIES]-.+)$")


@dataclass
class TagParams:
    label_all_subtokens: bool = field(default=False, metadata={
        "help": "Train on every sub-token of a word (with the word's tag), not only the first."})
    scheme: str = field(default="auto", metadata={
        "help": "Entity scheme for precision/recall/F1 (seqeval): auto (detect BIO/IOB2 or IOBES tags), iob2, "
                "iobes, or none (token accuracy only, e.g. POS tags)."})


def detect_scheme(labels: list[str]) -> str:
    """iobes / iob2 when every tag is O or a B-/I-/E-/S- prefixed type, else none."""
    if not all(_ENTITY_TAG.match(t) for t in labels) or labels == ["O"]:
        return "none"
    return "iobes" if any(t[:2] in ("E-", "S-") for t in labels) else "iob2"


@TASKS.register("tag")
class Tagging(LabelledTask):
    name = "tag"
    params = TagParams
    columns = {"tokens": "tokens", "tags": "tags"}
    optional: set = set()
    architectures = ("ForTokenClassification",)
    auto_class = "AutoModelForTokenClassification"
    peft_type = "TOKEN_CLS"
    hub_task = "token-classification"
    virtual_tokens_in_loss = False
    classifies = True
    description = "token tagging (NER, POS): one tag per word"

    def scheme(self, labels: list[str], cfg) -> str:
        chosen = cfg.task["scheme"]
        return detect_scheme(labels) if chosen == "auto" else chosen

    # ------------------------------------------------------------------ data
    def words(self, table: Table, cfg) -> list[list[str]]:
        tokens = table.column(self._col(cfg, "tokens"), "tokens")
        for i, sent in enumerate(tokens):
            if not isinstance(sent, list) or not sent or not all(isinstance(w, str) and w for w in sent):
                raise UsageError(f"{table.locate(i)}: tokens must be a non-empty list of non-empty strings, "
                                 f"found {str(sent)[:80]!r}")
        return tokens

    def _tags(self, table: Table, cfg) -> list[list[str]]:
        tokens, tags = self.words(table, cfg), table.column(self._col(cfg, "tags"), "tags")
        for i, (sent, t) in enumerate(zip(tokens, tags)):
            if not isinstance(t, list) or not all(isinstance(x, str) and x for x in t):
                raise UsageError(f"{table.locate(i)}: tags must be a list of strings, found {str(t)[:80]!r}")
            if len(t) != len(sent):
                raise UsageError(f"{table.locate(i)}: {len(sent)} tokens but {len(t)} tags")
        return tags

    def check(self, table: Table, cfg) -> None:
        self._tags(table, cfg)

    def label_space(self, table: Table, cfg) -> list[str]:
        labels = sort_labels({t for sent in self._tags(table, cfg) for t in sent})
        if len(labels) < 2:
            raise UsageError(f"{table.source}: every token has the tag {labels[0]!r}; tagging needs at least two")
        return labels

    def gold_names(self, table: Table, cfg) -> list[str]:
        return [t for sent in self._tags(table, cfg) for t in sent]

    def targets(self, table: Table, cfg, labels: list[str]) -> list[list[int]]:
        ids = {name: i for i, name in enumerate(labels)}
        return [[ids.get(t, UNSEEN) for t in sent] for sent in self._tags(table, cfg)]

    def encode(self, tokenizer, table: Table, cfg, model_config) -> dict[str, list[list[int]]]:
        """Each sentence in windows of at most data.max_length tokens (the first is what truncation gives), kept
        per sentence as the windows one after another plus their lengths (``windows``): training reads the first
        window, evaluation all of them, so that every word is scored."""
        words = self.words(table, cfg)
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=cfg.data.max_length,
                        return_overflowing_tokens=True)
        out: dict[str, list[list[int]]] = {"input_ids": [[] for _ in words], "word_ids": [[] for _ in words],
                                           "windows": [[] for _ in words]}
        typed = "token_type_ids" in enc
        if typed:
            out["token_type_ids"] = [[] for _ in words]
        for k, row in enumerate(enc["overflow_to_sample_mapping"]):
            ids = enc["input_ids"][k]
            out["input_ids"][row] += ids
            # word index per sub-token (-1 for special tokens), kept so labels can be aligned later
            out["word_ids"][row] += [-1 if w is None else w for w in enc.word_ids(k)]
            out["windows"][row].append(len(ids))
            if typed:
                out["token_type_ids"][row] += enc["token_type_ids"][k]
        return out

    def features(self, enc: dict, targets: list[list[int]], idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        """Training: each sentence's first window (a longer sentence's last words are cut, and counted). Evaluation:
        every window of it, a word scored once, at its first sub-token; windows after a sentence's first carry
        ``window`` > 0, which eval_batch and metrics use to score the sentence whole."""
        all_subtokens = training and cfg.task["label_all_subtokens"]
        keys = [k for k in enc if k not in ("word_ids", "windows")]
        out, truncated = [], 0
        for i in idx:
            tags, start, scored = targets[i], 0, -1  # scored: the last word that has its label
            for n, length in enumerate(enc["windows"][i][:1] if training else enc["windows"][i]):
                word_ids, labels, prev = enc["word_ids"][i][start:start + length], [], -1
                for w in word_ids:  # a word's sub-tokens may run on into the next window: it is labelled once
                    labelled = w >= 0 and (w > scored or (all_subtokens and w == prev))
                    labels.append(tags[w] if labelled else IGNORE)
                    scored, prev = max(scored, w), w if w >= 0 else prev
                feature = {k: enc[k][i][start:start + length] for k in keys} | {"labels": labels}
                out.append(feature if training else feature | {"window": n})
                start += length
            truncated += training and len(enc["windows"][i]) > 1
        if truncated and notes is not None:
            notes.append(f"note: {truncated} of {len(idx)} training sentences are longer than data.max_length="
                         f"{cfg.data.max_length} tokens and were cut (their last words are not trained on; "
                         "evaluation reads every word)")
        return out

    def collator(self, tokenizer, cfg):
        return pad_collate(tokenizer.pad_token_id, label_pad=IGNORE)

    def example(self, length: int) -> dict:
        return {"input_ids": [5] * length, "labels": [0] * length}

    # ------------------------------------------------------------------ model
    # ------------------------------------------------------------------ evaluation
    def main_metric(self, labels: list[str], cfg) -> str:
        return "accuracy" if self.scheme(labels, cfg) == "none" else "entity_f1"

    def eval_batch(self, model, batch):
        """-> (mean cross-entropy over each sentence's scored sub-tokens, predictions, references); computed here
        so method-specific terms stay out of it."""
        import torch
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "window")}).logits
        logits = real_positions(logits, labels.shape[1])
        scored = labels.masked_fill(labels == UNSEEN, IGNORE)  # a tag the head has no output for takes no loss
        nll = F.cross_entropy(logits.float().transpose(1, 2), scored, ignore_index=IGNORE, reduction="none")
        # a window with no scored word has no loss (NaN: left out of the mean); each window of a long sentence has
        # its own. The references lead with the window's number (metrics joins a sentence's windows again).
        window = batch.get("window", torch.zeros(len(labels), dtype=labels.dtype, device=labels.device))
        refs = torch.cat([window.to(labels.dtype)[:, None], labels], 1)
        return nll.sum(1) / (scored != IGNORE).sum(1), logits.argmax(-1), refs

    def metrics(self, preds, refs, labels: list[str], cfg) -> dict:
        """Token accuracy and per-tag scores over words; entity P/R/F1 (seqeval) for IOB2/IOBES tags."""
        import numpy as np

        seq_pred, seq_ref = [], []
        for p, r in zip(preds, refs):  # r: the window's number (eval_batch), then its labels
            window, r = r[0], r[1:]
            keep = r != IGNORE
            if window > 0 and seq_ref:  # the rest of the sentence before it
                seq_pred[-1] += p[:len(r)][keep].tolist()
                seq_ref[-1] += r[keep].tolist()
            else:
                seq_pred.append(p[:len(r)][keep].tolist())
                seq_ref.append(r[keep].tolist())
        flat_p = np.array([x for s in seq_pred for x in s], dtype=np.int64)
        flat_r = np.array([x for s in seq_ref for x in s], dtype=np.int64)
        result = confusion_metrics(flat_p, flat_r, labels)
        scheme = self.scheme(labels, cfg)
        if scheme != "none":
            # an unseen gold tag: a one-word entity of its own type, which no prediction can match
            names = labels + [("S-" if scheme == "iobes" else "B-") + "UNSEEN"]  # names[UNSEEN] is the last
            result.update(entity_metrics([[names[x] for x in s] for s in seq_ref],
                                         [[names[x] for x in s] for s in seq_pred], scheme))
        return result

    # ------------------------------------------------------------------ prediction
    def text_input(self, text: str, cfg) -> Table:
        """A one-row table for ``predict --text``: raw text, split into words by the tokenizer at predict time."""
        return Table("--text", {"text": [text]})

    def predict(self, model, tokenizer, table: Table, cfg, batch_size: int = 32, stream: bool = False) -> list[dict]:
        if "text" in table.columns and self._col(cfg, "tokens") not in table.columns:
            words = [split_words(tokenizer, t) for t in table.columns["text"]]
        else:
            words = self.words(table, cfg)
        id2label = model.config.id2label

        def run(chunk: list[list[str]], s: int) -> list[dict]:
            # a sentence longer than data.max_length is read in windows, so every word gets its tag
            enc, windows = encode_windows(tokenizer, chunk, cfg.data.max_length, model.device,
                                          is_split_into_words=True)
            logits = real_positions(model(**enc).logits, enc["input_ids"].shape[1])
            probs = logits.float().softmax(-1).cpu()
            first = [{} for _ in chunk]  # per sentence: word -> its first sub-token's (window, position)
            for k, j in enumerate(windows):
                for pos, w in enumerate(enc.word_ids(k)):
                    if w is not None and w not in first[j]:
                        first[j][w] = (k, pos)
            rows = []
            for j, sent in enumerate(chunk):
                at = [first[j].get(w) for w in range(len(sent))]
                rows.append({"tokens": sent,
                             "tags": [None if a is None else id2label[int(probs[a].argmax())] for a in at],
                             "scores": [None if a is None else round(float(probs[a].max()), 6) for a in at]})
            return rows

        return batched_predict(model, words, batch_size, run)


def split_words(tokenizer, text: str) -> list[str]:
    """Raw text -> words, with the tokenizer's own pre-tokenizer (for BERT: whitespace and punctuation)."""
    if not text.strip():
        raise UsageError("empty text")
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    return [w for w, _ in pre.pre_tokenize_str(text)] if pre is not None else text.split()


def entity_metrics(refs: list[list[str]], preds: list[list[str]], scheme: str) -> dict:
    """Micro entity precision/recall/F1 and per entity type, strict matching in the given scheme (seqeval)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    report = classification_report(refs, preds, mode="strict", scheme={"iob2": IOB2, "iobes": IOBES}[scheme],
                                   output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    return {"entity_precision": float(micro["precision"]), "entity_recall": float(micro["recall"]),
            "entity_f1": float(micro["f1-score"]),
            "per_entity": {t: {"precision": float(m["precision"]), "recall": float(m["recall"]),
                               "f1": float(m["f1-score"]), "support": int(m["support"])} for t, m in report.items()}}
