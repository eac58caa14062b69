"""ftkit.util.compat: adaptations to upstream changes, each checked against the library versions installed."""

from __future__ import annotations

import copy
import inspect
import json
import shutil

import pytest

from conftest import run_cli, train_args
from ftkit.util.compat import accept_past_key_values


def _tiny_bert(model_class):
    import torch
    from transformers import BertConfig

    torch.manual_seed(0)
    return model_class(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, num_labels=3, initializer_range=0.2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


@pytest.mark.parametrize("head,task_type", [("BertForSequenceClassification", "SEQ_CLS"),
                                            ("BertForTokenClassification", "TOKEN_CLS")])
def test_peft_prefix_tuning_reaches_a_bert_backbone(head, task_type):
    """peft <= 0.21.2 looks for `past_key_values` in the backbone's signature, which transformers >= 5.24 calls
    `cache`: without the adaptation, peft raises "Model does not support past key values" here."""
    import torch
    import transformers
    from peft import PrefixTuningConfig, get_peft_model

    model = _tiny_bert(getattr(transformers, head))
    accept_past_key_values(model)
    assert "past_key_values" in inspect.signature(model.bert.forward).parameters
    peft_model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=4, task_type=task_type)).eval()
    batch = {"input_ids": torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        before = peft_model(**batch).logits
        embedding = peft_model.prompt_encoder["default"].embedding.weight
        embedding.add_(torch.randn_like(embedding))
        after = peft_model(**batch).logits
    assert torch.isfinite(before).all()
    assert not torch.allclose(before, after, atol=1e-4), "the prefix does not reach the attention layers"


def test_the_renamed_argument_is_passed_on_as_cache():
    """Wrapped forward: `past_key_values` arrives as `cache`; both at once is an error; the original signature is
    kept (plus the keyword), and a deep copy calls its own module."""
    from transformers import BertForSequenceClassification

    model = _tiny_bert(BertForSequenceClassification)
    backbone = model.bert
    original = inspect.signature(type(backbone).forward).parameters
    accept_past_key_values(model)
    params = inspect.signature(backbone.forward).parameters
    if "cache" not in original:  # transformers < 5.24: nothing to adapt, nothing changed
        assert "forward" not in vars(backbone)
        return
    assert list(params) == [p for p in original if p not in ("self", "kwargs")] + ["past_key_values", "kwargs"]
    seen = {}
    real = type(backbone).forward

    def spy(self, *args, **kwargs):
        seen["self"], seen["cache"] = self, kwargs.get("cache")
        return "ok"

    try:
        type(backbone).forward = spy
        marker = object()
        assert backbone.forward(past_key_values=marker) == "ok" and seen["cache"] is marker
        with pytest.raises(TypeError, match="not both"):
            backbone.forward(past_key_values=marker, cache=marker)
        twin = copy.deepcopy(model)
        twin.bert.forward(past_key_values=marker)
        assert seen["self"] is twin.bert
    finally:
        type(backbone).forward = real


def test_a_backbone_that_takes_past_key_values_is_left_alone():
    import torch
    from transformers import BertConfig, PreTrainedModel

    class OldStyle(PreTrainedModel):
        config_class = BertConfig

        def __init__(self, config):
            super().__init__(config)
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, input_ids=None, past_key_values=None, cache=None):
            return input_ids

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = OldStyle(BertConfig())

    model = Wrapper()
    accept_past_key_values(model)
    assert "forward" not in vars(model.backbone)


def test_a_method_the_model_cannot_run_is_refused_before_the_run_dir(tiny_model, sentiment, tmp_path, monkeypatch):
    """What transformers 5.24 did to prefix tuning, without the adaptation: the method cannot run on the model.
    The forward pass ftkit makes before writing anything turns that into exit 2 with the reason, where the first
    training step used to fail with exit 1 and leave a half-made run dir."""
    import transformers

    if "past_key_values" in inspect.signature(transformers.BertModel.forward).parameters:
        pytest.skip("transformers < 5.24: BERT's forward still takes past_key_values")
    import ftkit.util.compat

    monkeypatch.setattr(ftkit.util.compat, "accept_past_key_values", lambda model: None)
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--method", "prefix", "--max-steps", "2"))
    assert result.exit_code == 2, result.output
    assert "method 'prefix'" in result.output and "BertForSequenceClassification" in result.output
    assert "cannot run" in result.output and "past key values" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_peft_refusing_a_model_is_a_usage_error(tiny_model, sentiment, tmp_path):
    """peft cannot derive prefix tuning's sizes from DistilBERT's config: exit 2 naming the method and the model
    (it used to be reported as a target_modules problem, which prefix tuning does not have)."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    model_dir = tmp_path / "tiny-distilbert"
    model_dir.mkdir()
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, model_dir / f.name)
    torch.manual_seed(0)
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=64)).save_pretrained(model_dir)
    out = tmp_path / "run"
    result = run_cli(*train_args(model_dir, sentiment, out, "--method", "prefix", "--max-steps", "2"))
    assert result.exit_code == 2, result.output
    assert "method 'prefix' cannot run on DistilBertForSequenceClassification" in result.output
    assert "target_modules" not in result.output and not out.exists()
    # the same model trains with a method that can run on it
    ok = run_cli(*train_args(model_dir, sentiment, out, "--method", "lora", "--max-steps", "2",
                             "--set", "method.target_modules=[q_lin,v_lin]"))
    assert ok.exit_code == 0, ok.output


# bitsandbytes' CPU backend takes the AVX512-BF16 path in the subprocess, whatever the machine's CPU, and
# `kernels.get_kernel` (the installed package's, or a stand-in's lent to bitsandbytes' CPU backend as it imports, where
# `kernels` is not installed) records what it is asked
_PRELUDE = '''
import importlib.abc, importlib.util, os, sys, types

def get_kernel(repo_id, **kwargs):
    open(os.environ["FTKIT_TEST_KERNEL_MARKER"], "a").write(repo_id + "\\n")
    raise RuntimeError("the hub is not reachable from a test")

INSTALLED = importlib.util.find_spec("kernels") is not None
if INSTALLED:
    import kernels
    kernels.get_kernel = get_kernel
STAND_IN = types.ModuleType("kernels")
STAND_IN.get_kernel = get_kernel

class Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("bitsandbytes.functional", "bitsandbytes.backends.cpu.ops"):
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            if name == "bitsandbytes.functional":
                run(module)
                module.has_avx512bf16 = lambda: True
                return
            lent = "kernels" not in sys.modules  # the stand-in, only while the CPU backend imports (not over None)
            if lent:
                sys.modules["kernels"] = STAND_IN
            try:
                run(module)
            finally:
                if lent:
                    del sys.modules["kernels"]

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Patch())
'''


@pytest.mark.parametrize("through_ftkit", [True, False], ids=["ftkit", "bitsandbytes alone (the control)"])
def test_no_kernel_is_fetched_from_the_hub(through_ftkit, tmp_path):
    """bitsandbytes >= 0.50 imports `kernels` (which transformers 5.25 installs) and fetches a CPU 4-bit kernel from
    the hub repository kernels-community/quantization-bitsandbytes; through ftkit's set-up it is never asked, and
    `kernels` is itself again afterwards. The control shows the request is made when bitsandbytes is imported
    without ftkit (if it is not, bitsandbytes changed and this test needs another look)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    marker = tmp_path / "asked.txt"
    body = ("from ftkit.util.libraries import prepare_libraries\nprepare_libraries()\nimport peft\n"
            "from transformers import BitsAndBytesConfig\n"
            "assert sys.modules.get('kernels') is (kernels if INSTALLED else None)\n"
            "assert os.environ['USE_HUB_KERNELS'] == 'NO'\n") if through_ftkit else "import bitsandbytes\n"
    env = {**os.environ, "FTKIT_TEST_KERNEL_MARKER": str(marker)}
    env.pop("USE_HUB_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", _PRELUDE + body], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    asked = marker.read_text() if marker.exists() else ""
    if through_ftkit:
        assert asked == "" and "kernels-community" not in result.stderr, (asked, result.stderr)
    else:
        assert "kernels-community/quantization-bitsandbytes" in asked, result.stderr


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_generation_reads_the_virtual_tokens(kind):
    """peft <= 0.21.2 keeps prompt learning's cache as `past_key_values`, transformers >= 5.24's generate as `cache`:
    without the adaptation, a prefix-tuned model generated as if it had no adapter (and a prompt-tuned one re-read
    its prompt at every step). Greedy generate() must give the tokens a step-by-step argmax of the full forward
    gives, for a batch of two, and say nothing on stderr under ftkit's set-up (peft's prompt tuning warned about
    position ids at every step)."""
    import warnings

    import torch
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftkit.util.compat import generate_with_virtual_tokens
    from ftkit.util.libraries import prepare_libraries

    prepare_libraries()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, initializer_range=0.5)).eval()
    accept_past_key_values(model)
    config = (PrefixTuningConfig if kind == "prefix" else PromptTuningConfig)(task_type="CAUSAL_LM",
                                                                              num_virtual_tokens=4)
    peft_model = get_peft_model(model, config).eval()
    generate_with_virtual_tokens(peft_model)
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.normal_(0, 2)  # virtual tokens that change what comes next
        ids = torch.tensor([[3, 7, 9, 11], [1, 4, 5, 6]])
        with warnings.catch_warnings(record=True) as said:
            generated = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                            do_sample=False)[:, 4:]
        seq = ids
        for _ in range(6):
            nxt = peft_model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
        with peft_model.disable_adapter():
            plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                   do_sample=False)[:, 4:]
    assert generated.tolist() == seq[:, 4:].tolist()
    assert generated.tolist() != plain.tolist()  # the virtual tokens matter here
    assert [str(w.message) for w in said] == []
