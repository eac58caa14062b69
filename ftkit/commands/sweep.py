"""`ftkit sweep`: a hyper-parameter search over a recipe. Each trial is a normal run dir (SWEEP/trial-NNN) trained
one after another in this process; the plan is fixed in SWEEP/sweep.json before the first trial, so `--resume`
finishes a half-done sweep (a finished trial is kept, an interrupted one continues from its checkpoint); after every
trial the leaderboard (SWEEP/leaderboard.md and .json) is rewritten, and the best trial's config is saved as a
recipe (SWEEP/best.yaml)."""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ftkit import config as config_mod
from ftkit.errors import RunStopped, UsageError, first_line
from ftkit.rundir import layout
from ftkit.util.files import check_writable, write_text

# the typed `ftkit train` flags, usable as --param names
ALIASES = {"lr": "train.lr", "epochs": "train.epochs", "max_steps": "train.max_steps", "batch_size": "train.batch_size",
           "grad_accum": "train.grad_accum", "seed": "train.seed", "max_length": "data.max_length",
           "quant": "model.quant", "method": "method"}
STRATEGIES = ("grid", "random")
PLAN = "sweep.json"


@dataclass
class Plan:
    recipe: str
    params: dict[str, list[str]]  # config key -> values as typed (parsed like --set)
    strategy: str
    trials: list[dict[str, str]]  # one {key: value} per trial, in order
    sets: list[str]
    seed: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_params(items: list[str]) -> dict[str, list[str]]:
    """``["lr=1e-4,3e-4", "method.r=4,8"]`` -> ``{"train.lr": ["1e-4", "3e-4"], "method.r": ["4", "8"]}``."""
    params: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key.strip() or not all(values):
            raise UsageError(f"--param {item!r}: expected key=value1,value2,... e.g. --param lr=1e-4,3e-4")
        key = ALIASES.get(key.strip(), key.strip())
        if key in params:
            raise UsageError(f"--param {item!r}: {key} is given twice")
        params[key] = list(dict.fromkeys(values))
    if not params:
        raise UsageError("sweep: give at least one --param KEY=V1,V2")
    return params


def plan_trials(params: dict[str, list[str]], strategy: str, trials: int | None, seed: int) -> list[dict[str, str]]:
    """grid: every combination (the first ``trials`` of them when given); random: ``trials`` distinct
    combinations drawn with ``seed`` (default 8, at most all of them)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy}: expected grid or random")
    combos = [dict(zip(params, values)) for values in itertools.product(*params.values())]
    if strategy == "random":
        return random.Random(seed).sample(combos, min(trials or 8, len(combos)))
    return combos[:trials] if trials else combos


def trial_sets(plan: Plan, k: int) -> list[str]:
    return plan.sets + [f"{key}={value}" for key, value in plan.trials[k].items()]


def trial_config(plan: Plan, k: int, root: Path) -> config_mod.Config:
    from ftkit.config import recipes

    where = f"trial {k} ({', '.join(f'{a}={b}' for a, b in plan.trials[k].items())})"
    try:
        return config_mod.resolve(recipes.find(plan.recipe), {"output": str(root / trial_name(k))},
                                  trial_sets(plan, k))
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def trial_name(k: int) -> str:
    return f"trial-{k:03d}"


def prepare(root: Path, plan: Plan, resume: bool) -> Plan:
    """Check the sweep dir; a resumed sweep keeps its saved plan, which must be the one asked for."""
    check_writable(root, "--output", directory=True)
    saved = root / PLAN
    if resume:
        if not saved.is_file():
            raise UsageError(f"--resume: {root} is not a sweep dir (no {PLAN}); start it without --resume")
        old = Plan(**json.loads(saved.read_text(encoding="utf-8")))
        for field in ("recipe", "params", "strategy", "sets", "seed"):
            if getattr(old, field) != getattr(plan, field):
                raise UsageError(f"--resume: {field} is {getattr(plan, field)!r} here but {getattr(old, field)!r} "
                                 f"in {saved}; resume with the sweep's own settings")
        return old
    if root.is_dir() and any(root.iterdir()):
        raise UsageError(f"--output {root}: exists and is not empty; pass --resume to continue the sweep there, or "
                         "choose another directory")
    return plan


def run_sweep(plan: Plan, root: Path, resume: bool, echo) -> list[dict]:
    """Run the trials not yet finished; -> the leaderboard rows."""
    from ftkit.commands.train import train

    plan = prepare(root, plan, resume)
    configs = [trial_config(plan, k, root) for k in range(len(plan.trials))]  # every trial valid before the first
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / PLAN, json.dumps(plan.to_dict(), indent=2) + "\n")
    for k, cfg in enumerate(configs):
        run = root / trial_name(k)
        if (run / layout.SUMMARY).is_file() or (run / layout.FAILED).is_file():
            continue
        half_done = layout.is_run(run)  # interrupted: continue it from its newest checkpoint
        echo(f"{trial_name(k)} ({k + 1}/{len(configs)}): {', '.join(f'{a}={b}' for a, b in plan.trials[k].items())}"
             + ("  [resumed]" if half_done else ""))
        start = time.perf_counter()
        try:
            train(cfg, resume=half_done, quiet=True)
            echo(f"  done in {time.perf_counter() - start:.0f} s")
        except RunStopped as e:
            if e.exit_code in (130, 143):  # Ctrl-C / SIGTERM: the whole sweep stops; --resume continues it
                raise
            _failed(run, str(e), echo)  # a diverging loss: this trial is out, the sweep goes on
        except Exception as e:  # noqa: BLE001 — one trial's failure (bad data for its batch size, ...) is recorded
            _failed(run, f"{type(e).__name__}: {first_line(e)}", echo)
        finally:
            _reset_accelerate()
        write_leaderboard(leaderboard(plan, root), plan, root)
    rows = leaderboard(plan, root)
    write_leaderboard(rows, plan, root)
    return rows


def _failed(run: Path, reason: str, echo) -> None:
    run.mkdir(parents=True, exist_ok=True)
    write_text(run / layout.FAILED, reason + "\n")
    echo(f"  failed: {reason}")


def _reset_accelerate() -> None:
    """One Accelerator state per process: each trial starts from a fresh one."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def leaderboard(plan: Plan, root: Path) -> list[dict]:
    """One row per trial, best first by the task's main metric; unfinished and failed trials last."""
    from ftkit.tasks import TASKS

    rows, maximize = [], True
    for k, values in enumerate(plan.trials):
        run = root / trial_name(k)
        row = {"trial": trial_name(k), "params": values, "status": "pending"}
        if (run / layout.SUMMARY).is_file():
            m = layout.read_summary(run)
            maximize = TASKS.get(config_mod.load_yaml(run / layout.CONFIG)["task"]["name"]).maximize
            row |= {"status": "done", "metric": m["main_metric"], "value": m["eval"][m["main_metric"]],
                    "step": m["eval"]["step"], "trainable_params": m["train"]["trainable_params"],
                    "seconds": m["train"]["seconds"]}
        elif (run / layout.FAILED).is_file():
            row["status"] = "failed: " + (run / layout.FAILED).read_text(encoding="utf-8").strip()
        rows.append(row)
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: r["value"], reverse=maximize)
    return done + [r for r in rows if r["status"] != "done"]


def write_leaderboard(rows: list[dict], plan: Plan, root: Path) -> None:
    write_text(root / "leaderboard.json", json.dumps(rows, indent=2) + "\n")
    write_text(root / "leaderboard.md", render(rows, plan) + "\n")
    best = rows[0] if rows and rows[0]["status"] == "done" else None
    if best:
        text = (root / best["trial"] / layout.CONFIG).read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if not line.startswith("output:")]
        values = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        head = f"# best of sweep {root.name}: {best['trial']} ({values}), {best['metric']} {best['value']:.4f}"
        write_text(root / "best.yaml", head + "\n" + "\n".join(lines) + "\n")


def render(rows: list[dict], plan: Plan) -> str:
    keys = list(plan.params)
    out = ["| rank | trial | " + " | ".join(keys) + " | metric | trainable params | seconds | status |",
           "|" + "---|" * (len(keys) + 6)]
    for i, r in enumerate(rows, 1):
        if r["status"] == "done":
            cells = [str(i), f"{r['metric']} {r['value']:.4f}", f"{r['trainable_params']:,}", f"{r['seconds']:.1f}"]
        else:
            cells = ["", "", "", ""]
        out.append(f"| {cells[0]} | {r['trial']} | " + " | ".join(str(r["params"][k]) for k in keys)
                   + f" | {cells[1]} | {cells[2]} | {cells[3]} | {r['status']} |")
    return "\n".join(out)
