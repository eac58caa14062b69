"""Options that set a config field, declared once for every command that takes them (train, distill, prune): the
help is the field's own documentation (``ftkit.config``; the docs' configuration reference is generated from the
same words), the range is checked as the option is parsed, and ``settings`` maps the parsed values onto the
config's keys — litgpt's idea of the config as the command line."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ftkit.cli.options import bounded, number
from ftkit.config import key_help

# option name (the command function's parameter) -> the config key it sets
KEYS: dict[str, str] = {}


def setting(key: str, kind: type, *decls: str, check=None, unset: str | None = None, name: str | None = None,
            **option):
    """The option type of config key ``key`` (``train.lr``). ``unset``: what the command does when the option is
    left out, where that differs from the field's own default (it replaces the help's sentences after the first);
    ``name``: the function parameter, when it is not the key's last part."""
    KEYS.setdefault(name or key.rsplit(".", 1)[-1], key)
    text = key_help(key)
    if unset is not None:
        text = text.split(". ")[0].rstrip(".") + ". " + unset
    text += f" [{key}]"
    return Annotated[Optional[kind], typer.Option(*decls, help=text, callback=check, show_default=False, **option)]


def settings(**values) -> dict:
    """The nested config mapping of the options given (``lr=1e-3`` -> ``{"train": {"lr": 0.001}}``); options
    left out (None) are left out."""
    out: dict = {}
    for name, value in values.items():
        if value is None:
            continue
        *sections, leaf = KEYS[name].split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


Task = setting("task", str)
Method = setting("method", str)
Model = setting("model.name", str, "--model", name="model")
Quant = setting("model.quant", str)
TrustRemoteCode = setting("model.trust_remote_code", bool, "--trust-remote-code")
AllowPickle = setting("model.allow_pickle", bool, "--allow-pickle")
EvalData = setting("data.eval", str, "--eval-data", name="eval_data")
MaxLength = setting("data.max_length", int, check=bounded(1))
Epochs = setting("train.epochs", float, check=number(above=0))
MaxSteps = setting("train.max_steps", int, check=bounded(1))
Lr = setting("train.lr", float, check=number(above=0))
BatchSize = setting("train.batch_size", int, check=bounded(1))
GradAccum = setting("train.grad_accum", int, check=bounded(1))
Seed = setting("train.seed", int, check=bounded(0))
Precision = setting("train.precision", str)
GradientCheckpointing = setting("train.gradient_checkpointing", bool, "--gradient-checkpointing")
RunName = setting("train.run_name", str)
Output = setting("output", str)
Alpha = setting("distill.alpha", float, check=number(low=0, high=1))
Temperature = setting("distill.temperature", float, check=number(above=0))

# the run-dir switches every training command takes (they choose how the run dir is written, not what is trained)
Overwrite = Annotated[bool, typer.Option(help="Replace an existing run dir (an ftkit run dir only).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or evaluation lines; warnings, errors and "
                                                           "the final summary only.")]
