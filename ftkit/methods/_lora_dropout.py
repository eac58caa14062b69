"""LoRA's input dropout and down-projection as one autograd node, to keep less for the backward pass.

peft computes ``lora_A(dropout(x))``: autograd keeps the dropped copy of ``x`` for ``lora_A``'s gradient and the float
dropout noise for ``x``'s gradient — two activation-sized tensors per adapted layer (q and v each their own, though
they read the same ``x``). ``DropoutLinear`` keeps ``x`` itself (shared by the layers that read it) and a bool mask,
and recomputes the dropped input in the backward pass: the same masks from the same random stream, the same outputs
and gradients, less memory (gen benchmark: -100 MiB peak RSS, bench/RESULTS.md) for one more element-wise product
(2% of a MiniLM training step on CPU, bench/PARTS.md). Only the ``lora_A`` modules' class changes: parameter names,
saved adapters and merging stay peft's.
"""

from __future__ import annotations

import torch


class _DropoutLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, p):
        dropped, mask = torch.native_dropout(x, p, True)
        ctx.save_for_backward(x, weight, mask)
        ctx.scale = 1 / (1 - p)
        return torch.nn.functional.linear(dropped, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        grad_x = grad_w = None
        # under autocast the forward's matmul ran in grad's dtype; results are cast back as autocast's casts would be
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(weight.to(grad.dtype)).to(x.dtype)
            grad_x = torch.ops.aten.native_dropout_backward(grad_x, mask, ctx.scale)
        if ctx.needs_input_grad[1]:
            dropped = x * (mask.to(x.dtype) * ctx.scale)  # bit for bit the forward's dropped input
            grad_w = grad.flatten(0, -2).t().matmul(dropped.flatten(0, -2).to(grad.dtype)).to(weight.dtype)
        return grad_x, grad_w, None


class DropoutLinear(torch.nn.Linear):
    """``linear(dropout(x, p))`` in training, ``linear(x)`` in evaluation (what peft's Dropout + Linear compute)."""

    p: float

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        if not torch.is_grad_enabled():
            return super().forward(torch.nn.functional.dropout(x, self.p, True))
        return _DropoutLinearFn.apply(x, self.weight, self.p)


def fuse_dropout(model) -> None:
    """Each vanilla LoRA adapter of ``model`` with dropout: its ``lora_A`` becomes a ``DropoutLinear`` and its
    dropout an identity. Adapters with a variant (DoRA), a biased ``lora_A`` or no dropout are left as they are."""
    from peft.tuners.lora import LoraLayer

    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name, dropout in list(layer.lora_dropout.items()):
            down = layer.lora_A[name] if name in layer.lora_A else None
            if (isinstance(dropout, torch.nn.Dropout) and type(down) is torch.nn.Linear and down.bias is None
                    and name not in layer.lora_variant):
                down.__class__, down.p = DropoutLinear, dropout.p
                layer.lora_dropout[name] = torch.nn.Identity()
