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
from typer.core import TyperGroup

from ftkit.errors import RunStopped, UsageError, first_line


class _Commands(TyperGroup):
    """ftkit's command group: a usage error click finds (a bad or missing option value, an unknown option or
    command) is one line on stderr with exit 2, as ftkit's own usage errors are, naming the command and the
    option."""

    def make_context(self, *args, **kwargs):  # ftkit's own options (`ftkit --bogus`)
        return _one_line_errors(super().make_context, *args, **kwargs)

    def invoke(self, ctx):  # a command's arguments and options, and the command's name
        return _one_line_errors(super().invoke, ctx)


def _one_line_errors(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except typer.BadParameter.__base__ as e:  # click's UsageError (typer 0.29 vendors click; no public name)
        if type(e).__name__ != "NoArgsIsHelpError":  # plain `ftkit`: the help, as it is
            e.show = functools.partial(_one_line, e)
        raise


def _one_line(e, file=None) -> None:
    where = e.ctx.command_path if e.ctx is not None else "ftkit"
    typer.echo(f"error: {where}: {e.format_message()} (see `{where} -h`)", err=True)


app = typer.Typer(cls=_Commands,
                  help="Fine-tune pretrained Hugging Face checkpoints: classification, tagging, generation, "
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


def bounded(low: float | None = None, high: float | None = None, *, above: float | None = None,
            below: float | None = None, what: str = "an integer"):
    """An option callback that refuses a number outside [low, high] (or the open (above, below)) as the option is
    parsed — before anything loads — with exit 2 and a message naming the option:
    ``typer.Option(callback=bounded(1))`` for "an integer >= 1"."""
    parts = [f">= {low}" if low is not None else None, f"> {above}" if above is not None else None,
             f"<= {high}" if high is not None else None, f"< {below}" if below is not None else None]
    expected = f"{what} {' and '.join(p for p in parts if p)}"

    def check(value):
        if value is None:
            return value
        if ((low is not None and value < low) or (above is not None and value <= above)
                or (high is not None and value > high) or (below is not None and value >= below)):
            raise typer.BadParameter(f"got {value:g}, expected {expected}")
        return value

    return check


def number(**limits):
    """``bounded`` for a real number."""
    return bounded(what="a number", **limits)


Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set train.lr=1e-4 "
                                                                  "(repeatable; highest precedence).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task family (cls, tag, gen, mlm). Default: from the "
                                                                "run or the model's architecture.")]
QuantOpt = Annotated[Optional[str], typer.Option(help="Load the frozen weights as none, 8bit or 4bit for inference "
                                                       "(4bit works on CPU too). Default: as the run was trained.")]
MaxNew = Annotated[Optional[int], typer.Option(help="gen: tokens to generate (task.max_new_tokens).",
                                                callback=bounded(1))]
Port = Annotated[int, typer.Option(help="Port (0: any free port; the log says which).", callback=bounded(0, 65535))]
BatchSize = Annotated[int, typer.Option(help="Examples per forward pass.", callback=bounded(1))]


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
    from ftkit.util.files import write_text

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
