"""`ftkit env`: the block users paste into a bug report — ftkit, Python, the platform, the libraries ftkit drives,
the accelerators torch sees, CPUs and the cache. Loads no model; the libraries' versions come from their installed
metadata, so only torch is imported (for the GPUs)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import ftkit

LIBRARIES = ("transformers", "peft", "accelerate", "bitsandbytes", "onnxruntime", "tokenizers", "safetensors",
             "numpy")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:  # removed while we walked
                pass
    return total


def collect() -> dict:
    import torch

    from ftkit.data.catalog import cache_dir

    build = "CPU only"
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        build = f"ROCm {torch.version.hip}"
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": props.name, "memory_bytes": props.total_memory})
    cache = cache_dir()
    return {
        "ftkit": ftkit.__version__,
        "ftkit_path": str(Path(ftkit.__file__).resolve().parent),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_build": build,
        **{name: _version(name) for name in LIBRARIES},
        "gpus": gpus,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ftkit_cache": str(cache),
        "ftkit_cache_bytes": _tree_bytes(cache) if cache.is_dir() else None,
    }


def render(info: dict) -> str:
    from ftkit.util.units import human_bytes

    gpus = "; ".join(f"{g['index']}: {g['name']}, {human_bytes(g['memory_bytes'])}" for g in info["gpus"]) or "none"
    cpus = f"{info['cpus']}" + (f" ({info['cpus_usable']} usable)" if info["cpus_usable"] != info["cpus"] else "")
    cache = info["ftkit_cache"] + (f" ({human_bytes(info['ftkit_cache_bytes'])})"
                                   if info["ftkit_cache_bytes"] is not None else " (not created yet)")
    rows = [("ftkit", f"{info['ftkit']} ({info['ftkit_path']})"), ("python", info["python"]),
            ("platform", info["platform"]), ("torch", f"{info['torch']} ({info['torch_build']})"),
            *[(name, info[name] or "not installed") for name in LIBRARIES],
            ("GPUs", gpus), ("CPUs", cpus), ("FTKIT_CACHE", cache)]
    return "\n".join(f"{k:<13} {v}" for k, v in rows)
