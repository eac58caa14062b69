"""Batch helpers shared by the tasks, packing, the objectives and the run's base: the ignored label, dynamic
padding, the real positions of prompt-tuned outputs, and how many positions a model has."""

from __future__ import annotations

IGNORE = -100  # the label of a position that takes no loss (PyTorch's cross-entropy default ignore_index)


def pad_collate(pad_id: int, label_pad: int | None = None):
    """Dynamic padding to the longest sequence in the batch (no waste from a fixed max length)."""
    import torch

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        batch: dict = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], list):
                fill = pad_id if key == "input_ids" else (label_pad if key == "labels" else 0)
                batch[key] = torch.tensor([v + [fill] * (width - len(v)) for v in values])
            else:
                batch[key] = torch.tensor(values)
        batch["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                for f in features])
        return batch

    return collate


def real_positions(logits, length: int):
    """Per-token logits for the real tokens only: prompt tuning prepends virtual tokens to the input, so its
    outputs are longer than the labels by that many leading positions."""
    return logits[:, -length:] if logits.shape[1] > length else logits


def positions(model_config, tokenizer) -> int | None:
    """How many positions the model has (None: unbounded, e.g. relative positions)."""
    limits = [getattr(model_config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [n for n in limits + [tokenizer.model_max_length] if isinstance(n, int) and 0 < n < 10**9]
    return min(limits, default=None)
