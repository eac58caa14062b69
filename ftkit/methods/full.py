"""Full fine-tuning: every parameter is trained; the run dir holds a complete checkpoint."""

from dataclasses import dataclass

from ftkit.errors import UsageError
from ftkit.methods import METHODS


@dataclass
class FullParams:
    """Full fine-tuning has no parameters of its own."""


@METHODS.register("full")
class Full:
    name = "full"
    params = FullParams
    mergeable = True
    default_lr = 3e-5
    description = "train every weight"

    def validate(self, cfg) -> None:
        if cfg.model.quant != "none":
            raise UsageError(f"method {self.name!r} cannot train a {cfg.model.quant} quantized base (its weights "
                             "are frozen integers); use an adapter method such as lora, or --quant none")
        pass

    def apply(self, model, params: dict, ctx):
        model.requires_grad_(True)
        return model
