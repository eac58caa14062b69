"""`ftkit train`: data -> model -> method -> loop -> a complete run dir. Orchestration only."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from ftkit import config as config_mod
from ftkit.data import Table, fingerprint, held_out_split, read_table
from ftkit.errors import UsageError


def prepare_run_dir(output: str | None, overwrite: bool) -> Path:
    if not output:
        raise UsageError("no run directory: pass --output RUN_DIR (or set `output:` in the recipe)")
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--output {output}: exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"--output {output}: exists and is not empty; pass --overwrite to replace it, "
                             "or choose another directory")
        if not (run_dir / "ftkit.yaml").is_file():
            raise UsageError(f"--output {output}: is not an ftkit run dir (no ftkit.yaml); refusing to delete it "
                             "even with --overwrite")
    return run_dir


def encode_cached(task, tokenizer, model_config, table: Table, spec: str, cfg) -> dict[str, list[list[int]]]:
    """Tokenize a whole table once; reused from the cache by later runs on the same data and tokenizer."""
    from ftkit.cache import cached_encodings

    key = {"data": fingerprint(spec), "task": task.name, "task_params": cfg.task, "columns": cfg.data.columns,
           "format": cfg.data.format, "max_length": cfg.data.max_length,
           "seq2seq": bool(getattr(model_config, "is_encoder_decoder", False)),
           "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
           "chat_template": tokenizer.chat_template}
    return cached_encodings(key, lambda: task.encode(tokenizer, table, cfg, model_config))


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train(cfg: config_mod.Config, overwrite: bool = False) -> dict:
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    task, method = TASKS.get(cfg.task_name), METHODS.get(cfg.method_name)
    run_dir = prepare_run_dir(cfg.output, overwrite)

    # Data first: a bad row should fail in a second, not after the model has loaded.
    train_table = read_table(cfg.data.train)
    task.check(train_table, cfg)
    labels = task.label_space(train_table, cfg)
    train_targets = task.targets(train_table, cfg, labels)
    if cfg.data.eval:
        eval_table = read_table(cfg.data.eval)
        task.check(eval_table, cfg)
        eval_targets = task.targets(eval_table, cfg, labels)
        train_idx, eval_idx = list(range(len(train_table))), list(range(len(eval_table)))
    else:
        eval_table, eval_targets = train_table, train_targets
        train_idx, eval_idx = held_out_split(train_table, cfg.data.eval_fraction, cfg.train.seed)

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=cfg.train.lr or method.default_lr),
                              data=dataclasses.replace(cfg.data, train=_absolute(cfg.data.train),
                                                       eval=_absolute(cfg.data.eval)),
                              model=dataclasses.replace(cfg.model, name=_absolute(cfg.model.name)),
                              output=str(run_dir.resolve()))

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ftkit.loop import plan_steps, train_loop
    from ftkit.methods import Context
    from ftkit.models import check_quant_training, load_for_training, quiet_libraries
    from ftkit.report import Reporter, model_card

    check_quant_training(cfg)
    quiet_libraries()
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(cfg.train.precision, cfg.train.precision),
                              gradient_accumulation_steps=cfg.train.grad_accum)
    set_seed(cfg.train.seed)  # before the model: the new head's initialisation depends on it
    model, tokenizer, base_path = load_for_training(cfg, task, labels)
    train_enc = encode_cached(task, tokenizer, model.config, train_table, cfg.data.train, cfg)
    eval_enc = train_enc if eval_table is train_table else encode_cached(task, tokenizer, model.config, eval_table,
                                                                         cfg.data.eval, cfg)
    train_features = task.features(train_enc, train_targets, train_idx, cfg, training=True)
    eval_features = task.features(eval_enc, eval_targets, eval_idx, cfg, training=False)

    ctx = Context(head=task.head_modules(model), peft_task_type=task.peft_task_type(model.config),
                  total_steps=plan_steps(len(train_features), cfg, accelerator.num_processes)[1],
                  base_path=str(base_path))
    model = method.apply(model, cfg.method, ctx)
    trainable, total = count_params(model)
    step_hook = method.step_hook(model) if hasattr(method, "step_hook") else None
    main_metric = task.main_metric(labels, cfg)

    main = accelerator.is_main_process
    if main:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # only reached with --overwrite on an ftkit run dir (checked above)
        run_dir.mkdir(parents=True)
        config_mod.dump_yaml(cfg, run_dir / "ftkit.yaml")
    accelerator.wait_for_everyone()
    reporter = Reporter(run_dir, enabled=main)
    reporter.note(f"{cfg.task_name}/{cfg.method_name} on {cfg.model.name}: {len(train_features)} train / "
                  f"{len(eval_features)} eval rows, {len(labels)} labels, trainable {trainable:,} of {total:,} "
                  f"params ({100 * trainable / total:.2f}%)")

    best_dir = run_dir / "checkpoints" / "best"

    def save_best(unwrapped) -> None:
        if main:  # written to a temporary name, then renamed: a crash never leaves a half-written "best"
            tmp = best_dir.with_name("best.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            unwrapped.save_pretrained(tmp)
            shutil.rmtree(best_dir, ignore_errors=True)
            os.replace(tmp, best_dir)
        accelerator.wait_for_everyone()

    result = train_loop(model=model, train_features=train_features, eval_features=eval_features,
                        collate=task.collator(tokenizer), task=task, labels=labels, main_metric=main_metric, cfg=cfg,
                        accelerator=accelerator, reporter=reporter, save_best=save_best, step_hook=step_hook)

    summary = {"eval": result.best, "train": {"steps": result.step, "seconds": round(result.train_seconds, 2),
                                              "stopped_early": result.stopped_early, "train_rows": len(train_features),
                                              "eval_rows": len(eval_features), "trainable_params": trainable,
                                              "total_params": total}}
    if main:
        unwrapped = accelerator.unwrap_model(model)
        for f in best_dir.iterdir():  # the best weights become the run's weights
            os.replace(f, run_dir / f.name)
        shutil.rmtree(run_dir / "checkpoints")
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        saved = copy.deepcopy(base.config)  # label maps in config.json, for adapter runs too
        if hasattr(saved, "quantization_config"):
            del saved.quantization_config  # the run's base is reloaded in full precision (models.load_trained)
        saved.save_pretrained(run_dir)
        tokenizer.save_pretrained(run_dir)
        adapter = (run_dir / "adapter_config.json").is_file()
        (run_dir / "README.md").write_text(model_card(
            cfg, base=str(base_path), trainable=trainable, total=total, metrics=result.best,
            seconds=result.train_seconds, n_train=len(train_features), n_eval=len(eval_features), adapter=adapter,
            auto_class=task.model_class(base.config).__name__, labelled=task.labelled),
            encoding="utf-8")
        # Written last: its presence marks the run dir as complete.
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    accelerator.wait_for_everyone()
    return summary


def _absolute(spec: str | None) -> str | None:
    """Paths are stored absolute in ftkit.yaml so the run can be reproduced from anywhere; names stay names."""
    if spec is None or not Path(spec).exists():
        return spec
    return str(Path(spec).resolve())
