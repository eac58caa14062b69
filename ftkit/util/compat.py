"""Adaptations to upstream changes that ftkit's dependencies have not caught up with. Each says which versions
need it; remove it once every version the project allows has the fix."""

from __future__ import annotations

import inspect
import types


def accept_past_key_values(model) -> None:
    """Let peft's prefix tuning find the key/value cache argument of a transformers >= 5.24 backbone.

    transformers 5.24 renamed the cache argument of every model's ``forward`` from ``past_key_values`` to
    ``cache`` (the old name is still accepted, with a deprecation warning, until 5.40, but no longer appears in
    the signature). peft <= 0.21.2 routes prefix tuning of models whose head's ``forward`` takes no cache argument
    (BERT's sequence and token classification, question answering) through the backbone, after checking the
    backbone's signature for ``past_key_values`` — so it raises "Model does not support past key values" for
    every BERT-family model. peft finds the backbone as the first child of the model that is a transformers model;
    each such child whose ``forward`` takes ``cache`` and not ``past_key_values`` gets an instance ``forward``
    that takes ``past_key_values`` too and passes it on as ``cache`` (its signature is the original one plus that
    keyword, for anyone inspecting it). A no-op before transformers 5.24, and on models that take no cache.
    Applied to the base model before peft wraps it or loads an adapter into it."""
    from transformers import PreTrainedModel

    for child in model.children():
        if isinstance(child, PreTrainedModel):
            _rename_cache_argument(child)
    if isinstance(model, PreTrainedModel):  # a causal LM, which peft hands the prefix itself (as past_key_values)
        _rename_cache_argument(model)


def generate_with_virtual_tokens(peft_model) -> None:
    """Let peft's prompt learning (prefix and prompt tuning) reach generation's key/value cache on transformers
    >= 5.24.

    peft <= 0.21.2 reads the cache that ``generate`` keeps, and puts the prefix in, under ``past_key_values``;
    since 5.24 ``generate`` keeps it under ``cache``. So peft never sees it: prefix tuning's prefix went in as
    ``past_key_values`` beside the empty ``cache``, which the model uses — every token was generated as if there
    were no adapter (tests/test_compat.py) — and prompt tuning took every step for the first. Here the base model's
    inputs reach peft with the cache under its old name, and peft's reach the model under the new one. A no-op for
    other adapters, before 5.24, and on models that take no cache."""
    if not getattr(peft_model, "active_peft_config", None) or not peft_model.active_peft_config.is_prompt_learning:
        return
    base = getattr(peft_model, "base_model_prepare_inputs_for_generation", None)
    model = peft_model.get_base_model()
    if base is None or "cache" not in inspect.signature(model.forward).parameters:
        return
    peft_prepare = model.prepare_inputs_for_generation  # peft's own, which calls ``base``

    def to_peft(*args, **kwargs):
        inputs = base(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def to_model(*args, **kwargs):
        inputs = peft_prepare(*args, **kwargs)
        if "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    peft_model.base_model_prepare_inputs_for_generation = to_peft
    model.prepare_inputs_for_generation = to_model


def _rename_cache_argument(module) -> None:
    signature = inspect.signature(module.forward)
    if "cache" not in signature.parameters or "past_key_values" in signature.parameters:
        return
    inner = module.__dict__.get("forward")  # a hook's wrapper (accelerate's device placement) stays in the chain

    def forward(self, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            if kwargs.get("cache") is not None:
                raise TypeError("pass the key/value cache as `cache` or `past_key_values`, not both")
            kwargs["cache"] = past_key_values
        return inner(*args, **kwargs) if inner is not None else type(self).forward(self, *args, **kwargs)

    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    forward.__signature__ = signature.replace(parameters=[self_param, *params])
    forward.__doc__ = type(module).forward.__doc__
    # bound with MethodType, not a closure over the module: a deep copy of the module gets its own binding
    module.forward = types.MethodType(forward, module)
