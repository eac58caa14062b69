"""`ftkit info`: parameter counts for a method and the memory the weights and training state take."""

from __future__ import annotations

from ftkit import config as config_mod


def info(model_name: str, task_name: str, method_name: str, sets: list[str]) -> dict:
    """Built on the meta device: no weights are read, so this is instant even for large checkpoints."""
    cfg = config_mod.build(config_mod.merge_layers([
        ("flags", {"task": task_name, "method": method_name, "model": {"name": model_name}}),
        ("--set", config_mod.parse_set(sets))]))
    return describe(cfg)


def describe(cfg, labels: list[str] | None = None) -> dict:
    """Parameter counts and memory of ``cfg``'s model and method (``labels`` sizes the head)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ftkit.methods import METHODS, Context
    from ftkit.models import base_model_path, quiet_libraries
    from ftkit.tasks import TASKS
    from ftkit.train import count_params

    task, method = TASKS.get(cfg.task_name), METHODS.get(cfg.method_name)
    quiet_libraries()
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
    model = method.apply(model, cfg.method, ctx)
    trainable, total = count_params(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # fp32 gradient + AdamW's two fp32 moments per trainable parameter; activations come on top and depend on
    # batch size and sequence length.
    train_state = 12 * trainable
    return {"model": cfg.model.name, "path": str(path), "task": task.name, "method": method.name,
            "total_params": total, "trainable_params": trainable,
            "trainable_share": trainable / total, "weights_bytes": weight_bytes,
            "training_state_bytes": train_state, "weights_plus_training_state_bytes": weight_bytes + train_state}
