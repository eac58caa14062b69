"""LoRA: low-rank adapters on chosen linear layers; the task head is trained in full and saved with them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError
from ftkit.methods import METHODS


@dataclass
class LoraParams:
    r: int = field(default=8, metadata={"help": "Rank of the low-rank update."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha / r."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter's input."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt (e.g. [query, value]), `all-linear`, or null for "
                                        "peft's default for the architecture."})


@METHODS.register("lora")
class Lora:
    name = "lora"
    params = LoraParams
    mergeable = True
    default_lr = 5e-4
    description = "low-rank adapters (peft LoRA); head trained in full"

    def validate(self, cfg) -> None:
        p = cfg.method
        if p["r"] < 1:
            raise UsageError(f"config key 'method.r': got {p['r']!r}, expected an integer >= 1")
        if p["alpha"] <= 0:
            raise UsageError(f"config key 'method.alpha': got {p['alpha']!r}, expected a number > 0")
        if not 0 <= p["dropout"] < 1:
            raise UsageError(f"config key 'method.dropout': got {p['dropout']!r}, expected a number in [0, 1)")

    def peft_config(self, params: dict, head: list[str], peft_task_type: str | None):
        from peft import LoraConfig

        targets = params["target_modules"]
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(r=params["r"], lora_alpha=params["alpha"], lora_dropout=params["dropout"],
                          target_modules=targets, modules_to_save=head or None, task_type=peft_task_type)

    def apply(self, model, params: dict, head: list[str], peft_task_type: str | None = None):
        from peft import get_peft_model

        try:
            return get_peft_model(model, self.peft_config(params, head, peft_task_type))
        except ValueError as e:  # peft: target modules not found / no default for this architecture
            if params["target_modules"] is None:
                raise UsageError(f"config key 'method.target_modules': peft has no default LoRA targets for "
                                 f"{type(model).__name__}; set it, e.g. --set method.target_modules=all-linear or "
                                 "a list of module names") from None
            raise UsageError(f"config key 'method.target_modules': {e}") from None
