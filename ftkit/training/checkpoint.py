"""A run's ``checkpoints/`` directory: resumable states and the best weights so far.

``step-NNNNNNNN/`` is written by every rank through Accelerate's ``save_state`` (optimizer, each process's RNG
states, the gradient-accumulation counter), plus ``loop.json`` (the loop's own position: step, epoch, batches
consumed, scheduler, best evaluation, running loss) and, for methods that keep state outside their parameters
(AdaLoRA's importance scores), ``method_state.pt``. Only trainable parameters are stored (a save hook filters
Accelerate's model state dict): a LoRA checkpoint is the adapter, not another copy of the frozen base.

``best-step-NNNNNNNN/`` holds the weights of the best evaluation (``save_pretrained``); one is kept for every best
that a kept checkpoint refers to, so resuming from an older checkpoint still finds its best weights.

Everything is written under a ``.tmp`` name and renamed when whole. A checkpoint that does not read back (damaged
after the fact) is skipped with a warning, falling back to the previous one. Everything is read back with
``weights_only=True`` or as safetensors/JSON: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ftkit.errors import first_line
from ftkit.rundir import layout

STEP = re.compile(r"^step-(\d{8})$")
BEST = re.compile(r"^best-step-(\d{8})$")


def _dirs(root: Path, pattern: re.Pattern) -> dict[int, Path]:
    """{step: dir} of the finished directories matching ``pattern``."""
    if not root.is_dir():
        return {}
    return {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := pattern.match(p.name))}


def _replace_dir(tmp: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def newest_loop_state(run_dir: Path) -> dict | None:
    """The loop state of the newest resumable checkpoint whose loop.json reads (no weights are read)."""
    for _, ckpt in sorted(_dirs(run_dir / layout.CHECKPOINTS, STEP).items(), reverse=True):
        try:
            return json.loads((ckpt / "loop.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


class Checkpointer:
    def __init__(self, run_dir: Path, accelerator, model, method, keep: int, warn):
        """``model`` is the prepared (possibly DDP-wrapped) model; ``warn`` prints one line to the user."""
        self.root = run_dir / layout.CHECKPOINTS
        self.accelerator, self.model, self.method, self.keep, self.warn = accelerator, model, method, keep, warn
        # named as in Accelerate's saved state: the model it keeps is the unwrapped one (no DDP "module." prefix)
        self.trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        self.best_step: int | None = None
        accelerator.register_save_state_pre_hook(self._only_trainable)
        accelerator.register_load_state_pre_hook(self._check_keys)

    # --------------------------------------------------------------------------------------- Accelerate hooks
    def _only_trainable(self, models, weights, output_dir) -> None:
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in self.trainable}

    def _check_keys(self, models, input_dir) -> None:
        from safetensors import safe_open

        if not os.path.isfile(os.path.join(input_dir, "model.safetensors")):  # FSDP: sharded, read by Accelerate
            return
        with safe_open(os.path.join(input_dir, "model.safetensors"), framework="pt") as f:
            keys = set(f.keys())
        if keys != self.trainable:
            raise ValueError(f"it holds {len(keys)} tensors where the model trains {len(self.trainable)}")

    # --------------------------------------------------------------------------------------- best weights
    def best_path(self, step: int) -> Path:
        return self.root / f"best-step-{step:08d}"

    def save_best(self, step: int) -> None:
        """The current weights are the best so far (called on every rank: FSDP gathers its shards here)."""
        from accelerate.utils import DistributedType

        from ftkit.modeling.loading import without_training_only

        unwrapped = self.accelerator.unwrap_model(self.model)
        state = (self.accelerator.get_state_dict(self.model) if self.accelerator.distributed_type ==
                 DistributedType.FSDP else None)
        if self.accelerator.is_main_process:
            final = self.best_path(step)
            tmp = _fresh_tmp(final)
            # the model's own weights: not a training-only submodule's (a full model's state holds it)
            state = without_training_only(state if state is not None else unwrapped.state_dict()) or state
            unwrapped.save_pretrained(tmp, state_dict=state)
            _replace_dir(tmp, final)
            self.best_step = step
            self._prune()
        self.accelerator.wait_for_everyone()

    # --------------------------------------------------------------------------------------- resumable states
    def save(self, step: int, loop_state: dict) -> Path:
        """Write a resumable checkpoint (called on every rank at the same step)."""
        acc = self.accelerator
        final = self.root / f"step-{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            _fresh_tmp(final)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every rank's files are in tmp before the main one renames it
        if acc.is_main_process:
            import torch

            if self.method.keeps_state:
                torch.save(self.method.get_state(acc.unwrap_model(self.model)), tmp / "method_state.pt")
            (tmp / "loop.json").write_text(json.dumps(loop_state), encoding="utf-8")
            _replace_dir(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep`` states and the best weights any of them (or the run now) refers to."""
        states = _dirs(self.root, STEP)
        for step in sorted(states, reverse=True)[self.keep:]:
            shutil.rmtree(states.pop(step), ignore_errors=True)
        wanted = {self.best_step}
        for path in states.values():
            try:
                wanted.add((json.loads((path / "loop.json").read_text(encoding="utf-8"))["best"] or {}).get("step"))
            except (OSError, ValueError, KeyError):
                pass
        for step, path in _dirs(self.root, BEST).items():
            if step not in wanted:
                shutil.rmtree(path, ignore_errors=True)

    def restore(self) -> dict | None:
        """Load the newest checkpoint that reads back whole; its loop state (with ``path``), or None."""
        for step, ckpt in sorted(_dirs(self.root, STEP).items(), reverse=True):
            try:
                loop_state = json.loads((ckpt / "loop.json").read_text(encoding="utf-8"))
                best_step = (loop_state["best"] or {}).get("step")
                if best_step is not None and not self.best_path(best_step).is_dir():
                    raise FileNotFoundError(f"its best weights ({self.best_path(best_step).name}) are missing")
                self.accelerator.load_state(str(ckpt), strict=False)  # the keys are checked by _check_keys
                if self.method.keeps_state:  # a checkpoint without its file is damaged: the previous one is tried
                    import torch

                    state = torch.load(ckpt / "method_state.pt", weights_only=True)
                    self.method.set_state(self.accelerator.unwrap_model(self.model), state)
            except Exception as e:  # noqa: BLE001 — any damage: fall back to the previous checkpoint
                self.warn(f"warning: checkpoint {ckpt.name} is unreadable ({type(e).__name__}: {first_line(e)}); "
                          "trying the previous one")
                continue
            self.best_step = best_step
            if self.accelerator.is_main_process:  # best weights from after this checkpoint belong to a lost future
                for later, path in _dirs(self.root, BEST).items():
                    if later > step:
                        shutil.rmtree(path, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            return {**loop_state, "path": str(ckpt)}
        return None
