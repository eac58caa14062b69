"""Training memory: what a run will need per device (the estimate `ftkit info` and `train --dry-run` print).

The estimate adds, per device: the weights (quantized linear layers at 1 or ~0.5 byte per weight), a fp32 gradient
and AdamW's two fp32 moments per trainable parameter, and the activations autograd keeps for the backward pass.
Activations are not guessed from a formula: the architecture itself runs one forward pass at full sequence length
with the method applied, at depth 1 and 2 and with 2 and 4 rows (random weights; one row padded so the attention
mask is used), and every tensor autograd saves is counted once. Depth 2 minus depth 1 is one layer, the rest
(embeddings, head, loss) is fixed; 4 rows minus 2 is what grows with the batch, the rest (e.g. autocast's weight
copies) does not. With gradient checkpointing only the layer
inputs are kept, plus one layer's activations while it is recomputed. The backward pass adds a working set of
three times the largest saved tensor. Checked against measured peaks in tests/test_memory.py. The rows are padded
and scored at every position: for gen's padding-free batches (ftkit/data/packing.py: shared prompt prefix, logits only
where scored) it is an upper bound.
"""

from __future__ import annotations

import copy

# config attributes that hold a layer count: set to 1 and 2 for the traced copies (T5 has two stacks)
DEPTH_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer")
ADAMW_STATE_BYTES = 12  # fp32 gradient + exp_avg + exp_avg_sq per trainable parameter
BACKWARD_WORKSPACE = 3  # tensors of the largest saved tensor's size alive at the peak of the backward pass


def depth(model_config) -> int | None:
    values = [getattr(model_config, k) for k in DEPTH_KEYS if isinstance(getattr(model_config, k, None), int)]
    return max(values) if values else None


def _shallow(model_config, layers: int):
    c = copy.deepcopy(model_config)
    for k in DEPTH_KEYS:
        if isinstance(getattr(c, k, None), int):
            setattr(c, k, layers)
    if isinstance(getattr(c, "layer_types", None), list):  # per-layer attention kinds (sliding/full)
        c.layer_types = c.layer_types[:layers]
    return c


def _saved_bytes(model, batch: dict, autocast_dtype) -> tuple[int, int]:
    """(bytes of the distinct non-parameter storages autograd saves in one forward pass, the largest of them)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        model(**batch).loss
    return sum(seen.values()), max(seen.values(), default=0)


class _StandIn:
    """What the collators need of a tokenizer, for random-weight traces."""

    pad_token_id, mask_token_id = 0, 4

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size


def activation_bytes(cfg, task, method, model_config, ctx, max_length: int, checkpointing: bool) -> int:
    """Activations autograd keeps for one micro-batch of ``cfg.train.batch_size`` rows of ``max_length`` tokens,
    plus the backward pass's working set (see the module docstring). ``ctx``: the method's Context for the full
    model (the shallow copies have the same head and task type)."""
    import torch

    collate = task.collator(_StandIn(model_config.vocab_size), cfg)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    real_depth = depth(model_config)

    def trace(layers: int, rows: int, ckpt: bool) -> tuple[int, int]:
        config = _shallow(model_config, layers) if real_depth else model_config
        torch.manual_seed(0)
        model = method.apply(task.model_class(config).from_config(config), cfg.method_params, ctx)
        if ckpt:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        # the last row one token short: padding, so the attention mask is in play as in real batches
        batch = collate([task.example(max_length)] * (rows - 1) + [task.example(max_length - 1)])
        return _saved_bytes(model, batch, autocast)

    def saved(ckpt: bool) -> tuple[float, int]:
        """Bytes for the run's batch and depth: traced at 2 and 4 rows (what grows with the batch vs what does not,
        e.g. autocast's weight copies) and at depth 1 and 2 (per layer vs embeddings, head and loss)."""
        depths = (1, 2) if real_depth else (0,)
        f = {(d, r): trace(d, r, ckpt) for d in depths for r in (2, 4)}
        per_row = {d: (f[d, 4][0] - f[d, 2][0]) / 2 for d in depths}
        fixed = {d: f[d, 2][0] - 2 * per_row[d] for d in depths}
        largest = f[depths[-1], 4][1] / 4 * cfg.train.batch_size
        if not real_depth:
            return per_row[0] * cfg.train.batch_size + fixed[0], largest
        layer_row, layer_fixed = per_row[2] - per_row[1], fixed[2] - fixed[1]
        return ((per_row[1] + (real_depth - 1) * layer_row) * cfg.train.batch_size
                + fixed[1] + (real_depth - 1) * layer_fixed), largest

    total, largest = saved(checkpointing)
    if checkpointing and real_depth:  # the layer being recomputed holds its full activations for a moment
        full, _ = saved(False)
        total += (full - total) / real_depth
    # The backward pass of the largest op (for a language model, the loss over the vocabulary) holds its incoming
    # and outgoing gradients and a temporary of that size on top of what is saved.
    return int(total + BACKWARD_WORKSPACE * largest)


def weight_bytes(model, quant: str, head: list[str]) -> int:
    """The base's weights as the run holds them: bitsandbytes stores linear weights outside the head in int8
    (8bit) or packed NF4 with a scale per 64 weights (4bit, ~0.56 byte); everything else as loaded."""
    import torch

    total = 0
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            quantized = (quant != "none" and isinstance(module, torch.nn.Linear) and not p.requires_grad
                         and p.ndim == 2 and not any(name == h or name.startswith(h + ".") for h in head))
            total += int(p.numel() * ({"8bit": 1.0, "4bit": 0.5625}[quant] if quantized else p.element_size()))
    return total
