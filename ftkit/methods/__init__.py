"""Fine-tuning methods. Each module registers one method object in METHODS; nothing else enumerates them.

A method has a ``params`` dataclass (its config keys under ``method.``), a ``default_lr``, ``validate(cfg)`` for
checks that need no model, and ``apply(model, params, head)`` that makes the right parameters trainable (wrapping
the model in a PEFT model where it is an adapter method). ``head`` names the task head's modules, which are
always trained and saved with the adapter.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Protocol

from ftkit.registry import Registry


class Method(Protocol):
    name: str
    description: str
    params: type  # dataclass of the method's config keys (``method.KEY``)
    default_lr: float
    mergeable: bool  # an adapter that `export --merge` can fold into the base weights

    def validate(self, cfg) -> None: ...
    def apply(self, model, params: dict, head: list[str], peft_task_type: str | None = None): ...


METHODS: Registry[Method] = Registry("method")

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
