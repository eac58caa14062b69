"""The base checkpoint a run trains from: what can be checked before any weights load, and loading it with the
task head (quantized and prepared for k-bit training where asked)."""

from __future__ import annotations

from ftkit.data.batches import positions
from ftkit.errors import UsageError, first_line
from ftkit.modeling.loading import check_quant_available, check_weights_format, load_tokenizer, quantization
from ftkit.rundir.runs import base_model_path
from ftkit.util.libraries import prepare_libraries


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
        raise UsageError(f"{path}: cannot read its config.json ({first_line(e)})") from None
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
    limit, room = positions(model_config, tokenizer), input_room(cfg, model_config, tokenizer, where)
    if requested is None:
        return min(DEFAULT_MAX_LENGTH, room or DEFAULT_MAX_LENGTH)
    if room is not None and requested > room:
        taken = f", {reserved} of them taken by the virtual tokens of method {cfg.method_name!r}" if reserved else ""
        raise UsageError(f"config key 'data.max_length': got {requested}, but {where} has {limit} positions{taken}; "
                         f"use --max-length {room} or less")
    return requested


def input_room(cfg, model_config, tokenizer, where) -> int | None:
    """The positions left for tokens once the method's virtual tokens have theirs (None: unbounded)."""
    from ftkit.methods import positions_taken

    limit, reserved = positions(model_config, tokenizer), positions_taken(cfg)
    if limit is not None and limit - reserved < 1:
        raise UsageError(f"{where} has {limit} positions, all taken by the {reserved} virtual tokens of method "
                         f"{cfg.method_name!r}; lower method.num_virtual_tokens")
    return None if limit is None else limit - reserved


def load_for_training(cfg, task, labels: list[str], tokenizer=None):
    """Base model with the task head for ``labels`` -> (model, tokenizer, base path, fresh): ``fresh`` names the
    modules the checkpoint had no weights for (the new head; a pooler an MLM-trained encoder lacks), which are
    randomly initialised and so must be trained and saved with an adapter. ``tokenizer``: the base's, when already
    loaded (check_base_model)."""
    path = base_model_path(cfg.model.name)
    from transformers import AutoConfig

    if tokenizer is None:
        tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    model_config = AutoConfig.from_pretrained(path, **task.config_overrides(labels, cfg),
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
        path, **task.config_overrides(labels, cfg), trust_remote_code=cfg.model.trust_remote_code,
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


def check_quant_training(cfg) -> None:
    """Refusals that depend on the machine, checked before any model is loaded."""
    check_quant_available(cfg.model.quant)
    if cfg.model.quant == "4bit":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--quant 4bit: training needs a CUDA GPU (on CPU, bitsandbytes silently drops the "
                             "adapters' gradients after an evaluation pass); use --quant 8bit on CPU")
