"""`ftkit info`: parameter counts for a method and an estimate of the memory training takes (ftkit.modeling.memory)."""

from __future__ import annotations

from ftkit import config as config_mod


def info(flags: dict, sets: list[str]) -> dict:
    """No weights are read: counts come from the model built on the meta device, activations from a depth-1/2 copy
    with random weights (ftkit.modeling.memory)."""
    cfg = config_mod.build(config_mod.merge_layers([("flags", flags), ("--set", config_mod.parse_set(sets))]))
    return describe(cfg)


def describe(cfg, labels: list[str] | None = None) -> dict:
    """Parameter counts and memory of ``cfg``'s model and method (``labels`` sizes the head)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ftkit.methods import METHODS, Context
    from ftkit.modeling import memory
    from ftkit.modeling.loading import count_params, load_tokenizer
    from ftkit.rundir.base import resolve_max_length
    from ftkit.rundir.runs import base_model_path
    from ftkit.tasks import TASKS
    from ftkit.util.libraries import prepare_libraries

    task, method = TASKS.get(cfg.task_name), METHODS.get(cfg.method_name)
    prepare_libraries()
    path = base_model_path(cfg.model.name)
    labels = labels or ["0", "1"]
    model_config = AutoConfig.from_pretrained(path, **task.config_overrides(labels),
                                              trust_remote_code=cfg.model.trust_remote_code)
    with init_empty_weights():
        model = task.model_class(model_config).from_config(model_config,
                                                           trust_remote_code=cfg.model.trust_remote_code)
    # Outside the context: inside it, tying re-registers the shared weight as a new (untied) meta tensor.
    # Adapter weights the method adds are small and real.
    model.tie_weights()
    ctx = Context(head=task.head_modules(model), peft_task_type=task.peft_task_type(model_config),
                  total_steps=1000, base_path=str(path))  # the step count only shapes AdaLoRA's schedule
    model = method.apply(model, cfg.method_params, ctx)
    trainable, total = count_params(model)
    weights = memory.weight_bytes(model, cfg.model.quant, ctx.head)
    train_state = memory.ADAMW_STATE_BYTES * trainable
    max_length = resolve_max_length(cfg, model_config, load_tokenizer(path, cfg.model.trust_remote_code), path)
    # a quantized base always trains with gradient checkpointing (rundir.base.load_for_training)
    checkpointing = cfg.train.gradient_checkpointing or cfg.model.quant != "none"
    activations = memory.activation_bytes(cfg, task, method, model_config, ctx, max_length, checkpointing)
    return {"model": cfg.model.name, "path": str(path), "task": task.name, "method": method.name,
            "quant": cfg.model.quant, "precision": cfg.train.precision, "batch_size": cfg.train.batch_size,
            "max_length": max_length, "gradient_checkpointing": checkpointing,
            "total_params": total, "trainable_params": trainable,
            "trainable_share": trainable / total, "weights_bytes": weights,
            "training_state_bytes": train_state, "activations_bytes": activations,
            "estimated_peak_bytes": weights + train_state + activations}
