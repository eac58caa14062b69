"""ftkit against the plain Trainer + peft reference (bench/reference.py) on the same workloads.

    .venv/bin/python bench/run.py                  # all workloads, 3 alternating rounds, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --only cls --reps 2 --results /tmp/r.md

Each round runs ftkit and the reference once each, alternating which goes first. Both train one epoch of the same
rows with the same hyper-parameters and print a line per optimizer step on stderr, which the harness timestamps:
start-up is the time from launch to the first step, throughput is measured between the first and the last step
(so neither start-up nor the final evaluation counts). ftkit's runs share the environment's ``$FTKIT_CACHE``: after
the first they read their tokenization from it (``--ablate`` times runs that tokenize afresh). Peak memory is the
child's peak RSS (CPU) or, with ``--device cuda``, the peak allocated GPU memory each reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP = re.compile(r"^step (\d+)")


@dataclass(frozen=True)
class Workload:
    name: str
    task: str
    model: str  # built-in name or checkpoint dir
    data: str  # built-in dataset name or a jsonl file
    train_rows: int  # a multiple of batch_size: every step is a full batch
    eval_rows: int
    batch_size: int
    max_length: int
    lr: float
    precision: str = "fp32"


WORKLOADS = {w.name: w for w in [
    # long enough for the metric to move off chance on both sides (512 rows x 5e-4 or 2e-3 did not for cls)
    Workload("cls", "cls", "minilm", "polarity", 2048, 256, 16, 128, 5e-4),
    Workload("tag", "tag", "minilm", "pos-wsj", 896, 100, 16, 128, 2e-3),
    Workload("gen", "gen", "smollm2-135m", "chatterbot", 256, 64, 8, 128, 5e-4),
]}


def prepare(w: Workload, folder: Path) -> tuple[str, str, str]:
    """(model dir, train.jsonl, eval.jsonl): the same rows for both sides, a seeded split of the dataset."""
    from ftkit.data.sources import held_out_split, read_table
    from ftkit.rundir.runs import base_model_path

    table = read_table(w.data)
    train_idx, eval_idx = held_out_split(table, w.eval_rows / len(table), seed=0)
    random.Random(0).shuffle(train_idx)  # the split comes sorted, and datasets are often sorted by label
    files = []
    for name, idx in (("train", train_idx[:w.train_rows]), ("eval", eval_idx[:w.eval_rows])):
        path = folder / f"{w.name}-{name}.jsonl"
        path.write_text("".join(json.dumps({c: table.columns[c][i] for c in table.columns}) + "\n" for i in idx),
                        encoding="utf-8")
        files.append(str(path))
    return str(base_model_path(w.model)), files[0], files[1]


def _run(cmd: list[str], env: dict, log: Path) -> dict:
    """Launch ``cmd``; timestamp its `step N` lines; return timings and the child's peak RSS."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        steps: dict[int, float] = {}
        for line in proc.stderr:
            m = STEP.match(line)
            if m:
                steps[int(m.group(1))] = time.perf_counter()
            else:
                out.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed; see {log}")
    first, last = min(steps), max(steps)
    return {"startup_s": steps[first] - start, "steps": last, "timed_steps": last - first,
            "timed_s": steps[last] - steps[first], "wall_s": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024}


# --ablate: ftkit with one of its optimisations switched off, to measure what that one brings: the tasks it
# applies to, the flags that switch it off, and whether the run gets an empty cache folder (so it tokenizes afresh)
ABLATIONS = {"no length grouping": (("cls", "tag"), ["--set", "train.group_by_length=false"], False),
             # gen's packed batches have no padding to cut, and are not grouped unless asked
             "packed batches grouped by length": (("gen",), ["--set", "train.group_by_length=true"], False),
             "no padding-free batches": (("gen",), ["--set", "task.padding_free=false"], False),
             "no tokenization cache": (("cls", "tag", "gen"), [], True),
             # not an optimisation but a candidate default: LoRA's input dropout (0.1) off, which peft then skips
             "no LoRA dropout": (("cls", "tag", "gen"), ["--set", "method.dropout=0"], False)}


def run_ftkit(w: Workload, model: str, train: str, eval_: str, folder: Path, env: dict,
              extra: tuple[str, ...] = (), fresh_cache: bool = False) -> dict:
    out = folder / f"{w.name}-ftkit-run"
    with tempfile.TemporaryDirectory(dir=folder) as cache:  # the model is a folder: nothing else is fetched there
        r = _run([sys.executable, "-m", "ftkit", "train", "--task", w.task, "--method", "lora", "--model", model,
                  "--data", train, "--eval-data", eval_, "--output", str(out), "--overwrite", "--epochs", "1",
                  "--batch-size", str(w.batch_size), "--max-length", str(w.max_length), "--lr", str(w.lr),
                  "--precision", w.precision, "--set", "train.log_every=1",
                  "--set", "method.target_modules=null",  # peft's default targets, as the reference's LoRA
                  "--set", "method.r=8",  # and its rank (alpha 2r = 16)
                  "--set", "train.scheduler=linear",  # the reference's schedule
                  *extra],
                 env | ({"FTKIT_CACHE": cache} if fresh_cache else {}),
                 folder / f"{w.name}-ftkit.log")
    summary = json.loads((out / "metrics.json").read_text())
    metric = {"cls": "accuracy", "tag": "accuracy", "gen": "perplexity"}[w.task]
    return r | {"metric": summary["eval"][metric], "peak_gpu_mb": _mb(summary["train"].get("peak_gpu_bytes"))}


def run_reference(w: Workload, model: str, train: str, eval_: str, folder: Path, env: dict) -> dict:
    log = folder / f"{w.name}-reference.log"
    r = _run([sys.executable, str(HERE / "reference.py"), "--task", w.task, "--model", model, "--train", train,
              "--eval", eval_, "--batch-size", str(w.batch_size), "--max-length", str(w.max_length), "--lr",
              str(w.lr), "--precision", w.precision, "--output", str(folder / f"{w.name}-reference-out")], env, log)
    result = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
    metric = {"cls": "accuracy", "tag": "accuracy", "gen": "perplexity"}[w.task]
    return r | {"metric": result[metric], "peak_gpu_mb": _mb(result.get("peak_gpu_bytes"))}


def _mb(n):
    return None if n is None else n / 2**20


def bench(w: Workload, reps: int, folder: Path, device: str, ablate: bool = False) -> dict:
    model, train, eval_ = prepare(w, folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    runs = {"ftkit": [], "reference": []}
    variants = {name: (lambda *a, extra=tuple(flags), fresh=fresh: run_ftkit(*a, extra=extra, fresh_cache=fresh))
                for name, (tasks, flags, fresh) in ABLATIONS.items() if w.task in tasks} if ablate else {}
    for rep in range(reps):
        order = [("ftkit", run_ftkit), ("reference", run_reference), *variants.items()]
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            r = fn(w, model, train, eval_, folder, env)
            r["samples_per_s"] = r["timed_steps"] * w.batch_size / r["timed_s"]
            runs.setdefault(name, []).append(r)
            print(f"{w.name} round {rep + 1}/{reps} {name}: {r['samples_per_s']:.2f} samples/s, start-up "
                  f"{r['startup_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB, metric {r['metric']:.4f}",
                  file=sys.stderr, flush=True)
    tokens = _mean_tokens(w, model, train) if w.task == "gen" else None
    return {"workload": w.__dict__, "runs": runs, "mean_tokens_per_row": tokens}


def _mean_tokens(w: Workload, model: str, train: str) -> float:
    """Tokens per training row as ftkit encodes them (the same rows both sides train on), for tokens/s."""
    from ftkit import config
    from ftkit.data.sources import read_table
    from ftkit.modeling.loading import load_tokenizer
    from ftkit.tasks import TASKS

    cfg = config.build({"task": w.task, "data": {"train": train, "max_length": w.max_length}})
    table = read_table(train)
    ids = TASKS.get(w.task).encode(load_tokenizer(Path(model)), table, cfg, None)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def ratios(result: dict) -> dict:
    """ftkit / reference per round, for each measure; min/median/max."""
    pairs = list(zip(result["runs"]["ftkit"], result["runs"]["reference"]))
    out = {}
    for key in ("samples_per_s", "startup_s", "peak_rss_mb", "peak_gpu_mb", "metric"):
        values = [f[key] / r[key] for f, r in pairs if f.get(key) and r.get(key)]
        if values:
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return out


def help_seconds(repeats: int = 5) -> float:
    exe = Path(sys.executable).with_name("ftkit")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(exe), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment(device: str) -> str:
    """The line naming the device, the machine and the library versions a results file was measured with."""
    import accelerate
    import peft
    import torch
    import transformers

    return (f"Device: {device}; machine: {platform.platform()}, {os.cpu_count()} CPUs; Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, peft "
            f"{peft.__version__}, accelerate {accelerate.__version__}")


def render(results: list[dict], command: str, help_s: float | None, device: str) -> str:
    lines = ["# Benchmark: ftkit vs a plain Trainer + peft script", "", f"Command: `{command}`  ", environment(device),
             "",
             "Ratios are ftkit / reference per round (min / median / max); throughput > 1 and memory < 1 favour ftkit.",
             ""]
    if help_s is not None:
        lines += [f"`ftkit --help`: {help_s:.3f} s (median of 5)", ""]
    lines += ["| workload | rows x epochs | ftkit samples/s | reference samples/s | throughput ratio "
              "| start-up ratio | peak memory ratio | ftkit metric | reference metric |",
              "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        w, rs = res["workload"], ratios(res)
        f, r = res["runs"]["ftkit"], res["runs"]["reference"]

        def med(runs, key):
            return statistics.median(x[key] for x in runs)

        def span(key):
            s = rs.get(key)
            return f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}" if s else "n/a"

        memory = "peak_gpu_mb" if device == "cuda" else "peak_rss_mb"
        tput = f"{med(f, 'samples_per_s'):.1f}", f"{med(r, 'samples_per_s'):.1f}"
        if res["mean_tokens_per_row"]:
            tput = tuple(f"{v} ({float(v) * res['mean_tokens_per_row']:.0f} tok/s)" for v in tput)
        metric = "perplexity" if w["task"] == "gen" else "accuracy"
        lines.append(f"| {w['name']} ({w['model']}, {w['data']}, batch {w['batch_size']}) | {w['train_rows']} x 1 | "
                     f"{tput[0]} | {tput[1]} | {span('samples_per_s')} | {span('startup_s')} | {span(memory)} | "
                     f"{metric} {med(f, 'metric'):.4f} | {med(r, 'metric'):.4f} |")
    ablated = [res for res in results if set(res["runs"]) - {"ftkit", "reference"}]
    if ablated:
        lines += ["", "Where the gains come from: ftkit with one optimisation off (`--ablate`), as a ratio to ftkit "
                  "with everything on, same rounds (median).", "",
                  "| workload | switched off | samples/s ratio | start-up ratio | peak memory ratio | metric |",
                  "|---|---|---|---|---|---|"]
        for res in ablated:
            f = res["runs"]["ftkit"]
            for name in [n for n in ABLATIONS if n in res["runs"]]:
                v = res["runs"][name]
                tput, start, mem = (statistics.median(x[key] for x in v) / statistics.median(x[key] for x in f)
                                    for key in ("samples_per_s", "startup_s", "peak_rss_mb"))
                lines.append(f"| {res['workload']['name']} | {name} | {tput:.2f} | {start:.2f} | {mem:.2f} | "
                             f"{statistics.median(x['metric'] for x in v):.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, workloads: dict[str, Workload] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated workloads (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="alternating rounds per workload")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to write")
    ap.add_argument("--work", help="folder for data and runs (default: a temporary one)")
    ap.add_argument("--ablate", action="store_true", help="also run ftkit with each optimisation in ABLATIONS off")
    a = ap.parse_args(argv)
    workloads = workloads or WORKLOADS
    chosen = [workloads[n] for n in (a.only.split(",") if a.only else workloads)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.work or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = [bench(w, a.reps, folder, a.device, a.ablate) for w in chosen]
    command = "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(results, command.strip(), help_seconds(), a.device)
    Path(a.results).write_text(text + "\n<!-- raw -->\n```json\n" + json.dumps(results, indent=1) + "\n```\n",
                               encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    main()
