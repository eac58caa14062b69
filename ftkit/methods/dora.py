"""DoRA: LoRA with weight decomposition (a learned magnitude per output, LoRA on the direction). Same parameters
as LoRA; merges the same way; a little slower per step."""

from ftkit.errors import UsageError
from ftkit.methods import METHODS
from ftkit.methods.lora import Lora


@METHODS.register("dora")
class Dora(Lora):
    name = "dora"
    description = "weight-decomposed LoRA (peft use_dora)"
    use_dora = True
    # LoRA's measured cls/tag rate and tag targets (inherited): DoRA with them scores as LoRA does (study `dora`,
    # bench/DEFAULTS.md)

    def validate(self, cfg, task) -> None:
        super().validate(cfg, task)
        if cfg.model.quant != "none":
            # peft's DoRA layer for bitsandbytes fails in the forward pass here (bitsandbytes 0.50, CPU)
            raise UsageError("method 'dora' cannot train on a quantized base here (peft's DoRA bitsandbytes layer "
                             "fails); use lora with --quant, or dora with --quant none")
