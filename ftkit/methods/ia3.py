"""IA3: learned rescaling vectors on attention keys/values and the feed-forward input. Tiny, mergeable."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.methods import METHODS, Method, wrap


@dataclass
class Ia3Params:
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "Modules to rescale; null for peft's default for the architecture."})
    feedforward_modules: list[str] | None = field(default=None, metadata={
        "help": "Which of the targets are feed-forward layers (scaled on their input); null for peft's default."})


@METHODS.register("ia3")
class Ia3(Method):
    name = "ia3"
    params = Ia3Params
    mergeable = True
    default_lr = 5e-3
    description = "learned rescaling vectors (peft IA3)"

    def apply(self, model, params: Ia3Params, ctx):
        from peft import IA3Config

        config = IA3Config(target_modules=params.target_modules, feedforward_modules=params.feedforward_modules,
                           modules_to_save=ctx.head or None, task_type=ctx.peft_task_type)
        return wrap(model, config, params, self.name)
