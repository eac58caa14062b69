"""`ftkit export`: a merged plain transformers checkpoint, or the PEFT adapter alone."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ftkit.errors import UsageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_output(output: str) -> Path:
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--output {output}: exists and is not empty; choose a new directory")
    return out


def export(run: str, output: str, adapter_only: bool = False) -> Path:
    """Write the export to a temporary sibling dir, then rename it into place (never half-written)."""
    from ftkit.methods import METHODS
    from ftkit.models import load_trained

    out = check_output(output)
    loaded = load_trained(run, quant="none")  # merge into a full-precision base, never into k-bit weights
    is_adapter = (loaded.path / "adapter_config.json").is_file()
    if adapter_only and not is_adapter:
        raise UsageError(f"{run}: has no adapter (method {loaded.cfg.method_name if loaded.cfg else 'full'}); "
                         "export it with --merge")
    if is_adapter and not adapter_only and loaded.cfg is not None:
        method = METHODS.get(loaded.cfg.method_name)
        if not method.mergeable:
            raise UsageError(f"{run}: method {method.name} adds virtual tokens and cannot be merged into the base "
                             "weights; use --adapter-only")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if adapter_only:
            for name in ADAPTER_FILES:
                shutil.copy2(loaded.path / name, tmp / name)
            # config.json carries the label maps the head was trained with
            shutil.copy2(loaded.path / "config.json", tmp / "config.json")
        else:
            model = loaded.model.merge_and_unload() if is_adapter else loaded.model
            model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
