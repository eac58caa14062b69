"""Fine-tuning methods. Each module registers one ``Method`` subclass in METHODS; nothing else enumerates them.

To add a method: one module here that subclasses ``Method``, declares its class attributes and ``params``, and
implements ``apply`` (plus whichever hooks it needs; each default below says what not overriding it means), and a
recipe in tasks/. The task x method matrix in tests/test_matrix.py then tests it with every task.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from ftkit.errors import UsageError
from ftkit.util.registry import Registry


class Method:
    name: str
    description: str
    params: type  # dataclass of the method's config keys (``method.KEY``), each documented at its field
    default_lr: float
    task_lr: dict = {}  # task name -> default learning rate where it differs from default_lr (bench/DEFAULTS.md)
    task_params: dict = {}  # task name -> {param: value} for params the user leaves unset (bench/DEFAULTS.md)
    mergeable: bool = True  # an adapter that `export --merge` can fold into the base weights
    load_note: str | None = None  # what a user loading the run without ftkit must know (the model card says it)

    def lr_for(self, task_name: str) -> float:
        """The learning rate a run of ``task_name`` gets when train.lr is unset."""
        return self.task_lr.get(task_name, self.default_lr)

    def task_defaults(self, params, task_name: str, given: set[str]):
        """``params`` with ``task_params`` of ``task_name`` in place of the fields not in ``given`` (the keys the
        user set), then with the defaults that follow other fields filled in (``params.settled()``, where the params
        dataclass has one), so the run's ftkit.yaml and model card show the values it trained with."""
        import dataclasses

        chosen = {k: v for k, v in self.task_params.get(task_name, {}).items() if k not in given}
        params = dataclasses.replace(params, **chosen) if chosen else params
        settled = getattr(params, "settled", None)
        return settled() if settled else params

    def validate(self, cfg, task) -> None:
        """Checks that need no model: refuse a setting or a task (``task``: the run's task object) the method cannot
        train with, with a UsageError naming the key. Default: the ``check()`` of the params dataclass, if it has
        one (ranges of its own fields, beside them)."""
        check = getattr(cfg.method_params, "check", None)
        if check is not None:
            check()

    def apply(self, model, params, ctx: "Context"):
        """Make the right parameters trainable (wrapping ``model`` in a PEFT model for an adapter method) and return
        the model to train. ``params``: an instance of the method's ``params`` dataclass (``cfg.method_params``)."""
        raise NotImplementedError

    def virtual_tokens(self, params) -> int:
        """Positions the method puts in front of the input (prompt/prefix tuning). Default: none."""
        return 0

    def lr_scales(self, params) -> dict[str, float]:
        """Parameter-name fragment -> multiple of the learning rate for the parameters whose names contain it (e.g.
        LoRA+'s faster B matrices). Default: the params dataclass's ``lr_scales()``, where it has one (beside the
        fields that set it); else none, every trainable parameter at the run's rate."""
        scales = getattr(params, "lr_scales", None)
        return scales() if scales else {}

    def step_hook(self, model):
        """A callable(step) the loop calls after each optimizer step, before gradients are zeroed (AdaLoRA's rank
        allocation). Default: None, no hook."""
        return None

    def get_state(self, model) -> dict:
        """What a resumed run needs beyond the weights and optimizer (tensors, lists, None only), saved with each
        checkpoint by a method that overrides it (``keeps_state``). Default: nothing is saved."""
        return {}

    def set_state(self, model, state: dict) -> None:
        """Restore what ``get_state`` saved, when the run resumes."""

    @property
    def keeps_state(self) -> bool:
        return type(self).get_state is not Method.get_state

    def prepare_loaded(self, model) -> None:
        """Adjust a finished run's model after peft loaded it for eval/predict/export. Default: nothing."""


class VirtualTokenMethod(Method):
    """A method that puts ``method.num_virtual_tokens`` learned positions in front of the input (prompt and prefix
    tuning): not mergeable into the weights, and the positions count against the model's length."""

    mergeable = False

    def validate(self, cfg, task) -> None:
        n = cfg.method_params.num_virtual_tokens
        if n < 1:
            raise UsageError(f"config key 'method.num_virtual_tokens': got {n}, expected an integer >= 1")

    def virtual_tokens(self, params) -> int:
        return params.num_virtual_tokens


def refuse_quantized_base(method: Method, cfg) -> None:
    """A method that trains the base's own weights cannot train frozen k-bit integers."""
    if cfg.model.quant != "none":
        raise UsageError(f"method {method.name!r} cannot train a {cfg.model.quant} quantized base (its weights "
                         "are frozen integers); use an adapter method such as lora, or --quant none")


@dataclass
class Context:
    """What a method may need to know about the run when it wraps the model."""

    head: list[str]  # the task head's module names: always trained, saved with an adapter
    peft_task_type: str  # SEQ_CLS, TOKEN_CLS, CAUSAL_LM or SEQ_2_SEQ_LM
    total_steps: int  # optimizer steps the run will take (AdaLoRA's budget schedule needs it)
    base_path: str  # the base checkpoint (e.g. for a prompt-tuning tokenizer)


METHODS: Registry[Method] = Registry("method")


def wrap(model, peft_config, params, method: str):
    """get_peft_model with peft's refusals (target modules not found, no default for this architecture, a config
    value it cannot derive from the model's) turned into a usage error."""
    from peft import get_peft_model

    from ftkit.errors import first_line

    try:
        model = get_peft_model(model, peft_config)
    except ValueError as e:
        if not hasattr(params, "target_modules"):
            raise UsageError(f"method {method!r} cannot run on {type(model).__name__}: peft says "
                             f"{first_line(e) or type(e).__name__!r}") from None
        if params.target_modules is None:
            raise UsageError(f"config key 'method.target_modules': peft has no default targets for "
                             f"{type(model).__name__}; set it, e.g. --set method.target_modules=all-linear or "
                             "a list of module names") from None
        raise UsageError(f"config key 'method.target_modules': {e}") from None
    # peft appends its default head names to the ones given (classifier, classifier, score): listed once each
    for config in model.peft_config.values():
        if getattr(config, "modules_to_save", None):
            config.modules_to_save = list(dict.fromkeys(config.modules_to_save))
    from ftkit.util.compat import generate_with_virtual_tokens

    generate_with_virtual_tokens(model)  # prefix/prompt tuning's generation on transformers >= 5.24 (see there)
    return model


def positions_taken(cfg) -> int:
    """Positions the method's virtual tokens occupy in front of the input."""
    return METHODS.get(cfg.method_name).virtual_tokens(cfg.method_params)

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
