"""Masked-language-model training (``--task mlm``): domain-adaptive pre-training of an encoder on raw text.

Each document is tokenized whole and cut into windows of data.max_length tokens (no text is lost to truncation).
Masking is BERT's: task.mlm_probability of the tokens (or of the words, with task.whole_word_mask) are chosen;
80% of them become the mask token, 10% a random token, 10% stay; the loss is on the chosen tokens only. Training
draws new masks every time a window is seen (dynamic masking, from the seeded torch RNG, so a resumed run draws
the same ones); evaluation masks each window the same way every time, so eval losses are comparable.

A run dir of this task is a starting point for `ftkit train --task cls|tag --model RUN_DIR` (an adapter is merged
into the encoder first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ftkit.data.batches import IGNORE, real_positions
from ftkit.data.table import Table
from ftkit.errors import UsageError
from ftkit.tasks import TASKS, Task
from ftkit.tasks._common import batched_predict, encode_windows, head_modules
@dataclass
class MlmParams:
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens (or words) masked per window."})
    whole_word_mask: bool = field(default=False, metadata={
        "help": "Mask all sub-word tokens of a chosen word together (a harder task than single word pieces)."})
    top_k: int = field(default=5, metadata={"help": "predict: candidates listed per mask token."})


@TASKS.register("mlm")
class MaskedLM(Task):
    name = "mlm"
    params = MlmParams
    columns = {"text": "text"}
    architectures = ("ForMaskedLM",)
    maximize = False  # perplexity of the masked tokens: lower is better
    labelled = False
    streams = False
    # the MLM heads of BERT-, RoBERTa- and DistilBERT-style models, kept out of quantization
    head_names = ("cls", "lm_head", "vocab_transform", "vocab_projector")
    hub_task = "fill-mask"
    virtual_tokens_in_loss = False  # peft's feature-extraction model
    long_rows = "split into windows"  # every token is trained on
    onnx = False  # a pre-training stage; the model to deploy is the cls/tag run trained from it
    description = "masked-language-model pre-training on raw text (encoders; domain adaptation before cls/tag)"

    def _texts(self, table: Table, cfg) -> list[str]:
        return table.text_column(cfg.data.columns.get("text", "text"), "text")

    # ------------------------------------------------------------------ data
    def check(self, table: Table, cfg) -> None:
        self._texts(table, cfg)
        p = cfg.task["mlm_probability"]
        if not 0 < p < 1:
            raise UsageError(f"config key 'task.mlm_probability': got {p}, expected a number between 0 and 1")
        if cfg.task["top_k"] < 1:
            raise UsageError(f"config key 'task.top_k': got {cfg.task['top_k']}, expected an integer >= 1")

    def label_space(self, table: Table, cfg) -> list[str]:
        return []

    def targets(self, table: Table, cfg, labels: list[str]) -> list[None]:
        return [None] * len(table)  # the labels are the masked tokens themselves

    def encode(self, tokenizer, table: Table, cfg, model_config) -> dict[str, list[list[int]]]:
        """Windows of at most data.max_length tokens (special tokens included), each with its word ids (-1 for
        special tokens, which are never masked) and the table row it came from."""
        if tokenizer.mask_token_id is None:
            raise UsageError("task mlm needs a tokenizer with a mask token; this model has none (for a decoder, "
                             "continue pre-training with --task gen on a `text` column)")
        enc = tokenizer(self._texts(table, cfg), truncation=True, max_length=cfg.data.max_length,
                        return_overflowing_tokens=True)
        rows = enc["overflow_to_sample_mapping"]
        words = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(rows))]
        return {"input_ids": enc["input_ids"], "word_ids": words, "row": [[r] for r in rows]}

    def features(self, enc: dict, targets: list, idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        """The windows of rows ``idx``. Evaluation windows carry a fixed masking seed."""
        wanted = set(idx)
        out = [{"input_ids": ids, "word_ids": words}
               for ids, words, (row,) in zip(enc["input_ids"], enc["word_ids"], enc["row"]) if row in wanted]
        if not training:
            for k, f in enumerate(out):
                f["mask_seed"] = cfg.train.seed * 1_000_003 + k
        return out

    def collator(self, tokenizer, cfg):
        """Pads a batch and masks it: labels are the original ids at the chosen positions, -100 elsewhere."""
        import torch

        probability, whole_word = cfg.task["mlm_probability"], cfg.task["whole_word_mask"]
        mask_id, vocab, pad_id = tokenizer.mask_token_id, len(tokenizer), tokenizer.pad_token_id

        def mask_one(ids: list[int], words: list[int], seed: int | None):
            gen = torch.Generator().manual_seed(seed) if seed is not None else None  # None: the global RNG
            ids_t, words_t = torch.tensor(ids), torch.tensor(words)
            maskable = words_t >= 0
            if whole_word:  # choose words, then every token of a chosen word
                chosen_words = torch.rand(int(words_t.max()) + 2, generator=gen) < probability
                chosen = maskable & chosen_words[words_t.clamp(min=0)]
            else:
                chosen = maskable & (torch.rand(len(ids), generator=gen) < probability)
            if not chosen.any():  # at least one target per window, so every window has a loss
                candidates = maskable.nonzero().flatten()
                pick = candidates[torch.randint(len(candidates), (1,), generator=gen)] if len(candidates) else None
                if pick is not None:
                    chosen[pick] = True
            labels = torch.where(chosen, ids_t, IGNORE)
            roll = torch.rand(len(ids), generator=gen)
            inputs = ids_t.clone()
            inputs[chosen & (roll < 0.8)] = mask_id
            swap = chosen & (roll >= 0.8) & (roll < 0.9)
            inputs[swap] = torch.randint(vocab, (int(swap.sum()),), generator=gen)
            return inputs, labels

        def collate(features: list[dict]) -> dict:
            width = max(len(f["input_ids"]) for f in features)
            batch = {"input_ids": torch.full((len(features), width), pad_id),
                     "labels": torch.full((len(features), width), IGNORE),
                     "attention_mask": torch.zeros((len(features), width), dtype=torch.long)}
            for i, f in enumerate(features):
                inputs, labels = mask_one(f["input_ids"], f["word_ids"], f.get("mask_seed"))
                n = len(inputs)
                batch["input_ids"][i, :n], batch["labels"][i, :n], batch["attention_mask"][i, :n] = inputs, labels, 1
            return batch

        return collate

    def example(self, length: int) -> dict:
        return {"input_ids": [5] * length, "word_ids": list(range(length))}

    # ------------------------------------------------------------------ model
    def model_class(self, model_config):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def peft_task_type(self, model_config) -> str:
        return "FEATURE_EXTRACTION"  # peft has no masked-LM type; this one passes the labels through

    def config_overrides(self, labels: list[str], cfg=None) -> dict:
        return {}

    def head_modules(self, model) -> list[str]:
        """The head's parts that are not the (tied) input embeddings: e.g. BERT's ``cls.predictions.transform``,
        new when the checkpoint is a bare encoder. The decoder shares the embedding matrix and stays with it."""
        emb = model.get_input_embeddings().weight

        def untied(module, name):
            for child_name, child in module.named_children():
                params = list(child.parameters())
                if any(p is emb for p in params):
                    yield from untied(child, f"{name}.{child_name}")
                elif params:
                    yield f"{name}.{child_name}"

        return [n for top in head_modules(model) for n in untied(getattr(model, top), top)]

    def prepare_model(self, model, tokenizer) -> None:
        pass

    # ------------------------------------------------------------------ evaluation
    def main_metric(self, labels: list[str], cfg) -> str:
        return "perplexity"

    def eval_batch(self, model, batch):
        """-> (loss per window, [summed NLL, correct predictions] per window, masked-token count per window)."""
        import torch
        import torch.nn.functional as F

        logits = real_positions(model(**batch).logits, batch["labels"].shape[1])
        labels = batch["labels"]
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none").sum(1)
        tokens = (labels != IGNORE).sum(1)
        correct = ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum(1)
        return nll / tokens.clamp(min=1), torch.stack([nll, correct.float()], 1), tokens

    def metrics(self, preds, refs, labels: list[str], cfg) -> dict:
        tokens = float(sum(refs))
        nll, correct = (float(sum(p[i] for p in preds)) for i in (0, 1))
        loss = nll / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_accuracy": correct / max(tokens, 1.0),
                "tokens": int(tokens)}

    # ------------------------------------------------------------------ prediction
    def text_input(self, text: str, cfg) -> Table:
        return Table("--text", {cfg.data.columns.get("text", "text"): [text]})

    def predict(self, model, tokenizer, table: Table, cfg, batch_size: int = 32, stream: bool = False) -> list[dict]:
        """Fill in the mask tokens: the task.top_k most likely tokens at each, with probabilities. A text longer
        than data.max_length is cut into windows as in training, so every mask is filled, in order."""
        texts = self._texts(table, cfg)
        for i, t in enumerate(texts):
            if tokenizer.mask_token not in t:
                raise UsageError(f"{table.locate(i)}: no {tokenizer.mask_token} in the text; mark the words to "
                                 f"fill in with {tokenizer.mask_token}")

        def run(chunk: list[str], s: int) -> list[dict]:
            enc, windows = encode_windows(tokenizer, chunk, cfg.data.max_length, model.device)
            probs = real_positions(model(**enc).logits, enc["input_ids"].shape[1]).float().softmax(-1)
            rows = [{"text": text, "masks": []} for text in chunk]
            for w, j in enumerate(windows):  # a text's windows come in order
                for pos in (enc["input_ids"][w] == tokenizer.mask_token_id).nonzero().flatten().tolist():
                    top = probs[w, pos].topk(cfg.task["top_k"])
                    rows[j]["masks"].append([{"token": tokenizer.decode([t]).strip(), "score": round(float(p), 4)}
                                             for p, t in zip(top.values.tolist(), top.indices.tolist())])
            return rows

        return batched_predict(model, texts, batch_size, run)
