"""`ftkit eval` and `ftkit predict` on a run dir, an exported checkpoint or a plain model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ftkit import config as config_mod
from ftkit.data.sources import Table, held_out_split, read_table, read_training, same_data, sources
from ftkit.errors import UsageError
from ftkit.modeling.loading import cpu_kernels


def run_settings(target, sets: list[str]) -> config_mod.Config:
    """The run's own config (column names, task settings), or defaults for a plain checkpoint; then --set.
    ``target``: a runs.Target or Loaded (no weights needed)."""
    base = target.cfg.to_dict() if target.cfg else {"task": target.task.name}
    base.pop("output", None)
    return config_mod.build(config_mod.merge_layers([("run config", base), ("--set", config_mod.parse_set(sets))]))


def settings(loaded, sets: list[str]) -> config_mod.Config:
    """run_settings plus data.max_length for the loaded model."""
    from ftkit.rundir.base import resolve_max_length

    cfg = loaded.task.with_model_settings(run_settings(loaded, sets), loaded.model.config)
    max_length = resolve_max_length(cfg, loaded.model.config, loaded.tokenizer, loaded.path)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=max_length))


def model_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


@dataclass
class EvalData:
    table: Table  # the rows to score
    split: str  # "held-out" (the run's own held-out rows of its training data) or "all"
    notes: list[str]  # what to tell the user about the choice


def eval_data(target, data: str, sets: list[str], all_rows: bool = False) -> EvalData:
    """Read and check ``data`` before any weights load (a missing column fails in a second), and pick the rows to
    score: when ``data`` is the run's own training data (the same built-in dataset, or a file with the same
    content) and the run held out a split of it, that split — the rows training did not see — unless
    ``all_rows``, which scores everything with a warning about the overlap."""
    cfg = run_settings(target, sets)
    table = read_table(data)
    target.task.check(table, cfg)
    run = target.cfg
    trained_on = sources(run.data.train) if run is not None and run.data.train else []
    match = next((k for k, spec in enumerate(trained_on) if same_data(data, spec)), None)
    if match is None:
        return EvalData(table, "all", [])
    where = f"{data} is the data {target.path} was trained on"
    if run.data.eval is not None:  # the run was evaluated on other data: every row here trained it
        return EvalData(table, "all", [f"warning: {where}: every row scored here trained it, so the scores overstate "
                                       "how it does on new data"])
    if len(trained_on) == 1:
        trained, held = held_out_split(table, run.data.eval_fraction, run.train.seed)
    else:  # one of several sources: the split was drawn over all of them, one after another
        full, origin = read_training(run.data.train)
        start = origin.index(match)
        trained, held = ([i - start for i in rows if origin[i] == match]
                         for rows in held_out_split(full, run.data.eval_fraction, run.train.seed))
    if all_rows:
        return EvalData(table, "all", [f"warning: {where}: {len(trained):,} of the {len(table):,} rows scored trained "
                                       "it, so the scores overstate how it does on new data"])
    return EvalData(table.select(held), "held-out",
                    [f"note: {where}: scoring the {len(held)} rows it held out (as in training); --all-rows scores "
                     f"all {len(table):,}"])


def evaluate(loaded, data: EvalData, sets: list[str], batch_size: int = 64) -> dict:
    """Loss and the task's metrics on ``data`` (from eval_data); gold labels the model was not trained on are
    scored as errors, and a warning naming them is added to ``data.notes``."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from ftkit.tasks import unseen_warning
    from ftkit.training.loop import evaluate as run_eval

    cfg = settings(loaded, sets)
    task, table = loaded.task, data.table
    labels = model_labels(loaded.model) if task.labelled else []
    targets = task.targets(table, cfg, labels)
    if warning := unseen_warning(task, table, cfg, labels):
        data.notes.append(warning)
    enc = task.encode(loaded.tokenizer, table, cfg, loaded.model.config)
    feats = task.features(enc, targets, list(range(len(table))), cfg, training=False, notes=data.notes)
    accelerator = Accelerator()
    collate = task.batching(loaded.model, loaded.tokenizer, cfg, feats).collate
    loader = accelerator.prepare(DataLoader(feats, batch_size=batch_size, collate_fn=collate))
    model = accelerator.prepare(loaded.model)
    with cpu_kernels(loaded.model):
        metrics = {"data": table.source, "rows": len(table), "split": data.split,
                   **run_eval(model, loader, task, labels, cfg, accelerator)}
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
        table = texts_table(loaded.task, texts, cfg)
    else:
        table = read_table(file)
    with cpu_kernels(loaded.model):
        return loaded.task.predict(loaded.model, loaded.tokenizer, table, cfg, batch_size=batch_size, stream=stream)


def texts_table(task, texts: list[str], cfg, source: str = "--text", where: list[str] | None = None) -> Table:
    """A table of one row per text, in the task's input column(s); ``where``: what errors call each row."""
    rows = [task.text_input(text, cfg) for text in texts]
    return Table(source, {k: [v for row in rows for v in row.columns[k]] for k in rows[0].columns},
                 where or [f"text {i + 1}" for i in range(len(texts))])
