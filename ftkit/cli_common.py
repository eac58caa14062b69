"""Pieces the commands share: the Typer app, option types, the error guard every command runs under, writing JSON
records and a run's summary. No heavy imports, so that `--help` stays fast."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftkit.errors import RunStopped, UsageError, first_line

app = typer.Typer(help="Fine-tune pretrained Hugging Face checkpoints: classification, tagging, generation, "
                       "masked-LM pre-training.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain click help: rendering it through rich costs ~0.1 s per call
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from ftkit import __version__

        typer.echo(f"ftkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print ftkit's version and exit.")] = False) -> None:
    """Fine-tune pretrained Hugging Face checkpoints: classification, tagging, generation, masked-LM pre-training."""



Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set train.lr=1e-4 "
                                                                  "(repeatable; highest precedence).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task family (cls, tag, gen, mlm). Default: from the "
                                                                "run or the model's architecture.")]
QuantOpt = Annotated[Optional[str], typer.Option(help="Load the frozen weights as none, 8bit or 4bit for inference "
                                                       "(4bit works on CPU too). Default: as the run was trained.")]
MaxNew = Annotated[Optional[int], typer.Option(help="gen: tokens to generate (task.max_new_tokens).")]


def gen_sets(max_new_tokens: Optional[int]) -> list[str]:
    return [f"task.max_new_tokens={max_new_tokens}"] if max_new_tokens is not None else []


def _guard(fn, debug: bool):
    """Run a command: UsageError -> one line + exit 2; any other failure -> one line + exit 1."""
    try:
        return fn()
    except UsageError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except RunStopped as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except BrokenPipeError:  # the reader went away (`ftkit predict ... | head`): stop quietly, as SIGPIPE would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise typer.Exit(141)
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 — the CLI's last line of defence
        if debug:
            raise
        typer.echo(f"failed: {type(e).__name__}: {first_line(e)} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1)


def guarded(command):
    """A command's body run under ``_guard`` (its ``debug`` option decides whether a failure shows the traceback);
    the signature stays the command's, for Typer."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        return _guard(lambda: command(*args, **kwargs), kwargs.get("debug", False))

    return run


def emit(records, output: Optional[Path]) -> None:
    """JSON records to a file (written whole, then renamed) or to stdout."""
    if isinstance(records, dict):
        text = json.dumps(records, indent=2) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output is None:
        sys.stdout.write(text)
        return
    from ftkit.files import write_text

    write_text(output, text)


def drop_none(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def summarise(summary: dict, output, start: float | None = None) -> None:
    from accelerate import PartialState

    if not PartialState().is_main_process:  # one summary per run, not one per process
        return
    metrics = {k: v for k, v in summary["eval"].items() if isinstance(v, (int, float))}
    typer.echo("held-out: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in metrics.items()))
    if summary.get("baseline"):
        base = summary["baseline"]
        typer.echo(f"baseline ({base['method']}): " + "  ".join(
            f"{k}={base[k]:.4f}" for k in metrics if isinstance(base.get(k), float)))
    took = f"{time.perf_counter() - start:.0f} s in all, " if start is not None else ""
    typer.echo(f"run dir: {output}  ({took}{summary['train']['seconds']:.0f} s training)")
