"""Smaller models from a fine-tuned run: the trade-off of `ftkit prune` and `ftkit distill`, measured.

    .venv/bin/python bench/compress.py                                   # polarity + pos-wsj, 3 seeds
    .venv/bin/python bench/compress.py --data polarity --seeds 1 --epochs 1 --results /tmp/c.md
    .venv/bin/python bench/compress.py --lr 1e-4 --results bench/COMPRESS-converged.md   # default length
    .venv/bin/python bench/compress.py --lr 1e-4 --models gradual --results FILE

For each dataset (on minilm) and seed: a teacher (full fine-tuning), the teacher pruned at two levels (30% of the
feed-forward neurons; 50% of them and 2 of the 6 layers; each with one epoch of recovery), a 3-layer student
distilled from the teacher (``--student layers=3``), the same 3-layer student trained without distillation (the
ablation that shows what distillation adds), the same 3-layer architecture reached by removing the least important
layer three times, each stage distilled from the one before (``prune --layers 3 --gradual --distil``), and each
one's ONNX int8 export (``--models``: only some of them, beside the teacher). Reported: parameters, weight file
size, CPU examples/s at batch 1 and 32 (held-out rows, the model alone: tokenized batches in, logits out) with its
ratio to the teacher's, and the held-out main metric, mean ± sd over seeds. Speed is measured round-robin over a
seed's models — every model one timed pass a round, after a warm-up, the median of 5 rounds — so that a slow moment
of the machine falls on all of them alike; the ratios are the medians of the seeds' ratios. Everything runs through
the ftkit CLI, as a user would.

    .venv/bin/python bench/compress.py --speed-of KEPT --results FILE   # again, the speed of a kept seed's models

``--speed-of KEPT`` measures the models of one seed kept from an earlier study (KEPT/DATA/teacher, prune-a, ...,
with their -onnx exports) and appends their speed table to FILE. Beside FILE: FILE.json (every seed's figures) and
FILE.png, the trade-off plotted — held-out metric against the ratio of examples/s to the teacher's, a panel a dataset
(the round-robin re-measure's ratios where there is one).
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
FOLDERS = {"teacher": "teacher", "pruned ffn 30%": "prune-a", "pruned ffn 50% + 2 layers": "prune-b",
           "distilled 3 layers": "distilled", "3 layers, no distillation": "plain",
           "3 layers, pruned one at a time": "gradual"}  # model -> its run's folder
MODES = ("b1", "b32", "int8_b1", "int8_b32")  # PyTorch and ONNX int8, at batch 1 and 32


def ftkit(*args) -> None:
    subprocess.run([*FTKIT, *map(str, args), "--quiet"] if args[0] in ("train", "distill", "prune")
                   else [*FTKIT, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def variants(data: str, seed: int, epochs: float | None, root: Path, lr: float | None = None,
             models: list[str] | None = None) -> dict[str, Path]:
    """The teacher and each of ``models`` (default: all) trained for ``data`` and ``seed`` -> {model: run dir}."""
    task, runs = TASKS[data], {name: root / folder for name, folder in FOLDERS.items()}
    wanted = ["teacher", *(models or list(FOLDERS))]
    rate = ("--lr", lr) if lr else ()
    common = ("--seed", seed, *(("--epochs", epochs) if epochs else ()), "--batch-size", 32, *rate)
    recovery = ("--seed", seed, "--batch-size", 32, *rate)  # pruning's own length: one epoch, >= 300 steps a stage
    ftkit("train", "--task", task, "--method", "full", "--model", "minilm", "--data", data, *common,
          "--output", runs["teacher"])
    if "pruned ffn 30%" in wanted:
        ftkit("prune", runs["teacher"], "--ffn", 0.3, *recovery, "--output", runs["pruned ffn 30%"])
    if "pruned ffn 50% + 2 layers" in wanted:
        ftkit("prune", runs["teacher"], "--ffn", 0.5, "--layers", 2, *recovery,
              "--output", runs["pruned ffn 50% + 2 layers"])
    if {"distilled 3 layers", "3 layers, no distillation"} & set(wanted):  # the second trains the first's student
        ftkit("distill", runs["teacher"], "--student", "layers=3", *common, "--output", runs["distilled 3 layers"])
    if "3 layers, no distillation" in wanted:
        import yaml

        student = yaml.safe_load((runs["distilled 3 layers"] / "ftkit.yaml").read_text())["model"]["name"]
        ftkit("train", "--task", task, "--method", "full", "--model", student, "--data", data, *common,
              "--output", runs["3 layers, no distillation"])
    if "3 layers, pruned one at a time" in wanted:
        ftkit("prune", runs["teacher"], "--layers", 3, "--gradual", "--distil", *recovery,
              "--output", runs["3 layers, pruned one at a time"])
    return {name: run for name, run in runs.items() if name in wanted}


def onnx_of(run: Path) -> Path:
    return run.with_name(run.name + "-onnx")


def held_out_batches(loaded) -> dict[str, list[dict]]:
    """Model inputs from a loaded run's held-out rows: 64 of them one at a time (b1), 256 in batches of 32 (b32)."""
    from ftkit.commands.inference import model_labels, settings
    from ftkit.data.sources import held_out_split, read_table

    cfg, task = settings(loaded, []), loaded.task
    table = read_table(cfg.data.train)
    held = held_out_split(table, cfg.data.eval_fraction, cfg.train.seed)[1]
    feats = task.features(task.encode(loaded.tokenizer, table, cfg, loaded.model.config),
                          task.targets(table, cfg, model_labels(loaded.model)), held, cfg, training=False)
    collate = task.collator(loaded.tokenizer, cfg)

    def batches(size: int, rows: int):
        out = [collate(feats[i:i + size]) for i in range(0, min(rows, len(feats)), size)]
        return [{k: v for k, v in b.items() if k != "labels"} for b in out]

    return {"1": batches(1, 64), "32": batches(32, 256)}


def speeds(runs: dict[str, Path], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Examples/s of each run's model and of its ONNX int8 export, at batch 1 and 32, round-robin: every model one
    timed pass over the same inputs a round, after a warm-up; the median of ``rounds`` -> {model: {mode: ex/s}}."""
    import torch

    from ftkit.modeling.loading import cpu_kernels
    from ftkit.rundir.runs import load_trained

    loaded = {name: load_trained(str(run)) for name, run in runs.items()}
    inputs = held_out_batches(next(iter(loaded.values())))  # the models share the tokenizer and the data
    models = {}  # (name, mode) -> (model, its inputs)
    for name, run in runs.items():
        int8 = load_trained(str(onnx_of(run) / "model.int8.onnx")).model
        for mode, model in (("b1", loaded[name].model), ("b32", loaded[name].model), ("int8_b1", int8),
                            ("int8_b32", int8)):
            models[(name, mode)] = model, inputs[mode.rpartition("b")[2]]
    times: dict = {key: [] for key in models}
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up
            for key, (model, batches) in models.items():
                with cpu_kernels(model):  # nothing to do for ONNX
                    start = time.perf_counter()
                    for b in batches:
                        model(**b)
                    times[key].append(time.perf_counter() - start)
    out: dict = {}
    for (name, mode), t in times.items():
        out.setdefault(name, {})[mode] = sum(len(b["input_ids"]) for b in models[(name, mode)][1]) / \
            statistics.median(t[1:])
    return out


def measure(run: Path) -> dict:
    """Parameters, file sizes and held-out metrics of one run and of its ONNX int8 export."""
    import yaml

    summary = json.loads((run / "metrics.json").read_text())
    data = yaml.safe_load((run / "ftkit.yaml").read_text())["data"]["train"]
    onnx = onnx_of(run)
    result = {"params": summary["train"]["total_params"],
              "size_mb": sum(f.stat().st_size for f in run.glob("*.safetensors")) / 2**20,
              "metric": summary["main_metric"], "value": summary["eval"][summary["main_metric"]],
              "int8_size_mb": (onnx / "model.int8.onnx").stat().st_size / 2**20}
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([*FTKIT, "eval", onnx / "model.int8.onnx", "--data", data, "--output",
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
                                             "full fine-tuning's for the task)")
    ap.add_argument("--results", type=Path, default=HERE / "COMPRESS.md")
    ap.add_argument("--speed-of", type=Path, metavar="KEPT", help="only measure the speed of a kept seed's models")
    ap.add_argument("--models", type=lambda v: v.split(","), metavar="FOLDER,...",
                    help="only these models beside the teacher, by their folders (default: all): "
                         + ", ".join(f"{f} ({n})" for n, f in list(FOLDERS.items())[1:]))
    args = ap.parse_args()
    if unknown := set(args.models or []) - set(list(FOLDERS.values())[1:]):
        ap.error(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(list(FOLDERS.values())[1:])}")
    args.models = args.models and [n for n, f in FOLDERS.items() if f in args.models]
    if args.speed_of:
        rows = {(data, name): [speed] for data in args.data or list(TASKS) if (args.speed_of / data).is_dir()
                for name, speed in speeds({n: args.speed_of / data / f for n, f in FOLDERS.items()
                                           if (args.speed_of / data / f).is_dir()}).items()}
        text = args.results.read_text() if args.results.is_file() else ""
        args.results.write_text(text + "\n" + "\n".join(speed_table(rows)) + "\n")
        saved = json.loads(args.results.with_suffix(".json").read_text())
        saved["speed"] = _listed(rows)
        save(args.results, saved)
        return
    rows: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        for seed in range(1, args.seeds + 1):  # seed by seed: a study cut short still has every dataset
            for data in args.data or list(TASKS):
                runs = variants(data, seed, args.epochs, Path(d) / data / f"seed{seed}", args.lr, args.models)
                for run in runs.values():
                    ftkit("export", run, "--format", "onnx", "--int8", "--output", onnx_of(run))
                for name, speed in speeds(runs).items():
                    rows.setdefault((data, name), []).append(measure(runs[name]) | speed)
                    print(data, seed, name, rows[(data, name)][-1], flush=True)
                write(args, rows)  # after every seed of a dataset: a stopped study keeps what it measured
                save(args.results, {"models": _listed(rows)})


def _listed(rows: dict) -> list[dict]:
    return [{"data": data, "model": name, "seeds": rs} for (data, name), rs in rows.items()]


def save(results: Path, saved: dict) -> None:
    """FILE.json (the figures, seed by seed) and FILE.png (the trade-off plotted) beside the results FILE."""
    results.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
    plot(saved, results.with_suffix(".png"))
    print(f"wrote {results}, .json and .png")


def plot(saved: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {(r["data"], r["model"]): r["seeds"] for r in saved["models"]}
    speed = {(r["data"], r["model"]): r["seeds"] for r in saved.get("speed", saved["models"])}
    datasets = list(dict.fromkeys(data for data, _ in models))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 5), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for (d, name), rs in models.items():
            if d != data or (d, "teacher") not in speed:
                continue
            values = [r["value"] for r in rs]
            for mode, marker in (("b1", "o"), ("b32", "s")):
                ratio = statistics.median(r[mode] / t[mode] for r, t in zip(speed[(d, name)], speed[(d, "teacher")]))
                ax.errorbar(ratio, statistics.mean(values), yerr=statistics.stdev(values) if len(values) > 1 else 0,
                            fmt=marker, color=f"C{list(FOLDERS).index(name)}", capsize=3,
                            label=name if mode == "b1" else None)
        metric, teacher = models[(data, "teacher")][0]["metric"], models[(data, "teacher")]
        ax.axvline(1.8, color="grey", ls=":")
        ax.axhline(statistics.mean(r["value"] for r in teacher) - 0.015, color="grey", ls=":",
                   label="issue 21's target: >= 1.8x, within 1.5 points")
        ax.set(title=f"{data} (minilm; circles batch 1, squares batch 32)", xlabel="examples/s, x the teacher's",
               ylabel=f"held-out {metric} (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _speed(rows: dict, data: str, name: str, mode: str) -> str:
    """The median examples/s over seeds, and the median of the seeds' ratios to the teacher's."""
    rs, teacher = rows[(data, name)], rows[(data, "teacher")]
    ratio = statistics.median(r[mode] / t[mode] for r, t in zip(rs, teacher))
    return f"{statistics.median(r[mode] for r in rs):.0f} ({ratio:.2f}x)"


def _command() -> str:
    return " ".join([".venv/bin/python", "bench/compress.py", *sys.argv[1:]])


def speed_table(rows: dict) -> list[str]:
    lines = [f"## Speed again, round-robin (`{_command()}`, {platform.node()}, {time.strftime('%Y-%m-%d')})", "",
             "| data | model | ex/s b1 | ex/s b32 | int8 ex/s b1 | int8 ex/s b32 |", "|---|---|---:|---:|---:|---:|"]
    return lines + [f"| {data} | {name} | " + " | ".join(_speed(rows, data, name, m) for m in MODES) + " |"
                    for data, name in rows]


def write(args, rows: dict) -> None:
    lines = ["# Smaller models: pruning and distillation", "",
             f"`{_command()}` on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')}; "
             f"up to {args.seeds} seed(s) (column n: how many a row has), "
             + (f"{args.epochs:g} epoch(s) per training run" if args.epochs else "the tool's default training length")
             + (f" at learning rate {args.lr:g}" if args.lr else "") + ". Method: the docstring of "
             "bench/compress.py. Examples/s: the model alone on CPU, measured round-robin (in brackets: the ratio to "
             "the teacher's).", "",
             "| data | model | n | params | MiB | ex/s b1 | ex/s b32 | held-out | int8 MiB | int8 ex/s b1 "
             "| int8 ex/s b32 | int8 held-out |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (data, name), rs in rows.items():
        g = lambda k: [r[k] for r in rs]  # noqa: E731
        speed = [_speed(rows, data, name, m) for m in MODES]
        lines.append(f"| {data} | {name} | {len(rs)} | {statistics.mean(g('params')) / 1e6:.1f}M | "
                     f"{statistics.mean(g('size_mb')):.0f} | {speed[0]} | {speed[1]} | "
                     f"{rs[0]['metric']} {_mean(g('value'))} | {statistics.mean(g('int8_size_mb')):.0f} | "
                     f"{speed[2]} | {speed[3]} | {_mean(g('int8_value'))} |")
    args.results.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
