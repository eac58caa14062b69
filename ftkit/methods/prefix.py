"""Prefix tuning: learned key/value prefixes in every attention layer. Adds virtual tokens, so it cannot be merged
into the weights (export with --adapter-only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError
from ftkit.methods import METHODS, VirtualTokenMethod, wrap


@dataclass
class PrefixParams:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Length of the learned prefix."})
    projection: bool = field(default=False, metadata={
        "help": "Reparameterise the prefix through a two-layer MLP (more stable, more parameters while training)."})


@METHODS.register("prefix")
class Prefix(VirtualTokenMethod):
    name = "prefix"
    params = PrefixParams
    default_lr = 1e-2
    description = "learned attention prefixes (peft prefix tuning); not mergeable"
    load_note = ("with transformers >= 5.24 and peft <= 0.21.2, peft's prefix tuning cannot find a BERT-style "
                 "backbone's cache argument: call ftkit.util.compat.accept_past_key_values(model.get_base_model()) "
                 "before the first forward, and for generate() ftkit.util.compat.generate_with_virtual_tokens(model) "
                 "after PeftModel.from_pretrained (or use transformers < 5.24)")

    def validate(self, cfg, task) -> None:
        if cfg.model.quant != "none":
            raise UsageError("method 'prefix' cannot train on a quantized base: k-bit training uses gradient "
                             "checkpointing, which prefix tuning does not support; use lora or prompt")
        if cfg.train.gradient_checkpointing:
            raise UsageError("method 'prefix' cannot train with train.gradient_checkpointing (peft refuses prefix "
                             "tuning with gradient checkpointing); turn it off or use lora or prompt")
        super().validate(cfg, task)

    def apply(self, model, params, ctx):
        from peft import PrefixTuningConfig

        from ftkit.util.compat import accept_past_key_values

        accept_past_key_values(model)  # transformers >= 5.24 with peft <= 0.21.2 (see there)
        config = PrefixTuningConfig(num_virtual_tokens=params.num_virtual_tokens,
                                    prefix_projection=params.projection,
                                    encoder_hidden_size=model.config.hidden_size,
                                    modules_to_save=ctx.head or None, task_type=ctx.peft_task_type)
        return wrap(model, config, params, self.name)
