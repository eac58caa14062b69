"""Smaller models from a fine-tuned run: the trade-off of `ftkit prune` and `ftkit distill`, measured.

    .venv/bin/python bench/compress.py                                   # polarity + pos-wsj, 3 seeds
    .venv/bin/python bench/compress.py --data polarity --seeds 1 --epochs 1 --results /tmp/c.md
    .venv/bin/python bench/compress.py --lr 1e-4 --results bench/COMPRESS-converged.md   # default length

For each dataset (on minilm) and seed: a teacher (full fine-tuning), the teacher pruned at two levels (30% of the
feed-forward neurons; 50% of them and 2 of the 6 layers; each with one epoch of recovery), a 3-layer student
distilled from the teacher (``--student layers=3``), the same 3-layer student trained without distillation (the
ablation that shows what distillation adds), and each one's ONNX int8 export. Reported: parameters, weight file
size, CPU examples/s at batch 1 and 32 (held-out rows, the model alone: tokenized batches in, logits out; the
median of 3 timed passes after a warm-up), and the held-out main metric, mean ± sd over seeds. Everything runs
through the ftkit CLI, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FTKIT = [sys.executable, "-m", "ftkit"]
TASKS = {"polarity": "cls", "pos-wsj": "tag"}


def ftkit(*args) -> None:
    subprocess.run([*FTKIT, *map(str, args), "--quiet"] if args[0] in ("train", "distill", "prune")
                   else [*FTKIT, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def variants(data: str, seed: int, epochs: float | None, root: Path, lr: float | None = None) -> dict[str, Path]:
    task, runs = TASKS[data], {}
    rate = ("--lr", lr) if lr else ()
    common = ("--seed", seed, *(("--epochs", epochs) if epochs else ()), "--batch-size", 32, *rate)
    runs["teacher"] = root / "teacher"
    ftkit("train", "--task", task, "--method", "full", "--model", "minilm", "--data", data, *common,
          "--output", runs["teacher"])
    runs["pruned ffn 30%"] = root / "prune-a"
    ftkit("prune", runs["teacher"], "--ffn", 0.3, "--seed", seed, "--batch-size", 32, *rate,
          "--output", runs["pruned ffn 30%"])
    runs["pruned ffn 50% + 2 layers"] = root / "prune-b"
    ftkit("prune", runs["teacher"], "--ffn", 0.5, "--layers", 2, "--seed", seed, "--batch-size", 32, *rate,
          "--output", runs["pruned ffn 50% + 2 layers"])
    runs["distilled 3 layers"] = root / "distilled"
    ftkit("distill", runs["teacher"], "--student", "layers=3", *common, "--output", runs["distilled 3 layers"])
    import yaml

    student = yaml.safe_load((runs["distilled 3 layers"] / "ftkit.yaml").read_text())["model"]["name"]
    runs["3 layers, no distillation"] = root / "plain"
    ftkit("train", "--task", task, "--method", "full", "--model", student, "--data", data, *common,
          "--output", runs["3 layers, no distillation"])
    return runs


def throughput(model, batches: list[dict]) -> float:
    import torch

    n = sum(len(b["input_ids"]) for b in batches)
    with torch.inference_mode():
        for b in batches[:2]:
            model(**b)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for b in batches:
                model(**b)
            times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def measure(run: Path, onnx: Path) -> dict:
    """Parameters, file sizes, examples/s (PyTorch and ONNX int8) and held-out metrics of one run."""
    from ftkit.data import held_out_split, read_table
    from ftkit.inference import model_labels, settings
    from ftkit.models import cpu_kernels
    from ftkit.runs import load_trained

    summary = json.loads((run / "metrics.json").read_text())
    loaded = load_trained(str(run))
    cfg, task = settings(loaded, []), loaded.task
    table = read_table(cfg.data.train)
    held = held_out_split(table, cfg.data.eval_fraction, cfg.train.seed)[1]
    feats = task.features(task.encode(loaded.tokenizer, table, cfg, loaded.model.config),
                          task.targets(table, cfg, model_labels(loaded.model)), held, cfg, training=False)
    collate = task.collator(loaded.tokenizer, cfg)

    def batches(size: int, rows: int):
        out = [collate(feats[i:i + size]) for i in range(0, min(rows, len(feats)), size)]
        return [{k: v for k, v in b.items() if k != "labels"} for b in out]

    result = {"params": summary["train"]["total_params"],
              "size_mb": sum(f.stat().st_size for f in run.glob("*.safetensors")) / 2**20,
              "metric": summary["main_metric"], "value": summary["eval"][summary["main_metric"]]}
    with cpu_kernels(loaded.model):
        result["b1"] = throughput(loaded.model, batches(1, 64))
        result["b32"] = throughput(loaded.model, batches(32, 256))
    int8 = load_trained(str(onnx / "model.int8.onnx"))
    result["int8_size_mb"] = (onnx / "model.int8.onnx").stat().st_size / 2**20
    result["int8_b1"] = throughput(int8.model, batches(1, 64))
    result["int8_b32"] = throughput(int8.model, batches(32, 256))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([*FTKIT, "eval", onnx / "model.int8.onnx", "--data", cfg.data.train, "--output",
                        Path(d) / "e.json"], check=True, stdout=subprocess.DEVNULL)
        result["int8_value"] = json.loads((Path(d) / "e.json").read_text())[summary["main_metric"]]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=list(TASKS), action="append")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, help="epochs of every training run but pruning's one-epoch recovery "
                                                 "(default: the tool's, 3 with a floor of 300 optimizer steps)")
    ap.add_argument("--lr", type=float, help="learning rate of every training run, recovery included (default: "
                                             "full fine-tuning's, 3e-5)")
    ap.add_argument("--results", type=Path, default=HERE / "COMPRESS.md")
    args = ap.parse_args()
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        for seed in range(1, args.seeds + 1):  # seed by seed: a study cut short still has every dataset
            for data in args.data or list(TASKS):
                root = Path(d) / data / f"seed{seed}"
                for name, run in variants(data, seed, args.epochs, root, args.lr).items():
                    onnx = run.with_name(run.name + "-onnx")
                    ftkit("export", run, "--format", "onnx", "--int8", "--output", onnx)
                    rows.setdefault((data, name), []).append(measure(run, onnx))
                    print(data, seed, name, rows[(data, name)][-1], flush=True)
                    write(args, rows)  # after every model: a stopped study keeps what it measured


def _mean(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write(args, rows: dict) -> None:
    command = " ".join([".venv/bin/python", "bench/compress.py", *sys.argv[1:]])
    lines = ["# Smaller models: pruning and distillation", "",
             f"`{command}` on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}; "
             f"up to {args.seeds} seed(s) (column n: how many a row has), "
             + (f"{args.epochs:g} epoch(s) per training run" if args.epochs else "the tool's default training length")
             + (f" at learning rate {args.lr:g}" if args.lr else "") + ". Method: the docstring of "
             "bench/compress.py. Examples/s: the model alone on CPU (median of 3 timed passes).", "",
             "| data | model | n | params | MiB | ex/s b1 | ex/s b32 | held-out | int8 MiB | int8 ex/s b1 "
             "| int8 ex/s b32 | int8 held-out |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (data, name), rs in rows.items():
        g = lambda k: [r[k] for r in rs]  # noqa: E731
        lines.append(f"| {data} | {name} | {len(rs)} | {statistics.mean(g('params')) / 1e6:.1f}M | "
                     f"{statistics.mean(g('size_mb')):.0f} | {statistics.median(g('b1')):.0f} | "
                     f"{statistics.median(g('b32')):.0f} | {rs[0]['metric']} {_mean(g('value'))} | "
                     f"{statistics.mean(g('int8_size_mb')):.0f} | {statistics.median(g('int8_b1')):.0f} | "
                     f"{statistics.median(g('int8_b32')):.0f} | {_mean(g('int8_value'))} |")
    args.results.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
