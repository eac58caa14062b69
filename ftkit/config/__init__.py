"""Typed run configuration: built-in defaults < recipe YAML < typed flags < ``--set key=value``.

Every field carries its help text (``metadata["help"]``) so the same words serve ``--help``, recipes and docs.
Task- and method-specific parameters live on the task/method objects (``params`` dataclasses); this module only
knows how to merge layers, coerce values and reject unknown keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftkit.config.layers import (PLUGGABLE, coerce, flatten, load_yaml, make_dataclass, merge_layers,  # noqa: F401
                                 normalise_pluggable, parse_set, reject_unknown)
from ftkit.errors import UsageError
from ftkit.modeling.loading import QUANTS


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name: str = _f("minilm", "A built-in model name (see `ftkit info --help`) or a local Hugging Face checkpoint dir.")
    trust_remote_code: bool = _f(False, "Allow running code shipped with the checkpoint. Off unless you trust it.")
    allow_pickle: bool = _f(False, "Allow a checkpoint whose weights are only pickle files (pytorch_model.bin), which "
                                   "can run code when loaded. Off unless you trust it.")
    quant: str = _f("none", "Quantize the frozen base with bitsandbytes: none, 8bit (LLM.int8, CPU or CUDA) or 4bit "
                            "(NF4 + double quantization, bf16 compute: QLoRA; training needs CUDA). Adapter methods "
                            "only.")


@dataclass
class DataConfig:
    train: str | list[str] = _f("polarity", "Training data: a csv/tsv/jsonl/json/parquet file or a built-in dataset "
                                            "name, or a list of them (read one after another; see `weights`).")
    weights: list[float] | None = _f(None, "With several training sources: each one's share of the training rows "
                                           "(e.g. [3, 1]: 75% and 25%), drawn once per run with the seed; a source "
                                           "short of its share repeats. Unset: every row once.")
    eval: str | None = _f(None, "Evaluation data file; when absent a seeded held-out split of `train` is used.")
    eval_fraction: float = _f(0.1, "Share of `train` held out for evaluation when `eval` is not given.")
    columns: dict = _f({}, "Column names by role, e.g. {text: sentence, label: y}; roles depend on the task.")
    format: str = _f("auto", "gen only: pairs (prompt/response), chat (messages) or text; auto picks from the "
                             "columns.")
    max_length: int | None = _f(None, "Truncate tokenized inputs to this many tokens; default 128, or the model's "
                                      "position limit (less prompt/prefix virtual tokens) when lower.")


# Run length when the user leaves it to ftkit: 3 epochs, but at least 300 optimizer steps — 3 epochs of a few
# hundred rows are a few dozen steps, far from converged (bench/DEFAULTS.md: +9.5 points on 300 polarity rows).
DEFAULT_EPOCHS = 3.0
DEFAULT_MIN_STEPS = 300


def run_length(t: "TrainConfig") -> "TrainConfig":
    """epochs and min_steps decided: explicit epochs (or max_steps, or min_steps) keep their meaning; left unset,
    the run takes DEFAULT_EPOCHS with a floor of DEFAULT_MIN_STEPS optimizer steps."""
    floor = DEFAULT_MIN_STEPS if t.epochs is None and t.max_steps is None else 0
    return dataclasses.replace(t, epochs=DEFAULT_EPOCHS if t.epochs is None else t.epochs,
                               min_steps=floor if t.min_steps is None else t.min_steps)


@dataclass
class TrainConfig:
    epochs: float | None = _f(None, f"Passes over the training data (ignored when max_steps is set). Unset: "
                                    f"{DEFAULT_EPOCHS:g}, with a floor of {DEFAULT_MIN_STEPS} optimizer steps "
                                    "(min_steps) unless max_steps or min_steps is set.")
    max_steps: int | None = _f(None, "Stop after this many optimizer steps (overrides epochs).")
    min_steps: int | None = _f(None, "Without max_steps: at least this many optimizer steps, so small data trains "
                                     "for more epochs (the best evaluation's weights are kept either way). 0: epochs "
                                     f"alone. Unset: {DEFAULT_MIN_STEPS} when epochs is unset too, else 0.")
    lr: float | None = _f(None, "Peak learning rate; default depends on the method and task (e.g. LoRA 2e-3; "
                                "full 1e-4 for cls/tag, 3e-5 for gen/mlm).")
    batch_size: int = _f(32, "Examples per device per forward pass.")
    grad_accum: int = _f(1, "Forward passes accumulated per optimizer step (effective batch = batch_size * this).")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norm weights).")
    warmup_ratio: float = _f(0.06, "Share of the optimizer steps spent warming the learning rate up from 0.")
    max_grad_norm: float = _f(1.0, "Clip gradients to this global norm (0 disables clipping).")
    scheduler: str = _f("cosine", "Learning-rate schedule after the warm-up: cosine (to 0), linear (to 0) or "
                                  "constant.")
    label_smoothing: float = _f(0.0, "cls/tag: share of each target's probability spread evenly over the labels.")
    class_weights: str = _f("none", "cls/tag: none, or auto (each label's loss weighted by its inverse frequency "
                                    "in the training rows, mean 1): minority labels count more.")
    rdrop: float = _f(0.0, "cls/tag: R-Drop weight: two dropout passes per batch, their mean loss plus this times "
                           "the symmetric KL between their outputs (0: off).")
    adversarial: str = _f("none", "cls/tag: adversarial training in embedding space: none, fgm (one step of norm "
                                  "adversarial_epsilon along the loss gradient) or pgd (adversarial_steps projected "
                                  "steps); the loss adds the perturbed batch's.")
    adversarial_epsilon: float = _f(0.1, "L2 norm of each row's perturbation of the word embeddings (fgm, pgd); "
                                         "a tenth of a MiniLM token embedding's norm (1.0 kept polarity at chance).")
    adversarial_steps: int = _f(3, "pgd: ascent steps, each epsilon / steps long, projected onto the epsilon ball.")
    precision: str = _f("fp32", "fp32, bf16 or fp16 (fp16 needs CUDA).")
    seed: int = _f(42, "Seed for initialisation, shuffling and the held-out split.")
    eval_every: int | None = _f(None, "Evaluate every N optimizer steps; default once per epoch (every few epochs "
                                      "when max_evals caps it). Always at the end.")
    max_evals: int = _f(10, "Without eval_every: evaluate every k-th epoch, k the smallest that keeps the "
                            "evaluations along the way to this many (a small set stretched to min_steps runs many "
                            "short epochs); 0: every epoch.")
    log_every: int = _f(10, "Log the training loss every N optimizer steps.")
    patience: int = _f(0, "Stop after N evaluations without improvement of the main metric (0 = never).")
    group_by_length: bool | None = _f(None, "Batch examples of similar length together to cut padding (shuffled). "
                                            "Default: on, except for gen's padding-free batches, which have no "
                                            "padding to cut (grouping there only gathers the longest rows into the "
                                            "same steps: a higher peak memory and a worse held-out perplexity).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% "
                                             "slower (non-reentrant; always on for a quantized base).")
    save_every: int | None = _f(None, "Write a resumable checkpoint every N optimizer steps (and on SIGTERM/SIGINT); "
                                      "default: at every evaluation; 0: only on a signal.")
    report_to: list[str] = _f(["none"], "Experiment trackers to log to as well: tensorboard (into RUN/tensorboard), "
                                        "wandb, mlflow, or none; several comma-separated.")
    run_name: str | None = _f(None, "The run's name in the trackers; default: the run dir's name.")
    collective_timeout: int = _f(1800, "Seconds a process waits for the others (in a gradient all-reduce or at a "
                                       "barrier) before the run fails: a dead or hung node ends the run with an "
                                       "error, not a hang. Raise it when saving or evaluating on the main process "
                                       "alone takes longer.")
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept in RUN/checkpoints (the newest ones). A finished run "
                                  "keeps none: its weights are the best evaluation's.")


@dataclass
class DistillConfig:
    teacher: str | None = _f(None, "A finished cls or tag run whose softened outputs the student learns along with "
                                   "the gold labels (`ftkit distill`).")
    alpha: float = _f(0.5, "Weight of the distillation term (KL to the teacher); 1 - alpha weighs the gold labels.")
    temperature: float = _f(2.0, "Softening temperature of both models' outputs (the KL is scaled by its square).")
    hidden_weight: float = _f(0.0, "Weight of matching hidden states (MSE, each student layer to the teacher layer "
                                   "it maps to; a student of another width through a learned projection). 0: off.")


DEFAULT_MAX_LENGTH = 128
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("linear", "cosine", "constant")
ADVERSARIAL = ("none", "fgm", "pgd")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


@dataclass
class Config:
    task: Any = _f("cls", "Task family: cls, tag, gen or mlm (in a recipe, also a mapping: `name` and the task's "
                          "parameters).")
    method: Any = _f("lora", "Fine-tuning method: full, head, lora, dora, adalora, ia3, prefix or prompt (in a "
                             "recipe, also a mapping: `name` and the method's parameters).")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The base model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training/evaluation data."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation and evaluation."})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={"help": "Knowledge distillation."})
    output: str | None = _f(None, "Run directory to write.")

    @property
    def task_name(self) -> str:
        return self.task["name"]

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def method_params(self):
        """The method's parameters as its typed ``params`` dataclass (``method`` keeps them as a mapping, the form
        ftkit.yaml and --set use)."""
        from ftkit.methods import METHODS

        params = METHODS.get(self.method_name).params
        return params(**{k: v for k, v in self.method.items() if k != "name"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "distill": DistillConfig}


def key_help(key: str) -> str:
    """The documentation of config key ``key`` (``train.lr``, ``output``): the words --help, the configuration
    reference and recipes share."""
    section, _, leaf = key.rpartition(".")
    cls = SECTIONS[section] if section else Config
    return cls.__dataclass_fields__[leaf].metadata["help"]


# --------------------------------------------------------------------------------------------- building
def build(raw: dict) -> Config:
    """Validate a merged raw dict into a typed Config. Raises UsageError naming the bad key."""
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    raw = normalise_pluggable(raw, "config")
    known = {f.name for f in dataclasses.fields(Config)}
    reject_unknown(raw, known, "")
    kwargs: dict = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise UsageError(f"config key {name!r}: expected a mapping, found {section!r}")
        kwargs[name] = make_dataclass(cls, section, prefix=f"{name}.")
    kwargs["train"] = run_length(kwargs["train"])
    for name, registry in (("task", TASKS), ("method", METHODS)):
        section = dict(raw.get(name, {}))
        section.setdefault("name", Config.__dataclass_fields__[name].default)
        entry_name = section.pop("name")
        if not isinstance(entry_name, str):
            raise UsageError(f"config key '{name}.name': expected one of {', '.join(registry.names())}, "
                             f"got {entry_name!r}")
        entry = registry.get(entry_name)
        params = make_dataclass(entry.params, section, prefix=f"{name}.")
        if name == "method":  # its settings measured per task, where the user left them unset
            params = entry.task_defaults(params, kwargs["task"]["name"], given=set(section))
        kwargs[name] = {"name": entry.name, **dataclasses.asdict(params)}
    if raw.get("output") is not None:
        kwargs["output"] = coerce(raw["output"], str, "output")
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UsageError(f"config key {key!r}: got {value!r}, expected {allowed}")


def validate(cfg: Config) -> None:
    """Range checks that need no model. The task/method objects check their own parameters."""
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    t, d = cfg.train, cfg.data
    _check(t.epochs > 0, "train.epochs", t.epochs, "a number > 0")
    _check(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps, "an integer > 0")
    _check(t.min_steps >= 0, "train.min_steps", t.min_steps, "an integer >= 0")
    _check(t.lr is None or t.lr > 0, "train.lr", t.lr, "a number > 0")
    _check(t.batch_size > 0, "train.batch_size", t.batch_size, "an integer > 0")
    _check(0 <= t.seed < 2**32, "train.seed", t.seed, "an integer in [0, 2**32)")  # numpy's and torch's range
    _check(t.grad_accum > 0, "train.grad_accum", t.grad_accum, "an integer > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "a number in [0, 1)")
    _check(t.max_grad_norm >= 0, "train.max_grad_norm", t.max_grad_norm, "a number >= 0")
    _check(t.precision in PRECISIONS, "train.precision", t.precision, " or ".join(PRECISIONS))
    _check(cfg.model.quant in QUANTS, "model.quant", cfg.model.quant, " or ".join(QUANTS))
    _check(t.eval_every is None or t.eval_every > 0, "train.eval_every", t.eval_every, "an integer > 0")
    _check(t.max_evals >= 0, "train.max_evals", t.max_evals, "an integer >= 0")
    _check(t.log_every > 0, "train.log_every", t.log_every, "an integer > 0")
    _check(t.patience >= 0, "train.patience", t.patience, "an integer >= 0")
    _check(t.save_every is None or t.save_every >= 0, "train.save_every", t.save_every, "an integer >= 0")
    _check(t.scheduler in SCHEDULERS, "train.scheduler", t.scheduler, " or ".join(SCHEDULERS))
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "a number in [0, 1)")
    _check(t.class_weights in ("none", "auto"), "train.class_weights", t.class_weights, "none or auto")
    _check(t.rdrop >= 0, "train.rdrop", t.rdrop, "a number >= 0")
    _check(t.adversarial in ADVERSARIAL, "train.adversarial", t.adversarial, " or ".join(ADVERSARIAL))
    _check(t.adversarial_epsilon > 0, "train.adversarial_epsilon", t.adversarial_epsilon, "a number > 0")
    _check(t.adversarial_steps >= 1, "train.adversarial_steps", t.adversarial_steps, "an integer >= 1")
    _check(t.collective_timeout > 0, "train.collective_timeout", t.collective_timeout, "an integer > 0")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "an integer >= 1")
    for tracker in t.report_to:
        _check(tracker in REPORT_TO, "train.report_to", tracker, " or ".join(REPORT_TO))
    _check(0 < d.eval_fraction < 1, "data.eval_fraction", d.eval_fraction, "a number in (0, 1)")
    train_sources = d.train if isinstance(d.train, list) else [d.train]
    n_sources = len(train_sources)
    _check(bool(train_sources) and all(isinstance(x, str) and x for x in train_sources), "data.train", d.train,
           "a file or built-in dataset name, or a list of them")
    _check(d.weights is None or (len(d.weights) == n_sources and n_sources > 1 and all(w > 0 for w in d.weights)),
           "data.weights", d.weights, f"one number > 0 per training source ({n_sources} given in data.train)"
           + ("; weights mix several sources" if n_sources == 1 else ""))
    _check(d.max_length is None or d.max_length > 0, "data.max_length", d.max_length, "an integer > 0")
    k = cfg.distill
    _check(0 <= k.alpha <= 1, "distill.alpha", k.alpha, "a number in [0, 1]")
    _check(k.temperature > 0, "distill.temperature", k.temperature, "a number > 0")
    _check(k.hidden_weight >= 0, "distill.hidden_weight", k.hidden_weight, "a number >= 0")
    task = TASKS.get(cfg.task_name)
    task.validate(cfg)
    single = task.single_class(cfg)
    for key in objectives_set(t):
        _check(single and k.teacher is None, f"train.{key}", getattr(t, key),
               f"its default for task {cfg.task_name}" + (" with distillation (the teacher's loss replaces it)"
                                                           if single else _ONE_CLASS))
    _check(k.teacher is None or single, "distill.teacher", k.teacher, f"unset for task {cfg.task_name}{_ONE_CLASS}")
    roles = set(task.columns)
    reject_unknown(d.columns, roles, "data.columns.")
    for role, col in d.columns.items():
        _check(isinstance(col, str) and col != "", f"data.columns.{role}", col, "a column name")
    METHODS.get(cfg.method_name).validate(cfg, task)
    if t.precision == "fp16":
        import torch  # only on this path; never for --help

        if not torch.cuda.is_available():
            raise UsageError("config key 'train.precision': fp16 needs a CUDA GPU (on CPU it silently runs in "
                             "fp32); use bf16 or fp32")


_ONE_CLASS = (" (the classification objectives and distillation need one class per row or token: cls with "
              "task.problem=single_label, or tag)")


def objectives_set(t: TrainConfig) -> list[str]:
    """The classification objectives (ftkit/training/objectives.py) switched on: their keys."""
    defaults = TrainConfig()
    return [k for k in ("label_smoothing", "class_weights", "rdrop", "adversarial")
            if getattr(t, k) != getattr(defaults, k)]


def resolve(recipe: Path | None, flags: dict, sets: list[str]) -> Config:
    """defaults < recipe < flags < --set, then validate."""
    layers: list[tuple[str, dict]] = []
    if recipe is not None:
        layers.append((str(recipe), load_yaml(recipe)))
    layers.append(("command-line flags", flags))
    layers.append(("--set", parse_set(sets)))
    return build(merge_layers(layers))


def derived(run: Config, where: str, own: dict, flags: dict, sets: list[str]) -> Config:
    """The config of a run made from a finished one (a distilled student, a pruned model's recovery): the run's
    task, data and training settings (the layer named ``where``) < ``own`` (the new run's: its model, output,
    method...) < flags < ``--set``. The run's model, method and learning rate stay behind (the new run has its own),
    as does its teacher (a pruned student recovers by distillation only when asked), and so does its length (a run
    trained with the default length saved its 300-step floor; carried over, it would override an explicit
    ``--epochs``): ``own``'s, whose floor (min_steps) gives way when the flags or --set give epochs or max_steps, as
    a fresh run's does."""
    base = run.to_dict()
    for key in ("output", "model", "method"):
        base.pop(key)
    for key in ("lr", "epochs", "max_steps", "min_steps"):
        base["train"].pop(key)
    base["distill"].pop("teacher")
    user = [("command-line flags", flags), ("--set", parse_set(sets))]
    if {"epochs", "max_steps"} & merge_layers(user).get("train", {}).keys():
        own = {**own, "train": {k: v for k, v in own.get("train", {}).items() if k != "min_steps"}}
    return build(merge_layers([(where, base), ("own", own), *user]))


def dump_yaml(cfg: Config, path: Path) -> None:
    import yaml

    from ftkit.util.files import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def field_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
