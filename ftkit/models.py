"""Loading base models and tokenizers for training, and loading finished run dirs / exported checkpoints."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ftkit import catalog
from ftkit.errors import UsageError
from ftkit.libraries import prepare_libraries


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
        raise UsageError(f"{path}: cannot load a tokenizer from this checkpoint ({str(e).splitlines()[0]})") from None
    if not tok.is_fast:
        raise UsageError(f"{path}: ftkit needs a fast (Rust) tokenizer; this checkpoint only has a slow one")
    return tok


def base_model_path(name: str) -> Path:
    """The checkpoint to train from: a built-in model, a checkpoint dir, or a finished run dir (an adapter run is
    merged into its base first, e.g. to fine-tune after domain-adaptive MLM pre-training)."""
    path = catalog.resolve_model(name)
    if not (path / "adapter_config.json").exists():
        return path
    if not (path / "ftkit.yaml").is_file():
        raise UsageError(f"{name}: is a bare adapter, not a base model; train from the run dir it came from, or "
                         f"merge it into its base (`ftkit export RUN --merge --output DIR`) and train from DIR")
    return merged_run(path)


def merged_run(run: Path) -> Path:
    """A finished adapter run dir merged into a full-precision copy of its base, cached by the adapter's content.
    Concurrent ranks each write their own copy and the first rename wins."""
    import hashlib
    import os
    import shutil

    from ftkit import config as config_mod
    from ftkit.export import export
    from ftkit.methods import METHODS

    if not (run / "metrics.json").is_file():
        raise UsageError(f"{run}: training did not finish in this run dir (no metrics.json); nothing to train from")
    method = METHODS.get(config_mod.build(config_mod.load_yaml(run / "ftkit.yaml")).method_name)
    if not method.mergeable:
        raise UsageError(f"{run}: method {method.name} adds virtual tokens and cannot be merged into its base, so "
                         "the run cannot be a base model; pre-train with lora, dora, ia3 or full")
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json"):
        digest.update((run / name).read_bytes())
    out = catalog.cache_dir() / "merged" / digest.hexdigest()[:24]
    if not (out / "config.json").is_file():
        mine = out.with_name(f"{out.name}.{os.getpid()}")
        shutil.rmtree(mine, ignore_errors=True)
        export(str(run), str(mine))
        try:
            os.replace(mine, out)
        except OSError:  # another process got there first
            shutil.rmtree(mine, ignore_errors=True)
    return out


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


def check_base_model(cfg, task):
    """What the base checkpoint's config and tokenizer can tell, before any weights load: the weight format, an
    architecture for the task, and data.max_length within the model's positions.
    -> (model config, tokenizer, the data.max_length to use)."""
    path = base_model_path(cfg.model.name)
    check_weights_format(path, cfg.model.allow_pickle)
    prepare_libraries()
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read its config.json ({str(e).strip().splitlines()[0]})") from None
    auto = task.model_class(model_config)
    if not getattr(model_config, "auto_map", None) and type(model_config) not in auto._model_mapping:
        raise UsageError(f"{path}: a {model_config.model_type!r} checkpoint has no {auto.__name__} architecture, "
                         f"so it cannot be trained for task {task.name!r}; pick a model made for it")
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    return model_config, tokenizer, resolve_max_length(cfg, model_config, tokenizer, path)


def resolve_max_length(cfg, model_config, tokenizer, where) -> int:
    """data.max_length for this model and method: the default (128, or what the model's positions leave when
    lower), or the requested value if the model can take it. The virtual tokens of prompt/prefix tuning occupy
    positions in front of the input."""
    from ftkit.config import DEFAULT_MAX_LENGTH
    from ftkit.methods import positions_taken

    requested, reserved = cfg.data.max_length, positions_taken(cfg)
    limits = [getattr(model_config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [n for n in limits + [tokenizer.model_max_length] if isinstance(n, int) and 0 < n < 10**9]
    limit = min(limits, default=None)  # None: unbounded (relative positions)
    room = None if limit is None else limit - reserved
    if room is not None and room < 1:
        raise UsageError(f"{where} has {limit} positions, all taken by the {reserved} virtual tokens of method "
                         f"{cfg.method_name!r}; lower method.num_virtual_tokens")
    if requested is None:
        return min(DEFAULT_MAX_LENGTH, room or DEFAULT_MAX_LENGTH)
    if room is not None and requested > room:
        taken = f", {reserved} of them taken by the virtual tokens of method {cfg.method_name!r}" if reserved else ""
        raise UsageError(f"config key 'data.max_length': got {requested}, but {where} has {limit} positions{taken}; "
                         f"use --max-length {room} or less")
    return requested


def load_for_training(cfg, task, labels: list[str], tokenizer=None):
    """Base model with the task head for ``labels`` -> (model, tokenizer, base path, fresh): ``fresh`` names the
    modules the checkpoint had no weights for (the new head; a pooler an MLM-trained encoder lacks), which are
    randomly initialised and so must be trained and saved with an adapter. ``tokenizer``: the base's, when already
    loaded (check_base_model)."""
    path = base_model_path(cfg.model.name)
    from transformers import AutoConfig

    if tokenizer is None:
        tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    model_config = AutoConfig.from_pretrained(path, **task.config_overrides(labels),
                                              trust_remote_code=cfg.model.trust_remote_code)
    quant = quantization(cfg.model.quant, task)
    placement = {}
    if quant:
        import torch
        from accelerate import PartialState

        placement["quantization_config"] = quant
        if torch.cuda.is_available():  # the whole quantized base on this rank's GPU, never spread across ranks
            placement["device_map"] = {"": PartialState().local_process_index}
    # The label maps go in as keyword overrides, not as config=: with an explicit config, transformers 5.23 leaves
    # most bitsandbytes layers holding fp32 weights.
    model, loading = task.model_class(model_config).from_pretrained(
        path, **task.config_overrides(labels), trust_remote_code=cfg.model.trust_remote_code,
        ignore_mismatched_sizes=True,  # a checkpoint with another head size gets a fresh head
        output_loading_info=True, **placement,
    )
    new_keys = set(loading["missing_keys"]) | {k[0] if isinstance(k, tuple) else k for k in loading["mismatched_keys"]}
    # parameters only, each under its first name: a weight tied to the embeddings (an MLM decoder) is not new
    fresh = sorted({name.rsplit(".", 1)[0] for name, _ in model.named_parameters() if name in new_keys})
    task.prepare_model(model, tokenizer)
    if quant:
        from peft import prepare_model_for_kbit_training

        # fp32 norms/head, input grads for the adapters, and non-reentrant checkpointing (the reentrant kind
        # drops the adapters' gradients under a frozen quantized base)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.train.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise UsageError(f"train.gradient_checkpointing: {type(model).__name__} does not support it; "
                             "set it to false")
        # non-reentrant: the reentrant kind drops the gradients of adapters under a frozen base
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model, tokenizer, path, fresh


def trained_modules(head: list[str], fresh: list[str]) -> list[str]:
    """The task head plus any other module the checkpoint did not provide (not one that holds part of the head,
    e.g. an MLM head's parent with the embedding-tied decoder in it)."""
    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    return head + [m for m in fresh if not any(related(m, h) for h in head)]


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

    from ftkit.config import QUANTS

    if mode not in QUANTS:
        raise UsageError(f"--quant {mode}: expected one of {', '.join(QUANTS)}")
    if mode != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"--quant {mode} needs bitsandbytes: pip install bitsandbytes")


def check_quant_training(cfg) -> None:
    """Refusals that depend on the machine, checked before any model is loaded."""
    check_quant_available(cfg.model.quant)
    if cfg.model.quant == "4bit":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--quant 4bit: training needs a CUDA GPU (on CPU, bitsandbytes silently drops the "
                             "adapters' gradients after an evaluation pass); use --quant 8bit on CPU")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    task: object
    cfg: object  # the run's Config, or None for a plain checkpoint
    path: Path


@dataclass
class Target:
    """What `eval`, `predict` or `export` was pointed at, known before any weights load (no torch imported)."""

    path: Path
    task: object
    cfg: object  # the run's Config (an ONNX export keeps its run's), or None for a plain checkpoint
    onnx: Path | None = None  # the .onnx file of an ONNX export


def locate(name: str, task_name: str | None = None) -> Target:
    """A finished run dir, an ONNX or other export, or a plain model, with its task and the run's config."""
    from ftkit import config as config_mod
    from ftkit.onnx_export import META, onnx_file
    from ftkit.tasks import TASKS

    if file := onnx_file(name):
        if not (file.parent / META).is_file():
            raise UsageError(f"{file}: not from `ftkit export --format onnx` (no {META} beside it)")
        meta = json.loads((file.parent / META).read_text(encoding="utf-8"))
        if task_name not in (None, meta["task"]):
            raise UsageError(f"{file}: exported as task {meta['task']!r}, not {task_name!r}")
        return Target(file.parent, TASKS.get(meta["task"]), config_mod.build(meta["config"]), file)
    path = catalog.resolve_model(name) if not Path(name).is_dir() else Path(name)
    cfg = None
    if (path / "ftkit.yaml").is_file():
        if not (path / "metrics.json").is_file():
            raise UsageError(f"{path}: training did not finish in this run dir (no metrics.json); nothing to load")
        cfg = config_mod.build(config_mod.load_yaml(path / "ftkit.yaml"))
        task_name = task_name or cfg.task_name
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a run dir or Hugging Face checkpoint (no config.json)")
    return Target(path, TASKS.get(task_name or _task_from_architecture(path)), cfg)


def load_trained(name: str | Target, task_name: str | None = None, quant: str | None = None) -> Loaded:
    """A finished run dir, an exported checkpoint, or a plain model (zero-shot baseline); ``name`` may be what
    ``locate`` found. ``quant`` (none, 8bit, 4bit) loads the frozen weights quantized for inference; by default a
    run's base is reloaded the way it was trained and anything else in full precision (export merges with
    quant="none")."""
    from ftkit.methods import METHODS

    target = name if isinstance(name, Target) else locate(name, task_name)
    if target.onnx:
        from ftkit.onnx_model import load_onnx

        return load_onnx(target, quant)
    if quant is not None:
        check_quant_available(quant)
    path, cfg, task = target.path, target.cfg, target.task
    prepare_libraries()
    from transformers import AutoConfig

    trust = bool(cfg and cfg.model.trust_remote_code)
    check_weights_format(path, bool(cfg and cfg.model.allow_pickle))
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    if quant is None:
        quant = cfg.model.quant if cfg is not None and (path / "adapter_config.json").is_file() else "none"
    adapter = (path / "adapter_config.json").is_file()
    if adapter:
        from peft import PeftConfig

        # the run's own model name: a run trained from another run finds (or re-makes) its merged base
        weights = base_model_path(cfg.model.name) if cfg is not None else \
            PeftConfig.from_pretrained(path).base_model_name_or_path
    else:
        weights = path
    bnb = quantization(quant, task)
    if bnb:  # label maps as overrides, not config= (see load_for_training)
        labels = [model_config.id2label[i] for i in range(len(model_config.id2label))] if task.labelled else []
        model = task.model_class(model_config).from_pretrained(
            weights, **task.config_overrides(labels), quantization_config=bnb, trust_remote_code=trust)
    else:
        model = task.model_class(model_config).from_pretrained(weights, config=model_config, trust_remote_code=trust)
    if quant == "4bit":
        _avoid_packed_cpu_kernel(model)
    if adapter:
        from peft import PeftModel

        from ftkit.compat import accept_past_key_values

        accept_past_key_values(model)  # prefix tuning on transformers >= 5.24 (a no-op for other adapters)
        model = PeftModel.from_pretrained(model, path)
        if cfg is not None and hasattr(METHODS.get(cfg.method_name), "prepare_loaded"):
            METHODS.get(cfg.method_name).prepare_loaded(model)
    model.eval()
    tokenizer = load_tokenizer(path, trust)
    task.prepare_model(model, tokenizer)
    return Loaded(model, tokenizer, task, cfg, path)


def _avoid_packed_cpu_kernel(model) -> None:
    """bitsandbytes' packed 4-bit CPU kernel (used on AVX512-BF16 CPUs at inference) reshapes the absmax per row
    and fails on layers whose input width is not a multiple of the block size; those keep the generic kernel."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit) and module.in_features % module.weight.blocksize:
            module.support_avx512bf16_for_cpu = False


def _task_from_architecture(path: Path) -> str:
    from ftkit.tasks import TASKS

    archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    for name in TASKS.names():
        if any(a.endswith(TASKS.get(name).architectures) for a in archs):
            return name
    raise UsageError(f"{path}: cannot tell the task from its architectures {archs}; pass --task "
                     f"({'|'.join(TASKS.names())})")
