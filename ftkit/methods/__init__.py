"""Fine-tuning methods. Each module registers one method object in METHODS; nothing else enumerates them.

A method has a ``params`` dataclass (its config keys under ``method.``), a ``default_lr``, ``validate(cfg)`` for
checks that need no model, and ``apply(model, params, head)`` that makes the right parameters trainable (wrapping
the model in a PEFT model where it is an adapter method). ``head`` names the task head's modules, which are
always trained and saved with the adapter.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Protocol

from ftkit.registry import Registry


class Method(Protocol):
    name: str
    description: str
    params: type  # dataclass of the method's config keys (``method.KEY``)
    default_lr: float
    mergeable: bool  # an adapter that `export --merge` can fold into the base weights

    def validate(self, cfg) -> None: ...  # checks that need no model; refuse unsupported combinations here
    def apply(self, model, params: dict, ctx: "Context"): ...  # -> the model to train


@dataclass
class Context:
    """What a method may need to know about the run when it wraps the model."""

    head: list[str]  # the task head's module names: always trained, saved with an adapter
    peft_task_type: str  # SEQ_CLS, TOKEN_CLS, CAUSAL_LM or SEQ_2_SEQ_LM
    total_steps: int  # optimizer steps the run will take (AdaLoRA's budget schedule needs it)
    base_path: str  # the base checkpoint (e.g. for a prompt-tuning tokenizer)


METHODS: Registry[Method] = Registry("method")


def positions_taken(cfg) -> int:
    """Positions the method's virtual tokens occupy in front of the input (a method says so with
    ``virtual_tokens(params)``; prompt and prefix tuning do)."""
    method = METHODS.get(cfg.method_name)
    return method.virtual_tokens(cfg.method) if hasattr(method, "virtual_tokens") else 0

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
