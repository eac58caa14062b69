"""What a run tells the user while it trains: the progress display and metrics.jsonl (and the trackers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftkit.rundir import layout
from ftkit.util.files import write_text


class Reporter:
    """Writes metrics.jsonl and shows progress: a rich bar on a terminal, plain log lines otherwise (CI logs).
    Only the main process reports (``enabled``); ``quiet`` keeps it to warnings (metrics.jsonl is still written).
    With ``cfg``, the trackers of its ``train.report_to`` get the same records (``train/loss``,
    ``eval/accuracy``...)."""

    def __init__(self, run_dir: Path, enabled: bool = True, quiet: bool = False, cfg=None):
        self.run_dir, self.path = run_dir, run_dir / layout.HISTORY
        self.enabled = enabled
        self.shows = enabled and not quiet
        self.cfg, self.trackers = cfg, []
        self._progress = None

    def _track(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def _write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def resumed(self, step: int, checkpoint: str | None) -> None:
        """Drop the records a killed run wrote after its last checkpoint (they will be written again) and a last
        line it may have left half-written."""
        if self.enabled and self.path.is_file():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line + "\n")
                except ValueError:
                    pass
            write_text(self.path, "".join(kept))
        self.note(f"resumed from {checkpoint} (step {step})" if checkpoint
                  else "no checkpoint to resume from: starting at step 0")

    def start(self, total: int, done: int = 0) -> None:
        if self.enabled and self.cfg is not None:
            from ftkit.training import tracking

            self.trackers = tracking.start(self.cfg, self.run_dir, done)
        if not self.shows:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
            self._task = self._progress.add_task("train", total=total, completed=done, info="")
            self._progress.start()
        self.total = total

    def log(self, record: dict) -> None:
        self._write({"type": "train", **record})
        self._track({f"train/{k}": v for k, v in record.items() if k != "step"}, record["step"])
        if not self.shows:
            return
        info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['samples_per_s']:.1f} samples/s"
        if self._progress:
            self._progress.update(self._task, completed=record["step"], info=info)
        else:
            print(f"step {record['step']}/{self.total}  {info}", file=sys.stderr, flush=True)

    def eval(self, step: int, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._write({"type": "eval", "step": step, **{f"eval_{k}": v for k, v in scalars.items()}})
        self._track({f"eval/{k}": v for k, v in scalars.items()}, step)
        self.note(f"eval @ step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()))

    def note(self, text: str) -> None:
        if self.shows:
            self.warn(text)

    def warn(self, text: str) -> None:
        """Shown even with --quiet."""
        if not self.enabled:
            return
        if self._progress:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        if self._progress:
            self._progress.stop()
            self._progress = None
