"""Setting up the libraries ftkit drives, once per process before any model work: their expected-but-noisy
messages kept out of the user's terminal, and bitsandbytes imported without its start-up cost."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys


def prepare_libraries() -> None:
    import logging
    import os
    import warnings

    # No code from a hub at run time unless the user asks: transformers >= 5.25 (through the `kernels` package) loads
    # kernels from the Hugging Face hub for some layers by default; USE_HUB_KERNELS=YES in the environment turns
    # that back on. (bitsandbytes asks `kernels` on its own: import_bitsandbytes.)
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    import transformers

    # bitsandbytes logs on every quantized forward, and at import (via peft) about an optional CPU kernel package
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft 0.21's prepare_model_for_kbit_training uses transformers' deprecated names; nothing the user can change
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*is deprecated", category=FutureWarning)
    # peft checks AdaLoRA's saved rank pattern (keyed by its lora_E parameters) against module names, which never
    # match; the pruned ranks are saved as zeros, so the reloaded adapter computes what was trained (tests/test_methods)
    warnings.filterwarnings("ignore", message=r"(?s).*rank_pattern keys did not match.*lora_E", category=RuntimeWarning)
    # peft's prompt tuning drops the position ids generate() passes and warns on every step; the model then counts
    # positions from the cache, virtual tokens included, as in training: nothing the user can change
    warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning",
                            category=UserWarning)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import_bitsandbytes()


_ABSENT = object()  # not in sys.modules (None there means "import fails")


def import_bitsandbytes() -> None:
    """Import bitsandbytes (peft imports it whatever the method) with its torch.compile calls deferred.

    bitsandbytes wraps some kernels in ``torch.compile`` as it is imported, and setting a compilation up imports
    torch's inductor: 0.75 s of every run's start-up (bench/RESULTS.md), for kernels that only quantized runs call.
    Here each such call returns a function that sets the compilation up the first time it is called, with the same
    arguments — what ``torch.compile`` would have compiled, at the moment it would have compiled it."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    import torch

    real = torch.compile
    torch.compile = functools.partial(deferred_compile, real)
    # bitsandbytes >= 0.50 on a CPU with AVX512-BF16, as it is imported, fetches and runs a 4-bit matmul kernel from
    # the hub repository kernels-community/quantization-bitsandbytes whenever the `kernels` package can be imported
    # (transformers 5.25 installs it), and warns when it cannot reach the hub. None in sys.modules makes that one
    # import fail, so it keeps its own CPU kernel, quietly; `kernels` is importable again afterwards.
    hidden = sys.modules.get("kernels", _ABSENT)
    sys.modules["kernels"] = None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:  # a broken install: peft imports it the same way and goes on without it
        pass
    finally:
        torch.compile = real
        if hidden is _ABSENT:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = hidden



def deferred_compile(compile_fn, model=None, **kwargs):
    """``compile_fn(model, **kwargs)`` postponed to ``model``'s first call; used as a decorator when ``model`` is
    None. Anything but a plain function (a module, say) is compiled at once. A compilation that cannot be set up
    leaves the function to run as it is, which is what bitsandbytes falls back to."""
    if model is None:
        return functools.partial(deferred_compile, compile_fn, **kwargs)
    if not inspect.isfunction(model):
        return compile_fn(model, **kwargs)
    compiled = None

    @functools.wraps(model)
    def call(*args, **kw):
        nonlocal compiled
        if compiled is None:
            try:
                compiled = compile_fn(model, **kwargs)
            except Exception:
                compiled = model
        return compiled(*args, **kw)

    return call
