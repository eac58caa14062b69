"""Never lose a run: checkpoints, SIGKILL/SIGTERM then --resume equal to an uninterrupted run (exactly, on CPU),
damaged checkpoints skipped, a diverging loss stopped, and determinism of a repeated command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fail_at_evaluation, run_cli, train_args

# 10 epochs x 10 steps; evaluations (every 5 steps) and checkpoints (every 3) fall on different steps; LoRA dropout
# is on (0.1 by default), so the RNG states must be restored too
EXTRA = ("--epochs", "10", "--lr", "2e-2", "--set", "train.eval_every=5")


def args(tiny_model, sentiment, out, *more):
    return [str(a) for a in train_args(tiny_model, sentiment, out, *EXTRA, *more)]


@pytest.fixture(scope="module")
def reference(tiny_model, sentiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    result = run_cli(*args(tiny_model, sentiment, out))
    assert result.exit_code == 0, result.output
    return out


def interrupt(cli_args: list[str], log: Path, when: str, sig: int, gone: str | None = None) -> int:
    """Run `python -m ftkit` with ``cli_args``; send ``sig`` once RUN/checkpoints/``when`` (a glob) exists (and
    ``gone``, a glob, no longer does); return the exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "ftkit", *cli_args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    folder = Path(cli_args[cli_args.index("--output") + 1]) / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(folder.glob(when)) or (gone and any(folder.glob(gone))):
        assert proc.poll() is None, f"the run ended before {when} appeared"
        assert time.monotonic() < deadline, f"{folder / when} did not appear"
        time.sleep(0.005)
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock throughput."""
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    assert json.loads((a / "metrics.json").read_text())["eval"] == json.loads((b / "metrics.json").read_text())["eval"]
    assert records(a) == records(b)
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)  # bit for bit


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tiny_model, sentiment, tmp_path, reference):
    out = tmp_path / "run"
    cli_args = args(tiny_model, sentiment, out, "--set", "train.save_every=3")
    assert interrupt(cli_args, tmp_path / "log", "step-00000033", signal.SIGKILL) == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    assert not (out / "adapter_model.safetensors").exists()  # nothing that looks like a finished run

    refused = run_cli(*cli_args)  # the same command without --resume does not touch it
    assert refused.exit_code == 2 and "--resume to continue it" in refused.output

    result = run_cli(*cli_args, "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "step-000000" in result.output
    assert_same_run(reference, out)
    assert not (out / "checkpoints").exists()  # a finished run keeps only its best weights


def test_sigterm_checkpoints_and_exits_then_resumes(tiny_model, sentiment, tmp_path, reference):
    out = tmp_path / "run"
    cli_args = args(tiny_model, sentiment, out, "--set", "train.save_every=0")  # only on the signal
    assert interrupt(cli_args, tmp_path / "log", "best-step-*", signal.SIGTERM) == 128 + signal.SIGTERM
    log = (tmp_path / "log").read_text()
    assert "stopped: SIGTERM at step" in log and "plus --resume" in log
    steps = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert len(steps) == 1 and steps[0] in log

    result = run_cli(*cli_args, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_run(reference, out)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tiny_model, sentiment, tmp_path, reference):
    out = tmp_path / "run"
    cli_args = args(tiny_model, sentiment, out, "--set", "train.save_every=3")
    # killed once step 36 is written and step 30 pruned (not in between, when three are there for a moment)
    interrupt(cli_args, tmp_path / "log", "step-00000036", signal.SIGKILL, gone="step-00000030")
    kept = sorted((out / "checkpoints").glob("step-*"))
    assert len([p for p in kept if not p.name.endswith(".tmp")]) == 2  # train.keep_checkpoints
    newest = max(p for p in kept if not p.name.endswith(".tmp"))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk

    result = run_cli(*cli_args, "--resume")
    assert result.exit_code == 0, result.output
    assert f"warning: checkpoint {newest.name} is unreadable" in result.output
    assert_same_run(reference, out)


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model, sentiment, tmp_path,
                                                                           monkeypatch):
    import torch

    real, calls = torch.nn.functional.cross_entropy, {"n": 0}

    def poisoned(*a, **kw):  # the loss turns NaN from the 25th call on (training and evaluation alike)
        calls["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if calls["n"] >= 25 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    out = tmp_path / "run"
    result = run_cli(*args(tiny_model, sentiment, out, "--set", "train.save_every=4", "--set", "train.log_every=1"))
    assert result.exit_code == 1
    assert "became nan by step" in result.output and "the last good checkpoint is" in result.output
    kept = sorted((out / "checkpoints").glob("step-*"))
    assert kept and kept[-1].name in result.output
    assert not (out / "metrics.json").exists()


def test_resume_refusals(tiny_model, sentiment, tmp_path, reference):
    finished = run_cli(*args(tiny_model, sentiment, reference, "--resume"))
    assert finished.exit_code == 2 and "is a finished run" in finished.output

    both = run_cli(*args(tiny_model, sentiment, tmp_path / "x", "--resume", "--overwrite"))
    assert both.exit_code == 2 and "exclude each other" in both.output

    out = tmp_path / "run"
    out.mkdir()
    (out / "ftkit.yaml").write_text((reference / "ftkit.yaml").read_text())
    changed = run_cli(*args(tiny_model, sentiment, out, "--resume", "--seed", "7"))
    assert changed.exit_code == 2
    assert "--resume: train.seed is 7 here but 42 in" in changed.output and "ftkit.yaml --resume" in changed.output


def test_resume_without_a_checkpoint_starts_from_the_beginning(tiny_model, sentiment, tmp_path, reference):
    out = tmp_path / "fresh"
    result = run_cli(*args(tiny_model, sentiment, out, "--resume"))
    assert result.exit_code == 0, result.output
    assert_same_run(reference, out)


def test_the_same_command_twice_gives_identical_metrics(tiny_model, sentiment, tmp_path, reference):
    out = tmp_path / "again"
    assert run_cli(*args(tiny_model, sentiment, out)).exit_code == 0
    assert_same_run(reference, out)


def test_adalora_resumes_its_budget_allocation_exactly(tiny_model, sentiment, tmp_path, monkeypatch):
    """AdaLoRA keeps importance scores outside its weights; a resumed run must carry them on."""
    common = ["--method", "adalora", "--max-steps", "40", "--set", "train.eval_every=10",
              "--set", "method.tinit=4", "--set", "method.tfinal=8", "--set", "method.delta_t=2"]
    reference = tmp_path / "reference"
    assert run_cli(*args(tiny_model, sentiment, reference, *common)).exit_code == 0

    fail_at_evaluation(monkeypatch, 3)
    out = tmp_path / "run"
    assert run_cli(*args(tiny_model, sentiment, out, *common)).exit_code == 1
    monkeypatch.undo()
    assert (max((out / "checkpoints").glob("step-*")) / "method_state.pt").is_file()
    result = run_cli(*args(tiny_model, sentiment, out, *common, "--resume"))
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    assert_same_run(reference, out)
