"""`ftkit export RUN --format onnx`: the (merged) model as ONNX with dynamic batch and sequence axes, verified
against PyTorch before it is kept, optionally with an int8 (dynamic quantization) copy.

The export dir holds ``model.onnx`` (+ ``model.int8.onnx``), the tokenizer, ``config.json`` (label maps) and
``onnx.json`` (the run's config, the inputs, the verification figures); `ftkit eval|predict` take the dir (fp32
model) or either ``.onnx`` file (see ``onnx_model.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

from ftkit.errors import UsageError, first_line

# |onnxruntime - pytorch| allowed on any logit of the fp32 export (float32 reassociation gives ~1e-6 on real models)
ATOL, RTOL = 1e-4, 1e-3
META = "onnx.json"


def onnx_file(name: str) -> Path | None:
    """The .onnx file ``name`` refers to (an export dir or the file itself), or None when it is no ONNX export."""
    path = Path(name)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / META).is_file():
        return path / "model.onnx"
    return None
INT8 = "model.int8.onnx"


def check_available() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--format onnx needs {', '.join(missing)}: pip install 'ftkit[onnx]'")


def logits_of(model):
    """The model as a module of int64 tensors returning its logits: what the ONNX graph computes."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return Logits().eval()


def sample_inputs(names: list[str], vocab: int, batch: int, length: int, seed: int) -> dict:
    """Random token ids with the last row padded by a third: exercises the attention mask and both axes."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, length - length // 3:] = 0
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: out[n] for n in names}


def export_onnx(model, loaded, tmp: Path, int8: bool) -> dict:
    """Write ``model`` (merged) as model.onnx (+ int8) into ``tmp`` and verify it; -> the verification record
    (also in onnx.json). ``loaded``: the run it came from (task, config, tokenizer)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in loaded.tokenizer.model_input_names]
    wrapped = logits_of(model)
    vocab, max_length = model.config.vocab_size, loaded.cfg.data.max_length if loaded.cfg else 128
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max_length)
    example = sample_inputs(names, vocab, 2, min(9, max_length), seed=0)
    chatter = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and pytree deprecations
            torch.onnx.export(wrapped, (), str(tmp / "model.onnx"), kwargs=example, dynamo=True,
                              input_names=names, output_names=["logits"], external_data=False,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names})
    except Exception as e:  # noqa: BLE001 — the exporter raises many types; say which model failed and why
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        raise RuntimeError(f"torch.onnx could not export {type(model).__name__}: "
                           f"{first_line(root)}") from e
    # verify on shapes other than the traced one: the axes must really be dynamic
    shapes = [(1, min(5, max_length)), (3, min(17, max_length)), (4, max_length)]
    inputs = [sample_inputs(names, vocab, b, n, seed=k + 1) for k, (b, n) in enumerate(shapes)]
    with torch.no_grad():
        expected = [wrapped(**x).numpy() for x in inputs]

    def run(path: Path) -> list:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [session.run(None, {k: v.numpy() for k, v in x.items()})[0] for x in inputs]

    got = run(tmp / "model.onnx")
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    ok = all(np.allclose(g, e, atol=ATOL, rtol=RTOL) for g, e in zip(got, expected))
    record = {"inputs": names, "verified_shapes": shapes, "atol": ATOL, "rtol": RTOL, "max_abs_diff": diff}
    if not ok:
        raise RuntimeError(f"the ONNX model's logits differ from PyTorch's by up to {diff:.3g} (allowed: "
                           f"{ATOL} + {RTOL} x |logit|); nothing was written")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / INT8), weight_type=QuantType.QInt8)
        q = run(tmp / INT8)
        same = np.concatenate([(a.argmax(-1) == b.argmax(-1)).ravel() for a, b in zip(q, got)])
        record["int8"] = {"file": INT8, "max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(q, got)),
                          "same_prediction": float(same.mean())}
    cfg = loaded.cfg.to_dict() if loaded.cfg else {"task": loaded.task.name}
    cfg.pop("output", None)
    (tmp / META).write_text(json.dumps({"task": loaded.task.name, "config": cfg, "verification": record},
                                       indent=2), encoding="utf-8")
    model.config.save_pretrained(tmp)  # label maps
    return record
