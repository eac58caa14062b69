"""`ftkit train`: orchestration only, in named stages (as torchtune's recipes): set up the data, check what can be
checked before weights load, set up the accelerator and the model, run the loop, save the run dir."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

from ftkit import config as config_mod
from ftkit.data.sources import Table, fingerprint, held_out_split, mix, read_table, read_training, sources, spec_name
from ftkit.errors import UsageError
from ftkit.rundir import layout


# the run dir may have been moved; where it is logged to and how long processes wait do not change the run; the
# accumulation may change with the process count, keeping the samples per optimizer step (checked on its own)
RESUME_MAY_CHANGE = {"output", "train.report_to", "train.run_name", "train.collective_timeout", "train.grad_accum"}


def check_resumable(run_dir: Path, cfg: config_mod.Config) -> None:
    """A run is resumed with the settings it started with; anything else would not be the same run. On another
    number of processes, the samples per optimizer step must stay the same (--grad-accum makes up the difference):
    then the steps, the schedule and the data order continue unchanged."""
    from ftkit.training.checkpoint import newest_loop_state
    from ftkit.training.distributed import engine, world_size

    saved_cfg = layout.read_config(run_dir)
    saved, now = config_mod.flatten(saved_cfg.to_dict()), config_mod.flatten(cfg.to_dict())
    for key in sorted((set(saved) | set(now)) - RESUME_MAY_CHANGE):
        if saved.get(key) != now.get(key):
            saved_at = run_dir / layout.CONFIG
            raise UsageError(f"--resume: {key} is {now.get(key)!r} here but {saved.get(key)!r} in {saved_at}; resume "
                             f"with the run's own settings: ftkit train {saved_at} --resume")
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
                             f"{run_dir}/{layout.CONFIG}, and no checkpoint records the samples per step to keep")
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
    from ftkit.data.cache import cached_encodings

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


@dataclasses.dataclass
class Rows:
    """The data of a run, read and checked before any model loads."""

    train_table: Table
    train_targets: list
    train_idx: list[int]
    eval_table: Table
    eval_targets: list
    eval_idx: list[int]
    labels: list[str]
    augmented: tuple | None  # the task's extra training rows: (table, targets, note)
    notes: list[str]  # what the log says of the data
    eval_warning: str | None


@dataclasses.dataclass
class Prepared:
    """The model with its method applied, the batches it trains on, and what the log and the summary say of it."""

    model: object
    tokenizer: object
    base_path: Path
    train_features: list[dict]
    eval_features: list[dict]
    batches: object  # the task's Batching (collate, loss, note)
    trainable: int
    total: int


def train(cfg: config_mod.Config, overwrite: bool = False, resume: bool = False, dry_run: bool = False,
          quiet: bool = False) -> dict:
    """Train and write a complete run dir; with ``dry_run``, only check everything and describe the run."""
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    task, method = TASKS.get(cfg.task_name), METHODS.get(cfg.method_name)
    run_dir = layout.prepare(cfg.output, overwrite, resume) if cfg.output or not dry_run else None
    cfg, rows = set_up_data(cfg, task)  # first: a bad row should fail in a second, not after the model has loaded
    base_config, base_tokenizer, max_length = check_set_up(cfg, task)
    cfg = resolve(cfg, task, method, run_dir, base_config, max_length)
    if dry_run:
        from ftkit.commands.dryrun import summary

        return {"config": cfg.to_dict(), "dry_run": summary(cfg, task, base_config, base_tokenizer, rows.train_table,
                                                             rows.train_targets, rows.labels, rows.train_idx,
                                                             rows.eval_idx)}
    resuming = resume and layout.is_run(run_dir)
    if resuming:
        check_resumable(run_dir, cfg)
    accelerator = set_up_accelerator(cfg)
    # seconds, before the model loads; on the main process, which reports it
    baseline = task.baseline((rows.train_table, rows.train_targets, rows.train_idx),
                             (rows.eval_table, rows.eval_targets, rows.eval_idx), rows.labels,
                             cfg) if accelerator.is_main_process else None
    prepared = set_up_model(cfg, task, method, rows, base_tokenizer, accelerator)
    if accelerator.is_main_process and not resuming:
        layout.create(run_dir, cfg)
    accelerator.wait_for_everyone()
    main_metric = task.main_metric(rows.labels, cfg)
    result, reporter = run_training(cfg, task, method, rows, prepared, main_metric, baseline, accelerator, run_dir,
                                    resuming, quiet)
    return save(cfg, task, method, prepared, main_metric, baseline, accelerator, run_dir, result, reporter)


def set_up_data(cfg: config_mod.Config, task) -> tuple[config_mod.Config, Rows]:
    """Read and check the training and evaluation data; the held-out split when there is no evaluation file; the
    label space; the mix of several sources and the task's augmentation. -> (the config with what the data
    decided, the rows)."""
    from ftkit.tasks import unseen_warning

    train_table, origin = read_training(cfg.data.train)
    cfg, data_note = task.from_data(cfg, train_table)
    config_mod.validate(cfg)  # the settings the data decided, checked with the rest
    task.check(train_table, cfg)
    labels = task.label_space(train_table, cfg)
    if cfg.distill.teacher:  # the student answers in the teacher's label set
        from ftkit.training.distill_loss import teacher_labels

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
    train_idx, augmented, notes = training_rows(task, cfg, train_table, train_targets, train_idx, origin)
    notes[:0] = [data_note] if data_note else []
    if len(train_idx) < cfg.train.batch_size:
        raise UsageError(f"{spec_name(cfg.data.train)}: {len(train_idx)} training rows are fewer than one batch "
                         f"(train.batch_size {cfg.train.batch_size}); lower --batch-size or add data")
    return cfg, Rows(train_table, train_targets, train_idx, eval_table, eval_targets, eval_idx, labels, augmented,
                     notes, eval_warning)


def check_set_up(cfg: config_mod.Config, task):
    """Everything that can be checked before weights load: the launch, quantization, trackers, the base
    checkpoint's config and tokenizer, a distillation student against its teacher.
    -> (the base's config, its tokenizer, the data.max_length to use)."""
    from ftkit.rundir.base import check_base_model, check_quant_training
    from ftkit.training import tracking
    from ftkit.training.distributed import check_scale_out

    check_scale_out(cfg)
    check_quant_training(cfg)
    tracking.check(cfg)
    base_config, base_tokenizer, max_length = check_base_model(cfg, task)
    if cfg.distill.teacher:
        from ftkit.training.distill_loss import check_student

        check_student(cfg, task, base_tokenizer, base_config)
    return base_config, base_tokenizer, max_length


def set_up_accelerator(cfg: config_mod.Config):
    """Accelerate's process state for this launch, seeded (before the model: the new head's initialisation
    depends on it)."""
    from datetime import timedelta

    import torch  # the libraries were set up by check_base_model
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, set_seed

    from ftkit.training.distributed import fsdp_on_every_device

    # cpu=True on a machine without CUDA: that is what makes Accelerate join a torchrun process group over gloo
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(cfg.train.precision, cfg.train.precision),
                              gradient_accumulation_steps=cfg.train.grad_accum, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(
                                  seconds=cfg.train.collective_timeout))])
    fsdp_on_every_device(accelerator, cfg.train.precision)
    accelerator.wait_for_everyone()  # every rank has checked the run dir before the main one creates it
    set_seed(cfg.train.seed)
    return accelerator


def set_up_model(cfg: config_mod.Config, task, method, rows: Rows, base_tokenizer, accelerator) -> Prepared:
    """Load the base with the task head, tokenize the data (cached), apply the method, choose the loss, and check
    one forward pass before training starts."""
    from ftkit.methods import Context
    from ftkit.modeling.loading import count_params, cpu_kernels
    from ftkit.rundir.base import load_for_training, trained_modules
    from ftkit.training.distributed import fsdp_wrap_classes
    from ftkit.training.loop import check_forward, plan_steps

    model, tokenizer, base_path, fresh = load_for_training(cfg, task, rows.labels, base_tokenizer)
    train_enc = encode_cached(task, tokenizer, model.config, rows.train_table, cfg.data.train, cfg)
    eval_enc = train_enc if rows.eval_table is rows.train_table else encode_cached(
        task, tokenizer, model.config, rows.eval_table, cfg.data.eval, cfg)
    train_targets, train_idx = rows.train_targets, rows.train_idx
    if rows.augmented:  # after the table's own rows, training only (eval_enc keeps the originals)
        extra_table, extra_targets, _ = rows.augmented
        extra, n = task.encode(tokenizer, extra_table, cfg, model.config), len(rows.train_table)
        train_enc = {k: v + extra[k] for k, v in train_enc.items()}
        train_targets, train_idx = train_targets + extra_targets, train_idx + list(range(n, n + len(extra_targets)))
    train_features = task.features(train_enc, train_targets, train_idx, cfg, training=True, notes=rows.notes)
    eval_features = task.features(eval_enc, rows.eval_targets, rows.eval_idx, cfg, training=False, notes=rows.notes)
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
        from ftkit.training.distill_loss import add_projection, distilling_loss, load_teacher

        teacher = load_teacher(cfg, task, accelerator.device)
        note = add_projection(model, teacher) if cfg.distill.hidden_weight > 0 else None
        batches = dataclasses.replace(batches, loss=distilling_loss(teacher, cfg.distill), note=note or batches.note)
    elif config_mod.objectives_set(cfg.train):
        from ftkit.training.objectives import class_weights, classification_loss

        weights = class_weights(train_features, len(rows.labels)) if cfg.train.class_weights == "auto" else None
        batches = dataclasses.replace(batches, loss=classification_loss(cfg.train, weights))
    with cpu_kernels(model, cfg.train.precision):
        check_forward(model, batches.collate(eval_features[:1]), task,
                      f"method {cfg.method_name!r} on {cfg.model.name} ({architecture})")
    return Prepared(model, tokenizer, base_path, train_features, eval_features, batches, trainable, total)


def run_training(cfg: config_mod.Config, task, method, rows: Rows, prepared: Prepared, main_metric: str,
                 baseline: dict | None, accelerator, run_dir: Path, resuming: bool, quiet: bool):
    """The loop, with the progress reporter and the checkpoints in the run dir. -> (the loop's result, the
    reporter)."""
    from ftkit.modeling.loading import cpu_kernels
    from ftkit.training.checkpoint import Checkpointer
    from ftkit.training.distributed import stopped_when_contact_is_lost
    from ftkit.training.loop import train_loop
    from ftkit.training.reporter import Reporter

    model, p = prepared.model, prepared
    reporter = Reporter(run_dir, enabled=accelerator.is_main_process, quiet=quiet, cfg=cfg)
    if rows.eval_warning:
        reporter.warn(rows.eval_warning)
    for line in rows.notes:
        reporter.note(line)
    reporter.note(f"{cfg.task_name}/{cfg.method_name} on {cfg.model.name}: {len(p.train_features)} train / "
                  f"{len(p.eval_features)} eval rows, {len(rows.labels)} labels, trainable {p.trainable:,} of "
                  f"{p.total:,} params ({100 * p.trainable / p.total:.2f}%)")
    if p.batches.note:
        reporter.note(p.batches.note)
    if baseline:
        reporter.note(f"baseline ({baseline['method']}, {baseline['seconds']:.1f} s): " + "  ".join(
            f"{k} {v:.4f}" for k, v in baseline.items() if isinstance(v, float) and k != "seconds"))
    with cpu_kernels(model, cfg.train.precision), stopped_when_contact_is_lost(accelerator, run_dir, cfg):
        result = train_loop(model=model, train_features=p.train_features, eval_features=p.eval_features,
                            collate=p.batches.collate, loss_fn=p.batches.loss, task=task, labels=rows.labels,
                            main_metric=main_metric, cfg=cfg, accelerator=accelerator,
                            reporter=reporter, resume=resuming, step_hook=method.step_hook(model),
                            lr_scales=method.lr_scales(cfg.method_params),
                            make_checkpointer=lambda prepared_model: Checkpointer(
                                run_dir, accelerator, prepared_model, method, cfg.train.keep_checkpoints,
                                reporter.warn))
    return result, reporter


def save(cfg: config_mod.Config, task, method, prepared: Prepared, main_metric: str, baseline: dict | None,
         accelerator, run_dir: Path, result, reporter) -> dict:
    """The summary, and on the main process the finished run dir (ftkit.rundir.layout.finish). -> the summary."""
    import torch

    from ftkit.data import catalog
    from ftkit.data.baseline import behind
    from ftkit.rundir.card import model_card
    from ftkit.training.distributed import check_ranks_agree

    model, p = prepared.model, prepared
    check_ranks_agree(accelerator, model)
    summary = {"main_metric": main_metric, "eval": result.best,
               "train": {"steps": result.step, "seconds": round(result.train_seconds, 2),
                         "processes": accelerator.num_processes, "stopped_early": result.stopped_early,
                         "train_rows": len(p.train_features), "eval_rows": len(p.eval_features),
                         "trainable_params": p.trainable, "total_params": p.total}}
    if torch.cuda.is_available():
        summary["train"]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    if baseline:
        summary["baseline"] = baseline
        if warning := behind(summary):
            reporter.warn(warning)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        saved = copy.deepcopy(base.config)  # label maps in config.json, for adapter runs too
        if hasattr(saved, "quantization_config"):
            del saved.quantization_config  # the run's base is reloaded in full precision (rundir.runs.load_trained)
        task.saved_config(saved, result.best, cfg)
        card = model_card(cfg, base=catalog.public_name(cfg.model.name) or str(p.base_path), trainable=p.trainable,
                          total=p.total, metrics=result.best, seconds=result.train_seconds,
                          n_train=len(p.train_features), n_eval=len(p.eval_features),
                          adapter=layout.has_adapter(result.best_weights),
                          auto_class=task.model_class(base.config).__name__, labelled=task.labelled,
                          baseline=baseline, hub_task=task.hub_task, load_note=method.load_note)
        layout.finish(run_dir, result.best_weights, saved, p.tokenizer, main_metric, card, summary)
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
