"""Text generation (``--task gen``): causal LMs and encoder-decoder (seq2seq) models, chosen from the checkpoint.

Data comes in five layouts (``data.format``; ``auto`` picks from the columns, and the run log says which):
- ``pairs``: ``prompt`` + ``response``; the loss is on the response only (prompt tokens are labelled -100);
- ``chat``: ``messages`` (a list of ``{role, content}``, any number of turns), rendered with the tokenizer's chat
  template; ``sharegpt``: ``conversations`` of ``{from, value}`` turns; ``alpaca``: ``instruction``, ``input``,
  ``output`` (``tasks/_chat.py`` turns each into messages);
- ``text``: plain ``text`` for continued language-model training (every token is trained).
Which tokens of a conversation carry the loss is ``task.train_on``: every assistant turn (the default), only the last
one, or every token (the prompt too).
With ``task.template: auto`` a prompt/response pair is rendered as a one-turn chat when the tokenizer has a chat
template (so training matches how the model is prompted), and as prompt + response otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ftkit.data.batches import IGNORE, pad_collate, positions, real_positions
from ftkit.data.sources import spec_name
from ftkit.data.table import Table
from ftkit.errors import UsageError
from ftkit.tasks import TASKS, Task
from ftkit.tasks._chat import LAYOUTS, conversations, detect
from ftkit.tasks._common import batched_predict

FORMATS = ("auto", *LAYOUTS)
TRAIN_ON = ("assistant", "last", "all")


@dataclass
class GenParams:
    template: str = field(default="auto", metadata={
        "help": "How pairs become token sequences: auto (the chat template when the tokenizer has one), chat, "
                "or plain (prompt followed by response)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate per prompt (predict, eval)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with do_sample)."})
    padding_free: bool = field(default=True, metadata={
        "help": "Train and evaluate decoder-only models on packed batches: no padding, the rows' common prefix (e.g. "
                "the chat template's system prompt) computed once, logits only where the loss is taken. Same loss as "
                "padded batches; used where exact (see ftkit/data/packing.py), padded batches otherwise."})
    generate_eval: bool = field(default=False, metadata={
        "help": "`ftkit eval` also generates a response per prompt and reports exact match and ROUGE-L."})
    train_on: str = field(default="assistant", metadata={
        "help": "Which tokens of a conversation (chat, sharegpt, alpaca, pairs) carry the loss: assistant (every "
                "assistant turn), last (the last assistant turn only) or all (every token, the prompt too)."})


@TASKS.register("gen")
class Generation(Task):
    name = "gen"
    params = GenParams
    columns = {"prompt": "prompt", "response": "response", "messages": "messages", "text": "text",
               "conversations": "conversations", "instruction": "instruction", "input": "input", "output": "output",
               "system": "system"}
    architectures = ("ForCausalLM", "ForConditionalGeneration", "EncoderDecoderModel")
    maximize = False  # perplexity: lower is better
    streams = True  # `predict --text` prints tokens as they are generated
    head_names = ("lm_head",)  # kept out of quantization
    long_rows = "truncated"
    hub_task = "text-generation"
    virtual_tokens_in_loss = True  # peft pads the labels of causal and seq2seq LMs
    onnx = False  # generation needs the decoding loop and its cache, not one graph
    labelled = False
    description = ("text generation: prompt/response pairs, chat messages, ShareGPT or Alpaca rows, or plain text; "
                   "causal or seq2seq")

    def validate(self, cfg) -> None:
        if cfg.task["train_on"] not in TRAIN_ON:
            raise UsageError(f"config key 'task.train_on': got {cfg.task['train_on']!r}, expected one of "
                             f"{', '.join(TRAIN_ON)}")

    def _col(self, cfg, role: str) -> str:
        return cfg.data.columns.get(role, self.columns[role])

    def data_format(self, table: Table, cfg) -> str:
        fmt = cfg.data.format
        if fmt not in FORMATS:
            raise UsageError(f"config key 'data.format': got {fmt!r}, expected one of {', '.join(FORMATS)}")
        if fmt != "auto":
            return fmt
        layout = detect(table.columns, lambda role: self._col(cfg, role))
        if layout is None:
            raise UsageError(f"{table.source}: gen data needs `prompt`+`response`, `messages`, `conversations` "
                             "(ShareGPT), `instruction`+`output` (Alpaca) or `text` columns (rename with "
                             f"data.columns.ROLE=...); columns found: {', '.join(table.columns) or 'none'}")
        return layout

    def from_data(self, cfg, table: Table):
        if cfg.data.format != "auto":
            return cfg, None
        layout = self.data_format(table, cfg)
        used = [self._col(cfg, role) for role in LAYOUTS[layout]]
        return cfg, (f"gen data: {layout} (columns {', '.join(used)}), picked from the columns; set data.format to "
                     "choose another")

    def _conversations(self, table: Table, cfg) -> list[list[dict]]:
        return conversations(table, self.data_format(table, cfg), lambda role: self._col(cfg, role))

    # ------------------------------------------------------------------ data
    def check(self, table: Table, cfg) -> None:
        if self.data_format(table, cfg) == "text":
            table.text_column(self._col(cfg, "text"), "text")
        else:
            self._conversations(table, cfg)  # each row checked, errors naming the line, turn and field

    def label_space(self, table: Table, cfg) -> list[str]:
        return []  # generation has no label set

    def targets(self, table: Table, cfg, labels: list[str]) -> list[None]:
        return [None] * len(table)  # labels come from the encoding itself

    def features(self, enc: dict, targets: list, idx: list[int], cfg, training: bool,
                 notes: list[str] | None = None) -> list[dict]:
        """Training drops rows with no token left to learn (a prompt longer than data.max_length cuts the whole
        response away): a batch of only such rows has no loss (NaN)."""
        out = [{k: v[i] for k, v in enc.items()} for i in idx]
        if not training:
            return out  # evaluation weights each row by its scored tokens; an empty one counts zero

        def scored(f):  # decoder-only: labels align with input_ids and position 0 is never predicted
            labels = f["labels"][1:] if len(f["labels"]) == len(f["input_ids"]) else f["labels"]
            return any(t != IGNORE for t in labels)

        kept = [f for f in out if scored(f)]
        if len(kept) < len(out) and notes is not None:
            notes.append(f"note: {len(out) - len(kept)} of {len(out)} training rows have no response tokens left "
                         f"within data.max_length={cfg.data.max_length} and are skipped (raise --max-length to keep "
                         "them)")
        if not kept:
            raise UsageError(f"{spec_name(cfg.data.train)}: no training row keeps any response token within "
                             f"data.max_length={cfg.data.max_length}; raise --max-length")
        return kept

    def _use_chat(self, tokenizer, cfg) -> bool:
        mode = cfg.task["template"]
        if mode not in ("auto", "chat", "plain"):
            raise UsageError(f"config key 'task.template': got {mode!r}, expected auto, chat or plain")
        if mode == "chat" and not tokenizer.chat_template:
            raise UsageError("task.template=chat, but this tokenizer has no chat template")
        return mode == "chat" or (mode == "auto" and bool(tokenizer.chat_template))

    def encode(self, tokenizer, table: Table, cfg, model_config) -> dict[str, list[list[int]]]:
        """Token ids and labels (-100 where no loss is taken), truncated to data.max_length."""
        fmt, n = self.data_format(table, cfg), cfg.data.max_length
        if fmt in ("chat", "sharegpt") and not tokenizer.chat_template:
            raise UsageError(f"{table.source}: {fmt} conversations need a tokenizer with a chat template; this one "
                             "has none (use prompt/response pairs or alpaca rows, rendered as plain text)")
        if getattr(model_config, "is_encoder_decoder", False):
            if fmt != "pairs":
                raise UsageError(f"{table.source}: seq2seq models train on prompt/response pairs (format {fmt})")
            src = tokenizer(table.column(self._col(cfg, "prompt"), "prompt"), truncation=True, max_length=n)
            tgt = tokenizer(table.column(self._col(cfg, "response"), "response"), truncation=True, max_length=n)
            start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
            labels = [t[1:] if t and t[0] == start else t for t in tgt["input_ids"]]  # the decoder starts with it
            return {"input_ids": src["input_ids"], "labels": labels}
        if fmt == "text":
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            ids = [(x + eos)[:n] for x in tokenizer(table.column(self._col(cfg, "text"), "text"))["input_ids"]]
            return {"input_ids": ids, "labels": ids}
        convs = self._conversations(table, cfg)
        use_chat = fmt in ("chat", "sharegpt") or self._use_chat(tokenizer, cfg)
        out_ids, out_labels = [], []
        for conv in convs:
            ids, labels = self._render(tokenizer, conv, use_chat, cfg.task["train_on"])
            out_ids.append(ids[:n])
            out_labels.append(labels[:n])
        return {"input_ids": out_ids, "labels": out_labels}

    @staticmethod
    def _render(tokenizer, conv: list[dict], use_chat: bool, train_on: str = "assistant") -> tuple[list[int],
                                                                                                   list[int]]:
        """Render a conversation and label what ``train_on`` trains: the assistant turns' tokens (each turn's
        found by rendering the conversation up to the turn, with the generation prompt, and up to its end), the
        last assistant turn's only, or every token. Without a chat template: the non-assistant messages joined by
        newlines, then the (single) reply."""
        if not use_chat:
            prompt = "\n".join(m["content"] for m in conv if m["role"] != "assistant")
            reply = next(m["content"] for m in conv if m["role"] == "assistant")
            p = tokenizer(prompt)["input_ids"]
            r = tokenizer(" " + reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            return p + r, (p if train_on == "all" else [IGNORE] * len(p)) + r

        def render(msgs, gen_prompt):
            return tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen_prompt,
                                                 return_dict=True)["input_ids"]

        turns = [k for k, m in enumerate(conv) if m["role"] == "assistant"]
        if train_on == "all":
            ids = render(conv[:turns[-1] + 1], False)
            return ids, list(ids)
        ids: list[int] = []
        labels: list[int] = []
        for k in turns:
            before, after = render(conv[:k], True), render(conv[:k + 1], False)
            scored = train_on == "assistant" or k == turns[-1]
            labels += [IGNORE] * (len(before) - len(ids)) + (after[len(before):] if scored else
                                                             [IGNORE] * (len(after) - len(before)))
            ids = after
        return ids, labels

    def collator(self, tokenizer, cfg):
        return pad_collate(tokenizer.pad_token_id, label_pad=IGNORE)

    def batching(self, model, tokenizer, cfg, features: list[dict]):
        """Packed padding-free batches where ftkit/data/packing.py applies (checked on ``features``), padded ones
        otherwise; for training and evaluation alike."""
        from ftkit.data import packing
        from ftkit.tasks import Batching

        padded = self.collator(tokenizer, cfg)
        if not cfg.task["padding_free"]:
            return Batching(padded)
        reason = packing.enable(model, cfg, features[:3])
        if reason:
            return Batching(padded, note=f"padded batches: {reason}")
        return Batching(packing.pack, packing.loss,
                        "padding-free batches: the rows' common prefix computed once, logits only where scored",
                        packed=True)

    def packs(self, model_config, cfg, virtual_tokens: bool) -> bool:
        from ftkit.data import packing

        if not cfg.task["padding_free"]:
            return False
        model_class = self.model_class(model_config)._model_mapping.get(type(model_config), None)
        return model_class is not None and \
            packing.unsupported_for(model_class, model_config, cfg, virtual_tokens) is None

    def example(self, length: int) -> dict:
        return {"input_ids": [5] * length, "labels": [0] * length}

    # ------------------------------------------------------------------ model
    def model_class(self, model_config):
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM if getattr(model_config, "is_encoder_decoder", False) else AutoModelForCausalLM

    def peft_task_type(self, model_config) -> str:
        return "SEQ_2_SEQ_LM" if getattr(model_config, "is_encoder_decoder", False) else "CAUSAL_LM"

    def config_overrides(self, labels: list[str], cfg=None) -> dict:
        return {}

    def head_modules(self, model) -> list[str]:
        return []  # the LM head is pretrained: nothing new to train in full

    def prepare_model(self, model, tokenizer) -> None:
        """A pad token where the tokenizer has none (the EOS), mirrored on the model's configs."""
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        for conf in (model.config, getattr(model, "generation_config", None)):
            if conf is not None and getattr(conf, "pad_token_id", None) is None:
                conf.pad_token_id = tokenizer.pad_token_id

    # ------------------------------------------------------------------ evaluation
    def main_metric(self, labels: list[str], cfg) -> str:
        return "perplexity"

    def eval_batch(self, model, batch):
        """-> (loss per example, summed NLL per example, label-token count per example). The task's metrics
        replace the loop's per-example mean by the token-weighted loss that perplexity needs."""
        import torch
        import torch.nn.functional as F

        from ftkit.data import packing

        if packing.is_packed(batch):
            nll, owner = packing.token_nll(model, batch), batch["target_rows"]
            sums = torch.zeros(batch["rows"], device=nll.device).index_add_(0, owner, nll)
            tokens = torch.bincount(owner, minlength=batch["rows"])
            return sums / tokens.clamp(min=1), sums, tokens
        out = model(**batch)
        labels = batch["labels"]
        logits = real_positions(out.logits, labels.shape[1])
        if not getattr(model.config, "is_encoder_decoder", False):
            logits, labels = logits[:, :-1], labels[:, 1:]  # causal: position t predicts token t+1
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        tokens = (labels != IGNORE).sum(1)
        return nll.sum(1) / tokens.clamp(min=1), nll.sum(1), tokens

    def metrics(self, preds, refs, labels: list[str], cfg) -> dict:
        tokens = float(sum(refs))
        loss = float(sum(preds)) / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}

    def generation_metrics(self, model, tokenizer, table: Table, cfg) -> dict:
        """Generate for each prompt and score against the reference response: exact match and ROUGE-L F1."""
        from rouge_score import rouge_scorer

        if self.data_format(table, cfg) != "pairs":
            raise UsageError(f"{table.source}: generation-based eval needs prompt/response pairs")
        refs = table.column(self._col(cfg, "response"), "response")
        hyps = [r["response"] for r in self.predict(model, tokenizer, table, cfg)]
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge = [scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]
        exact = [" ".join(r.split()).lower() == " ".join(h.split()).lower() for r, h in zip(refs, hyps)]
        return {"exact_match": sum(exact) / len(refs), "rougeL": sum(rouge) / len(refs)}

    # ------------------------------------------------------------------ prediction
    def text_input(self, text: str, cfg) -> Table:
        return Table("--text", {self._col(cfg, "prompt"): [text]})

    def _prompts(self, tokenizer, table: Table, cfg) -> tuple[list[str], list[str], bool]:
        """(model inputs, the prompt as shown in the output, whether the inputs are chat-rendered). A chat is
        rendered up to the assistant's generation prompt; its last non-assistant message is what is shown."""
        cols = table.columns
        layout = detect(cols, lambda role: self._col(cfg, role))
        if layout in ("chat", "sharegpt", "alpaca"):
            convs = [[m for m in msgs if m["role"] != "assistant"] for msgs in self._conversations(table, cfg)]
            chat = layout != "alpaca" or self._use_chat(tokenizer, cfg)  # alpaca rows render plain without one
            shown = [("" if not c else c[-1]["content"]) if chat else "\n".join(m["content"] for m in c)
                     for c in convs]
        else:  # the prompt column, or a text column to continue
            col = self._col(cfg, "prompt") if self._col(cfg, "prompt") in cols else self._col(cfg, "text")
            shown = table.column(col, "prompt")
            convs, chat = [[{"role": "user", "content": t}] for t in shown], self._use_chat(tokenizer, cfg)
        if not chat:
            return shown, shown, False
        return ([tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs],
                shown, True)

    def chat_prompt(self, tokenizer, messages: list[dict], cfg) -> tuple[str, bool]:
        """A conversation (no answer yet) as the model is prompted with it -> (text, whether chat-rendered; a
        rendered chat holds its special tokens). Without a chat template (or with task.template=plain), the
        non-assistant messages joined by newlines, as training renders a plain prompt."""
        if self._use_chat(tokenizer, cfg):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return "\n".join(m["content"] for m in messages if m["role"] != "assistant"), False

    def _generate_kwargs(self, cfg) -> dict:
        t = cfg.task
        kw = {"max_new_tokens": t["max_new_tokens"], "do_sample": t["do_sample"]}
        if t["do_sample"]:
            kw |= {"temperature": t["temperature"], "top_p": t["top_p"]}
        return kw

    def predict(self, model, tokenizer, table: Table, cfg, batch_size: int = 8, stream: bool = False) -> list[dict]:
        inputs, shown, chat = self._prompts(tokenizer, table, cfg)
        # whole prompts, however long training's rows were; a rendered chat already holds its special tokens
        prompts = tokenizer(inputs, add_special_tokens=not chat)["input_ids"]
        seq2seq = getattr(model.config, "is_encoder_decoder", False)
        limit = prompt_room(model, tokenizer, table, prompts, seq2seq)
        tokenizer.padding_side = "left"  # batched generation continues from the last real token of every row
        streamer = None
        if stream:
            from transformers import TextStreamer

            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run(chunk: list[list[int]], s: int) -> list[dict]:
            enc = tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(model.device)
            kwargs = self._generate_kwargs(cfg)
            if limit is not None and not seq2seq:  # the response stops where the model's positions end
                kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit - enc["input_ids"].shape[1])
            gen = model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id, streamer=streamer)
            new = gen if seq2seq else gen[:, enc["input_ids"].shape[1]:]
            return [{"prompt": shown[s + j], "response": text.strip()}
                    for j, text in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True))]

        try:
            return batched_predict(model, prompts, batch_size, run)
        finally:
            tokenizer.padding_side = "right"


def prompt_room(model, tokenizer, table: Table, prompts: list[list[int]], seq2seq: bool) -> int | None:
    """The positions a prompt and its response share (None: unbounded): the model's, less the virtual tokens of
    prompt or prefix tuning. A prompt that leaves no room for a response is refused, naming its row: cutting it
    would answer another prompt, or a chat without the turn that asks for the answer."""
    limit = positions(getattr(model, "config", None), tokenizer)
    if limit is None:
        return None
    limit -= getattr(getattr(model, "active_peft_config", None), "num_virtual_tokens", None) or 0
    for i, ids in enumerate(prompts):
        if len(ids) > limit or (len(ids) == limit and not seq2seq):
            raise UsageError(f"{table.locate(i)}: the prompt is {len(ids)} tokens; this model takes at most {limit}"
                             + ("" if seq2seq else ", prompt and response together"))
    return limit
