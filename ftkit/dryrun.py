"""`ftkit train --dry-run`: what a run would do — the resolved config, the data, the model's size — without loading
weights or writing anything."""

from __future__ import annotations

import dataclasses
from collections import Counter


def summary(cfg, task, table, targets, labels: list[str], train_idx: list[int], eval_idx: list[int]) -> dict:
    from ftkit.info import describe
    from ftkit.models import load_tokenizer, base_model_path

    tokenizer = load_tokenizer(base_model_path(cfg.model.name), cfg.model.trust_remote_code)
    # untruncated lengths: how much data.max_length would cut
    uncut = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=10**6))
    model_info = describe(cfg, labels or None)
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(base_model_path(cfg.model.name),
                                              trust_remote_code=cfg.model.trust_remote_code)
    enc = task.encode(tokenizer, table, uncut, model_config)
    lengths = sorted(len(enc["input_ids"][i]) for i in train_idx)
    out = {"train_rows": len(train_idx), "eval_rows": len(eval_idx),
           "length_tokens": {f"p{q}": lengths[min(len(lengths) - 1, len(lengths) * q // 100)] for q in (50, 90, 99)}
           | {"max": lengths[-1]},
           "max_length": cfg.data.max_length,
           "truncated_rows": sum(n > cfg.data.max_length for n in lengths),
           "model": model_info}
    if task.labelled:
        counts = Counter()
        for i in train_idx:
            t = targets[i]
            counts.update(x for x in (t if isinstance(t, list) else [t]) if x >= 0)
        out["label_counts"] = {labels[k]: n for k, n in sorted(counts.items())}
    return out
