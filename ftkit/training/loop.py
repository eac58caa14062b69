"""The one training/evaluation loop, on Accelerate. Plain code, readable top to bottom."""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class LoopResult:
    step: int
    best: dict | None  # eval metrics of the best evaluation (by the task's main metric)
    stopped_early: bool
    train_seconds: float
    best_weights: Path | None  # the directory holding the best evaluation's weights (save_pretrained)


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, sort inside mega-batches of 50 batches, shuffle the
    batches. Cuts padding (and so compute) on variable-length text while keeping the order random."""
    rng = random.Random(seed * 1000003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * 50
    batches = []
    for s in range(0, len(idx), mega):
        chunk = sorted(idx[s:s + mega], key=lambda i: -lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class EpochBatches:
    """A batch sampler whose order changes every epoch (``use_epoch``), deterministically from the seed. Not named
    ``set_epoch``: Accelerate's data loader calls that with its own iteration count, which restarts at 0 in a
    resumed process; the loop's epoch is the one that counts."""

    def __init__(self, lengths, batch_size, seed, grouped):
        self.lengths, self.batch_size, self.seed, self.grouped, self.epoch = lengths, batch_size, seed, grouped, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.grouped:
            return iter(length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch))
        idx = list(range(len(self.lengths)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(idx)
        return iter([idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)])

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)


def make_optimizer(model, lr: float, weight_decay: float, lr_scales: dict[str, float] | None = None):
    """AdamW over trainable parameters; no decay on biases and norm weights (1-D tensors); a parameter whose name
    contains a fragment of ``lr_scales`` learns at that multiple of ``lr`` (the method's, e.g. LoRA+). Fused — one
    kernel for the whole update — on CPU as on CUDA: on CPU 4.6x faster than foreach (multi-tensor) over MiniLM's
    22.7M parameters, 3.1x over its LoRA parameters (bench/PARTS.md)."""
    import torch

    scales = lr_scales or {}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((s for fragment, s in scales.items() if fragment in name), 1.0)
            groups.setdefault((p.ndim >= 2, scale), []).append(p)
    # the run's own rate first: the loop logs the first group's
    order = sorted(groups, key=lambda k: (k[1] != 1.0, k[1], not k[0]))
    return torch.optim.AdamW([{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr": lr * k[1]}
                              for k in order], lr=lr, fused=True)


def evaluate(model, loader, task, labels, cfg, accelerator) -> dict:
    """Loss and the task's metrics over the whole loader. Predictions/references are collected per example
    (scalars for cls, one row per sentence for tag) so the task sees each example whole."""
    import torch

    model.eval()
    losses, preds, refs = [], [], []
    with torch.inference_mode():
        for batch in loader:
            loss, p, r = task.eval_batch(model, batch)
            if p.ndim > 1:  # ranks pad their batches to different widths; gathering needs one width
                p = accelerator.pad_across_processes(p, dim=1, pad_index=-100)
                r = accelerator.pad_across_processes(r, dim=1, pad_index=-100)
            # gather_for_metrics drops the samples the sampler repeated to even out the last batch across ranks;
            # per-example losses make the mean exact (a batch mean would count the repeated samples)
            loss, p, r = accelerator.gather_for_metrics((loss.detach().float(), p, r))
            losses.append(loss.cpu())
            preds.extend(p.cpu().numpy())
            refs.extend(r.cpu().numpy())
    model.train()
    # NaN: an example with nothing to score (a gold label the model was not trained on), left out of the mean
    return {"loss": float(torch.cat(losses).nanmean()), **task.metrics(preds, refs, labels, cfg)}


def check_forward(model, batch: dict, task, what: str) -> None:
    """One forward pass on one real batch before the run dir is made, so that a model the method cannot run on
    (peft refusing an architecture, say) is refused up front — exit 2, nothing written — instead of failing at the
    first step. In evaluation mode without gradients: no dropout draws from the random streams the run uses, and no
    gradient memory for a large model still on the host."""
    import torch

    from ftkit.errors import UsageError, first_line

    device = next(model.parameters()).device
    if any(p.is_meta for p in model.parameters()):
        return  # FSDP's RAM-efficient loading: ranks past the first get their weights from it when sharding
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            task.eval_batch(model, batch)
    except (UsageError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise UsageError(f"{what} cannot run: {type(e).__name__}: {first_line(e)}") from None
    finally:
        model.train(was_training)


def plan_steps(n_train: int, cfg, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for ``n_train`` examples; the batches are sharded over
    the processes (Accelerate's even batches), then accumulated. Without max_steps: the epochs' steps, at least
    train.min_steps."""
    t = cfg.train
    batches = math.ceil(math.ceil(n_train / t.batch_size) / num_processes)
    per_epoch = max(1, math.ceil(batches / t.grad_accum))
    return per_epoch, t.max_steps or max(1, math.ceil(t.epochs * per_epoch), t.min_steps)


def eval_interval(steps_per_epoch: int, total: int, t) -> int:
    """Optimizer steps between evaluations: train.eval_every, else whole epochs — every k-th, k the smallest that
    keeps the evaluations before the end to train.max_evals (epochs // k <= max_evals)."""
    if t.eval_every:
        return t.eval_every
    return steps_per_epoch * (total // steps_per_epoch // (t.max_evals + 1) + 1 if t.max_evals else 1)


class StopSignals:
    """SIGTERM/SIGINT set a flag instead of killing the process: the loop checkpoints at the next optimizer step and
    stops. A second SIGINT interrupts at once. All ranks agree on the flag (one tiny all-reduce per step, only when
    there are several processes), so they checkpoint at the same step."""

    def __enter__(self):
        import threading

        self.signal, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.signal is not None
        import torch

        flag = torch.tensor([float(self.signal is not None)], device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0


def train_loop(*, model, train_features, eval_features, collate, task, labels, main_metric, cfg, accelerator,
               reporter, make_checkpointer, resume: bool = False, step_hook: Callable[[int], None] | None = None,
               loss_fn=None, lr_scales: dict[str, float] | None = None) -> LoopResult:
    """``loss_fn(model, batch)``: the training loss when not the model's own (tasks.Batching). ``lr_scales``: the
    method's (make_optimizer)."""
    import torch
    from accelerate.utils import DistributedType
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from ftkit.errors import RunStopped

    t = cfg.train
    sampler = EpochBatches([len(f["input_ids"]) for f in train_features], t.batch_size, t.seed, t.group_by_length)
    # Own generators: a DataLoader draws a seed for every iterator it starts, from the global RNG otherwise — and a
    # resumed run starts its iterator at another point of the dropout stream than the run it continues.
    train_loader = DataLoader(train_features, batch_sampler=sampler, collate_fn=collate,
                              generator=torch.Generator().manual_seed(t.seed))
    eval_loader = DataLoader(eval_features, batch_size=t.batch_size * 2, collate_fn=collate,  # no grads: 2x fits
                             generator=torch.Generator().manual_seed(t.seed))
    optimizer = make_optimizer(model, t.lr, t.weight_decay, lr_scales)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    checkpointer = make_checkpointer(model)  # it needs the prepared model's parameter names

    steps_per_epoch, total = plan_steps(len(train_features), cfg, accelerator.num_processes)
    # Not passed through accelerator.prepare: we step it once per optimizer step ourselves, on a step count that
    # already accounts for sharding, so it needs none of AcceleratedScheduler's per-process stepping.
    scheduler = get_scheduler({"constant": "constant_with_warmup"}.get(t.scheduler, t.scheduler), optimizer,
                              num_warmup_steps=int(t.warmup_ratio * total), num_training_steps=total)
    eval_every = eval_interval(steps_per_epoch, total, t)
    save_every = eval_every if t.save_every is None else t.save_every
    params = [p for p in model.parameters() if p.requires_grad]
    samples_per_step = t.batch_size * t.grad_accum * accelerator.num_processes

    step, epoch, best, bad_evals, stopped, skip = 0, 0, None, 0, False, 0
    running = torch.zeros((), device=accelerator.device)  # loss summed on device: no host sync per step
    micro = last_log_step = 0
    last_saved = None
    n = accelerator.num_processes
    if resume and (state := checkpointer.restore()) is not None:
        # counts and the loss sum are saved for all processes together: a run resumed on another number of
        # processes (same samples per step, train.check_resumable) shares them out again; older checkpoints kept
        # the main process's own, for the same number of processes
        share = n if "processes" in state else 1
        step, epoch, skip, best, bad_evals = (state["step"], state["epoch"], state["batches_in_epoch"] // share,
                                              state["best"], state["bad_evals"])
        scheduler.load_state_dict(state["scheduler"])
        running.fill_(state["running_loss"] / share)
        micro, last_log_step, last_saved = state["micro"] // share, state["last_log_step"], state["path"]
        accelerator.step = 0  # checkpoints fall on optimizer steps: the accumulation starts afresh either way
    if resume:
        reporter.resumed(step, last_saved)

    def loop_state() -> dict:  # on every rank (the loss sum is a collective); the main process writes it
        return {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch * n, "best": best,
                "bad_evals": bad_evals, "scheduler": scheduler.state_dict(),
                "running_loss": accelerator.reduce(running, "sum").item(), "micro": micro * n,
                "last_log_step": last_log_step, "processes": n, "samples_per_step": samples_per_step,
                "sharded": accelerator.distributed_type == DistributedType.FSDP}

    def check_finite(what: str, value: float) -> None:
        if not math.isfinite(value):
            kept = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written yet"
            raise RunStopped(f"{what} became {value} by step {step}; {kept}. Lower --lr, raise "
                             "train.warmup_ratio or train.max_grad_norm, or train in fp32")

    start = last_log = time.perf_counter()
    reporter.start(total, done=step)
    model.train()
    with StopSignals() as stop:
        while step < total and not stopped:
            sampler.use_epoch(epoch)
            batches_in_epoch, loader = skip, (accelerator.skip_first_batches(train_loader, skip) if skip
                                              else train_loader)
            skip = 0
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, t.max_grad_norm)
                    optimizer.step()  # the prepared optimizer only steps when gradients are synced
                    if step_hook and accelerator.sync_gradients:
                        step_hook(step)  # e.g. AdaLoRA's budget allocation: after the step, before zeroing grads
                    optimizer.zero_grad(set_to_none=True)
                running += loss.detach()
                micro += 1
                batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                if step % t.log_every == 0 or step == total:
                    now = time.perf_counter()
                    # .item() is a host sync (a GPU stall): done only here, once per log interval
                    loss_value = accelerator.reduce(running, "mean").item() / micro
                    check_finite("the training loss", loss_value)
                    rate = samples_per_step * (step - last_log_step) / max(now - last_log, 1e-9)
                    reporter.log({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                  "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0],
                                  "samples_per_s": round(rate, 2)})
                    running.zero_()
                    micro, last_log, last_log_step = 0, now, step
                if step % eval_every == 0 or step == total:
                    eval_start = time.perf_counter()
                    metrics = evaluate(model, eval_loader, task, labels, cfg, accelerator)
                    check_finite("the evaluation loss", metrics["loss"])
                    last_log += time.perf_counter() - eval_start  # keep eval time out of the training throughput
                    reporter.eval(step, metrics)
                    new, old = metrics[main_metric], best[main_metric] if best else None
                    if best is None or (new > old if task.maximize else new < old):
                        best, bad_evals = {"step": step, **metrics}, 0
                        checkpointer.save_best(step)
                    else:
                        bad_evals += 1
                        if t.patience and bad_evals >= t.patience:
                            reporter.note(f"early stopping: {main_metric} has not improved for {bad_evals} "
                                          f"evaluations (best {best[main_metric]:.4f} at step {best['step']})")
                            stopped = True
                            break
                if step >= total:
                    break
                interrupted = stop.requested(accelerator)
                if interrupted or (save_every and step % save_every == 0):
                    check_finite("the training loss", accelerator.reduce(running, "mean").item())
                    last_saved = checkpointer.save(step, loop_state())
                if interrupted:
                    name = signal.Signals(stop.signal).name if stop.signal else "a signal on another rank"
                    reporter.finish()
                    raise RunStopped(f"{name} at step {step}/{total}; checkpoint saved: {last_saved}. Continue "
                                     "with the same command plus --resume", 128 + (stop.signal or signal.SIGTERM))
            epoch += 1
    reporter.finish()
    return LoopResult(step, best, stopped, time.perf_counter() - start,
                      checkpointer.best_path(best["step"]) if best else None)
