"""Pieces every path that loads a model shares: tokenizers, the weight-format check, bitsandbytes configs, CPU
kernels, parameter counts. Training's base model is loaded by ftkit.rundir.base, finished runs by ftkit.rundir.runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ftkit.errors import UsageError, first_line

QUANTS = ("none", "8bit", "4bit")  # how the frozen base weights may be loaded (bitsandbytes for 8bit/4bit)


def cpu_kernels(model, precision: str = "fp32"):
    """A context to run ``model`` in: on CPU in fp32, PyTorch's own kernels instead of oneDNN's.

    In fp32 the only oneDNN kernels a text model meets are element-wise ones (BERT's GELU); oneDNN compiles and
    keeps them per input shape, and variable-length batches bring a new shape most steps: +170 MiB resident over 68
    lengths of one feed-forward block (+30 MiB without; tests/test_memory.py), +110 MiB peak RSS over a 128-step
    MiniLM run, and no speed gained (PyTorch's GELU times the same; bench/RESULTS.md). bf16 keeps oneDNN (its matrix
    multiplications run there), and so do quantized weights."""
    import torch

    if torch.cuda.is_available() or precision != "fp32" or not hasattr(model, "parameters") or \
            any(p.dtype != torch.float32 for p in model.parameters()):
        return contextlib.nullcontext()
    return _onednn_off()


@contextlib.contextmanager
def _onednn_off():
    import torch

    was = torch.backends.mkldnn.enabled  # only this flag: torch's flags() resets the others and warns on CPU
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        # transformers 5 would build an empty vocabulary (every word -> [UNK]) and train on that without a word
        raise UsageError(f"{path}: cannot load a tokenizer from this checkpoint (none of "
                         f"{', '.join(TOKENIZER_FILES)}); copy the base model's tokenizer files into it")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"{path}: cannot load a tokenizer from this checkpoint ({first_line(e)})") from None
    if not tok.is_fast:
        raise UsageError(f"{path}: ftkit needs a fast (Rust) tokenizer; this checkpoint only has a slow one")
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_format(path: Path, allow_pickle: bool = False) -> None:
    """Weights are read from safetensors; a checkpoint that only has pickle files (which run code when loaded) is
    refused unless the user explicitly allows it."""
    if not path.is_dir():
        return
    names = [p.name for p in path.iterdir()]
    pickled = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickled and not any(n.endswith(".safetensors") for n in names) and not allow_pickle:
        raise UsageError(f"{path}: its weights are pickle files ({', '.join(pickled)}), which can run code when "
                         "loaded; convert them to safetensors, or pass --allow-pickle if you trust the source")


# A submodule the training loss uses besides the model (distillation's hidden-state projection): it trains and is
# checkpointed with the model, but is not counted as the model's nor saved with its weights.
TRAINING_ONLY = "ftkit_training_only"


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters of the model (not of a training-only submodule)."""
    params = [p for n, p in model.named_parameters() if not n.startswith(TRAINING_ONLY)]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def without_training_only(state: dict) -> dict | None:
    """``state`` less any training-only submodule's tensors; None when there are none (save as usual)."""
    kept = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY)}
    return kept if len(kept) < len(state) else None


def quantization(mode: str, task):
    """A BitsAndBytesConfig for ``model.quant`` (None for none). The task head stays out of quantization: a new
    int8 head cannot be trained."""
    if mode == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(task.head_names)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)


def check_quant_available(mode: str) -> None:
    import importlib.util

    if mode not in QUANTS:
        raise UsageError(f"--quant {mode}: expected one of {', '.join(QUANTS)}")
    if mode != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"--quant {mode} needs bitsandbytes: pip install bitsandbytes")


def avoid_packed_cpu_kernel(model) -> None:
    """bitsandbytes' packed 4-bit CPU kernel (used on AVX512-BF16 CPUs at inference) reshapes the absmax per row
    and fails on layers whose input width is not a multiple of the block size; those keep the generic kernel."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit) and module.in_features % module.weight.blocksize:
            module.support_avx512bf16_for_cpu = False
