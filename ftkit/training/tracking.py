"""Experiment tracking (`train.report_to`): TensorBoard, Weights & Biases and MLflow through Accelerate's trackers.

The reporter drives them (main process only); this module picks, checks and builds them. TensorBoard logs go inside
the run dir (`RUN/tensorboard/RUN_NAME`), so `tensorboard --logdir runs/` shows every run by name; wandb and
mlflow log wherever their own environment variables point (WANDB_*, MLFLOW_TRACKING_URI), under project/experiment
``ftkit`` unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ftkit.errors import UsageError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> package it needs
PROJECT = "ftkit"


def chosen(cfg) -> list[str]:
    return [t for t in cfg.train.report_to if t != "none"]


def check(cfg) -> None:
    """Before anything loads: each tracker's package must be importable."""
    for name in chosen(cfg):
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UsageError(f"--report-to {name}: the {TRACKERS[name]} package is not installed "
                             f"(pip install {TRACKERS[name]}), or drop it from train.report_to")


def run_name(cfg) -> str:
    return cfg.train.run_name or Path(cfg.output).name


def hparams(cfg) -> dict:
    """The resolved config, flattened to the scalar key/values every tracker accepts (``train.lr``...)."""
    from ftkit.config import flatten

    return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in flatten(cfg.to_dict()).items() if v is not None}


def start(cfg, run_dir: Path, resumed_at: int) -> list:
    """Started trackers for ``cfg``. On a resumed run TensorBoard drops the events after the checkpoint (they are
    logged again) and the hyper-parameters are not stored twice."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    name, trackers = run_name(cfg), []
    for kind in chosen(cfg):
        if kind == "tensorboard":
            tracker = TensorBoardTracker(name, run_dir / "tensorboard",
                                         **({"purge_step": resumed_at + 1} if resumed_at else {}))
        elif kind == "wandb":
            tracker = WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=name)
        else:
            tracker = MLflowTracker(PROJECT, run_name=name)
        tracker.start()
        if not resumed_at:
            tracker.store_init_configuration(hparams(cfg))
        trackers.append(tracker)
    return trackers
