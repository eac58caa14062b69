"""Tokenize once: encoded features are cached on disk (numpy .npz, no pickle) keyed by what produced them."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from ftkit.data.catalog import cache_dir
from ftkit.util.files import atomic_path


def cached_encodings(key: dict, compute: Callable[[], dict[str, list[list[int]]]]) -> dict[str, list[list[int]]]:
    """Return ``compute()``'s ragged int sequences, from the cache when ``key`` was seen before."""
    import numpy as np

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir() / "tokenized" / f"{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: _unflatten(z[f"{name}.flat"], z[f"{name}.offsets"])
                        for name in z["names"].tolist()}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed below
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"names": np.array(list(out))}
    for name, seqs in out.items():
        arrays[f"{name}.flat"] = np.fromiter((t for s in seqs for t in s), dtype=np.int64)
        arrays[f"{name}.offsets"] = np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64)
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)
    return out


def _unflatten(flat, offsets) -> list[list[int]]:
    return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
