"""The commands for what comes after training: serve, ui, distill, prune. Registered on ``cli.options.app`` when
``ftkit.cli.app`` runs; like every command, heavy imports happen inside them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ftkit.cli import flags
from ftkit.cli.options import Debug, Port, Sets, TaskOpt, app, bounded, guarded, number, summarise


@app.command()
@guarded
def serve(
    runs: Annotated[list[str], typer.Argument(help="What to serve: run dirs, merged or ONNX exports, or built-in "
                                                   "model names; NAME=RUN sets the name requests use.",
                                              metavar="RUN...")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Port = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="FTKIT_API_KEY", help="Require `Authorization: Bearer "
                                                   "KEY` on every route but /health (or set FTKIT_API_KEY).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most requests (texts) run together in one batch.",
                                           callback=bounded(1))] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="Under concurrent load, how long a request waits for others "
                                                    "to batch with.", callback=number(low=0))] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting or running; beyond it: 503 with "
                                                "Retry-After.", callback=bounded(1))] = 256,
    max_input_chars: Annotated[int, typer.Option(help="Longest text a request may send.",
                                                 callback=bounded(1))] = 100_000,
    task: TaskOpt = None,
    debug: Debug = False,
):
    """Serve runs over HTTP: OpenAI-compatible /v1/chat/completions and /v1/completions for gen, /v1/predict for
    every task, /v1/models, /health and /ready. Adapter runs on one base model share it in memory. Stops on
    SIGTERM or Ctrl-C once in-flight requests are answered."""
    from ftkit.serve.server import serve as run_server

    run_server(runs, host=host, port=port, api_key=api_key, task=task, max_batch=max_batch, max_wait_ms=max_wait_ms,
               max_queue=max_queue, max_input_chars=max_input_chars)


@app.command()
@guarded
def ui(
    folders: Annotated[Optional[list[str]], typer.Argument(help="Folders holding run dirs and sweeps (searched "
                                                                 "recursively; default: the current one).",
                                                            metavar="[RUNS_DIR]...")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Port = 7860,
    allow_launch: Annotated[bool, typer.Option("--allow-launch", help="Let the page start, stop and resume runs "
                                                                      "(off by default).")] = False,
    debug: Debug = False,
):
    """A local web dashboard: runs (status, curves updating live, evaluation, config, model card, commands),
    comparisons of several runs, sweeps; with --allow-launch, start runs from a recipe and watch them."""
    from ftkit.ui import ui as run_ui

    run_ui(folders or [], host=host, port=port, allow_launch=allow_launch)


@app.command()
@guarded
def distill(
    teacher: Annotated[str, typer.Argument(help="A finished cls or tag run dir to learn from.")],
    output: flags.Output = None,
    student: Annotated[Optional[str], typer.Option(help="layers=N: the teacher with N evenly spaced layers kept, "
                                                        "initialised from its weights (default: half its layers); "
                                                        "or a model or checkpoint with the teacher's tokenizer.")]
    = None,
    unlabelled: Annotated[Optional[str], typer.Option(help="Texts (a .txt, one a line, or a file with a text "
                                                           "column) the teacher labels, added to the training rows.")]
    = None,
    alpha: flags.Alpha = None,
    temperature: flags.Temperature = None,
    method: flags.setting("method", str, unset="Unset: full (the student trains every weight).") = None,
    epochs: flags.Epochs = None,
    max_steps: flags.MaxSteps = None,
    lr: flags.Lr = None,
    batch_size: flags.BatchSize = None,
    seed: flags.Seed = None,
    overwrite: flags.Overwrite = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted distillation run.")] = False,
    quiet: flags.Quiet = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Distil a cls or tag run into a smaller student: the teacher's softened outputs (KL) plus the gold labels,
    through the ordinary training run (a complete, resumable run dir)."""
    from ftkit.commands.distill import distill as run_distill

    given = flags.settings(method=method, alpha=alpha, temperature=temperature, epochs=epochs, max_steps=max_steps,
                           lr=lr, batch_size=batch_size, seed=seed)
    summary = run_distill(teacher, output, student, unlabelled, given, set_ or [], overwrite=overwrite,
                          resume=resume, quiet=quiet)
    summarise(summary, output)


@app.command()
@guarded
def prune(
    run: Annotated[str, typer.Argument(help="A finished cls or tag run dir.")],
    output: flags.Output = None,
    ffn: Annotated[float, typer.Option(help="Share of each layer's feed-forward neurons to remove (the same count "
                                            "in every layer).", callback=number(low=0, below=1))] = 0.0,
    layers: Annotated[int, typer.Option(help="Whole layers to remove (the least important).",
                                        callback=bounded(0))] = 0,
    heads: Annotated[Optional[float], typer.Option(help="Attention heads: refused, with the reason.")] = None,
    samples: Annotated[int, typer.Option(help="Training rows the importance is measured on.",
                                         callback=bounded(1))] = 256,
    distil: Annotated[bool, typer.Option("--distil", help="Recover by distillation from the unpruned run.")] = False,
    gradual: Annotated[bool, typer.Option("--gradual", help="Remove the --layers one at a time, each stage "
                                                            "recovered (with --distil: distilled from the stage "
                                                            "before); --ffn goes with the last.")] = False,
    epochs: flags.setting("train.epochs", float, check=number(above=0),
                          unset="Recovery, unset: 1, with a floor of 300 optimizer steps.") = None,
    max_steps: flags.MaxSteps = None,
    lr: flags.setting("train.lr", float, check=number(above=0), unset="Recovery, unset: full fine-tuning's.") = None,
    batch_size: flags.BatchSize = None,
    seed: flags.Seed = None,
    overwrite: flags.Overwrite = False,
    quiet: flags.Quiet = False,
    set_: Sets = None,
    debug: Debug = False,
):
    """Structured pruning: remove the least important layers and feed-forward neurons of a cls or tag run
    (importance: the loss's sensitivity to each unit, measured on its training rows), then a short recovery
    fine-tuning. The result is a plain, smaller transformers checkpoint in an ordinary run dir."""
    from ftkit.commands.prune import prune as run_prune

    given = flags.settings(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, seed=seed)
    summary = run_prune(run, output, ffn=ffn, layers=layers, heads=heads, samples=samples, distil=distil,
                        gradual=gradual, flags=given, sets=set_ or [], overwrite=overwrite, quiet=quiet)
    summarise(summary, output)
