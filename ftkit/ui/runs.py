"""What the dashboard reads: run dirs and sweep dirs under the folders it was given, their status, curves,
metrics and configs. Only paths inside those folders are ever opened (``locate``)."""

from __future__ import annotations

from ftkit.rundir import layout

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ACTIVE_SECONDS = 120  # a run dir written to this recently, with no metrics.json yet, is taken as running
MAX_DEPTH = 8
SKIP = {layout.CHECKPOINTS, "node_modules", "__pycache__"}


@dataclass
class Run:
    key: str  # "<folder index>/<path inside it>": the run's address in the UI
    path: Path
    config: dict
    status: str  # finished, running, interrupted, failed
    detail: str = ""  # e.g. "checkpoint at step 40"
    main_metric: str | None = None
    best: float | None = None
    steps: int | None = None
    seconds: float | None = None
    started: float = 0.0
    summary: dict = field(default_factory=dict)  # metrics.json, when finished

    @property
    def task(self) -> str:
        return (self.config.get("task") or {}).get("name", "?")

    @property
    def method(self) -> str:
        return (self.config.get("method") or {}).get("name", "?")

    @property
    def model(self) -> str:
        return _short((self.config.get("model") or {}).get("name"))

    @property
    def data(self) -> str:
        return _short((self.config.get("data") or {}).get("train"))


@dataclass
class Sweep:
    key: str
    path: Path
    plan: dict
    leaderboard: list[dict]


def _short(spec) -> str:
    return Path(str(spec)).name if spec else "?"


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def records(path: Path) -> list[dict]:
    """metrics.jsonl's records (a line being written is skipped)."""
    out = []
    try:
        lines = (path / layout.HISTORY).read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _maximize(task: str) -> bool:
    from ftkit.tasks import TASKS

    try:
        return TASKS.get(task).maximize
    except Exception:  # noqa: BLE001 — an unknown task in a foreign run dir: higher is better
        return True


def read_run(key: str, path: Path, jobs: dict[Path, bool] | None = None) -> Run | None:
    """``jobs``: run dirs of runs the dashboard launched -> whether their process is alive (for those, what is known
    beats the guess from file times)."""
    try:
        config = yaml.safe_load((path / layout.CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    run = Run(key, path, config, "failed", started=(path / layout.CONFIG).stat().st_mtime)
    summary = _read_json(path / layout.SUMMARY)
    recs = records(path)
    if isinstance(summary, dict) and "eval" in summary:
        run.status, run.summary = "finished", summary
        run.main_metric = summary.get("main_metric")
        run.best = (summary.get("eval") or {}).get(run.main_metric)
        run.steps = (summary.get("train") or {}).get("steps")
        run.seconds = (summary.get("train") or {}).get("seconds")
        return run
    steps = sorted(int(p.name[5:]) for p in (path / layout.CHECKPOINTS).glob("step-*") if p.name[5:].isdigit()) \
        if (path / layout.CHECKPOINTS).is_dir() else []
    newest = max((p.stat().st_mtime for p in [path, *path.iterdir(), *(path / layout.CHECKPOINTS).glob("*")]
                  if p.exists()), default=0.0)
    alive = (jobs or {}).get(path.resolve())
    if alive or (alive is None and time.time() - newest < ACTIVE_SECONDS):
        run.status = "running"
    elif (path / layout.FAILED).is_file():  # a sweep's trial that failed says why
        run.detail = (path / layout.FAILED).read_text(encoding="utf-8", errors="replace").strip()
    elif steps:
        run.status, run.detail = "interrupted", f"checkpoint at step {steps[-1]}"
    else:
        run.detail = "stopped with no checkpoint and no metrics.json"
    evals = [r for r in recs if r.get("type") == "eval"]
    trains = [r for r in recs if r.get("type") == "train"]
    if evals:
        # metrics.json (which names the main metric) is written at the end; until then, the tasks' main metrics in
        # the order that tells them apart (a tagger reports accuracy too, its main metric is entity F1 when it has one)
        metric = next((k[5:] for k in ("eval_entity_f1", "eval_accuracy", "eval_perplexity") if k in evals[-1]),
                      None)
        if metric:
            values = [r[f"eval_{metric}"] for r in evals]
            run.main_metric = metric
            run.best = max(values) if _maximize(run.task) else min(values)
    run.steps = max((r.get("step", 0) for r in recs), default=None)
    if trains or evals:
        run.seconds = round(newest - run.started, 1)
    return run


def scan(roots: list[Path], jobs: dict[Path, bool] | None = None) -> tuple[list[Run], list[Sweep]]:
    """Every run dir and sweep dir under ``roots`` (recursively, not following links out of them)."""
    runs, sweeps = [], []
    for i, root in enumerate(roots):
        base = root.resolve()
        for dirpath, dirnames, filenames in os.walk(base):
            here = Path(dirpath)
            depth = len(here.relative_to(base).parts)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP and not d.startswith(".")
                                 and depth < MAX_DEPTH and not (here / d).is_symlink())
            rel = here.relative_to(base).as_posix()
            key = f"{i}/{rel}" if rel != "." else f"{i}"
            if layout.CONFIG in filenames:
                run = read_run(key, here, jobs)
                if run is not None:
                    runs.append(run)
                dirnames[:] = []  # a run dir holds no other runs
            elif "sweep.json" in filenames:
                sweeps.append(read_sweep(key, here))
    runs.sort(key=lambda r: r.started, reverse=True)
    return runs, sweeps


def read_sweep(key: str, path: Path) -> Sweep:
    board = _read_json(path / "leaderboard.json", [])
    if isinstance(board, dict):
        board = board.get("trials") or board.get("rows") or []
    return Sweep(key, path, _read_json(path / "sweep.json", {}) or {}, board if isinstance(board, list) else [])


def locate(roots: list[Path], key: str, want: str = layout.CONFIG) -> Path | None:
    """The dir ``key`` names if it lies inside its folder and holds ``want``; None otherwise (the UI answers 404)."""
    index, _, rel = key.partition("/")
    if not index.isdigit() or int(index) >= len(roots):
        return None
    base = roots[int(index)].resolve()
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        return None
    return path if (path / want).is_file() else None


def curves(run: Run) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Chart name -> series name -> points, from metrics.jsonl: the losses, and each evaluation metric."""
    loss: dict[str, list] = {"train loss": [], "eval loss": []}
    metrics: dict[str, list] = {}
    for r in records(run.path):
        step = r.get("step")
        if not isinstance(step, (int, float)):
            continue
        if r.get("type") == "train" and isinstance(r.get("loss"), (int, float)):
            loss["train loss"].append((step, r["loss"]))
        elif r.get("type") == "eval":
            for k, v in r.items():
                if k == "eval_loss" and isinstance(v, (int, float)):
                    loss["eval loss"].append((step, v))
                elif k.startswith("eval_") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    metrics.setdefault(k[5:], []).append((step, v))
    return {"loss": {k: v for k, v in loss.items() if v}, "evaluation": metrics}


def files(run: Run) -> list[tuple[str, int]]:
    out = []
    for p in sorted(run.path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append((p.relative_to(run.path).as_posix(), p.stat().st_size))
    return out[:500]
