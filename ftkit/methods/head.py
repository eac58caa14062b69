"""Head-only: the pretrained backbone is frozen and only the task head learns (a linear probe)."""

from dataclasses import dataclass

from ftkit.errors import UsageError
from ftkit.methods import METHODS, Method, refuse_quantized_base


@dataclass
class HeadParams:
    """Head-only training has no parameters of its own."""


@METHODS.register("head")
class Head(Method):
    name = "head"
    params = HeadParams
    mergeable = True
    default_lr = 1e-3  # a freshly initialised head on frozen features wants a large step
    description = "freeze the backbone, train the task head"

    def validate(self, cfg, task) -> None:
        refuse_quantized_base(self, cfg)
        if not task.labelled:
            raise UsageError(f"method 'head' needs a task with a new head to train; task {cfg.task_name!r} has "
                             "none (it predicts the model's vocabulary): use lora or full")

    def apply(self, model, params, ctx):
        if not ctx.head:
            raise UsageError(f"{type(model).__name__} has no task head outside its backbone; use --method lora")
        model.requires_grad_(False)
        for name in ctx.head:
            model.get_submodule(name).requires_grad_(True)
        return model
