"""`ftkit export`: a merged plain transformers checkpoint, the PEFT adapter alone, or ONNX (see modeling.onnx)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ftkit.errors import UsageError
from ftkit.rundir import layout
from ftkit.util.files import check_writable

ADAPTER_FILES = (layout.ADAPTER_CONFIG, layout.ADAPTER_WEIGHTS)


def check_output(output: str) -> Path:
    out = check_writable(output, "--output", directory=True)
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--output {output}: exists and is not empty; choose a new directory")
    return out


def export(run: str, output: str, adapter_only: bool = False, fmt: str = "hf", int8: bool = False) -> Path:
    """Write the export to a temporary sibling dir, then rename it into place (never half-written).
    ``fmt``: hf (a transformers checkpoint, or the adapter alone) or onnx (merged, verified; ``int8`` adds a
    dynamically quantized copy)."""
    from ftkit.methods import METHODS
    from ftkit.rundir.runs import load_trained, merged

    if fmt not in ("hf", "onnx"):
        raise UsageError(f"--format {fmt}: expected hf or onnx")
    if fmt == "onnx" and adapter_only:
        raise UsageError("export: --adapter-only exports the PEFT adapter; ONNX needs the merged model (--merge)")
    if int8 and fmt != "onnx":
        raise UsageError("export: --int8 quantizes an ONNX export; add --format onnx")
    if fmt == "onnx":
        from ftkit.modeling.onnx import check_available

        check_available()
    out = check_output(output)
    loaded = load_trained(run, quant="none")  # merge into a full-precision base, never into k-bit weights
    if fmt == "onnx" and not loaded.task.onnx:
        raise UsageError(f"{run}: ONNX export covers cls and tag models; task {loaded.task.name!r} is not one")
    is_adapter = layout.has_adapter(loaded.path)
    if adapter_only and not is_adapter:
        raise UsageError(f"{run}: has no adapter (method {loaded.cfg.method_name if loaded.cfg else 'full'}); "
                         "export it with --merge")
    if is_adapter and not adapter_only and loaded.cfg is not None:
        method = METHODS.get(loaded.cfg.method_name)
        if not method.mergeable:
            fix = "it cannot be exported to ONNX" if fmt == "onnx" else "use --adapter-only"
            raise UsageError(f"{run}: method {method.name} adds virtual tokens and cannot be merged into the base "
                             f"weights; {fix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only; the export gets the user's usual permissions
    try:
        if adapter_only:
            for name in ADAPTER_FILES:
                shutil.copy2(loaded.path / name, tmp / name)
            # config.json carries the label maps the head was trained with
            shutil.copy2(loaded.path / layout.MODEL_CONFIG, tmp / layout.MODEL_CONFIG)
        elif fmt == "onnx":
            from ftkit.modeling.onnx import export_onnx

            export_onnx(merged(loaded), loaded, tmp, int8)
        else:
            merged(loaded).save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
