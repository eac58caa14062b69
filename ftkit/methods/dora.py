"""DoRA: LoRA with weight decomposition (a learned magnitude per output, LoRA on the direction). Same parameters
as LoRA; merges the same way; a little slower per step."""

from ftkit.methods import METHODS
from ftkit.methods.lora import Lora


@METHODS.register("dora")
class Dora(Lora):
    name = "dora"
    description = "weight-decomposed LoRA (peft use_dora)"
    use_dora = True
