"""`ftkit train`: data -> model -> method -> loop -> a complete run dir. Orchestration only."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from ftkit import catalog
from ftkit import config as config_mod
from ftkit.data import Table, fingerprint, held_out_split, mix, read_table, read_training, sources, spec_name
from ftkit.errors import UsageError
from ftkit.files import check_writable, write_text


def prepare_run_dir(output: str | None, overwrite: bool, resume: bool) -> Path:
    if not output:
        raise UsageError("no run directory: pass --output RUN_DIR (or set `output:` in the recipe)")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    run_dir = check_writable(output, "--output", directory=True)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (overwrite or resume):
            raise UsageError(f"--output {output}: exists and is not empty; pass --overwrite to replace it, "
                             "--resume to continue it, or choose another directory")
        if not (run_dir / "ftkit.yaml").is_file():
            raise UsageError(f"--output {output}: is not an ftkit run dir (no ftkit.yaml); refusing to "
                             f"{'delete' if overwrite else 'resume'} it")
        if resume and (run_dir / "metrics.json").is_file():
            raise UsageError(f"--resume: {output} is a finished run (it has metrics.json); nothing to resume")
    return run_dir


# the run dir may have been moved; where it is logged to and how long processes wait do not change the run; the
# accumulation may change with the process count, keeping the samples per optimizer step (checked on its own)
RESUME_MAY_CHANGE = {"output", "train.report_to", "train.run_name", "train.collective_timeout", "train.grad_accum"}


def check_resumable(run_dir: Path, cfg: config_mod.Config) -> None:
    """A run is resumed with the settings it started with; anything else would not be the same run. On another
    number of processes, the samples per optimizer step must stay the same (--grad-accum makes up the difference):
    then the steps, the schedule and the data order continue unchanged."""
    from ftkit.checkpoint import newest_loop_state
    from ftkit.distributed import engine, world_size

    saved_cfg = config_mod.build(config_mod.load_yaml(run_dir / "ftkit.yaml"))
    saved, now = config_mod.flatten(saved_cfg.to_dict()), config_mod.flatten(cfg.to_dict())
    for key in sorted((set(saved) | set(now)) - RESUME_MAY_CHANGE):
        if saved.get(key) != now.get(key):
            raise UsageError(f"--resume: {key} is {now.get(key)!r} here but {saved.get(key)!r} in {run_dir}/ftkit.yaml;"
                             f" resume with the run's own settings: ftkit train {run_dir}/ftkit.yaml --resume")
    state, processes, t = newest_loop_state(run_dir), world_size(), cfg.train
    if state is not None and state.get("sharded", False) != (engine() == "fsdp"):
        raise UsageError("--resume: the newest checkpoint was written " + (
            "sharded by FSDP; resume under FSDP (accelerate launch --config_file accelerate/fsdp.yaml or "
            "fsdp-cpu.yaml, any number of processes)" if state.get("sharded") else
            "without FSDP; resume without it (torchrun or plain ftkit, any number of processes)"))
    samples = t.batch_size * t.grad_accum * processes
    if state is None or "samples_per_step" not in state:  # no checkpoint says what the run took: no change allowed
        if t.grad_accum != saved_cfg.train.grad_accum:
            raise UsageError(f"--resume: train.grad_accum is {t.grad_accum} here but {saved_cfg.train.grad_accum} in "
                             f"{run_dir}/ftkit.yaml, and no checkpoint records the samples per step to keep")
        return
    was = state["samples_per_step"]
    if was != samples:
        per = t.batch_size * processes
        fix = (f"--grad-accum {was // per}" if was % per == 0 else
               f"a number of processes N and --grad-accum A with {t.batch_size} x A x N = {was}")
        raise UsageError(f"--resume on {processes} process{'es' if processes > 1 else ''}: the run took {was} samples "
                         f"per optimizer step ({state.get('processes', '?')} processes), this would take {samples} "
                         f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x {processes}); resume with {fix}, "
                         "so that the steps and the data order continue unchanged")


def resolve(cfg: config_mod.Config, task, method, run_dir: Path | None, model_config,
            max_length: int) -> config_mod.Config:
    """The complete config of a run, decided once before anything loads or trains: defaults < recipe < flags < --set
    (``config.resolve``) plus what ftkit decides from the method, the base model and the data — the learning rate
    left unset (the method's default), data.max_length (``max_length``, within the model's positions),
    train.group_by_length left unset (grouped unless the batches will be packed, which leave no padding to cut), and
    absolute paths (data, model, teacher). This is what ftkit.yaml holds: training it again decides nothing anew."""
    R = dataclasses.replace
    cfg = R(cfg, train=R(cfg.train, lr=cfg.train.lr or method.lr_for(task.name)),
            data=R(cfg.data, train=_absolute(cfg.data.train), eval=_absolute(cfg.data.eval),
                   max_length=max_length),
            model=R(cfg.model, name=_absolute(cfg.model.name)), distill=R(cfg.distill, teacher=_absolute(
                cfg.distill.teacher)), output=str(run_dir.resolve()) if run_dir else None)
    if cfg.train.group_by_length is None:
        packed = task.packs(model_config, cfg, bool(method.virtual_tokens(cfg.method_params)))
        cfg = R(cfg, train=R(cfg.train, group_by_length=not packed))
    return cfg


def encode_cached(task, tokenizer, model_config, table: Table, spec, cfg) -> dict[str, list[list[int]]]:
    """Tokenize a whole table once; reused from the cache by later runs on the same data and tokenizer."""
    from ftkit.cache import cached_encodings

    # "layout": bumped when a task's encoding changes shape, so older cache entries are not read as new ones
    key = {"layout": 2, "data": fingerprint(spec), "task": task.name, "task_params": cfg.task,
           "columns": cfg.data.columns, "format": cfg.data.format, "max_length": cfg.data.max_length,
           "seq2seq": bool(getattr(model_config, "is_encoder_decoder", False)),
           "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
           "chat_template": tokenizer.chat_template}
    return cached_encodings(key, lambda: task.encode(tokenizer, table, cfg, model_config))


def training_rows(task, cfg, table: Table, targets: list, idx: list[int], origin: list[int]):
    """The training rows after ``data.weights``' mix of the sources, the task's augmented rows ((table, targets,
    note) or None), and what the log says of both."""
    notes = []
    if cfg.data.weights:
        idx, shares = mix(idx, origin, cfg.data.weights, cfg.train.seed)
        notes.append("data mix (data.weights): " + "; ".join(f"{name}: {share}" for name, share in zip(
            sources(cfg.data.train), shares)))
    augmented = task.augmentation(table, targets, idx, cfg)
    if augmented:
        notes.append(augmented[2])
    return idx, augmented, notes


def train(cfg: config_mod.Config, overwrite: bool = False, resume: bool = False, dry_run: bool = False,
          quiet: bool = False) -> dict:
    """Train and write a complete run dir; with ``dry_run``, only check everything and describe the run."""
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS, unseen_warning

    task, method = TASKS.get(cfg.task_name), METHODS.get(cfg.method_name)
    run_dir = prepare_run_dir(cfg.output, overwrite, resume) if cfg.output or not dry_run else None

    # Data first: a bad row should fail in a second, not after the model has loaded.
    train_table, origin = read_training(cfg.data.train)
    cfg, data_note = task.from_data(cfg, train_table)
    config_mod.validate(cfg)  # the settings the data decided, checked with the rest
    task.check(train_table, cfg)
    labels = task.label_space(train_table, cfg)
    if cfg.distill.teacher:  # the student answers in the teacher's label set
        from ftkit.distillation import teacher_labels

        labels = teacher_labels(cfg, task, [train_table])
    train_targets = task.targets(train_table, cfg, labels)
    if cfg.data.eval:
        eval_table = read_table(cfg.data.eval)
        task.check(eval_table, cfg)
        eval_targets = task.targets(eval_table, cfg, labels)
        eval_warning = unseen_warning(task, eval_table, cfg, labels)
        train_idx, eval_idx = list(range(len(train_table))), list(range(len(eval_table)))
    else:
        eval_table, eval_targets, eval_warning = train_table, train_targets, None
        train_idx, eval_idx = held_out_split(train_table, cfg.data.eval_fraction, cfg.train.seed)
    # shown once the reporter exists: on the main process only, respecting --quiet
    train_idx, augmented, data_notes = training_rows(task, cfg, train_table, train_targets, train_idx, origin)
    data_notes[:0] = [data_note] if data_note else []
    if len(train_idx) < cfg.train.batch_size:
        raise UsageError(f"{spec_name(cfg.data.train)}: {len(train_idx)} training rows are fewer than one batch "
                         f"(train.batch_size {cfg.train.batch_size}); lower --batch-size or add data")

    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from accelerate.utils import set_seed

    from ftkit import tracking
    from ftkit.checkpoint import Checkpointer
    from ftkit.distributed import (check_ranks_agree, check_scale_out, fsdp_on_every_device, fsdp_wrap_classes,
                                   stopped_when_contact_is_lost)
    from ftkit.loop import check_forward, plan_steps, train_loop
    from ftkit.methods import Context
    from ftkit.base_model import check_base_model, check_quant_training, load_for_training, trained_modules
    from ftkit.models import count_params, cpu_kernels
    from ftkit.plots import curves
    from ftkit.card import model_card
    from ftkit.report import Reporter
    from ftkit.baseline import behind

    check_scale_out(cfg)
    check_quant_training(cfg)
    tracking.check(cfg)
    base_config, base_tokenizer, max_length = check_base_model(cfg, task)
    if cfg.distill.teacher:
        from ftkit.distillation import check_student

        check_student(cfg, task, base_tokenizer, base_config)
    cfg = resolve(cfg, task, method, run_dir, base_config, max_length)
    if dry_run:
        from ftkit.dryrun import summary

        return {"config": cfg.to_dict(), "dry_run": summary(cfg, task, base_config, base_tokenizer, train_table,
                                                             train_targets, labels, train_idx, eval_idx)}
    resuming = resume and (run_dir / "ftkit.yaml").is_file()
    if resuming:
        check_resumable(run_dir, cfg)
    import torch  # the libraries were set up by check_base_model

    # cpu=True on a machine without CUDA: that is what makes Accelerate join a torchrun process group over gloo
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(cfg.train.precision, cfg.train.precision),
                              gradient_accumulation_steps=cfg.train.grad_accum, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(
                                  seconds=cfg.train.collective_timeout))])
    fsdp_on_every_device(accelerator, cfg.train.precision)
    accelerator.wait_for_everyone()  # every rank has checked the run dir before the main one creates it
    set_seed(cfg.train.seed)  # before the model: the new head's initialisation depends on it
    # seconds, before the model loads; on the main process, which reports it
    baseline = task.baseline((train_table, train_targets, train_idx), (eval_table, eval_targets, eval_idx), labels,
                             cfg) if accelerator.is_main_process else None
    model, tokenizer, base_path, fresh = load_for_training(cfg, task, labels, base_tokenizer)
    train_enc = encode_cached(task, tokenizer, model.config, train_table, cfg.data.train, cfg)
    eval_enc = train_enc if eval_table is train_table else encode_cached(task, tokenizer, model.config, eval_table,
                                                                         cfg.data.eval, cfg)
    if augmented:  # after the table's own rows, training only (eval_enc keeps the originals)
        extra_table, extra_targets, _ = augmented
        extra, n = task.encode(tokenizer, extra_table, cfg, model.config), len(train_table)
        train_enc = {k: v + extra[k] for k, v in train_enc.items()}
        train_targets, train_idx = train_targets + extra_targets, train_idx + list(range(n, n + len(extra_targets)))
    train_features = task.features(train_enc, train_targets, train_idx, cfg, training=True, notes=data_notes)
    eval_features = task.features(eval_enc, eval_targets, eval_idx, cfg, training=False, notes=data_notes)
    if not eval_features:
        raise UsageError(f"{cfg.data.eval or spec_name(cfg.data.train)}: the evaluation split has no usable rows")

    ctx = Context(head=trained_modules(task.head_modules(model), fresh),
                  peft_task_type=task.peft_task_type(model.config),
                  total_steps=plan_steps(len(train_features), cfg, accelerator.num_processes)[1],
                  base_path=str(base_path))
    architecture = type(model).__name__
    model = method.apply(model, cfg.method_params, ctx)
    fsdp_wrap_classes(accelerator, model)
    batches = task.batching(model, tokenizer, cfg, train_features)
    trainable, total = count_params(model)
    if cfg.distill.teacher:
        from ftkit.distillation import add_projection, distilling_loss, load_teacher

        teacher = load_teacher(cfg, task, accelerator.device)
        note = add_projection(model, teacher) if cfg.distill.hidden_weight > 0 else None
        batches = dataclasses.replace(batches, loss=distilling_loss(teacher, cfg.distill), note=note or batches.note)
    elif config_mod.objectives_set(cfg.train):
        from ftkit.objectives import class_weights, classification_loss

        weights = class_weights(train_features, len(labels)) if cfg.train.class_weights == "auto" else None
        batches = dataclasses.replace(batches, loss=classification_loss(cfg.train, weights))
    with cpu_kernels(model, cfg.train.precision):
        check_forward(model, batches.collate(eval_features[:1]), task,
                      f"method {cfg.method_name!r} on {cfg.model.name} ({architecture})")
    step_hook = method.step_hook(model)
    main_metric = task.main_metric(labels, cfg)

    main = accelerator.is_main_process
    if main and not resuming:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # only reached with --overwrite on an ftkit run dir (checked above)
        run_dir.mkdir(parents=True)
        config_mod.dump_yaml(cfg, run_dir / "ftkit.yaml")
    accelerator.wait_for_everyone()
    reporter = Reporter(run_dir, enabled=main, quiet=quiet, cfg=cfg)
    if eval_warning:
        reporter.warn(eval_warning)
    for line in data_notes:
        reporter.note(line)
    reporter.note(f"{cfg.task_name}/{cfg.method_name} on {cfg.model.name}: {len(train_features)} train / "
                  f"{len(eval_features)} eval rows, {len(labels)} labels, trainable {trainable:,} of {total:,} "
                  f"params ({100 * trainable / total:.2f}%)")

    if batches.note:
        reporter.note(batches.note)
    if baseline:
        reporter.note(f"baseline ({baseline['method']}, {baseline['seconds']:.1f} s): " + "  ".join(
            f"{k} {v:.4f}" for k, v in baseline.items() if isinstance(v, float) and k != "seconds"))
    with cpu_kernels(model, cfg.train.precision), stopped_when_contact_is_lost(accelerator, run_dir, cfg):
        result = train_loop(model=model, train_features=train_features, eval_features=eval_features,
                            collate=batches.collate, loss_fn=batches.loss, task=task, labels=labels,
                            main_metric=main_metric, cfg=cfg, accelerator=accelerator, reporter=reporter,
                            resume=resuming, step_hook=step_hook, lr_scales=method.lr_scales(cfg.method_params),
                            make_checkpointer=lambda prepared: Checkpointer(
                                run_dir, accelerator, prepared, method, cfg.train.keep_checkpoints, reporter.warn))

    check_ranks_agree(accelerator, model)
    summary = {"main_metric": main_metric, "eval": result.best,
               "train": {"steps": result.step, "seconds": round(result.train_seconds, 2),
                         "processes": accelerator.num_processes, "stopped_early": result.stopped_early,
                         "train_rows": len(train_features), "eval_rows": len(eval_features),
                         "trainable_params": trainable, "total_params": total}}
    if torch.cuda.is_available():
        summary["train"]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    if baseline:
        summary["baseline"] = baseline
        if warning := behind(summary):
            reporter.warn(warning)
    if main:
        unwrapped = accelerator.unwrap_model(model)
        for f in result.best_weights.iterdir():  # the best weights become the run's weights
            os.replace(f, run_dir / f.name)
        shutil.rmtree(run_dir / "checkpoints")
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        saved = copy.deepcopy(base.config)  # label maps in config.json, for adapter runs too
        if hasattr(saved, "quantization_config"):
            del saved.quantization_config  # the run's base is reloaded in full precision (runs.load_trained)
        task.saved_config(saved, result.best, cfg)
        saved.save_pretrained(run_dir)
        tokenizer.save_pretrained(run_dir)
        adapter = (run_dir / "adapter_config.json").is_file()
        curves(run_dir, main_metric)
        write_text(run_dir / "README.md", model_card(
            cfg, base=catalog.public_name(cfg.model.name) or str(base_path), trainable=trainable, total=total,
            metrics=result.best, seconds=result.train_seconds, n_train=len(train_features), n_eval=len(eval_features),
            adapter=adapter, auto_class=task.model_class(base.config).__name__, labelled=task.labelled,
            baseline=baseline,
            hub_task=task.hub_task, load_note=method.load_note))
        # Written last: its presence marks the run dir as complete.
        write_text(run_dir / "metrics.json", json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def _absolute(spec):
    """Paths are stored absolute in ftkit.yaml so the run can be reproduced from anywhere; names stay names (a list:
    each of them)."""
    if isinstance(spec, list):
        return [_absolute(s) for s in spec]
    if spec is None or not Path(spec).exists():
        return spec
    return str(Path(spec).resolve())
