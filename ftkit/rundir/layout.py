"""The run directory's format, in one place: the names of its files, what marks a run dir and a finished one, and
preparing and finishing one. Training, eval, export, serve, sweeps and the dashboard find a run's files through
these names; only this module creates a run dir and completes it.

A run dir while training:  ftkit.yaml (the resolved config, written first: it marks an ftkit run dir),
metrics.jsonl (one record per logged step and evaluation), checkpoints/step-N/ (weights and loop state).
Once finished: the best weights in Hugging Face's own files (model.safetensors or adapter_model.safetensors +
adapter_config.json), config.json with the label maps, the tokenizer, curves.png, README.md (the model card) and,
written last, metrics.json (the summary; its presence marks the run as complete). checkpoints/ is removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ftkit.errors import UsageError

CONFIG = "ftkit.yaml"
HISTORY = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SUMMARY = "metrics.json"
CARD = "README.md"
CURVES = "curves.png"
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FAILED = "failed.txt"  # a sweep trial that failed: the reason
PRUNE_REPORT = "prune.json"  # a pruned run: what was cut and how it scored


def is_run(path: Path) -> bool:
    """An ftkit run dir, finished or not."""
    return (Path(path) / CONFIG).is_file()


def is_finished(path: Path) -> bool:
    return is_run(path) and (Path(path) / SUMMARY).is_file()


def has_adapter(path: Path) -> bool:
    """Weights saved as a peft adapter over a base (else a full checkpoint)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_summary(path: Path) -> dict:
    return json.loads((Path(path) / SUMMARY).read_text(encoding="utf-8"))


def read_config(path: Path):
    """The run's resolved config (a Config)."""
    from ftkit import config as config_mod

    return config_mod.build(config_mod.load_yaml(Path(path) / CONFIG))


def check_finished(path: Path, then: str = "nothing to load") -> None:
    if not is_finished(path):
        raise UsageError(f"{path}: training did not finish in this run dir (no {SUMMARY}); {then}")


def prepare(output: str | None, overwrite: bool, resume: bool) -> Path:
    """Where a run is to be written, checked before any work: writable, and either empty, an ftkit run dir that
    --overwrite may replace, or an unfinished one that --resume continues."""
    from ftkit.util.files import check_writable

    if not output:
        raise UsageError("no run directory: pass --output RUN_DIR (or set `output:` in the recipe)")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    run_dir = check_writable(output, "--output", directory=True)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (overwrite or resume):
            raise UsageError(f"--output {output}: exists and is not empty; pass --overwrite to replace it, "
                             "--resume to continue it, or choose another directory")
        if not is_run(run_dir):
            raise UsageError(f"--output {output}: is not an ftkit run dir (no {CONFIG}); refusing to "
                             f"{'delete' if overwrite else 'resume'} it")
        if resume and is_finished(run_dir):
            raise UsageError(f"--resume: {output} is a finished run (it has {SUMMARY}); nothing to resume")
    return run_dir


def create(run_dir: Path, cfg) -> None:
    """Start a run dir: replace what --overwrite allowed (an ftkit run dir, checked by ``prepare``), write the
    resolved config."""
    from ftkit import config as config_mod

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config_mod.dump_yaml(cfg, run_dir / CONFIG)


def finish(run_dir: Path, best_weights: Path, model_config, tokenizer, main_metric: str, card: str,
           summary: dict) -> None:
    """Complete a run dir: the best checkpoint's weights become the run's, the checkpoints go, the model config
    (with the label maps) and the tokenizer are saved, the curves drawn, the model card written, and the summary
    last (``card``: the README text, ``model_config``: what config.json is to hold)."""
    from ftkit.rundir.plots import curves
    from ftkit.util.files import write_text

    for f in best_weights.iterdir():
        os.replace(f, run_dir / f.name)
    shutil.rmtree(run_dir / CHECKPOINTS)
    model_config.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    curves(run_dir / HISTORY, run_dir / CURVES, run_dir.name, main_metric)
    write_text(run_dir / CARD, card)
    write_text(run_dir / SUMMARY, json.dumps(summary, indent=2))  # last: its presence marks the run complete
