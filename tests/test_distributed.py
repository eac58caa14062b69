"""Scale-out: a real 2-process CPU run (torchrun, gloo) equals a 1-process run with the same effective batch, only
the main process writes; the shipped Accelerate configs parse, and what bitsandbytes cannot do with them is refused
before anything loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, train_args

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "accelerate").glob("*.yaml"))


def test_two_cpu_processes_train_the_same_model_as_one_with_twice_the_accumulation(tiny_model, sentiment, tmp_path):
    from safetensors.torch import load_file

    common = ["--epochs", "4", "--lr", "1e-2", "--set", "method.dropout=0"]  # dropout streams differ per rank
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    two = tmp_path / "two"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "ftkit",
                           *map(str, train_args(tiny_model, sentiment, two, *common))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("held-out:") == 1  # one summary, from the main process
    one = tmp_path / "one"
    assert run_cli(*train_args(tiny_model, sentiment, one, *common, "--grad-accum", "2")).exit_code == 0

    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["train"]["processes"] == 2 and m1["train"]["processes"] == 1
    assert m2["train"]["steps"] == m1["train"]["steps"] == 20  # 160 rows / (16 x 2) x 4 epochs
    # the sampler's batches 2t and 2t+1 make step t in both runs: DDP's mean of two gradients = accumulation of two
    assert m2["eval"]["loss"] == pytest.approx(m1["eval"]["loss"], abs=1e-5)
    assert m2["eval"]["accuracy"] == m1["eval"]["accuracy"]
    assert m2["eval"]["confusion_matrix"]["matrix"] == m1["eval"]["confusion_matrix"]["matrix"]  # all 40 rows once
    w1, w2 = (load_file(d / "adapter_model.safetensors") for d in (one, two))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"eval"' in x]) == 4  # written by one process only


def test_packed_gen_batches_on_two_processes_equal_one_with_twice_the_accumulation(tiny_causal, copy_data,
                                                                                   tmp_path):
    """gen's padding-free batches (ftkit/data/packing.py) through DDP: each rank packs its own batch."""
    from safetensors.torch import load_file

    common = ["--task", "gen", "--max-steps", "4", "--set", "method.dropout=0"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    two = tmp_path / "two"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "ftkit",
                           *map(str, train_args(tiny_causal, copy_data, two, *common))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "padding-free batches" in proc.stdout + proc.stderr
    one = tmp_path / "one"
    assert run_cli(*train_args(tiny_causal, copy_data, one, *common, "--grad-accum", "2")).exit_code == 0
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["train"]["processes"] == 2
    assert m2["eval"]["loss"] == pytest.approx(m1["eval"]["loss"], abs=1e-5)
    assert m2["eval"]["tokens"] == m1["eval"]["tokens"]  # every held-out row scored once
    w1, w2 = (load_file(d / "adapter_model.safetensors") for d in (one, two))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5


def test_ranks_that_disagree_fail_the_run(monkeypatch):
    import torch

    import accelerate.utils
    from ftkit.training import distributed

    model = torch.nn.Linear(2, 2)
    other = torch.nn.Linear(2, 2)
    assert distributed.weights_digest(model) != distributed.weights_digest(other)
    monkeypatch.setattr(accelerate.utils, "gather_object",
                        lambda xs: xs + [distributed.weights_digest(other)])

    class TwoRanks:
        num_processes = 2

    with pytest.raises(RuntimeError, match="different weights"):
        distributed.check_ranks_agree(TwoRanks(), model)


def launcher_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives each process (Accelerate's own code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "ftkit", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_shipped_accelerate_configs():
    assert {c.stem for c in CONFIGS} == {"multi-gpu", "fsdp", "fsdp-cpu", "deepspeed-zero2", "deepspeed-zero3"}
    envs = {c.stem: launcher_env(c) for c in CONFIGS}
    assert envs["fsdp"]["ACCELERATE_USE_FSDP"] == envs["fsdp-cpu"]["ACCELERATE_USE_FSDP"] == "true"
    assert envs["fsdp"]["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert envs["fsdp-cpu"]["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert envs["deepspeed-zero2"]["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert envs["deepspeed-zero3"]["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    for env in envs.values():  # ftkit's flags decide these, not the launcher config
        assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
        assert env.get("ACCELERATE_MIXED_PRECISION", "no") == "no"


@pytest.mark.parametrize("config, quant, expected", [
    ("fsdp", "8bit", "--quant 8bit with FSDP: bitsandbytes 8bit weights cannot be sharded"),
    ("fsdp", "4bit", "--quant 4bit with FSDP"),
    ("deepspeed-zero3", "8bit", "--quant 8bit with DeepSpeed ZeRO-3"),
    ("deepspeed-zero2", "none", "DeepSpeed, which is not installed: pip install deepspeed"),
    pytest.param("deepspeed-zero2", "installed", "DeepSpeed on CPU: Accelerate applies a DeepSpeed config only on",
                 marks=pytest.mark.skipif("__import__('torch').cuda.is_available()")),
    pytest.param("fsdp", "none", "FSDP on CPU with RAM-efficient loading", marks=pytest.mark.skipif(
        "__import__('torch').cuda.is_available()")),
])
def test_unsupported_scale_out_is_refused_before_loading(config, quant, expected, tiny_model, sentiment, tmp_path,
                                                         monkeypatch):
    import importlib.util

    if quant == "installed":  # as if deepspeed were installed
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else
                            real(name, *a))
        quant = "none"
    elif config == "deepspeed-zero2" and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    for key, value in launcher_env(ROOT / "accelerate" / f"{config}.yaml").items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is joined
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--quant", quant))
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not out.exists()


def test_without_a_launcher_one_process_trains(monkeypatch):
    from ftkit.training import distributed

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.engine() == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.engine() == "ddp"
