"""Running an ONNX export (`ftkit export --format onnx`) with onnxruntime behind the interface the tasks use of a
transformers model: ``model(**inputs).logits``, ``model.config``, ``model.device``. So `ftkit eval` and `ftkit
predict` take an export dir (its fp32 ``model.onnx``) or one of its ``.onnx`` files. Imported only on that path
(it imports torch)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ftkit.errors import UsageError, first_line
from ftkit.modeling.onnx import META


def load_onnx(file: Path, quant: str | None):
    """The export ``runs.locate`` found -> (a model answering like a transformers one, its tokenizer)."""
    from ftkit.modeling.loading import load_tokenizer
    from ftkit.modeling.onnx import check_available
    from ftkit.util.libraries import prepare_libraries

    if quant not in (None, "none"):
        raise UsageError(f"--quant {quant}: an ONNX export is run as exported (int8: `export --int8`)")
    check_available()
    folder = file.parent
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    prepare_libraries()
    from transformers import AutoConfig

    return OnnxModel(file, AutoConfig.from_pretrained(folder), meta["verification"]["inputs"]), load_tokenizer(folder)


class OnnxModel(torch.nn.Module):
    """An onnxruntime session that answers like a transformers model (a Module without parameters, so
    Accelerate and ``model.eval()`` accept it)."""

    def __init__(self, file: Path, config, inputs: list[str]):
        import onnxruntime as ort

        super().__init__()
        try:
            self.session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 — onnxruntime raises its own exception types for a damaged file
            raise UsageError(f"{file}: onnxruntime cannot load it ({first_line(e)})") from None
        self.config, self.inputs, self.file = config, inputs, file
        self.register_buffer("_device", torch.empty(0), persistent=False)

    @property
    def device(self):
        return self._device.device

    def forward(self, **batch):
        feed = {name: batch[name].cpu().numpy() for name in self.inputs if name in batch}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = (batch["input_ids"] * 0).cpu().numpy()
        logits = self.session.run(None, feed)[0]
        return SimpleNamespace(logits=torch.from_numpy(logits).to(batch["input_ids"].device))
