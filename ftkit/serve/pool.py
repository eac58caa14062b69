"""The models a server holds: what each RUN argument names, loading them (adapter runs on one base share one copy
of its weights), and running a batch of requests on one of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftkit.errors import UsageError
from ftkit.rundir import layout
from ftkit.rundir.runs import Loaded, Target, locate

# adapter types whose runs can share one base model (peft holds several adapters of one type on one model and
# switches between them); runs of other methods each load their own base
SHAREABLE = {"LORA", "IA3"}


@dataclass
class Text:
    """A text to predict, and what an error about it calls it (e.g. ``input.3``)."""

    text: str
    where: str


@dataclass
class Served:
    name: str  # what requests put in their `model` field
    target: Target
    loaded: Loaded | None = None  # the model may be shared with other adapter runs
    adapter: str | None = None  # the peft adapter to switch to, on a shared base
    cfg: object = None  # settings for prediction (the run's config, data.max_length resolved)
    context: int | None = None  # positions for the input (gen: prompt + new tokens; None: unbounded)
    shares_with: str | None = None  # the served model whose base weights this one uses

    @property
    def task(self):
        return self.target.task


def parse(specs: list[str], task_name: str | None = None) -> list[Served]:
    """``RUN`` or ``NAME=RUN`` arguments -> what to serve, each located and checked (no weights load)."""
    served: dict[str, Served] = {}
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep:
            name, where = _default_name(spec), spec
        if not name or not where:
            raise UsageError(f"{spec!r}: expected RUN or NAME=RUN")
        if name in served:
            raise UsageError(f"two models are named {name!r} ({served[name].target.path} and {where}); name them: "
                             "NAME=RUN")
        served[name] = Served(name, locate(where, task_name))
    return list(served.values())


def _default_name(spec: str) -> str:
    path = Path(spec)
    if path.suffix == ".onnx":
        return path.parent.name
    return path.name if path.exists() else spec  # a built-in model keeps its name


def _share_key(target: Target):
    """Adapter runs with equal keys can use one copy of their base model."""
    adapter = target.path / layout.ADAPTER_CONFIG
    if target.onnx or target.cfg is None or not adapter.is_file():
        return None
    peft_type = json.loads(adapter.read_text(encoding="utf-8")).get("peft_type")
    if peft_type not in SHAREABLE:
        return None
    head = json.loads((target.path / layout.MODEL_CONFIG).read_text(encoding="utf-8")).get("id2label")
    cfg = target.cfg
    return (target.task.name, cfg.model.name, cfg.model.quant, cfg.model.trust_remote_code, peft_type,
            json.dumps(head if target.task.labelled else None, sort_keys=True))


def load(served: list[Served], log=print) -> None:
    """Load every model; adapter runs of one base (same base, quantization, adapter type and label set) share it."""
    from ftkit.commands.inference import settings
    from ftkit.modeling.loading import load_tokenizer
    from ftkit.rundir.base import input_room
    from ftkit.rundir.runs import load_trained

    first: dict[tuple, Served] = {}
    for i, s in enumerate(served):
        key = _share_key(s.target)
        owner = first.get(key) if key else None
        if owner is None:
            s.loaded = load_trained(s.target)
            if key:
                first[key], s.adapter = s, "default"
        else:
            s.adapter = f"served_{i}"  # peft adapter names become module keys: no dots
            owner.loaded.model.load_adapter(str(s.target.path), adapter_name=s.adapter)
            tokenizer = load_tokenizer(s.target.path, s.target.cfg.model.trust_remote_code)
            s.task.prepare_model(owner.loaded.model, tokenizer)
            s.loaded = Loaded(owner.loaded.model, tokenizer, s.task, s.target.cfg, s.target.path)
            s.shares_with = owner.name
        s.cfg = settings(s.loaded, [])
        s.context = input_room(s.cfg, s.loaded.model.config, s.loaded.tokenizer, s.target.path)
        log(f"loaded {s.name}: {s.task.name} from {s.target.path}" +
            (f" (sharing the base model of {s.shares_with})" if s.shares_with else ""))


def run_batch(s: Served, items: list) -> list:
    """Run one batch on ``s``: Texts to predict (-> prediction rows) and, for gen, GenRequests (-> filled in). A
    failing batch is retried item by item, so one bad request fails alone; a failed item's result is its
    exception."""
    try:
        return _run(s, items)
    except Exception as e:
        if len(items) == 1:
            return [e]
    out = []
    for item in items:
        try:
            out += _run(s, [item])
        except Exception as e:
            out.append(e)
    return out


# Rows per forward pass when predicting on CPU: a batch is sorted by length and cut into passes of this many, since
# a CPU is busy from a few rows on and padding a long batch to its longest text is work thrown away (minilm on 2
# cores, 16 polarity texts: 211 texts/s in one pass, 273 in length-sorted passes of 8, 157 one at a time). On CUDA
# the whole batch is one pass.
CPU_PASS_ROWS = 8


def _run(s: Served, items: list) -> list:
    from ftkit.commands.inference import texts_table
    from ftkit.modeling.loading import cpu_kernels
    from ftkit.serve.generate import GenRequest, generate_batch

    model, tokenizer = s.loaded.model, s.loaded.tokenizer
    if s.adapter and model.active_adapter != s.adapter:
        model.set_adapter(s.adapter)
    texts = [i for i in items if isinstance(i, Text)]
    gens = [i for i in items if isinstance(i, GenRequest)]
    rows = []
    with cpu_kernels(model):
        if texts:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i].text))
            table = texts_table(s.task, [texts[i].text for i in order], s.cfg, "request",
                                [texts[i].where for i in order])
            passes = s.task.predict(model, tokenizer, table, s.cfg,
                                    batch_size=len(texts) if _on_cuda(model) else CPU_PASS_ROWS)
            rows = [None] * len(texts)
            for i, row in zip(order, passes):
                rows[i] = row
        if gens:
            generate_batch(model, tokenizer, gens)
    rows = iter(rows)
    return [i if isinstance(i, GenRequest) else next(rows) for i in items]


def _on_cuda(model) -> bool:
    parameters = getattr(model, "parameters", None)  # an ONNX export has none
    first = next(iter(parameters()), None) if parameters else None
    return first is not None and first.is_cuda
