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
    # cls and tag on minilm, 3 seeds at the default length: 1e-4 beats 3e-5 on polarity (0.8292 vs 0.8150) and
    # pos-wsj (0.9512 vs 0.8640) (bench/DEFAULTS.md, study `full`); gen and mlm keep 3e-5 (not measured)
    task_lr = {"cls": 1e-4, "tag": 1e-4}
    description = "train every weight"

    def validate(self, cfg, task) -> None:
        refuse_quantized_base(self, cfg)

    def apply(self, model, params, ctx):
        model.requires_grad_(True)
        return model
