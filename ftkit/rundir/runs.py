"""Finished runs and exports: what a name refers to (``locate``), loading it for evaluation, prediction or export
(``load_trained``), and a finished adapter run merged into its base so that another run can train from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftkit.data import catalog
from ftkit.errors import UsageError
from ftkit.modeling.loading import (avoid_packed_cpu_kernel, check_quant_available, check_weights_format,
                                    load_tokenizer, quantization)
from ftkit.rundir import layout
from ftkit.util.libraries import prepare_libraries


@dataclass
class Loaded:
    model: object
    tokenizer: object
    task: object
    cfg: object  # the run's Config, or None for a plain checkpoint
    path: Path


@dataclass
class Target:
    """What `eval`, `predict` or `export` was pointed at, known before any weights load (no torch imported)."""

    path: Path
    task: object
    cfg: object  # the run's Config (an ONNX export keeps its run's), or None for a plain checkpoint
    onnx: Path | None = None  # the .onnx file of an ONNX export


def locate(name: str, task_name: str | None = None) -> Target:
    """A finished run dir, an ONNX or other export, or a plain model, with its task and the run's config."""
    from ftkit import config as config_mod
    from ftkit.modeling.onnx import META, onnx_file
    from ftkit.tasks import TASKS

    if task_name is not None:
        TASKS.get(task_name)  # an unknown name is refused as such, whatever the target
    if file := onnx_file(name):
        if not (file.parent / META).is_file():
            raise UsageError(f"{file}: not from `ftkit export --format onnx` (no {META} beside it)")
        meta = json.loads((file.parent / META).read_text(encoding="utf-8"))
        if task_name not in (None, meta["task"]):
            raise UsageError(f"{file}: exported as task {meta['task']!r}, not {task_name!r}")
        return Target(file.parent, TASKS.get(meta["task"]), config_mod.build(meta["config"]), file)
    path = catalog.resolve_model(name) if not Path(name).is_dir() else Path(name)
    cfg = None
    if layout.is_run(path):
        layout.check_finished(path)
        cfg = layout.read_config(path)
        if task_name not in (None, cfg.task_name):
            raise UsageError(f"--task {task_name}: {path} is a {cfg.task_name} run (its model and data are "
                             f"{cfg.task_name}'s); leave --task out or give --task {cfg.task_name}")
        task_name = cfg.task_name
    if not (path / layout.MODEL_CONFIG).is_file():
        raise UsageError(f"{path}: not a run dir or Hugging Face checkpoint (no config.json)")
    return Target(path, TASKS.get(task_name or _task_from_architecture(path)), cfg)


def load_trained(name: str | Target, task_name: str | None = None, quant: str | None = None) -> Loaded:
    """A finished run dir, an exported checkpoint, or a plain model (zero-shot baseline); ``name`` may be what
    ``locate`` found. ``quant`` (none, 8bit, 4bit) loads the frozen weights quantized for inference; by default a
    run's base is reloaded the way it was trained and anything else in full precision (export merges with
    quant="none")."""
    from ftkit.methods import METHODS

    target = name if isinstance(name, Target) else locate(name, task_name)
    if target.onnx:
        from ftkit.modeling.onnx_model import load_onnx

        return Loaded(*load_onnx(target.onnx, quant), target.task, target.cfg, target.path)
    if quant is not None:
        check_quant_available(quant)
    path, cfg, task = target.path, target.cfg, target.task
    prepare_libraries()
    from transformers import AutoConfig

    trust = bool(cfg and cfg.model.trust_remote_code)
    check_weights_format(path, bool(cfg and cfg.model.allow_pickle))
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    if quant is None:
        quant = cfg.model.quant if cfg is not None and layout.has_adapter(path) else "none"
    adapter = layout.has_adapter(path)
    if adapter:
        from peft import PeftConfig

        # the run's own model name: a run trained from another run finds (or re-makes) its merged base
        weights = base_model_path(cfg.model.name) if cfg is not None else \
            PeftConfig.from_pretrained(path).base_model_name_or_path
    else:
        weights = path
    bnb = quantization(quant, task)
    if bnb:  # label maps as overrides, not config= (see load_for_training)
        labels = [model_config.id2label[i] for i in range(len(model_config.id2label))] if task.labelled else []
        model = task.model_class(model_config).from_pretrained(
            weights, **task.config_overrides(labels), problem_type=getattr(model_config, "problem_type", None),
            quantization_config=bnb, trust_remote_code=trust)
    else:
        model = task.model_class(model_config).from_pretrained(weights, config=model_config, trust_remote_code=trust)
    if quant == "4bit":
        avoid_packed_cpu_kernel(model)
    if adapter:
        from peft import PeftModel

        from ftkit.util.compat import accept_past_key_values

        accept_past_key_values(model)  # prefix tuning on transformers >= 5.24 (a no-op for other adapters)
        model = PeftModel.from_pretrained(model, path)
        from ftkit.util.compat import generate_with_virtual_tokens

        generate_with_virtual_tokens(model)  # prefix/prompt tuning's generation on transformers >= 5.24
        if cfg is not None:
            METHODS.get(cfg.method_name).prepare_loaded(model)
    model.eval()
    tokenizer = load_tokenizer(path, trust)
    task.prepare_model(model, tokenizer)
    return Loaded(model, tokenizer, task, cfg, path)


def _task_from_architecture(path: Path) -> str:
    from ftkit.tasks import TASKS

    archs = json.loads((path / layout.MODEL_CONFIG).read_text()).get("architectures") or []
    for name in TASKS.names():
        if any(a.endswith(TASKS.get(name).architectures) for a in archs):
            return name
    raise UsageError(f"{path}: cannot tell the task from its architectures {archs}; pass --task "
                     f"({'|'.join(TASKS.names())})")


def base_model_path(name: str) -> Path:
    """The checkpoint to train from: a built-in model, a checkpoint dir, or a finished run dir (an adapter run is
    merged into its base first, e.g. to fine-tune after domain-adaptive MLM pre-training)."""
    path = catalog.resolve_model(name)
    if not (path / layout.ADAPTER_CONFIG).exists():
        return path
    if not layout.is_run(path):
        raise UsageError(f"{name}: is a bare adapter, not a base model; train from the run dir it came from, or "
                         f"merge it into its base (`ftkit export RUN --merge --output DIR`) and train from DIR")
    return merged_run(path)


def merged_run(run: Path) -> Path:
    """A finished adapter run dir merged into a full-precision copy of its base, cached by the adapter's content.
    Concurrent ranks each write their own copy and the first rename wins."""
    from ftkit.methods import METHODS

    layout.check_finished(run, "nothing to train from")
    method = METHODS.get(layout.read_config(run).method_name)
    if not method.mergeable:
        raise UsageError(f"{run}: method {method.name} adds virtual tokens and cannot be merged into its base, so "
                         "the run cannot be a base model; pre-train with lora, dora, ia3 or full")

    def build(folder: Path) -> None:
        loaded = load_trained(str(run), quant="none")
        merged(loaded).save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)

    sources = [run / name for name in (layout.ADAPTER_CONFIG, layout.ADAPTER_WEIGHTS, layout.MODEL_CONFIG)]
    return derived_checkpoint("merged", sources, "", build)


def weight_files(target: Target) -> list[Path]:
    """The files a run's weights live in (for cache keys of what is derived from them)."""
    return sorted(target.path.glob("*.safetensors")) + [target.path / layout.MODEL_CONFIG]


def derived_checkpoint(kind: str, sources: list[Path], salt: str, build) -> Path:
    """A checkpoint ``build(folder)`` makes from ``sources`` (a run's weights), cached in $FTKIT_CACHE/``kind`` by
    their content and ``salt`` (the build's settings). Concurrent processes each build their own copy under a
    temporary name; the first rename wins."""
    import hashlib
    import os
    import shutil

    digest = hashlib.sha256(salt.encode())
    for f in sources:
        digest.update(f.read_bytes())
    out = catalog.cache_dir() / kind / digest.hexdigest()[:24]
    if not (out / layout.MODEL_CONFIG).is_file():
        mine = out.with_name(f"{out.name}.{os.getpid()}")
        shutil.rmtree(mine, ignore_errors=True)
        build(mine)
        try:
            os.replace(mine, out)
        except OSError:  # another process got there first
            shutil.rmtree(mine, ignore_errors=True)
    return out


def merged(loaded: Loaded):
    """The loaded model with its adapter, if it has one, merged into the weights (plain transformers)."""
    return loaded.model.merge_and_unload() if layout.has_adapter(loaded.path) else loaded.model
