"""Runs launched from the dashboard (only with --allow-launch): `ftkit train` in a child process, its output in a
log file the page streams, SIGTERM to stop it (ftkit then writes a checkpoint, so the run resumes later)."""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ftkit.errors import UsageError


@dataclass
class Job:
    id: str
    command: list[str]
    run_dir: Path
    log: Path
    process: subprocess.Popen

    @property
    def status(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        return "finished" if code == 0 else f"stopped (exit {code})" if code in (130, 143) else f"failed (exit {code})"


class Jobs:
    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self._logs: Path | None = None
        self._ids = itertools.count(1)

    @property
    def logs(self) -> Path:
        """The jobs' console logs: a temporary folder made at the first launch and removed at shutdown (each run
        dir keeps its own records)."""
        if self._logs is None:
            self._logs = Path(tempfile.mkdtemp(prefix="ftkit-ui-jobs-"))
        return self._logs

    def check(self, recipes: dict[str, Path], recipe: str, output: str, overrides: str, root: Path) -> dict:
        """The form's fields checked by the CLI's own config code -> {field: message} (empty when it can start)."""
        from ftkit import config

        errors = {}
        if recipe not in recipes:
            errors["recipe"] = f"unknown recipe {recipe!r}"
        name = output.strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            errors["output"] = "a name for a new dir: letters, digits, - and _, no slashes"
        elif (root / name).exists():
            errors["output"] = f"{root / name} exists already; pick another name"
        sets = [line.strip() for line in overrides.splitlines() if line.strip()]
        if "recipe" not in errors:
            try:
                config.resolve(recipes[recipe], {"output": str(root / name)}, sets)
            except UsageError as e:
                errors["overrides"] = str(e)
        return errors

    def start(self, args: list[str], run_dir: Path) -> Job:
        job_id = str(next(self._ids))
        log = self.logs / f"{job_id}.log"
        command = [sys.executable, "-m", "ftkit", "train", *args]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        job = Job(job_id, ["ftkit", "train", *args], run_dir.resolve(), log, process)
        self.jobs[job_id] = job
        return job

    def stop(self, job: Job) -> None:
        if job.process.poll() is None:
            job.process.send_signal(signal.SIGTERM)

    def dirs(self) -> dict[Path, bool]:
        """Run dir -> whether its newest job is still running."""
        return {j.run_dir: j.process.poll() is None for j in self.jobs.values()}

    def shutdown(self) -> None:
        """Stop what is still running (each writes a checkpoint), wait for it, and remove the logs' folder."""
        for job in self.jobs.values():
            self.stop(job)
        for job in self.jobs.values():
            try:
                job.process.wait(60)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait(10)
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
