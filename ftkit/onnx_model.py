"""Running an ONNX export (`ftkit export --format onnx`) with onnxruntime behind the interface the tasks use of a
transformers model: ``model(**inputs).logits``, ``model.config``, ``model.device``. So `ftkit eval` and `ftkit
predict` take an export dir (its fp32 ``model.onnx``) or one of its ``.onnx`` files. Imported only on that path
(it imports torch)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ftkit.errors import UsageError
from ftkit.onnx_export import META


def onnx_file(name: str) -> Path | None:
    """The .onnx file ``name`` refers to (an export dir or the file itself), or None when it is no ONNX export."""
    path = Path(name)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / META).is_file():
        return path / "model.onnx"
    return None


def load_onnx(file: Path, task_name: str | None, quant: str | None):
    from ftkit import config as config_mod
    from ftkit.libraries import prepare_libraries
    from ftkit.models import Loaded, load_tokenizer
    from ftkit.onnx_export import check_available
    from ftkit.tasks import TASKS

    folder = file.parent
    if not (folder / META).is_file():
        raise UsageError(f"{file}: not from `ftkit export --format onnx` (no {META} beside it)")
    if quant not in (None, "none"):
        raise UsageError(f"--quant {quant}: an ONNX export is run as exported (int8: `export --int8`)")
    check_available()
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if task_name not in (None, meta["task"]):
        raise UsageError(f"{file}: exported as task {meta['task']!r}, not {task_name!r}")
    prepare_libraries()
    from transformers import AutoConfig

    model = OnnxModel(file, AutoConfig.from_pretrained(folder), meta["verification"]["inputs"])
    cfg = config_mod.build(meta["config"])
    return Loaded(model, load_tokenizer(folder), TASKS.get(meta["task"]), cfg, folder)


class OnnxModel(torch.nn.Module):
    """An onnxruntime session that answers like a transformers model (a Module without parameters, so
    Accelerate and ``model.eval()`` accept it)."""

    def __init__(self, file: Path, config, inputs: list[str]):
        import onnxruntime as ort

        super().__init__()
        try:
            self.session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 — onnxruntime raises its own exception types for a damaged file
            raise UsageError(f"{file}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from None
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
