"""Full fine-tuning: every parameter is trained; the run dir holds a complete checkpoint."""

from dataclasses import dataclass

from ftkit.methods import METHODS, Method, refuse_quantized_base


@dataclass
class FullParams:
    """Full fine-tuning has no parameters of its own."""


@METHODS.register("full")
class Full(Method):
    name = "full"
    params = FullParams
    mergeable = True
    default_lr = 3e-5
    description = "train every weight"

    def validate(self, cfg, task) -> None:
        refuse_quantized_base(self, cfg)

    def apply(self, model, params, ctx):
        model.requires_grad_(True)
        return model
