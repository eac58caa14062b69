"""Scale-out through Accelerate: which engine the launcher chose, the combinations ftkit refuses up front, and a
check that every rank ends training with the same weights.

ftkit never starts processes itself. ``torchrun --nproc_per_node N -m ftkit train ...`` (CPU: gloo; GPU: NCCL) or
``accelerate launch [--config_file accelerate/fsdp.yaml] -m ftkit train ...`` start N copies; Accelerate reads
the launcher's environment, shards the batches and all-reduces the gradients (DDP), or shards parameters (FSDP,
DeepSpeed ZeRO) when its config file says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from ftkit.errors import UsageError


def engine() -> str:
    """fsdp, deepspeed, ddp (several processes) or single, from what the launcher put in the environment."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return "deepspeed"
    return "ddp" if world_size() > 1 else "single"


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_scale_out(cfg) -> None:
    """Refusals that depend on the launcher, before any model is loaded."""
    import importlib.util

    kind = engine()
    quant = cfg.model.quant
    if kind == "fsdp" and quant != "none":
        raise UsageError(f"--quant {quant} with FSDP: bitsandbytes {quant} weights cannot be sharded by FSDP as "
                         "ftkit loads them (8-bit never, 4-bit only with a bf16 quant storage ftkit does not set "
                         "up); use DDP (torchrun / accelerate launch --multi_gpu) with --quant, or FSDP with "
                         "--quant none")
    if kind == "fsdp":
        import torch

        if not torch.cuda.is_available():
            # Accelerate (1.x) turns an FSDP launch into FSDP only on accelerators; on CPU its state stays MULTI_CPU
            # and prepare() wraps the model in DDP: every rank would hold the whole model, not a shard
            raise UsageError("FSDP on CPU: Accelerate applies an FSDP config only on GPUs (on CPU it would run plain "
                             "data parallel with the whole model on every process, silently); use torchrun "
                             "--nproc_per_node N for CPU data parallel, or FSDP on a machine with GPUs")
    if kind == "deepspeed":
        if quant != "none" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3":
            raise UsageError(f"--quant {quant} with DeepSpeed ZeRO-3: ZeRO-3 partitions the parameters, which "
                             "bitsandbytes weights allow only with a bf16 quant storage ftkit does not set up (8-bit "
                             "never); use ZeRO-2 (accelerate/deepspeed-zero2.yaml) or DDP with --quant")
        if importlib.util.find_spec("deepspeed") is None:
            raise UsageError("the Accelerate config selects DeepSpeed, which is not installed: pip install deepspeed")


def lost_contact(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another process died, hung past the timeout or dropped
    its connection (torch's Dist* errors; gloo raises plain RuntimeErrors that say so)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out"))


@contextlib.contextmanager
def stopped_when_contact_is_lost(accelerator, run_dir, cfg):
    """A lost process ends the run with one line: what happened, the newest checkpoint, how to resume."""
    try:
        yield
    except Exception as e:
        if accelerator.num_processes == 1 or not lost_contact(e):
            raise
        from ftkit.checkpoint import newest_loop_state
        from ftkit.errors import RunStopped, first_line

        state = newest_loop_state(run_dir)
        kept = (f"the newest checkpoint is at step {state['step']} in {run_dir}/checkpoints" if state else
                "no checkpoint was written yet")
        raise RunStopped(f"lost contact with another process ({first_line(e)}; a hung one is given up after "
                         f"train.collective_timeout = {cfg.train.collective_timeout} s); {kept}. Continue with the "
                         "same command plus --resume, on any number of processes: --grad-accum keeps the samples "
                         "per step") from e


def weights_digest(model) -> str:
    """A hash of the trainable parameters, to compare across ranks."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(accelerator, model) -> None:
    """Data-parallel ranks must end with identical weights; anything else is a bug worth failing loudly for."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    digests = gather_object([weights_digest(model)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {accelerator.num_processes} processes ended training with different weights "
                           f"({len(set(digests))} distinct); the run is not trustworthy")
