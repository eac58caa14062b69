"""Task families. Each module registers one task object in TASKS; nothing else enumerates them.

A task knows its data columns (roles), how to encode rows into features, which model class to load, how to batch
features, how to evaluate a batch, which metrics it reports (``main_metric`` is maximised), and how to predict.
Heavy imports (torch, transformers) stay inside the methods so that importing this package is cheap.
"""

from __future__ import annotations

import importlib
import pkgutil

from ftkit.registry import Registry

TASKS: Registry = Registry("task")

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
