"""Structured pruning of transformer models: whole layers and feed-forward neurons, removed for real (smaller
weight matrices and a config that says so, loadable by stock transformers), ranked by importance measured on data.

Importance is the expected sensitivity of the loss to a unit's mask (Michel et al. 2019, "Are Sixteen Heads Really
Better than One?"): with a mask m multiplying the unit's output, |dL/dm| at m = 1, per example, averaged. For a
feed-forward neuron j that is |sum over tokens of a_j * dL/da_j| (a_j: its activation, the input of the down
projection); for a layer, |sum of (layer(h) - h) * dL/d(output)| (the layer's contribution to the residual stream).

Attention heads are not offered: transformers 5 removed ``prune_heads``, and BERT-style attention derives the head
size from ``hidden_size / num_attention_heads``, so a checkpoint with fewer heads of the original size cannot be
described by a config stock transformers loads."""

from __future__ import annotations

from dataclasses import dataclass

from ftkit.errors import UsageError


def transformer_layers(model):
    """(the ModuleList of the model's transformer layers, its dotted name)."""
    import torch.nn as nn

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module, name
    raise UsageError(f"{type(model).__name__}: cannot find its {n} transformer layers")


def keep_layers(model, kept: list[int]) -> None:
    """Keep only the layers ``kept`` (indices, in order), in place; the config's layer count follows."""
    import torch.nn as nn

    layers, name = transformer_layers(model)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.ModuleList([layers[i] for i in kept]))
    model.config.num_hidden_layers = len(kept)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]


def evenly_spaced(n: int, keep: int) -> list[int]:
    """``keep`` of ``n`` layer indices, evenly spaced, the top one included (DistilBERT kept every other layer)."""
    return [round((i + 1) * n / keep) - 1 for i in range(keep)]


@dataclass
class FeedForward:
    """One layer's feed-forward block: the projections into the intermediate width and the one out of it."""

    up: list  # nn.Linear modules with out_features == intermediate size (BERT: intermediate.dense; Llama: gate, up)
    down: object  # the nn.Linear with in_features == intermediate size


def feed_forwards(model) -> list[FeedForward]:
    import torch.nn as nn

    width = getattr(model.config, "intermediate_size", None)
    if not isinstance(width, int) or width == model.config.hidden_size:
        raise UsageError(f"{type(model).__name__}: feed-forward pruning needs a config with intermediate_size "
                         "(BERT, RoBERTa, MiniLM, Llama-style models)")
    blocks = []
    for i, layer in enumerate(transformer_layers(model)[0]):
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        up = [m for m in linears if m.out_features == width and m.in_features != width]
        down = [m for m in linears if m.in_features == width and m.out_features != width]
        if not up or len(down) != 1:
            raise UsageError(f"{type(model).__name__} layer {i}: cannot tell its feed-forward projections apart")
        blocks.append(FeedForward(up, down[0]))
    return blocks


def importance(model, batches, loss_fn=None) -> tuple[list, list[float]]:
    """-> (per layer, a tensor of its feed-forward neurons' importance; each layer's importance), averaged over the
    examples of ``batches`` (dicts of tensors with labels). ``loss_fn(model, batch)``: default the model's loss."""
    import torch

    blocks, (layers, _) = feed_forwards(model), transformer_layers(model)
    neuron = [torch.zeros(b.down.in_features) for b in blocks]
    layer = [0.0] * len(layers)
    hooks, count = [], 0

    # tensor hooks must return None: a returned tensor would replace the gradient
    def on_down(i):
        def pre(module, args):
            act = args[0].detach()
            if args[0].requires_grad:
                def grad(g):  # per example: |sum over tokens of a * dL/da|, for each neuron
                    per_example = (act * g).sum(1) if act.dim() == 3 else act * g
                    neuron[i].add_(per_example.abs().sum(0).float())
                args[0].register_hook(grad)
        return pre

    def on_layer(i):
        def post(module, args, kwargs, out):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            delta = (h_out - h_in).detach()
            if h_out.requires_grad:
                def grad(g):  # per example: |sum of (layer(h) - h) * dL/d(output)|
                    layer[i] += float((delta * g).flatten(1).sum(1).abs().sum())
                h_out.register_hook(grad)
        return post

    for i, b in enumerate(blocks):
        hooks.append(b.down.register_forward_pre_hook(on_down(i)))
    for i, module in enumerate(layers):
        hooks.append(module.register_forward_hook(on_layer(i), with_kwargs=True))
    was_training = model.training
    model.eval()  # no dropout: the scores are of the model as it answers
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        for batch in batches:
            loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            count += len(next(iter(batch.values())))
    finally:
        for h in hooks:
            h.remove()
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
        model.train(was_training)
    return [n / max(count, 1) for n in neuron], [v / max(count, 1) for v in layer]


def keep_neurons(model, kept: list) -> None:
    """Keep, in each layer's feed-forward block, the neurons ``kept[layer]`` (index tensors of equal length)."""
    import torch

    blocks = feed_forwards(model)
    sizes = {len(k) for k in kept}
    if len(sizes) != 1:
        raise ValueError("every layer keeps the same number of neurons (one intermediate_size in the config)")
    for block, idx in zip(blocks, kept):
        idx = torch.as_tensor(sorted(int(i) for i in idx))
        for up in block.up:
            _slice(up, idx, dim=0)
        _slice(block.down, idx, dim=1)
    model.config.intermediate_size = sizes.pop()


def _slice(linear, idx, dim: int) -> None:
    import torch

    with torch.no_grad():
        linear.weight = torch.nn.Parameter(linear.weight.index_select(dim, idx).clone())
        if dim == 0 and linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.index_select(0, idx).clone())
    if dim == 0:
        linear.out_features = len(idx)
    else:
        linear.in_features = len(idx)


def plan(neurons: list, layers: list[float], ffn: float, drop_layers: int) -> tuple[list[int], list]:
    """-> (the layers kept, and for each kept layer the neurons kept): the ``drop_layers`` least important layers
    go, then the same share ``ffn`` of each kept layer's least important neurons (the same count everywhere)."""
    import torch

    n = len(layers)
    if not 0 <= drop_layers < n:
        raise UsageError(f"--layers {drop_layers}: the model has {n} layers; remove 0 to {n - 1}")
    kept_layers = sorted(sorted(range(n), key=lambda i: layers[i], reverse=True)[:n - drop_layers])
    width = len(neurons[0])
    keep = width - round(ffn * width)
    if keep < 1:
        raise UsageError(f"--ffn {ffn}: would remove every feed-forward neuron ({width} per layer)")
    return kept_layers, [torch.topk(neurons[i], keep).indices for i in kept_layers]
