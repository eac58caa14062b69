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
    if kind == "fsdp" and world_size() > 1 and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "") == "true":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("FSDP on CPU with RAM-efficient loading (fsdp_cpu_ram_efficient_loading: true, as in "
                             "accelerate/fsdp.yaml): the processes past the first start on the meta device, and "
                             "Accelerate 1.15 then cannot map the optimizer onto their shards; use "
                             "accelerate/fsdp-cpu.yaml on CPU")
    if kind == "deepspeed":
        if quant != "none" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3":
            raise UsageError(f"--quant {quant} with DeepSpeed ZeRO-3: ZeRO-3 partitions the parameters, which "
                             "bitsandbytes weights allow only with a bf16 quant storage ftkit does not set up (8-bit "
                             "never); use ZeRO-2 (accelerate/deepspeed-zero2.yaml) or DDP with --quant")
        if importlib.util.find_spec("deepspeed") is None:
            raise UsageError("the Accelerate config selects DeepSpeed, which is not installed: pip install deepspeed")
        import torch

        if not torch.cuda.is_available():
            # seen with deepspeed 0.19.8 installed: Accelerate 1.15 keeps a CPU launch multi-CPU, ignoring the config
            raise UsageError("DeepSpeed on CPU: Accelerate applies a DeepSpeed config only on accelerators (on CPU it "
                             "would run plain data parallel, silently); use accelerate/fsdp-cpu.yaml to shard on CPU, "
                             "or torchrun for data parallel")


def fsdp_on_every_device(accelerator, precision: str) -> None:
    """Accelerate (1.15) turns an FSDP launch into FSDP only on accelerators: on CPU its state stays multi-CPU and
    prepare() would wrap the model in DDP, every process holding the whole model. FSDP2 itself runs on CPU over gloo,
    so the launch's own plugin (read from the launcher's environment, as Accelerate reads it) is put in place."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if engine() != "fsdp" or accelerator.state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if precision != "fp32":
        plugin.set_mixed_precision(precision)
    # in the process-wide state too: every later AcceleratorState() copies its distributed type from there
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def fsdp_wrap_classes(accelerator, model) -> None:
    """Which blocks FSDP shards as units: the model's ``_no_split_modules``, except any holding the input
    embeddings. Accelerate (1.15) shards the input embeddings as a unit of their own after the blocks, and fails
    (``fully_shard`` on already-sharded parameters) when a block holds them, as BERT's ``BertEmbeddings`` does."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if engine() != "fsdp" or plugin is None or plugin.transformer_cls_names_to_wrap:
        return
    embeddings = model.get_input_embeddings()
    holders = {type(m).__name__ for m in model.modules() if m is not embeddings and
               any(sub is embeddings for sub in m.modules())}
    plugin.transformer_cls_names_to_wrap = [n for n in getattr(model, "_no_split_modules", None) or []
                                            if n not in holders]


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
        from ftkit.errors import RunStopped, first_line
        from ftkit.training.checkpoint import newest_loop_state

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
    if accelerator.num_processes == 1 or engine() == "fsdp":  # FSDP's processes hold different shards by design
        return
    from accelerate.utils import gather_object

    digests = gather_object([weights_digest(model)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {accelerator.num_processes} processes ended training with different weights "
                           f"({len(set(digests))} distinct); the run is not trustworthy")
