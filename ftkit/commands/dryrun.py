"""`ftkit train --dry-run`: what a run would do — the resolved config, the data, the model's size — without loading
weights or writing anything."""

from __future__ import annotations

import dataclasses


def summary(cfg, task, model_config, tokenizer, table, targets, labels: list[str], train_idx: list[int],
            eval_idx: list[int]) -> dict:
    """``model_config``/``tokenizer``: the base checkpoint's, as ``base_model.check_base_model`` read them."""
    from ftkit.commands.info import describe

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
    counts = task.label_counts(targets, train_idx, labels, cfg) if task.labelled else None
    if counts is not None:
        out["label_counts"] = counts
    return out
