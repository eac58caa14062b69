"""Fixtures: a tiny random BERT checkpoint with its own WordPiece vocabulary, tiny sentiment data, and a helper
that runs the real CLI entry point in-process (resetting Accelerate's per-process state between runs)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("FTKIT_CACHE", str(Path.home() / ".cache" / "ftkit"))

POSITIVE = ["good", "great", "fine", "nice", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "movie", "film", "was", "is", "a", "plot", "acting", "really", "very", "quite", "story"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(FILLER, rng.randint(2, 7))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the suffix names."""
    import csv

    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(suffix)
    return path


def build_tiny_bert(out: Path, layers: int = 2) -> Path:
    """A 32-wide BERT of ``layers`` layers with a vocabulary of the fixture words. Large init range and no dropout so
    that even frozen-backbone methods learn something in a few steps. (bench/gpu.py builds its models with it too.)"""
    from transformers import BertConfig, BertModel

    fast = _wordpiece_tokenizer(POSITIVE + NEGATIVE + FILLER + ["john", "mary", "paris", "london"], causal=False)
    fast.save_pretrained(out)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {"train": write_rows(d / "train.csv", sentiment_rows(160, seed=1)),
            "eval": write_rows(d / "eval.csv", sentiment_rows(40, seed=2))}


def run_cli(*args: str):
    """Invoke the real Typer app in-process; returns click's Result (exit_code, stdout, stderr)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from typer.testing import CliRunner

    from ftkit.cli.app import app

    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        # only one Accelerator state may exist per process; each CLI call is a fresh "process"
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


@pytest.fixture
def cli():
    return run_cli


def fail_at_evaluation(monkeypatch, n: int) -> None:
    """The n-th evaluation of the next in-process run raises (a power cut): the run stops after the checkpoints
    written so far. ``monkeypatch.undo()`` restores evaluation."""
    import ftkit.training.loop

    real, calls = ftkit.training.loop.evaluate, {"n": 0}

    def power_cut(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("power cut")
        return real(*a, **k)

    monkeypatch.setattr(ftkit.training.loop, "evaluate", power_cut)


def train_args(model: Path, data: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", model, "--data", data["train"], "--eval-data", data["eval"], "--output", out,
            "--batch-size", "16", "--max-length", "32", "--lr", "5e-3", *extra]


def ner_rows(n: int, seed: int) -> list[dict]:
    """Sentences with one person or location name at a random position (IOB2 tags)."""
    rng = random.Random(seed)
    names = {"john": "PER", "mary": "PER", "paris": "LOC", "london": "LOC"}
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, 4)
        tags = ["O"] * 4
        k, name = rng.randint(0, 4), rng.choice(sorted(names))
        words.insert(k, name)
        tags.insert(k, f"B-{names[name]}")
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict]) -> Path:
    blocks = ["\n".join(f"{w} NN {t}" for w, t in zip(r["tokens"], r["tags"])) for r in rows]
    path.write_text("-DOCSTART- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ner(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ner")
    return {"train": write_conll(d / "train.conll", ner_rows(120, seed=1)),
            "eval": write_rows(d / "eval.jsonl", ner_rows(30, seed=2))}


def _wordpiece_tokenizer(words: list[str], *, causal: bool):
    """A fast WordPiece tokenizer over ``words`` (+ letters as sub-words). Encoder style adds [CLS] .. [SEP];
    causal style adds only [CLS] as BOS, uses [SEP] as EOS and carries a small chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = specials + sorted(set(words)) + [f"##{c}" for c in letters] + list(letters + ".,!'?:")
    vocab = {w: i for i, w in enumerate(dict.fromkeys(tokens))}  # unique, contiguous ids
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])
    if causal:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[cls])
    else:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=[cls, sep])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
                                   **({"bos_token": "[CLS]", "eos_token": "[SEP]"} if causal else {}))
    if causal:
        fast.chat_template = ("{% for m in messages %}{{ m['role'] + ' : ' + m['content'] + ' [SEP] ' }}{% endfor %}"
                              "{% if add_generation_prompt %}{{ 'assistant :' }}{% endif %}")
    return fast


GEN_WORDS = POSITIVE + NEGATIVE + FILLER + ["user", "assistant", "what", "word"]


def build_tiny_llama(out: Path) -> Path:
    """A 2-layer Llama with a chat-template tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _wordpiece_tokenizer(GEN_WORDS, causal=True)
    tok.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory) -> Path:
    """An encoder-decoder of two tiny BERTs (how a seq2seq model is built from encoders, as in DESIGN.md)."""
    import torch
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    out = tmp_path_factory.mktemp("tiny-enc-dec")
    tok = _wordpiece_tokenizer(GEN_WORDS, causal=False)
    tok.save_pretrained(out)
    kw = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, initializer_range=0.2, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**kw), BertConfig(**kw, is_decoder=True, add_cross_attention=True))
    config.decoder_start_token_id = tok.cls_token_id
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.sep_token_id
    torch.manual_seed(0)
    model = EncoderDecoderModel(config=config)
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(out)
    return out


def copy_rows(n: int, seed: int) -> list[dict]:
    """prompt: a sentence with one sentiment word; response: that word. Learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(POSITIVE + NEGATIVE)
        words = rng.sample(FILLER, 3)
        words.insert(rng.randint(0, 3), word)
        rows.append({"prompt": "what word : " + " ".join(words), "response": word})
    return rows


@pytest.fixture(scope="session")
def copy_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gen")
    return {"train": write_rows(d / "train.jsonl", copy_rows(160, seed=1)),
            "eval": write_rows(d / "eval.jsonl", copy_rows(24, seed=2))}


class LiveServer:
    """``ftkit COMMAND ARGS --port 0`` (serve, ui) in a subprocess on 127.0.0.1: the port is read from its log;
    ``stop`` (SIGTERM, then kill) is always called by the fixtures that start one."""

    def __init__(self, command: str, *args, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "ftkit", command, *map(str, args), "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.port = None
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                if m := re.search(r" on http://127\.0\.0\.1:(\d+)", line):
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or self.port is None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, headers=None, timeout: float = 120) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, "the server exited:\n" + "\n".join(self.lines)
            if httpx.get(f"{self.url}/ready", headers=headers, timeout=5).status_code == 200:
                return
            time.sleep(0.2)
        raise AssertionError("not ready in time:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
