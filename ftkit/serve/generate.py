"""Batched generation for the server: requests with their own sampling settings, stop strings, token budgets and
streams decode together in one ``model.generate`` call.

Each row keeps its own state. A logits processor picks the row's next token (greedy at temperature 0, else
temperature + nucleus sampling from the row's own seeded generator) and leaves only that token possible, so
generate's greedy step takes it; a stopping criterion decodes each row's new tokens, sends what is safe to show to
the row's stream, and ends the row at its EOS, stop string, token budget, or when its client has gone. Rows that end
early are padded by generate while the others go on; the call returns when all have ended."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    on_text: Callable[[str], None] | None = None  # called (from the worker thread) with each new piece of text
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client has gone: end the row
    # the outcome
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", or "cancelled"


class _Row:
    def __init__(self, req: GenRequest, device):
        import torch

        self.req = req
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already streamed
        self.done = False
        self.generator = None
        if req.temperature > 0:
            self.generator = torch.Generator(device=device)
            if req.seed is not None:
                self.generator.manual_seed(req.seed)
            else:
                self.generator.seed()


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (not to be streamed yet)."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def generate_batch(model, tokenizer, requests: list[GenRequest]) -> None:
    """Generate for every request at once; fills each request's text, completion_tokens and finish_reason."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    rows = [_Row(r, device) for r in requests]
    pad = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    width = max(len(r.prompt_ids) for r in requests)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(requests):  # left padding: every row continues from its last real token
        input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        attention[i, width - len(r.prompt_ids):] = 1

    class Pick(LogitsProcessor):
        def __call__(self, ids, scores):
            forced = torch.full_like(scores, float("-inf"))
            for i, row in enumerate(rows):
                forced[i, _choose(scores[i], row)] = 0.0
            return forced

    class Stops(StoppingCriteria):
        def __call__(self, ids, scores, **kwargs):
            for i, row in enumerate(rows):
                if not row.done:
                    _advance(row, int(ids[i, -1]), tokenizer, eos)
            return torch.tensor([row.done for row in rows], device=ids.device)

    model.eval()
    with torch.inference_mode():
        model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       max_new_tokens=max(r.max_tokens for r in requests), do_sample=False, num_beams=1,
                       pad_token_id=pad, eos_token_id=None, logits_processor=LogitsProcessorList([Pick()]),
                       stopping_criteria=StoppingCriteriaList([Stops()]))


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids |= set(value) if isinstance(value, (list, tuple)) else ({value} if value is not None else set())
    return ids


def _choose(logits, row: _Row) -> int:
    import torch

    req = row.req
    if req.temperature <= 0 or row.done:
        return int(logits.argmax())
    logits = logits.float() / req.temperature
    if req.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        mass = sorted_logits.softmax(-1).cumsum(-1)
        cut = (mass - sorted_logits.softmax(-1)) >= req.top_p  # keep the smallest prefix reaching top_p
        logits = logits.clone()
        logits[order[cut]] = float("-inf")
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _advance(row: _Row, token: int, tokenizer, eos: set[int]) -> None:
    """Take the row's new token: stream what is safe to show, end the row where it should end."""
    req = row.req
    if req.cancelled.is_set():
        row.done, req.finish_reason = True, "cancelled"
        return
    req.completion_tokens += 1
    if token in eos:
        return _finish(row, row_text(row, tokenizer), "stop")
    row.ids.append(token)
    text = row_text(row, tokenizer)
    cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
    if cut >= 0:
        return _finish(row, text[:cut], "stop")
    if req.completion_tokens >= req.max_tokens:
        return _finish(row, text, "length")
    if text.endswith("\ufffd"):
        return  # a character split across tokens: wait for the rest
    safe = len(text) - _held_back(text, req.stop)
    if safe > row.sent and req.on_text:
        req.on_text(text[row.sent:safe])
        row.sent = safe


def _finish(row: _Row, text: str, reason: str) -> None:
    req = row.req
    row.done, req.text, req.finish_reason = True, text, reason
    if req.on_text and len(text) > row.sent:
        req.on_text(text[row.sent:])
        row.sent = len(text)


def row_text(row: _Row, tokenizer) -> str:
    return tokenizer.decode(row.ids, skip_special_tokens=True)
