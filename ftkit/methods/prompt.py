"""Prompt tuning: learned input embeddings (soft prompt) prepended to every input. Not mergeable."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError
from ftkit.methods import METHODS, VirtualTokenMethod, wrap


@dataclass
class PromptParams:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Length of the soft prompt."})
    init_text: str | None = field(default=None, metadata={
        "help": "Initialise the soft prompt from this text's token embeddings (random when null)."})


@METHODS.register("prompt")
class Prompt(VirtualTokenMethod):
    name = "prompt"
    params = PromptParams
    default_lr = 3e-2
    description = "a learned soft prompt (peft prompt tuning); not mergeable"
    load_note = ("with transformers >= 5.24 and peft <= 0.21.2, generate() on a prompt-tuned causal LM needs "
                 "ftkit.util.compat.generate_with_virtual_tokens(model) after PeftModel.from_pretrained (or "
                 "transformers < 5.24)")

    def validate(self, cfg, task) -> None:
        if not task.virtual_tokens_in_loss:
            raise UsageError(f"method 'prompt' does not support task {cfg.task_name!r} (peft's per-token loss does "
                             "not account for the virtual tokens); use prefix, lora or ia3")
        super().validate(cfg, task)

    def apply(self, model, params, ctx):
        from peft import PromptTuningConfig, PromptTuningInit

        text = params.init_text
        config = PromptTuningConfig(num_virtual_tokens=params.num_virtual_tokens,
                                    prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
                                    prompt_tuning_init_text=text,
                                    tokenizer_name_or_path=ctx.base_path if text else None,
                                    modules_to_save=ctx.head or None, task_type=ctx.peft_task_type)
        return wrap(model, config, params, self.name)
