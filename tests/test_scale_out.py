"""Beyond one process on one machine, for real on CPU (gloo): two torchrun launches acting as two nodes (c10d
rendezvous, one process each), a node that dies or hangs, a run resumed on another number of processes, and FSDP
through Accelerate (accelerate/fsdp-cpu.yaml). Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, train_args

ROOT = Path(__file__).resolve().parent.parent
# 4 epochs of 160 rows in batches of 16: 20 optimizer steps of 32 rows; no dropout (each rank draws its own stream)
BASE = ("--epochs", "4", "--lr", "1e-2", "--set", "train.save_every=3")
COMMON = (*BASE, "--set", "method.dropout=0")  # LoRA's dropout (the tiny model has none of its own)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(rank: int, port: int, args: list, log: Path) -> subprocess.Popen:
    """One "node": torchrun with one process."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return subprocess.Popen([torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ftkit",
                             "--rdzv-conf", f"is_host={int(rank == 0)}", "--max-restarts", "0",
                             "-m", "ftkit", *map(str, args)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def signal_node(p: subprocess.Popen, sig: int) -> None:
    for pid in tree(p.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_all(*procs: subprocess.Popen) -> None:
    for p in procs:
        signal_node(p, signal.SIGCONT)
        signal_node(p, signal.SIGKILL)
        p.wait(timeout=30)


def wait_for(path_glob: Path, procs, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not list(path_glob.parent.glob(path_glob.name)):
        assert all(p.poll() is None for p in procs), "a node ended before " + path_glob.name
        assert time.monotonic() < deadline, f"{path_glob} did not appear"
        time.sleep(0.02)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def lose_second_node(args: list, tmp_path: Path, checkpoint: str, sig: int) -> tuple[int, float, str]:
    """Two nodes train; once ``checkpoint`` is written, ``sig`` goes to the second node's processes. -> the first
    node's exit status, the seconds it took to end after that, its log."""
    out = Path(args[args.index("--output") + 1])
    port = free_port()
    nodes = [node(r, port, args, tmp_path / f"node{r}.log") for r in (0, 1)]
    try:
        wait_for(out / "checkpoints" / checkpoint, nodes)
        signal_node(nodes[1], sig)
        start = time.monotonic()
        code = nodes[0].wait(timeout=120)
        took = time.monotonic() - start
    finally:
        stop_all(*nodes)
    return code, took, (tmp_path / "node0.log").read_text()


@pytest.fixture(scope="module")
def one_process(tiny_model, sentiment, tmp_path_factory) -> Path:
    """The reference: one process accumulating two batches per step (= two processes with one each)."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert run_cli(*train_args(tiny_model, sentiment, out, *COMMON, "--grad-accum", "2")).exit_code == 0
    return out


def test_two_nodes_train_the_same_model_as_one_process(tiny_model, sentiment, one_process, tmp_path):
    out, port = tmp_path / "run", free_port()
    args = train_args(tiny_model, sentiment, out, *COMMON)
    nodes = [node(r, port, args, tmp_path / f"node{r}.log") for r in (0, 1)]
    try:
        codes = [p.wait(timeout=240) for p in nodes]
    finally:
        stop_all(*nodes)
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs
    assert logs[0].count("held-out:") == 1 and "held-out:" not in logs[1]  # one summary: the global main process
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one_process, out))
    assert m2["train"]["processes"] == 2 and m2["train"]["steps"] == m1["train"]["steps"] == 20
    assert m2["eval"]["loss"] == pytest.approx(m1["eval"]["loss"], abs=1e-5)
    assert max_diff(weights(one_process), weights(out)) <= 1e-5


def test_a_dead_node_stops_the_other_then_the_run_resumes_on_one_process(tiny_model, sentiment, one_process,
                                                                         tmp_path):
    out = tmp_path / "run"
    code, took, log = lose_second_node(train_args(tiny_model, sentiment, out, *COMMON), tmp_path,
                                       "step-00000006", signal.SIGKILL)  # two checkpoints in: the node dies
    assert code != 0 and took < 60, log
    lines = [line for line in log.splitlines() if line.startswith("stopped: lost contact with another process")]
    assert len(lines) == 1 and "--resume" in lines[0], log
    assert not (out / "metrics.json").exists()
    # on one process: the same samples per step needs twice the accumulation; without it, a refusal that says so
    refused = run_cli(*train_args(tiny_model, sentiment, out, *COMMON), "--resume")
    assert refused.exit_code == 2 and "--grad-accum 2" in refused.output, refused.output
    resumed = run_cli(*train_args(tiny_model, sentiment, out, *COMMON, "--grad-accum", "2"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output, resumed.output
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one_process, out))
    assert m2["train"]["steps"] == 20 and m2["eval"]["loss"] == pytest.approx(m1["eval"]["loss"], abs=1e-5)
    assert max_diff(weights(one_process), weights(out)) <= 1e-5


def test_a_hung_node_fails_the_run_after_the_collective_timeout(tiny_model, sentiment, tmp_path):
    """SIGSTOP keeps the connection open: only the timeout (train.collective_timeout) can end the wait."""
    args = train_args(tiny_model, sentiment, tmp_path / "run", *COMMON, "--set", "train.collective_timeout=10")
    code, took, log = lose_second_node(args, tmp_path, "step-00000003", signal.SIGSTOP)
    assert code != 0 and 5 < took < 60, (took, log)
    assert "stopped: lost contact with another process" in log and "train.collective_timeout" in log, log


def test_a_two_process_run_stopped_by_sigterm_resumes_on_two_processes(tiny_model, sentiment, one_process, tmp_path):
    """Each process's checkpoint part (the trainable weights once, every rank's RNG states) reads back under DDP."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    out = tmp_path / "run"
    command = [torchrun, "--nproc-per-node", "2", "-m", "ftkit", *map(str, train_args(tiny_model, sentiment, out,
                                                                                       *COMMON))]
    proc = subprocess.Popen(command, stdout=(tmp_path / "log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(out / "checkpoints" / "step-00000006", [proc])
        signal_node(proc, signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
    finally:
        stop_all(proc)
    assert "checkpoint saved" in (tmp_path / "log").read_text()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stderr and "unreadable" not in resumed.stderr
    assert max_diff(weights(one_process), weights(out)) <= 1e-5


def accelerate_launch(config: str, processes: int, args: list) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate" / config),
            "--num_processes", str(processes), "-m", "ftkit", *map(str, args)]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_trains_the_model_of_one_process(method, tiny_model, sentiment, tmp_path):
    out = tmp_path / "fsdp"
    common = (*BASE, "--method", "full") if method == "full" else (*COMMON, "--method", "lora")
    proc = subprocess.run(accelerate_launch("fsdp-cpu.yaml", 2, train_args(tiny_model, sentiment, out, *common)),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = tmp_path / "one"
    assert run_cli(*train_args(tiny_model, sentiment, one, *common, "--grad-accum", "2")).exit_code == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, out))
    assert m2["train"]["processes"] == 2 and m2["eval"]["loss"] == pytest.approx(m1["eval"]["loss"], abs=1e-5)
    # the run dir is an ordinary one: the full weights (or the adapter) gathered on the main process
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    # attention key biases get no gradient in exact arithmetic (softmax ignores a shift shared by all keys): Adam
    # turns their rounding noise into full-size steps, a different walk in any two runs, DDP's as well
    w1, w2 = ({k: v for k, v in load_file(d / name).items() if not k.endswith("key.bias")} for d in (one, out))
    assert max_diff(w1, w2) <= 1e-5
    result = run_cli("eval", out, "--data", sentiment["eval"])
    assert result.exit_code == 0 and f"accuracy {m2['eval']['accuracy']:.4f}" in result.output, result.output
    assert run_cli("predict", out, "--text", "a great film").exit_code == 0
    assert run_cli("export", out, "--output", tmp_path / "exported").exit_code == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_gen_trains_the_model_of_one_process(method, tiny_causal, copy_data, tmp_path):
    common = ("--task", "gen", "--max-steps", "4", "--method", method,
              *(("--set", "method.dropout=0") if method == "lora" else ()))
    out, one = tmp_path / "fsdp", tmp_path / "one"
    proc = subprocess.run(accelerate_launch("fsdp-cpu.yaml", 2, train_args(tiny_causal, copy_data, out, *common)),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_cli(*train_args(tiny_causal, copy_data, one, *common, "--grad-accum", "2")).exit_code == 0
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert max_diff(load_file(one / name), load_file(out / name)) <= 1e-5


def test_a_killed_fsdp_run_resumes_sharded_on_two_processes_or_one(tiny_model, sentiment, one_process, tmp_path):
    """SIGKILL (no chance to save): the sharded checkpoints written so far are whole (written under .tmp, renamed);
    the run resumes from the newest on two FSDP processes, or on one with twice the accumulation."""
    for processes, extra in ((2, ()), (1, ("--grad-accum", "2"))):
        out = tmp_path / f"resumed-on-{processes}"
        args = train_args(tiny_model, sentiment, out, *COMMON)
        proc = subprocess.Popen(accelerate_launch("fsdp-cpu.yaml", 2, args), stdout=(tmp_path / "log").open("w"),
                                stderr=subprocess.STDOUT)
        try:
            wait_for(out / "checkpoints" / "step-00000009", [proc])
            signal_node(proc, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            stop_all(proc)
        assert not (out / "metrics.json").exists()
        # not without FSDP: the checkpoint is sharded
        refused = run_cli(*train_args(tiny_model, sentiment, out, *COMMON, *extra), "--resume")
        assert refused.exit_code == 2 and "sharded by FSDP" in refused.output, refused.output
        resumed = subprocess.run(accelerate_launch("fsdp-cpu.yaml", processes, [*train_args(
            tiny_model, sentiment, out, *COMMON, *extra), "--resume"]), capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resumed from" in resumed.stderr and "unreadable" not in resumed.stderr
        assert max_diff(weights(one_process), weights(out)) <= 1e-5
