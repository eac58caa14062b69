"""`ftkit train --dry-run`: what a run would do — the resolved config, the data, the model's size — without loading
weights or writing anything."""

from __future__ import annotations

import dataclasses
from collections import Counter


def summary(cfg, task, model_config, tokenizer, table, targets, labels: list[str], train_idx: list[int],
            eval_idx: list[int]) -> dict:
    """``model_config``/``tokenizer``: the base checkpoint's, as ``base_model.check_base_model`` read them."""
    from ftkit.info import describe

    # uncut lengths (one window per row for mlm): how many rows data.max_length would cut
    uncut = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=10**6))
    ids = task.encode(tokenizer, table, uncut, model_config)["input_ids"]
    lengths = sorted(len(ids[i]) for i in train_idx)
    out = {"train_rows": len(train_idx), "eval_rows": len(eval_idx),
           "length_tokens": {f"p{q}": lengths[min(len(lengths) - 1, len(lengths) * q // 100)] for q in (50, 90, 99)}
           | {"max": lengths[-1]},
           "max_length": cfg.data.max_length,
           "long_rows": sum(n > cfg.data.max_length for n in lengths), "long_rows_are": task.long_rows,
           "model": describe(cfg, labels or None)}
    if task.labelled:
        counts = Counter()
        for i in train_idx:
            t = targets[i]
            counts.update(x for x in (t if isinstance(t, list) else [t]) if x >= 0)
        out["label_counts"] = {labels[k]: n for k, n in sorted(counts.items())}
    return out
