"""Experiment tracking: TensorBoard event files are read back and compared with metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, train_args

pytest.importorskip("tensorboard")


def events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)], as TensorBoard itself reads the event files (a restart's purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(points) for tag, points in events(logdir).items()}


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_record_and_the_config(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "6", "--set", "train.log_every=2",
                                 "--set", "train.eval_every=3", "--report-to", "tensorboard", "--run-name", "first"))
    assert result.exit_code == 0, result.output
    logdir = out / "tensorboard" / "first"
    got = scalars(logdir)
    records = jsonl(out)
    assert got["train/loss"] == pytest.approx({r["step"]: r["loss"] for r in records if r["type"] == "train"})
    assert got["eval/accuracy"] == pytest.approx({r["step"]: r["eval_accuracy"] for r in records
                                                  if r["type"] == "eval"})
    assert set(got["train/lr"]) == {2, 4, 6} and set(got["eval/loss"]) == {3, 6}
    (hparams_file,) = logdir.glob("*/hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["train.lr"] == 5e-3 and hparams["method.name"] == "lora" and hparams["train.run_name"] == "first"
    assert hparams["data.max_length"] == 32


def test_run_name_defaults_to_the_run_dir_and_none_logs_nothing(tmp_path, tiny_model, sentiment):
    out = tmp_path / "named-by-dir"
    assert run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2", "--set",
                               "train.report_to=tensorboard")).exit_code == 0
    assert scalars(out / "tensorboard" / "named-by-dir")["eval/loss"]
    plain = tmp_path / "plain"
    assert run_cli(*train_args(tiny_model, sentiment, plain, "--max-steps", "2")).exit_code == 0
    assert not (plain / "tensorboard").exists()


@pytest.mark.parametrize("value, message", [
    ("tensorbored", "config key 'train.report_to': got 'tensorbored', expected none or tensorboard or wandb or mlflow"),
    ("wandb", "--report-to wandb: the wandb package is not installed (pip install wandb)"),
])
def test_bad_tracker_is_refused_before_loading(tmp_path, tiny_model, sentiment, value, message, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--report-to", value))
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_resumed_run_logs_each_step_once(tmp_path, tiny_model, sentiment):
    """A run that logged steps after its last usable checkpoint (30), then resumed: TensorBoard shows each step once
    (the lost steps replaced by the resumed run's), equal to metrics.jsonl. Stopped by SIGTERM once step 40 is
    logged, its own newest checkpoint then removed, so the event files end on whole records (as after SIGKILL at
    step 40, without the timing)."""
    out = tmp_path / "run"
    args = [str(a) for a in train_args(tiny_model, sentiment, out, "--max-steps", "60", "--report-to", "tensorboard",
                                       "--set", "train.log_every=1", "--set", "train.save_every=30")]
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-m", "ftkit", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while "step 40/60" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    (stopped,) = [p for p in (out / "checkpoints").glob("step-*") if p.name != "step-00000030"]
    shutil.rmtree(stopped)
    before = [step for step, _ in events(out / "tensorboard" / "run")["train/loss"]]
    assert before == list(range(1, int(stopped.name[5:]) + 1)) and len(before) >= 40, before
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "step-00000030" in result.output, result.output
    losses = events(out / "tensorboard" / "run")["train/loss"]
    steps = [step for step, _ in losses]
    assert steps == list(range(1, 61)), (steps, sorted((out / "tensorboard" / "run").iterdir()))  # each once
    assert dict(losses) == pytest.approx({r["step"]: r["loss"] for r in jsonl(out) if r["type"] == "train"})


def test_tracking_does_not_block_resume_with_other_trackers(tmp_path, tiny_model, sentiment):
    from ftkit import config
    from ftkit.commands.train import check_resumable

    out = tmp_path / "run"
    out.mkdir()
    cfg = config.build({"output": str(out)})
    config.dump_yaml(cfg, out / "ftkit.yaml")
    check_resumable(out, config.build({"output": str(out), "train": {"report_to": "tensorboard", "run_name": "x"}}))
    with pytest.raises(Exception, match="train.lr"):
        check_resumable(out, config.build({"output": str(out), "train": {"lr": 1.0}}))
