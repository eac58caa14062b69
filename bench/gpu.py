"""The GPU checks of issue 23, as one prepared run: every CUDA path ftkit has, each a pass/fail with its numbers.

    bash bench/gpu.sh run OUT                 # on the GPU machine (see bench/gpu.sh for the wheels it installs)
    .venv/bin/python bench/gpu.py OUT --device cpu     # the same checks on CPU, on the tiny models (a smoke run)

Writes OUT/results.json (one record per check), OUT/results.md (the table for bench/GPU.md) and OUT/logs.txt (every
command with its output); models, data and runs go to --work (default: a temporary folder). Models are built here
from configs with random weights: the tiny test models (tests/conftest.py), SmolLM2-135M's shape and a
Llama-3.2-1B shape (speed and memory do not depend on the weights' values); their tokenizers are word-level over
generated words, one token per word, so row lengths are exact. On CPU, the gen checks use the tiny Llama and the
CUDA-only paths (fp16, 4-bit training) must be refused with exit 2 — that refusal is what passes there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(HERE)]

# SmolLM2-135M's config (HuggingFaceTB/SmolLM2-135M) and Llama-3.2-1B's (meta-llama/Llama-3.2-1B), as published
SMOL = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=True)
MEMORY_TOLERANCE = 0.25  # the issue's goal: measured peak within 25% of `ftkit info`'s estimate
# export --merge merges the adapter into the base's original (unquantized) weights: it must equal that base with the
# adapter applied up to float rounding, and the quantized run it came from up to the base's quantization error
MERGE_EXACT = 1e-3  # largest |logit difference| / logit std, merged vs full-precision base + adapter
MERGE_AGREEMENT = 0.95  # share of positions where merged and quantized run pick the same top token


class Harness:
    def __init__(self, out: Path, work: Path, device: str):
        self.out, self.work, self.device, self.cuda = out, work, device, device == "cuda"
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.log = (out / "logs.txt").open("a", encoding="utf-8")
        self.results: list[dict] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "FTKIT_CACHE": str(self.work / "cache")}
        if not self.cuda:
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def command(self, *args, timeout: float = 420, python: tuple = ("-m", "ftkit")) -> tuple[int, str]:
        """Run ``python -m ftkit ARGS`` (or another module); its output goes to logs.txt and is returned."""
        cmd = [sys.executable, *python, *map(str, args)]
        start = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
            rc, output = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, output = 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s"
        self.log.write(f"\n$ {' '.join(cmd)}\n{output}\n[exit {rc}, {time.perf_counter() - start:.1f} s]\n")
        self.log.flush()
        return rc, output

    def check(self, name: str, fn, *args) -> dict:
        """Run one check: ``fn`` returns its numbers and raises ``Failed`` (or anything) when it fails."""
        start = time.perf_counter()
        try:
            numbers, status = fn(*args) or {}, "pass"
            if numbers.pop("skipped", None):
                status = "skip"
        except Failed as e:
            numbers, status = {"why": str(e)}, "fail"
        except Exception as e:  # a bug in the check or an unexpected library error: recorded, the rest still run
            numbers, status = {"why": f"{type(e).__name__}: {e}"}, "fail"
        record = {"check": name, "status": status, "seconds": round(time.perf_counter() - start, 1), **numbers}
        self.results.append(record)
        print(json.dumps(record), flush=True)
        self.write()
        return record

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps({"environment": environment(self.cuda),
                                                           "results": self.results}, indent=2))
        (self.out / "results.md").write_text(render(self.results, environment(self.cuda)))


class Failed(Exception):
    pass


def require(condition: bool, why: str) -> None:
    if not condition:
        raise Failed(why)


def environment(cuda: bool) -> dict:
    import torch
    import transformers

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("peft", "accelerate", "bitsandbytes"):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:  # bitsandbytes may be missing or fail to load its library
            env[name] = f"unavailable ({type(e).__name__})"
    env["device"] = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else "cpu"
    return env


def render(results: list[dict], env: dict) -> str:
    lines = ["| check | status | numbers |", "|---|---|---|"]
    for r in results:
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in ("check", "status"))
        lines.append(f"| {r['check']} | {r['status']} | {numbers} |")
    return "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n\n" + "\n".join(lines) + "\n"


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---- models and data -------------------------------------------------------------------------------------------

def word_tokenizer(n_words: int):
    """A chat-template tokenizer whose words w0..wN are one token each (tests/conftest.py's builder)."""
    from conftest import _wordpiece_tokenizer

    tok = _wordpiece_tokenizer([f"w{i}" for i in range(n_words)] + ["user", "assistant"], causal=True)
    tok.model_max_length = 8192
    return tok


def llama_like(out: Path, shape: dict, cuda: bool) -> Path:
    """A Llama-architecture model of ``shape`` with random weights (built on the GPU when there is one: fast)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tok = word_tokenizer(4000)
    tok.save_pretrained(out)
    config = LlamaConfig(**shape, max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    del model
    return out


def copy_task_rows(n: int, words: int, seed: int) -> list[dict]:
    """prompt: ``words`` random words; response: the same words again (learnable: loss falls from random init)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = " ".join(f"w{rng.randrange(4000)}" for _ in range(words))
        rows.append({"prompt": text, "response": text})
    return rows


def build(h: Harness) -> dict:
    from conftest import build_tiny_bert, build_tiny_llama, copy_rows, ner_rows, sentiment_rows, write_rows

    m, d = h.work / "models", h.work / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("tiny-bert", "tiny-llama"):
        (m / name).mkdir(parents=True, exist_ok=True)
    paths = {"bert": build_tiny_bert(m / "tiny-bert"), "tiny-llama": build_tiny_llama(m / "tiny-llama"),
             "cls": (write_rows(d / "cls-train.csv", sentiment_rows(320, 1)), write_rows(d / "cls-eval.csv",
                                                                                       sentiment_rows(64, 2))),
             "tag": (write_rows(d / "tag-train.jsonl", ner_rows(320, 1)), write_rows(d / "tag-eval.jsonl",
                                                                                     ner_rows(64, 2))),
             "gen": (write_rows(d / "gen-train.jsonl", copy_rows(320, 1)), write_rows(d / "gen-eval.jsonl",
                                                                                      copy_rows(32, 2)))}
    if h.cuda:
        paths["smol"] = llama_like(m / "smol", SMOL, True)
        paths["1b"] = llama_like(m / "llama-1b", LLAMA_1B, True)
        paths["copy"] = (write_rows(d / "copy-train.jsonl", copy_task_rows(512, 120, 1)),
                         write_rows(d / "copy-eval.jsonl", copy_task_rows(32, 120, 2)))
        paths["long"] = (write_rows(d / "long-train.jsonl", copy_task_rows(960, 250, 3)),
                         write_rows(d / "long-eval.jsonl", copy_task_rows(32, 250, 4)))
    else:  # the smoke run: the same checks on the tiny Llama
        paths["smol"] = paths["1b"] = paths["tiny-llama"]
        paths["copy"] = paths["long"] = paths["gen"]
    return paths


# ---- the checks ------------------------------------------------------------------------------------------------

def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("type") == "train"]


def loss_falls(run: Path) -> dict:
    values = losses(run)
    require(len(values) >= 4, f"{len(values)} training losses logged")
    k = max(1, len(values) // 4)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    require(all(math.isfinite(v) for v in values), "a non-finite training loss")
    require(last < first, f"the loss did not fall: {first:.4f} -> {last:.4f}")
    return {"loss_first": round(first, 4), "loss_last": round(last, 4)}


def summary(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def train(h: Harness, name: str, task: str, model, data, *extra, expect: int = 0) -> tuple[Path, str]:
    run = h.work / "runs" / name
    rc, output = h.command("train", "--task", task, "--method", "lora", "--model", model, "--data", data[0],
                           "--eval-data", data[1], "--output", run, "--overwrite", "--set", "train.log_every=1",
                           *extra)
    require(rc == expect, f"exit {rc}, expected {expect}: {output.strip().splitlines()[-1] if output.strip() else ''}")
    return run, output


TINY = ("--batch-size", "16", "--max-length", "32", "--lr", "5e-3", "--epochs", "2")


def lora(h: Harness, paths: dict, task: str, precision: str, *extra) -> dict:
    model = paths["bert" if task in ("cls", "tag") else "tiny-llama"]
    if precision == "fp16" and not h.cuda:
        _, output = train(h, f"{task}-fp16", task, model, paths[task], *TINY, "--precision", "fp16", expect=2)
        return {"refused_on_cpu": output.strip().splitlines()[-1]}
    run, _ = train(h, f"{task}-{precision}{'-ckpt' if extra else ''}", task, model, paths[task], *TINY,
                   "--precision", precision, *extra)
    s = summary(run)
    return {**loss_falls(run), s["main_metric"]: round(s["eval"][s["main_metric"]], 4)}


def memory(h: Harness, paths: dict, precision: str, quant: str = "none", checkpointing: bool = False) -> dict:
    """SmolLM2-shaped gen LoRA: trains, loss falls, and the measured peak vs `ftkit info`'s estimate."""
    # peft's default targets (q, v), as these checks were written and recorded with: gen's default since the ninth
    # session, all linear layers, leaves the random tiny model's top-token margins ~3x smaller (median 0.07 of the
    # logits' std against 0.24), so the 8-bit base's rounding flips a quarter of them in the merge check (0.75 agreement
    # against 0.986; the merge itself stays exact, 3e-6). `same`: the run and its `ftkit info` estimate alike
    same = ["--batch-size", "8", "--max-length", "256" if h.cuda else "64", "--set", "method.target_modules=null"]
    extra = [*same, "--lr", "1e-3", "--max-steps", "40", "--precision", precision, "--quant", quant]
    extra += ["--gradient-checkpointing"] if checkpointing else []
    name = f"smol-{precision}-{quant}{'-ckpt' if checkpointing else ''}"
    if quant == "4bit" and not h.cuda:
        _, output = train(h, name, "gen", paths["smol"], paths["copy"], *extra, expect=2)
        return {"refused_on_cpu": output.strip().splitlines()[-1]}
    run, _ = train(h, name, "gen", paths["smol"], paths["copy"], *extra)
    numbers = {**loss_falls(run), "perplexity": round(summary(run)["eval"]["perplexity"], 3)}
    peak = summary(run)["train"].get("peak_gpu_bytes")
    rc, output = h.command("info", paths["smol"], "--task", "gen", "--method", "lora", "--quant", quant, *same,
                           *(["--gradient-checkpointing"] if checkpointing else []),
                           "--set", f"train.precision={precision}", "--json")
    require(rc == 0, f"ftkit info: exit {rc}")
    estimate = json.loads(output[output.index("{"):])["estimated_peak_bytes"]
    numbers["estimate_mib"] = round(estimate / 2**20)
    if peak is None:
        return numbers
    numbers |= {"peak_mib": round(peak / 2**20), "peak_over_estimate": round(peak / estimate, 3)}
    require(abs(peak / estimate - 1) <= MEMORY_TOLERANCE,
            f"peak {peak / 2**20:.0f} MiB vs estimate {estimate / 2**20:.0f} MiB: off by more than 25%")
    return numbers


def quantized_cls(h: Harness, paths: dict) -> dict:
    """8-bit LoRA on the tiny BERT: trains, the classifier head stays full precision, eval and predict load it."""
    from safetensors import safe_open

    run, _ = train(h, "cls-8bit", "cls", paths["bert"], paths["cls"], *TINY, "--quant", "8bit")
    numbers = loss_falls(run)
    with safe_open(run / "adapter_model.safetensors", "pt") as f:
        head = {k: f.get_tensor(k).dtype for k in f.keys() if "classifier" in k}
    require(head and all(str(t) == "torch.float32" for t in head.values()), f"classifier tensors saved as {head}")
    rc, _ = h.command("eval", run, "--data", paths["cls"][1], "--output", run / "eval.json")
    require(rc == 0, f"ftkit eval on the 8-bit run: exit {rc}")
    accuracy = json.loads((run / "eval.json").read_text()).get("accuracy")
    best = summary(run)["eval"]["accuracy"]
    require(accuracy is not None and abs(accuracy - best) <= 0.05,
            f"eval accuracy {accuracy} vs {best} at the end of training")
    rc, output = h.command("predict", run, "--text", "a great film", "--text", "an awful plot")
    require(rc == 0 and output.count('"label"') == 2, f"ftkit predict on the 8-bit run: exit {rc}")
    return numbers | {"head_dtype": "float32", "eval_accuracy": accuracy, "train_best_accuracy": best}


def merged_equals_adapter(h: Harness, paths: dict, quant: str) -> dict:
    """export --merge of a quantized gen run (dequantized, merged) against the run itself (quantized + adapter)."""
    run = h.work / "runs" / f"smol-bf16-{quant}"
    if quant == "4bit" and not h.cuda:
        return {"skipped": True, "why": "no 4-bit run on CPU"}
    require((run / "metrics.json").is_file(), f"{run.name} did not finish (its check failed)")
    merged = h.work / "runs" / f"{run.name}-merged"
    if merged.exists():
        import shutil

        shutil.rmtree(merged)
    rc, _ = h.command("export", run, "--merge", "--output", merged)
    require(rc == 0, f"ftkit export --merge: exit {rc}")
    rc, output = h.command(run, merged, paths["copy"][1], python=(str(Path(__file__)), "--compare-logits"))
    require(rc == 0 and "{" in output, f"the comparison failed: exit {rc}")
    numbers = json.loads(output[output.rindex("{"):])
    require(numbers["merge_diff_over_std"] <= MERGE_EXACT,
            f"merged vs base + adapter: {numbers['merge_diff_over_std']:.3g} of the logits' std")
    require(numbers["top1_agreement_with_quantized"] >= MERGE_AGREEMENT,
            f"the merged model's top token agrees with the quantized run's at "
            f"{numbers['top1_agreement_with_quantized']:.3f} of positions")
    return numbers


def compare_logits(run: str, merged: str, data: str) -> None:
    """(in a subprocess) next-token logits on the eval rows of: the merged export, the run as trained (quantized base
    + adapter) and the run's adapter on its full-precision base (unmerged)."""
    import torch

    from ftkit.rundir.runs import load_trained

    rows = [json.loads(line) for line in Path(data).read_text().splitlines()][:16]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {"merged": load_trained(merged), "quantized": load_trained(run),
              "unmerged": load_trained(run, quant="none")}
    for name in ("merged", "unmerged"):
        models[name].model.to(device)
    stats = {"merge": [], "quant": [], "agree": 0, "total": 0}
    with torch.no_grad():
        for r in rows:
            ids = models["merged"].tokenizer(r["prompt"] + " " + r["response"], return_tensors="pt").input_ids[:, :256]
            out = {k: m.model(input_ids=ids.to(m.model.device)).logits.float().cpu() for k, m in models.items()}
            scale = out["merged"].std()
            stats["merge"].append(((out["merged"] - out["unmerged"]).abs().max() / scale).item())
            stats["quant"].append(((out["merged"] - out["quantized"]).abs().max() / scale).item())
            stats["agree"] += (out["merged"].argmax(-1) == out["quantized"].argmax(-1)).sum().item()
            stats["total"] += ids.numel()
    print(json.dumps({"merge_diff_over_std": round(max(stats["merge"]), 6), "quantized_diff_over_std":
                      round(max(stats["quant"]), 4), "top1_agreement_with_quantized":
                      round(stats["agree"] / stats["total"], 4), "positions": stats["total"]}))


def resume_equals_uninterrupted(h: Harness, paths: dict) -> dict:
    """SIGTERM mid-run, then --resume: the final adapter against an uninterrupted run's."""
    import torch
    from safetensors.torch import load_file

    extra = [*TINY, "--epochs", "6", "--set", "train.eval_every=10", "--set", "train.save_every=7"]
    whole, _ = train(h, "resume-whole", "cls", paths["bert"], paths["cls"], *extra)
    run = h.work / "runs" / "resume-cut"
    args = ["train", "--task", "cls", "--method", "lora", "--model", paths["bert"], "--data", paths["cls"][0],
            "--eval-data", paths["cls"][1], "--output", run, *extra]
    h.log.write(f"\n$ python -m ftkit {' '.join(map(str, args))} --overwrite  (SIGTERM after a checkpoint)\n")
    h.log.flush()
    proc = subprocess.Popen([sys.executable, "-m", "ftkit", *map(str, args), "--overwrite"], env=h.env,
                            stdout=h.log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not any((run / "checkpoints").glob("step-*")):  # the first periodic checkpoint, then the signal
        require(proc.poll() is None, f"the run ended (exit {proc.returncode}) before a checkpoint")
        require(time.monotonic() < deadline, "no checkpoint after 300 s")
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    require(rc == 128 + signal.SIGTERM, f"SIGTERM: exit {rc}")
    rc, output = h.command(*args, "--resume")  # the same command, --resume instead of --overwrite
    require(rc == 0, f"--resume: exit {rc}")
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    require(a.keys() == b.keys(), "different adapter tensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(a[k].float().abs().max().item() for k in a)
    exact = all(torch.equal(a[k], b[k]) for k in a)
    # CUDA kernels may reduce in a different order run to run (atomics); 1e-5 of the largest weight allows that only
    require(exact or diff <= 1e-5 * scale, f"the resumed run's weights differ by {diff:.3g} (largest {scale:.3g})")
    require("resumed from" in output, "--resume did not say where it resumed from")
    return {"bit_identical": exact, "max_abs_diff": diff}


def fsdp_one_process(h: Harness, paths: dict) -> dict:
    run = h.work / "runs" / "fsdp-1"
    rc, output = h.command("--config_file", REPO / "accelerate" / "fsdp.yaml", "--num_processes", "1", "-m",
                           "ftkit", "train", "--task", "cls", "--method", "lora", "--model", paths["bert"], "--data",
                           paths["cls"][0], "--eval-data", paths["cls"][1], "--output", run, "--overwrite", *TINY,
                           python=("-m", "accelerate.commands.launch"))
    require(rc == 0, f"accelerate launch (FSDP): exit {rc}")
    return {**loss_falls(run), "accuracy": summary(run)["eval"]["accuracy"]}


def matmul_peak() -> float | None:
    """The device's bf16 matrix-product rate as measured here (TFLOP/s): MFU's denominator."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def throughput(h: Harness, paths: dict) -> dict:
    """gen LoRA on the ~1B Llama shape at bf16: tokens/s, MFU, and the HF Trainer reference as a ratio."""
    from run import Workload, bench

    model = paths["1b"]
    rows, length = (960, 512) if h.cuda else (64, 64)
    w = Workload("gen-1b", "gen", str(model), str(paths["long"][0]), rows, 32, 16, length, 2e-4, precision="bf16")
    folder = h.work / "throughput"
    folder.mkdir(exist_ok=True)
    result = bench(w, 1, folder, h.device)
    ftkit_run, ref = result["runs"]["ftkit"][0], result["runs"]["reference"][0]
    tokens = result["mean_tokens_per_row"]
    tps, ref_tps = ftkit_run["samples_per_s"] * tokens, ref["samples_per_s"] * tokens
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    n = matmul_params(c)
    # model FLOPs per token with a frozen base: forward 2N + input gradients 2N, and attention's score and value
    # products 4*layers*tokens*hidden forward, twice that backward (PaLM's accounting, without weight gradients)
    per_token = 4 * n + 12 * c.num_hidden_layers * tokens * c.hidden_size
    peak = matmul_peak()
    numbers = {"tokens_per_row": round(tokens, 1), "ftkit_tokens_per_s": round(tps), "trainer_tokens_per_s":
               round(ref_tps), "ftkit_over_trainer": round(tps / ref_tps, 3), "matmul_params": n}
    if ftkit_run.get("peak_gpu_mb") and ref.get("peak_gpu_mb"):
        numbers |= {"ftkit_peak_mib": round(ftkit_run["peak_gpu_mb"]), "trainer_peak_mib": round(ref["peak_gpu_mb"])}
    if peak:
        numbers |= {"measured_bf16_tflops": round(peak), "mfu": round(tps * per_token / (peak * 1e12), 3),
                    "mfu_of_790": round(tps * per_token / 790e12, 3)}
    return numbers


def matmul_params(c) -> int:
    """Weights that take part in matrix products per token: every layer's projections and the output head."""
    h, i, heads, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads
    head_dim = h // heads
    attention = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    return c.num_hidden_layers * (attention + 3 * h * i) + h * c.vocab_size


CHECKS = [
    ("lora cls fp32", lora, "cls", "fp32"), ("lora tag fp32", lora, "tag", "fp32"),
    ("lora gen fp32", lora, "gen", "fp32"), ("lora cls bf16", lora, "cls", "bf16"),
    ("lora tag bf16", lora, "tag", "bf16"), ("lora gen bf16", lora, "gen", "bf16"),
    ("lora gen fp16 + grad scaler", lora, "gen", "fp16"),
    ("lora gen bf16 + gradient checkpointing", lora, "gen", "bf16", "--gradient-checkpointing"),
    ("smol gen fp32: memory vs estimate", memory, "fp32"), ("smol gen bf16: memory vs estimate", memory, "bf16"),
    ("smol gen bf16 + checkpointing: memory", memory, "bf16", "none", True),
    ("smol gen 8bit LoRA: memory", memory, "bf16", "8bit"),
    ("smol gen 4bit QLoRA: memory", memory, "bf16", "4bit"),
    ("cls 8bit LoRA + eval/predict", quantized_cls),
    ("export --merge of the 8bit run", merged_equals_adapter, "8bit"),
    ("export --merge of the 4bit run", merged_equals_adapter, "4bit"),
    ("resume after SIGTERM", resume_equals_uninterrupted),
    ("accelerate FSDP, 1 process", fsdp_one_process),
    ("throughput + MFU, 1B gen LoRA bf16", throughput),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for results.json, results.md and logs.txt")
    ap.add_argument("--work", help="folder for the models, data and runs (default: a new temporary one)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--only", help="run the checks whose names contain this text")
    a = ap.parse_args(argv)
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("bench/gpu.py: --device cuda but torch sees no CUDA device (use --device cpu for the smoke run)",
                  file=sys.stderr)
            return 2
    import tempfile

    h = Harness(Path(a.out), Path(a.work or tempfile.mkdtemp(prefix="ftkit-gpu-")), a.device)
    paths = build(h)
    for name, fn, *args in CHECKS:
        if a.only is None or a.only in name:
            h.check(name, fn, h, paths, *args)
    failed = [r["check"] for r in h.results if r["status"] == "fail"]
    print(f"{len(h.results) - len(failed)} of {len(h.results)} checks passed or skipped" +
          (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare-logits"]:
        compare_logits(*sys.argv[2:5])
    else:
        sys.exit(main())
