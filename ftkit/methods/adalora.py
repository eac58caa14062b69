"""AdaLoRA: LoRA whose rank budget is re-allocated during training, from init_r towards target_r per layer.

The budget schedule needs the run's total step count: ranks are kept during the first ``tinit`` steps, pruned
every ``deltaT`` steps until ``total - tfinal``, then frozen. ``update_and_allocate(step)`` must run after every
optimizer step (before the gradients are zeroed) — without it AdaLoRA silently behaves like plain LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError
from ftkit.methods import METHODS, Method, wrap
from ftkit.methods.lora import LoraParams, targets


@dataclass
class AdaLoraParams(LoraParams):
    r: int = field(default=8, metadata={"help": "Average target rank after budget allocation (target_r)."})
    init_r: int = field(default=12, metadata={"help": "Starting rank of every adapted layer."})
    tinit: int | None = field(default=None, metadata={"help": "Warm-up steps before pruning; default 10% of "
                                                              "the run's steps."})
    tfinal: int | None = field(default=None, metadata={"help": "Final steps with the budget frozen; default 20% "
                                                               "of the run's steps."})
    delta_t: int | None = field(default=None, metadata={"help": "Steps between two budget allocations; default "
                                                                "1/20 of the pruning phase (at least 1)."})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "Weight of the orthogonality regulariser."})

    def check(self) -> None:
        super().check()
        if self.init_r < self.r:
            raise UsageError(f"config key 'method.init_r': got {self.init_r}, expected >= method.r ({self.r})")


def schedule(params: AdaLoraParams, total: int) -> tuple[int, int, int]:
    """(tinit, tfinal, deltaT) for a run of ``total`` steps; UsageError when no pruning phase fits."""
    tinit = params.tinit if params.tinit is not None else total // 10
    tfinal = params.tfinal if params.tfinal is not None else total // 5
    if tinit + tfinal >= total:
        raise UsageError(f"adalora: the budget phase does not fit: tinit ({tinit}) + tfinal ({tfinal}) must be "
                         f"below the run's {total} optimizer steps; train longer or lower method.tinit/tfinal")
    delta = params.delta_t if params.delta_t is not None else max(1, (total - tinit - tfinal) // 20)
    return tinit, tfinal, delta


@METHODS.register("adalora")
class AdaLora(Method):
    name = "adalora"
    params = AdaLoraParams
    mergeable = True
    default_lr = 1e-3
    description = "LoRA with adaptive rank allocation (peft AdaLoRA)"

    def apply(self, model, params: AdaLoraParams, ctx):
        from peft import AdaLoraConfig

        tinit, tfinal, delta = schedule(params, ctx.total_steps)
        config = AdaLoraConfig(init_r=params.init_r, target_r=params.r, lora_alpha=params.settled().alpha,
                               lora_dropout=params.dropout, target_modules=targets(params),
                               modules_to_save=ctx.head or None, task_type=ctx.peft_task_type,
                               total_step=ctx.total_steps, tinit=tinit, tfinal=tfinal, deltaT=delta,
                               orth_reg_weight=params.orth_reg_weight)
        return wrap(model, config, params, self.name)

    def prepare_loaded(self, model) -> None:
        """A reloaded AdaLoRA model lacks the attribute its forward reads when a loss is computed (peft sets it
        only when building a trainable model); without it `ftkit eval` on the run fails."""
        model.base_model.trainable_adapter_name = model.active_adapter

    def get_state(self, model) -> dict:
        """What a resumed run needs beyond the weights: the importance scores the budget allocation averages over
        steps, and the rank pattern once the budget is frozen (saved in checkpoints; tensors, lists, None only)."""
        alloc = model.base_model.rankallocator
        return {"rank_pattern": model.peft_config[model.active_adapter].rank_pattern, "ipt": alloc.ipt,
                "exp_avg_ipt": alloc.exp_avg_ipt, "exp_avg_unc": alloc.exp_avg_unc}

    def set_state(self, model, state: dict) -> None:
        alloc = model.base_model.rankallocator
        model.peft_config[model.active_adapter].rank_pattern = state["rank_pattern"]
        alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]

    def step_hook(self, model):
        """Called by the loop after each optimizer step, before gradients are zeroed."""
        return model.base_model.update_and_allocate
