"""The one training/evaluation loop, on Accelerate. Plain code, readable top to bottom."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class LoopResult:
    step: int
    best: dict | None  # eval metrics of the best evaluation (by the task's main metric)
    stopped_early: bool
    train_seconds: float


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
    """A batch sampler whose order changes every epoch (``set_epoch``), deterministically from the seed."""

    def __init__(self, lengths, batch_size, seed, grouped):
        self.lengths, self.batch_size, self.seed, self.grouped, self.epoch = lengths, batch_size, seed, grouped, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.grouped:
            return iter(length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch))
        idx = list(range(len(self.lengths)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(idx)
        return iter([idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)])

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)


def make_optimizer(model, lr: float, weight_decay: float, cuda: bool):
    """AdamW over trainable parameters; no decay on biases and norm weights (1-D tensors). Fused on CUDA,
    foreach (multi-tensor) on CPU: one kernel launch per group instead of one per parameter."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kind = {"fused": True} if cuda else {"foreach": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **kind)


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
            # gather_for_metrics drops the samples the sampler repeated to even out the last batch across ranks
            loss, p, r = accelerator.gather_for_metrics((loss.detach().float().expand(len(r)), p, r))
            losses.append(loss.cpu())
            preds.extend(p.cpu().numpy())
            refs.extend(r.cpu().numpy())
    model.train()
    return {"loss": float(torch.cat(losses).mean()), **task.metrics(preds, refs, labels, cfg)}


def plan_steps(n_train: int, cfg, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) for ``n_train`` examples; the batches are sharded over
    the processes (Accelerate's even batches), then accumulated."""
    t = cfg.train
    batches = math.ceil(math.ceil(n_train / t.batch_size) / num_processes)
    per_epoch = max(1, math.ceil(batches / t.grad_accum))
    return per_epoch, t.max_steps or max(1, math.ceil(t.epochs * per_epoch))


def train_loop(*, model, train_features, eval_features, collate, task, labels, main_metric, cfg, accelerator,
               reporter, save_best: Callable[[object], None],
               step_hook: Callable[[int], None] | None = None) -> LoopResult:
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    t = cfg.train
    sampler = EpochBatches([len(f["input_ids"]) for f in train_features], t.batch_size, t.seed, t.group_by_length)
    train_loader = DataLoader(train_features, batch_sampler=sampler, collate_fn=collate)
    eval_loader = DataLoader(eval_features, batch_size=t.batch_size * 2, collate_fn=collate)  # no grads: 2x fits
    optimizer = make_optimizer(model, t.lr, t.weight_decay, accelerator.device.type == "cuda")
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    steps_per_epoch, total = plan_steps(len(train_features), cfg, accelerator.num_processes)
    # Not passed through accelerator.prepare: we step it once per optimizer step ourselves, on a step count that
    # already accounts for sharding, so it needs none of AcceleratedScheduler's per-process stepping.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * total), total)
    eval_every = t.eval_every or steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    samples_per_step = t.batch_size * t.grad_accum * accelerator.num_processes

    step, epoch, best, bad_evals, stopped = 0, 0, None, 0, False
    running = torch.zeros((), device=accelerator.device)  # loss summed on device: no host sync per step
    micro = last_log_step = 0
    start = last_log = time.perf_counter()
    reporter.start(total)
    model.train()
    while step < total and not stopped:
        sampler.set_epoch(epoch)
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()  # the prepared optimizer only steps when gradients are synced
                if step_hook and accelerator.sync_gradients:
                    step_hook(step)  # e.g. AdaLoRA's budget allocation: after the step, before zeroing grads
                optimizer.zero_grad(set_to_none=True)
            running += loss.detach()
            micro += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % t.log_every == 0 or step == total:
                now = time.perf_counter()
                # .item() is a host sync (a GPU stall): done only here, once per log interval
                loss_value = accelerator.reduce(running, "mean").item() / micro
                rate = samples_per_step * (step - last_log_step) / max(now - last_log, 1e-9)
                reporter.log({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": round(loss_value, 6),
                              "lr": scheduler.get_last_lr()[0], "samples_per_s": round(rate, 2)})
                running.zero_()
                micro, last_log, last_log_step = 0, now, step
            if step % eval_every == 0 or step == total:
                eval_start = time.perf_counter()
                metrics = evaluate(model, eval_loader, task, labels, cfg, accelerator)
                last_log += time.perf_counter() - eval_start  # keep eval time out of the training throughput
                reporter.eval(step, metrics)
                new, old = metrics[main_metric], best[main_metric] if best else None
                if best is None or (new > old if task.maximize else new < old):
                    best, bad_evals = {"step": step, **metrics}, 0
                    save_best(accelerator.unwrap_model(model))
                else:
                    bad_evals += 1
                    if t.patience and bad_evals >= t.patience:
                        reporter.note(f"early stopping: {main_metric} has not improved for {bad_evals} "
                                      f"evaluations (best {best[main_metric]:.4f} at step {best['step']})")
                        stopped = True
                        break
            if step >= total:
                break
        epoch += 1
    reporter.finish()
    return LoopResult(step, best, stopped, time.perf_counter() - start)
