"""`ftkit eval` and `ftkit predict` on a run dir, an exported checkpoint or a plain model."""

from __future__ import annotations

import dataclasses

from ftkit import config as config_mod
from ftkit.data import Table, read_table
from ftkit.errors import UsageError
from ftkit.models import cpu_kernels


def settings(loaded, sets: list[str]) -> config_mod.Config:
    """The run's own config (column names, max length), or defaults for a plain checkpoint; then --set."""
    from ftkit.models import resolve_max_length

    base = loaded.cfg.to_dict() if loaded.cfg else {"task": loaded.task.name}
    base.pop("output", None)
    cfg = config_mod.build(config_mod.merge_layers([("run config", base), ("--set", config_mod.parse_set(sets))]))
    max_length = resolve_max_length(cfg, loaded.model.config, loaded.tokenizer, loaded.path)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=max_length))


def model_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def evaluate(loaded, data: str, sets: list[str], batch_size: int = 64) -> dict:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from ftkit.loop import evaluate as run_eval
    from ftkit.tasks import batching

    cfg = settings(loaded, sets)
    task = loaded.task
    table = read_table(data)
    task.check(table, cfg)
    labels = model_labels(loaded.model) if task.labelled else []
    targets = task.targets(table, cfg, labels)
    enc = task.encode(loaded.tokenizer, table, cfg, loaded.model.config)
    feats = task.features(enc, targets, list(range(len(table))), cfg, training=False)
    accelerator = Accelerator()
    collate = batching(task, loaded.model, loaded.tokenizer, cfg, feats).collate
    loader = accelerator.prepare(DataLoader(feats, batch_size=batch_size, collate_fn=collate))
    model = accelerator.prepare(loaded.model)
    with cpu_kernels(loaded.model):
        metrics = {"data": data, "rows": len(table), **run_eval(model, loader, task, labels, cfg, accelerator)}
        if cfg.task.get("generate_eval"):
            metrics |= task.generation_metrics(loaded.model, loaded.tokenizer, table, cfg)
    return metrics


def predict(loaded, *, texts: list[str] | None, file: str | None, sets: list[str], batch_size: int = 32,
            stream: bool = False) -> list[dict]:
    """Predictions for ``texts`` (one row each, in order) or every row of ``file``."""
    cfg = settings(loaded, sets)
    if texts:
        for i, text in enumerate(texts):
            if not text.strip():
                raise UsageError(f"--text: text {i + 1} of {len(texts)} is empty" if len(texts) > 1
                                 else "--text: empty text")
        rows = [loaded.task.text_input(text, cfg) for text in texts]
        table = Table("--text", {k: [v for row in rows for v in row.columns[k]] for k in rows[0].columns},
                      [f"text {i + 1}" for i in range(len(texts))])
    else:
        table = read_table(file)
    with cpu_kernels(loaded.model):
        return loaded.task.predict(loaded.model, loaded.tokenizer, table, cfg, batch_size=batch_size, stream=stream)
