"""Padding-free batches for decoder-only language models (``task.padding_free``, on by default), in training and
evaluation.

A batch of token rows is sent to the model as one packed row:

    [shared prefix][row 1 after the prefix][row 2 after the prefix]...

- no padding: the linear layers (most of the compute) see exactly the batch's tokens;
- the rows' common prefix is computed once: with a chat template every row starts with the same system prompt and
  role markers (24 of SmolLM2's 55 tokens per chatterbot row), so this removes a large share of the work;
- logits only where the loss is taken (``logits_to_keep`` with the scored positions): a 49k-word LM head over
  prompt tokens is wasted work and memory.

Each row attends causally to the prefix and to itself, never to another row (positions restart for each row, so
rotary/absolute positions are those of the padded layout). Attention runs through ``ATTENTION``, registered with
transformers' AttentionInterface: it gathers each row's queries, keys and values into a small padded block — the
prefix's keys and values are shared, not copied per row — and calls transformers' own SDPA attention. The loss is
the mean cross-entropy over the scored tokens, as in the padded batch; forward and gradients are the same up to
float rounding. One difference: dropout on prefix tokens draws one mask for the whole batch, not one per row.

Used only where it is exact: decoder-only models on the attention interface with SDPA, no sliding window shorter
than the rows, methods that add no virtual tokens (not prefix/prompt tuning) — and after a check on the model
itself (padded vs packed logits on two short rows) passes. Otherwise the padded batches are used, with a note.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, NamedTuple

from ftkit.data.batches import IGNORE, pad_collate

if TYPE_CHECKING:
    import torch

ATTENTION = "ftkit_padding_free"


class Segments(NamedTuple):
    """Where each row lives in the packed row (a NamedTuple, so Accelerate moves its tensor to the device)."""

    prefix: int  # length of the shared prefix (the packed row's first tokens)
    lengths: tuple[int, ...]  # each row's token count after the prefix, in packed order
    mask: "torch.Tensor"  # (rows, 1, width, prefix + width) bool: which keys each query sees (True = attend)


def shared_prefix(ids: list[list[int]], labels: list[list[int]]) -> int:
    """Length of the rows' common prefix that is safe to compute once: it holds no position whose next token is
    scored (those logits belong to each row), and leaves every row at least one token of its own."""
    if len(ids) < 2:
        return 0
    limit = min(len(x) for x in ids) - 1
    for lab in labels:  # labels[j] is the target of position j - 1
        first = next((j for j in range(1, len(lab)) if lab[j] != IGNORE), len(lab))
        limit = min(limit, first - 1)
    first_row, p = ids[0], 0
    while p < limit and all(x[p] == first_row[p] for x in ids):
        p += 1
    return p


def pack(features: list[dict]) -> dict:
    """Collate decoder-only features ({input_ids, labels} aligned) into one packed row; see the module doc."""
    import torch

    ids = [f["input_ids"] for f in features]
    labels = [f["labels"] for f in features]
    p = shared_prefix(ids, labels)
    tokens, positions, keep, targets = list(ids[0][:p]), list(range(p)), [], []
    owners = []  # the row of each target
    for r, (x, lab) in enumerate(zip(ids, labels)):
        start = len(tokens) - p  # packed index of the row's position 0 (its own tokens start at its position p)
        for j in range(p + 1, len(x)):
            if lab[j] != IGNORE:  # position j - 1 predicts token j
                keep.append(start + j - 1)
                targets.append(lab[j])
                owners.append(r)
        tokens += x[p:]
        positions += range(p, len(x))
    lengths = tuple(len(x) - p for x in ids)
    width = max(lengths)
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    own = torch.ones(width, width, dtype=torch.bool).tril()[None] & valid[:, None, :]  # earlier real tokens of the row
    mask = torch.cat([torch.ones(len(ids), width, p, dtype=torch.bool), own], dim=2)[:, None]
    inputs = {"input_ids": torch.tensor([tokens]), "position_ids": torch.tensor([positions]),
              # a prepared 4-D mask is passed through untouched by transformers' mask building (which would
              # otherwise build a dense packed-row mask nobody uses); the attention reads `ftkit_segments`
              "attention_mask": torch.ones(1, 1, 1, 1, dtype=torch.bool),
              "ftkit_segments": Segments(p, lengths, mask),
              "logits_to_keep": torch.tensor(keep, dtype=torch.long)}
    return {"packed": inputs, "targets": torch.tensor(targets, dtype=torch.long),
            "target_rows": torch.tensor(owners, dtype=torch.long), "rows": len(ids)}


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
              ftkit_segments: Segments | None = None, **kwargs):
    """Registered as ``ATTENTION``: transformers' SDPA attention, per row of a packed batch when given its
    segments, unchanged otherwise (generation, padded batches)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if ftkit_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    import torch
    import torch.nn.functional as F

    p, lengths, mask = ftkit_segments
    width = max(lengths)

    def per_row(x, with_prefix):  # (1, heads, T, d) -> (rows, heads, [prefix +] width, d); slices and copies
        own = torch.stack([F.pad(r, (0, 0, 0, width - r.shape[1])) for r in x[0, :, p:].split(lengths, dim=1)])
        if not (with_prefix and p):
            return own
        return torch.cat([x[:, :, :p].expand(len(lengths), -1, -1, -1), own], dim=2)

    out, _ = sdpa_attention_forward(module, per_row(query, False), per_row(key, True), per_row(value, True), mask,
                                    dropout=dropout, scaling=scaling, is_causal=False)
    parts = [out[r, :n] for r, n in enumerate(lengths)]  # (rows, width, heads, d) -> packed order
    if p:
        head, _ = sdpa_attention_forward(module, query[:, :, :p], key[:, :, :p], value[:, :, :p], None,
                                         dropout=dropout, scaling=scaling, is_causal=True)
        parts.insert(0, head[0])
    return torch.cat(parts)[None], None


def is_packed(batch: dict) -> bool:
    return "packed" in batch


def token_nll(model, batch: dict):
    """Negative log-likelihood of each scored token of a packed batch, in ``batch["targets"]`` order."""
    import torch.nn.functional as F

    logits = model(**batch["packed"]).logits[0]
    return F.cross_entropy(logits.float(), batch["targets"], reduction="none")


def loss(model, batch: dict):
    """Mean cross-entropy over the scored tokens of a packed batch (what the padded batch's loss is)."""
    return token_nll(model, batch).mean()


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # padded batches (generation): SDPA's masks


def _base(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported(model, cfg) -> str | None:
    """Why packed batches cannot be used for ``model`` (the peft-wrapped or plain transformers model), or None."""
    base = _base(model)
    peft_conf = getattr(model, "active_peft_config", None)
    return unsupported_for(type(base), base.config, cfg, peft_conf is not None and peft_conf.is_prompt_learning)


def unsupported_for(model_class, conf, cfg, virtual_tokens: bool) -> str | None:
    """``unsupported`` from the model's class and config alone, so also before the weights load (a config not yet
    loaded has no attention implementation set: the class's default, SDPA where it has it, is what loading picks)."""
    if getattr(conf, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if virtual_tokens:
        return f"{cfg.method_name} adds virtual tokens"
    attention = conf._attn_implementation or ("sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager")
    if not getattr(model_class, "_supports_attention_backend", False) or attention != "sdpa":
        return f"{model_class.__name__} with {attention} attention (SDPA on the attention interface is needed)"
    window = getattr(conf, "sliding_window", None)
    if window and window < cfg.data.max_length:
        return f"a sliding attention window ({window}) shorter than data.max_length"
    if "logits_to_keep" not in inspect.signature(model_class.forward).parameters:
        return f"{model_class.__name__}.forward has no logits_to_keep"
    return None


def enable(model, cfg, example: list[dict]) -> str | None:
    """Switch ``model`` to packed batches; returns None, or the reason they are not used. ``example``: a few
    features (ideally two or more, to share a prefix), used to check packed against padded logits on this model."""
    reason = unsupported(model, cfg)
    if reason:
        return reason
    _register()
    base = _base(model)
    base.config._attn_implementation = ATTENTION  # not saved: config.json leaves out the attention choice
    if not _agrees(model, example):
        base.config._attn_implementation = "sdpa"
        return f"packed and padded logits differ on {type(base).__name__}"
    return None


def _agrees(model, example: list[dict]) -> bool:
    """Packed and padded forward passes give the same logits at the scored positions (eval mode, short rows)."""
    import torch
    from accelerate.utils import send_to_device

    rows = [{"input_ids": f["input_ids"][:96], "labels": f["labels"][:96]} for f in example[:3]]
    rows = [r for r in rows if any(t != IGNORE for t in r["labels"][1:])]
    if not rows:
        return True  # nothing to compare on: the structural checks above stand
    device = next(model.parameters()).device
    padded = send_to_device(pad_collate(0, label_pad=IGNORE)(rows), device)
    packed = send_to_device(pack(rows)["packed"], device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.float()
            got = model(**packed).logits[0].float()
    finally:
        model.train(was_training)
    want = logits[:, :-1][padded["labels"][:, 1:] != IGNORE]  # position j - 1 predicts token j; rows in order
    return got.shape == want.shape and bool(torch.allclose(got, want, atol=1e-3, rtol=1e-3))
