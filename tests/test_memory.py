"""The training-memory estimate (`ftkit info`, `--dry-run`): its parts behave, and on the real built-in models it is
within 25% of the peak memory a training process actually reaches."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli


def info(model, *args) -> dict:
    result = run_cli("info", model, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_estimate_scales_with_batch_length_and_checkpointing(tiny_model):
    base = info(tiny_model, "--batch-size", "8", "--max-length", "32")
    assert base["estimated_peak_bytes"] == (base["weights_bytes"] + base["training_state_bytes"]
                                            + base["activations_bytes"])
    double = info(tiny_model, "--batch-size", "16", "--max-length", "32")
    assert double["activations_bytes"] == pytest.approx(2 * base["activations_bytes"], rel=0.05)
    longer = info(tiny_model, "--batch-size", "8", "--max-length", "64")
    assert longer["activations_bytes"] > 1.8 * base["activations_bytes"]  # attention grows faster than length
    ckpt = info(tiny_model, "--batch-size", "8", "--max-length", "32", "--gradient-checkpointing")
    assert ckpt["gradient_checkpointing"] and ckpt["activations_bytes"] < base["activations_bytes"]
    full = info(tiny_model, "--batch-size", "8", "--max-length", "32", "--method", "full")
    assert full["training_state_bytes"] == 12 * full["total_params"]
    int8 = info(tiny_model, "--batch-size", "8", "--max-length", "32", "--quant", "8bit")
    assert int8["weights_bytes"] < base["weights_bytes"] and int8["gradient_checkpointing"]


def test_info_table_and_dry_run_show_the_estimate(tiny_model, sentiment, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    result = run_cli("info", tiny_model, "--batch-size", "8", "--max-length", "32")
    assert result.exit_code == 0, result.output
    assert "activations (batch 8 x 32 tokens, fp32)" in result.output and "estimated peak" in result.output
    result = run_cli("train", "--model", tiny_model, "--data", sentiment["train"], "--dry-run", "--batch-size", "4",
                     "--max-length", "16")
    assert result.exit_code == 0, result.output
    assert "activations (batch 4 x 16 tokens" in result.output


def _rss_anon_mib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024


CPU_ONLY = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="about CPU kernels; runs go to CUDA")


@CPU_ONLY
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from Linux /proc")
def test_variable_length_batches_do_not_pile_up_onednn_kernels():
    """oneDNN compiles and keeps a GELU kernel per input shape (a feed-forward block over 68 lengths: +170 MiB
    resident with it, +30 MiB without); under cpu_kernels PyTorch's own kernel runs. Widths no other test uses, so
    no shape is already cached in this process."""
    import torch

    from ftkit.modeling.loading import cpu_kernels

    block = torch.nn.Sequential(torch.nn.Linear(96, 1000), torch.nn.GELU(), torch.nn.Linear(1000, 96))
    before = _rss_anon_mib()
    with cpu_kernels(block):
        for length in range(3, 71):
            block(torch.randn(16, length, 96, requires_grad=True)).sum().backward()
    assert _rss_anon_mib() - before < 90


@CPU_ONLY
def test_cpu_kernels_in_training_eval_and_predict_fp32_only(tiny_model, sentiment, tmp_path):
    import torch

    from ftkit.modeling.loading import cpu_kernels

    quantized = torch.nn.Linear(4, 4)
    quantized.weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    with cpu_kernels(quantized):
        assert torch.backends.mkldnn.enabled
    with cpu_kernels(torch.nn.Linear(4, 4), "bf16"):  # bf16 matrix multiplications run in oneDNN
        assert torch.backends.mkldnn.enabled

    seen = set()  # the flag at every forward pass of every module a command runs

    def flag_at_forward(*_):
        seen.add(torch.backends.mkldnn.enabled)

    def forwards(*args) -> set:
        seen.clear()
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        return set(seen)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(flag_at_forward)
    try:
        run = tmp_path / "fp32"
        assert forwards("train", "--model", tiny_model, "--data", sentiment["train"], "--output", run,
                        "--max-steps", "2") == {False}
        assert forwards("eval", run, "--data", sentiment["eval"]) == {False}
        assert forwards("predict", run, "--text", "a fine film") == {False}
        assert forwards("train", "--model", tiny_model, "--data", sentiment["train"], "--output", tmp_path / "bf16",
                        "--precision", "bf16", "--max-steps", "2") == {True}
    finally:
        hook.remove()
    assert torch.backends.mkldnn.enabled  # restored after each command


# Peak memory of a training process: the bytes malloc hands out (live; glibc keeps freed pieces mapped, so resident
# memory runs higher and keeps creeping over a run: 2.0-2.6 GB vs a steady 1.05 GB live for minilm LoRA batch 32)
# sampled after every PyTorch op, plus the weight files' pages safetensors maps in; both over the level after
# imports.
PEAK = """
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
def live():
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd
def file_pages():
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
import torch, transformers, peft, accelerate, ftkit.cli.app, ftkit.commands.train, ftkit.training.loop
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner
class Peak(TorchDispatchMode):
    peak = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        Peak.peak = max(Peak.peak, live())
        return out
base, base_files = live(), file_pages()
with Peak():
    result = CliRunner().invoke(ftkit.cli.app.app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(json.dumps({"peak_bytes": Peak.peak - base + file_pages() - base_files}))
"""


def long_rows(task: str, n: int = 96) -> list[dict]:
    """Rows longer than max_length, so every batch is full width (the estimate's case)."""
    rng = random.Random(0)
    words = "the film was a long story about people who never quite knew what they wanted from life".split()

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    if task == "gen":
        return [{"prompt": text(20), "response": text(150)} for _ in range(n)]
    return [{"text": text(200), "label": rng.choice(["pos", "neg"])} for _ in range(n)]


@pytest.mark.real
@pytest.mark.skipif(not Path("/proc/self/status").exists() or not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
                    reason="measures through glibc's mallinfo2 and Linux /proc")
@pytest.mark.parametrize("model, task, method, batch", [
    ("minilm", "cls", "lora", 32), ("minilm", "cls", "full", 16), ("smollm2-135m", "gen", "lora", 8)])
def test_estimate_is_within_25_percent_of_the_measured_peak(tmp_path, model, task, method, batch):
    """The estimate models padded rows, scored at every position; a gen run's default padding-free batches (shared
    prompt prefix, logits only where scored) need less, so for them it is an upper bound."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in long_rows(task)), encoding="utf-8")
    args = ["train", "--model", model, "--task", task, "--method", method, "--data", str(data), "--batch-size",
            str(batch), "--max-length", "128", "--max-steps", "3", "--output", str(tmp_path / "run"), "--overwrite",
            "--quiet"]

    def measured(*extra: str) -> int:
        return json.loads(subprocess.run([sys.executable, "-c", PEAK, *args, *extra], capture_output=True, text=True,
                                         check=True, env=os.environ).stdout)["peak_bytes"]

    estimate = info(model, "--task", task, "--method", method, "--batch-size", str(batch), "--max-length", "128")
    padded = measured("--set", "task.padding_free=false") if task == "gen" else measured()
    assert 0.75 <= estimate["estimated_peak_bytes"] / padded <= 1.25, (estimate, padded)
    if task == "gen":
        packed = measured()
        assert packed <= estimate["estimated_peak_bytes"], (estimate, packed)
