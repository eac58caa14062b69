"""The ftkit command line. One small function per command; heavy imports happen inside them, so `--help` and
usage errors answer without loading torch, transformers or peft."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftkit.cli import flags
from ftkit.cli.options import (BatchSize, Debug, MaxNew, QuantOpt, Sets, TaskOpt, app, bounded, drop_none, emit,
                               gen_sets, guarded, summarise)
from ftkit.config import key_help
from ftkit.errors import UsageError
from ftkit.util.files import check_writable


@app.command()
@guarded
def train(
    recipe: Annotated[Optional[str], typer.Argument(help="Recipe YAML file, or the name of a shipped recipe "
                                                         "(`ftkit recipes`).")] = None,
    task: flags.Task = None,
    method: flags.Method = None,
    model: flags.Model = None,
    data: Annotated[Optional[list[str]], typer.Option(
        metavar="FILE", help=key_help("data.train") + " Repeat --data for several.")] = None,
    eval_data: flags.EvalData = None,
    output: flags.Output = None,
    quant: flags.Quant = None,
    epochs: flags.Epochs = None,
    max_steps: flags.MaxSteps = None,
    lr: flags.Lr = None,
    batch_size: flags.BatchSize = None,
    grad_accum: flags.GradAccum = None,
    max_length: flags.MaxLength = None,
    seed: flags.Seed = None,
    precision: flags.Precision = None,
    gradient_checkpointing: flags.GradientCheckpointing = None,
    trust_remote_code: flags.TrustRemoteCode = None,
    allow_pickle: flags.AllowPickle = None,
    report_to: Annotated[Optional[str], typer.Option(help=key_help("train.report_to"))] = None,
    run_name: flags.RunName = None,
    overwrite: flags.Overwrite = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run dir from its newest checkpoint (same "
                                              "command, or RUN/ftkit.yaml as the recipe).")] = False,
    quiet: flags.Quiet = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the resolved config, a data "
                                                            "summary and the model's size; train nothing, write "
                                                            "nothing.")] = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Fine-tune a model. Precedence: defaults < RECIPE < flags < --set."""
    from ftkit import config
    from ftkit.config import recipes

    given = flags.settings(task=task, method=method, output=output, model=model, quant=quant,
                           trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, eval_data=eval_data,
                           max_length=max_length, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                           grad_accum=grad_accum, seed=seed, precision=precision,
                           gradient_checkpointing=gradient_checkpointing, run_name=run_name)
    if data:
        given.setdefault("data", {})["train"] = data[0] if len(data) == 1 else data
    if report_to:
        given.setdefault("train", {})["report_to"] = report_to.split(",")
    cfg = config.resolve(recipes.find(recipe) if recipe else None, given, set_ or [])
    from ftkit.commands.train import train as run_train

    start = time.perf_counter()
    summary = run_train(cfg, overwrite=overwrite, resume=resume, dry_run=dry_run, quiet=quiet)
    if dry_run:
        from ftkit.cli.tables import print_dry_run

        print_dry_run(summary)
        return
    summarise(summary, cfg.output, start)


@app.command("eval")
@guarded
def eval_(
    run: Annotated[str, typer.Argument(help="Run dir, exported checkpoint, or a model (zero-shot baseline).")],
    data: Annotated[str, typer.Option(help="Data file or built-in dataset to evaluate on.")],
    task: TaskOpt = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the metrics JSON here.")] = None,
    batch_size: BatchSize = 64,
    generate: Annotated[bool, typer.Option("--generate", help="gen: also generate a response per prompt and "
                                                              "score exact match and ROUGE-L.")] = False,
    max_new_tokens: MaxNew = None,
    quant: QuantOpt = None,
    confusion_png: Annotated[Optional[Path], typer.Option(help="cls/tag: also draw the confusion matrix into this "
                                                               "PNG file.")] = None,
    all_rows: Annotated[bool, typer.Option("--all-rows", help="Score every row even when --data is the run's own "
                                                              "training data (by default: the rows it held "
                                                              "out).")] = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Evaluate on labelled data: cls/tag accuracy, F1 and per-class scores; gen loss and perplexity. Given the
    run's own training data, scores the rows the run held out."""
    from ftkit.cli.tables import print_eval
    from ftkit.commands.inference import eval_data, evaluate
    from ftkit.rundir.runs import load_trained, locate

    sets = (set_ or []) + gen_sets(max_new_tokens) + (["task.generate_eval=true"] if generate else [])
    if confusion_png is not None and confusion_png.suffix.lower() != ".png":
        raise UsageError(f"--confusion-png {confusion_png}: expected a .png file name")
    for flag, path in (("--output", output), ("--confusion-png", confusion_png)):
        if path is not None:
            check_writable(path, flag)  # before the work, not after it
    target = locate(run, task)
    if confusion_png is not None and not target.task.labelled:
        raise UsageError(f"--confusion-png: task {target.task.name!r} has no confusion matrix (cls and tag do)")
    rows = eval_data(target, data, sets, all_rows)  # checked before any weights load
    loaded = load_trained(target, quant=quant)
    metrics = evaluate(loaded, rows, sets, batch_size)
    for line in rows.notes:
        typer.echo(line, err=True)
    if confusion_png is not None:
        from ftkit.rundir.plots import confusion

        if "confusion_matrix" not in metrics:
            raise UsageError(f"--confusion-png: {run} has no confusion matrix (single-label cls and tag models "
                             "have one; multi-label and regression ones do not)")
        cm = metrics["confusion_matrix"]
        confusion(cm["matrix"], cm["labels"], confusion_png, title=f"{Path(run).name} on {Path(data).name}")
    print_eval(metrics)
    if output:
        emit(metrics, output)


@app.command()
@guarded
def predict(
    run: Annotated[str, typer.Argument(help="Run dir, exported checkpoint, or a model.")],
    text: Annotated[Optional[list[str]], typer.Option(help="An input text; repeat it for several (one result "
                                                           "each, in order).")] = None,
    file: Annotated[Optional[str], typer.Option(help="A data file; every row is predicted.")] = None,
    task: TaskOpt = None,
    output: Annotated[Optional[Path], typer.Option(help="Write jsonl here (default: stdout).")] = None,
    batch_size: BatchSize = 32,
    max_new_tokens: MaxNew = None,
    quant: QuantOpt = None,
    set_: Sets = None,
    debug: Debug = False,
):
    """Predict: labels with probabilities (cls), tags per word (tag), or generated text (gen), as JSON lines.
    A single gen --text without --output streams the response to the terminal."""
    from ftkit.commands.inference import predict as run_predict, settings
    from ftkit.rundir.runs import load_trained

    if (not text) == (file is None):
        raise UsageError("predict: give --text (one or more) or --file, not both")
    if output is not None:
        check_writable(output, "--output")
    loaded = load_trained(run, task, quant)
    stream = loaded.task.streams and text is not None and len(text) == 1 and output is None
    rows = run_predict(loaded, texts=text, file=file, sets=(set_ or []) + gen_sets(max_new_tokens),
                       batch_size=batch_size, stream=stream)
    if not stream:
        emit(rows, output)
    if cut := sum(bool(row.get("truncated")) for row in rows):
        n = settings(loaded, set_ or []).data.max_length
        typer.echo(f"note: {cut} of {len(rows)} texts are longer than data.max_length={n} tokens; the model read "
                   f"only their first {n} (rows marked \"truncated\": true)", err=True)
    if output is not None:
        typer.echo(f"wrote {len(rows)} prediction{'s' if len(rows) != 1 else ''} to {output}", err=True)


@app.command()
@guarded
def export(
    run: Annotated[str, typer.Argument(help="A finished run dir.")],
    output: Annotated[str, typer.Option(help="Directory to write (must be new or empty).")],
    merge: Annotated[bool, typer.Option("--merge", help="Merge the adapter into the base: a plain transformers "
                                                        "checkpoint (the default).")] = False,
    adapter_only: Annotated[bool, typer.Option("--adapter-only", help="Copy only the PEFT adapter (+ tokenizer, "
                                                                      "label maps).")] = False,
    format_: Annotated[str, typer.Option("--format", help="hf (a transformers checkpoint) or onnx (cls/tag: merged, "
                                                          "dynamic batch and sequence axes, verified against "
                                                          "PyTorch).")] = "hf",
    int8: Annotated[bool, typer.Option("--int8", help="onnx: also write model.int8.onnx (dynamic int8 "
                                                      "quantization; compare with `ftkit eval`).")] = False,
    debug: Debug = False,
):
    """Export a run as a plain checkpoint (merged), as its adapter alone, or as ONNX for deployment."""
    if merge and adapter_only:
        raise UsageError("export: --merge and --adapter-only exclude each other")
    from ftkit.commands.export import export as run_export

    out = run_export(run, output, adapter_only=adapter_only, fmt=format_, int8=int8)
    if format_ == "onnx":
        check = json.loads((out / "onnx.json").read_text())["verification"]
        typer.echo(f"verified: onnxruntime logits within {check['max_abs_diff']:.2g} of PyTorch's on "
                   f"{len(check['verified_shapes'])} input shapes (allowed {check['atol']} + {check['rtol']} x "
                   "|logit|)")
        if "int8" in check:
            q = check["int8"]
            typer.echo(f"int8: {q['file']}, logits within {q['max_abs_diff']:.2g} of fp32's, same prediction "
                       f"for {100 * q['same_prediction']:.1f}% of the sample outputs")
    typer.echo(f"exported to {out}")


@app.command()
@guarded
def sweep(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file or shipped recipe name; every trial starts from "
                                               "it.")],
    param: Annotated[list[str], typer.Option("--param", help="KEY=V1,V2,...: values to try for a config key (or "
                                                             "lr, epochs, batch_size, max_length, method, ...); "
                                                             "repeatable.")],
    output: Annotated[str, typer.Option(help="Sweep directory: one run dir per trial, the leaderboard, "
                                             "best.yaml.")],
    strategy: Annotated[str, typer.Option(help="grid (every combination) or random (--trials of them).")] = "grid",
    trials: Annotated[Optional[int], typer.Option(help="How many trials (random: default 8; grid: the first N "
                                                       "combinations).", callback=bounded(1))] = None,
    seed: Annotated[int, typer.Option(help="Seed for drawing the random trials.", callback=bounded(0))] = 0,
    resume: Annotated[bool, typer.Option(help="Finish a half-done sweep in --output (same arguments).")] = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Hyper-parameter search: train one run per combination, then rank them by the task's main metric
    (SWEEP/leaderboard.md) and save the best config as a recipe (SWEEP/best.yaml)."""
    from ftkit.commands import sweep as sw
    from ftkit.config import recipes

    recipes.find(recipe)  # a bad name fails before anything else
    params = sw.parse_params(param)
    plan = sw.Plan(recipe=recipe, params=params, strategy=strategy,
                   trials=sw.plan_trials(params, strategy, trials, seed), sets=set_ or [], seed=seed)
    rows = sw.run_sweep(plan, Path(output), resume, typer.echo)
    typer.echo(sw.render(rows, plan))
    if rows and rows[0]["status"] == "done":
        typer.echo(f"best: {rows[0]['trial']}; its config: {Path(output) / 'best.yaml'}")


@app.command()
@guarded
def info(
    model: Annotated[str, typer.Argument(help="Built-in model name or checkpoint dir.")] = "minilm",
    task: Annotated[str, typer.Option(help="Task family.")] = "cls",
    method: Annotated[str, typer.Option(help="Fine-tuning method.")] = "lora",
    quant: Annotated[str, typer.Option(help="none, 8bit or 4bit base.")] = "none",
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per device per step (default: "
                                                           "train.batch_size).", callback=bounded(1))] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per example (default: data.max_length's "
                                                           "default for the model).", callback=bounded(1))] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing",
                                                                   help="Estimate with activations "
                                                                        "recomputed.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Parameters (total, trainable for the method) and an estimate of peak training memory per device: weights,
    gradients and AdamW state, and the activations of one batch (traced on the architecture, no weights read)."""
    from ftkit.cli.tables import print_info
    from ftkit.commands.info import info as run_info

    flags = {"task": task, "method": method, "model": {"name": model, "quant": quant},
             "data": {"max_length": max_length},
             "train": {"batch_size": batch_size, "gradient_checkpointing": gradient_checkpointing}}
    result = run_info(drop_none(flags), set_ or [])
    if json_:
        emit(result, None)
    else:
        print_info(result)


@app.command()
@guarded
def recipes(
    action: Annotated[Optional[str], typer.Argument(help="`show` (or a recipe name directly).")] = None,
    name: Annotated[Optional[str], typer.Argument(help="The recipe to print.")] = None,
    debug: Debug = False,
):
    """List the shipped recipes (`ftkit recipes`), or print one (`ftkit recipes show NAME`); pass a name to
    `ftkit train`."""
    from ftkit.config import recipes as rec

    if action == "show" and name is None:
        raise UsageError("recipes show: give a recipe name (see `ftkit recipes`)")
    if action not in (None, "show"):
        if name is not None:
            raise UsageError(f"recipes: unknown action {action!r}; use `ftkit recipes show NAME`")
        name = action
    if name:
        typer.echo(rec.find(name).read_text(encoding="utf-8"), nl=False)
        return
    if not rec.shipped():  # the package data is missing: a broken install, not a usage error
        raise RuntimeError(f"no shipped recipes in {rec.RECIPES_DIR}; reinstall ftkit")
    for stem, path in rec.shipped().items():
        typer.echo(f"{stem:<20} {rec.describe(path)}")


@app.command()
@guarded
def env(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of the text block.")] = False,
    debug: Debug = False,
):
    """What to paste into a bug report: ftkit, Python, platform, torch and its CUDA/ROCm build, the libraries ftkit
    drives, the GPUs with their memory, CPUs, and $FTKIT_CACHE with its size."""
    from ftkit.commands import env as envinfo

    info = envinfo.collect()
    if json_:
        emit(info, None)
    else:
        typer.echo(envinfo.render(info))


import ftkit.cli.more  # noqa: E402, F401 — registers serve, ui, distill and prune after this module's commands


def main() -> None:
    app(prog_name="ftkit")
