"""`ftkit distill`: a smaller student learns a finished cls or tag run (the teacher) through the ordinary training
run: the teacher's data and settings, a ``distill`` config section (teacher, alpha, temperature), a complete run dir
that eval/predict/export/serve use unchanged, resumable like any run (`ftkit train RUN/ftkit.yaml --resume`).

Students: ``layers=N`` — the teacher's own model (adapter merged) with N evenly spaced layers kept, initialised
from the teacher's weights (as DistilBERT was), built once into the cache; or any checkpoint or built-in model with
the teacher's tokenizer. ``--unlabelled FILE``: texts the teacher labels, added to the training rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftkit import config as config_mod
from ftkit.data import catalog
from ftkit.errors import UsageError
from ftkit.rundir import layout
from ftkit.util.files import write_text


def distill(teacher: str, output: str | None, student: str | None = None, unlabelled: str | None = None,
            flags: dict | None = None, sets: list[str] | None = None, **train_kw) -> dict:
    from ftkit.commands.train import train
    from ftkit.rundir.runs import locate

    if not layout.is_finished(teacher):
        raise UsageError(f"{teacher}: not a finished ftkit run dir (the teacher must be one)")
    target = locate(teacher)
    if not target.task.classifies:
        raise UsageError(f"{teacher}: a {target.task.name} run; distillation covers cls and tag runs (tasks whose "
                         "model scores classes)")
    if not output:
        raise UsageError("no run directory: pass --output RUN_DIR")
    where = f"teacher {teacher}"
    own = {"method": "full", "output": output, "distill": {"teacher": str(target.path.resolve())}}  # length: default
    config_mod.derived(target.cfg, where, own, flags or {}, sets or [])  # bad settings: before the teacher loads
    texts = _texts(unlabelled) if unlabelled else None
    own["model"] = {"name": student_model(target, student)}
    if texts:
        own["data"] = with_unlabelled(target, unlabelled, texts)
    cfg = config_mod.derived(target.cfg, where, own, flags or {}, sets or [])
    return train(cfg, **train_kw)


def student_model(target, student: str | None) -> str:
    """``layers=N`` (default: half the teacher's layers) -> a cached checkpoint of the teacher with N layers kept;
    anything else is a model name or checkpoint dir, used as it is."""
    if student and not student.startswith("layers="):
        return student
    layers = json.loads((target.path / layout.MODEL_CONFIG).read_text(encoding="utf-8")).get("num_hidden_layers")
    if student is None:
        if not layers or layers < 2:
            raise UsageError(f"{target.path}: cannot tell how many layers it has; pass --student layers=N or MODEL")
        keep = layers // 2
    else:
        value = student.partition("=")[2]
        if not value.isdigit():
            raise UsageError(f"--student {student}: expected layers=N (N a whole number) or a model")
        keep = int(value)
        if layers and not 1 <= keep < layers:
            raise UsageError(f"--student {student}: the teacher has {layers} layers; keep 1 to {layers - 1}")
    return str(layers_dropped(target, keep))


def layers_dropped(target, keep: int) -> Path:
    """The teacher (adapter merged, full precision) with ``keep`` layers, cached by the teacher's weights."""
    from ftkit.rundir.runs import derived_checkpoint, load_trained, merged, weight_files
    from ftkit.training.distill_loss import drop_layers

    def build(folder: Path) -> None:
        loaded = load_trained(target, quant="none")
        model = merged(loaded)
        drop_layers(model, keep)
        model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)

    return derived_checkpoint("students", weight_files(target), f"layers={keep}", build)


def with_unlabelled(target, unlabelled: str, texts: list[str]) -> dict:
    """The teacher's training rows plus ``texts`` (read from ``unlabelled``) with the teacher's predictions as their
    labels, and its evaluation rows (its own held-out split when it had no eval file) -> data.train / data.eval for
    the student."""
    from ftkit.commands.inference import predict
    from ftkit.data.sources import held_out_split, read_table, read_training
    from ftkit.rundir.runs import load_trained

    cfg, task = target.cfg, target.task
    train_table = read_training(cfg.data.train)[0]
    if cfg.data.eval:
        eval_table = read_table(cfg.data.eval)
    else:
        kept, held = held_out_split(train_table, cfg.data.eval_fraction, cfg.train.seed)
        train_table, eval_table = train_table.select(kept), train_table.select(held)
    loaded = load_trained(target)
    pseudo = predict(loaded, texts=texts, file=None, sets=[])
    rows = _rows(train_table) + [_labelled(task, cfg, text, p) for text, p in zip(texts, pseudo)]
    key = hashlib.sha256(json.dumps([str(target.path.resolve()), unlabelled, len(rows)]).encode()).hexdigest()[:16]
    folder = catalog.cache_dir() / "distill-data" / key
    write_text(folder / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(folder / "eval.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows(eval_table)))
    return {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "format": "auto"}


def _texts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--unlabelled {path}: no such file")
    from ftkit.data.sources import read_table, text_lines

    if file.suffix == ".txt":
        texts = [line.strip() for line in text_lines(file) if line.strip()]
    else:
        texts = [str(t) for t in read_table(path).text_column("text", "text")]
    if not texts:
        raise UsageError(f"--unlabelled {path}: no text in it")
    return texts


def _rows(table) -> list[dict]:
    names = list(table.columns)
    return [dict(zip(names, values)) for values in zip(*(table.columns[n] for n in names))]


def _labelled(task, cfg, text: str, prediction: dict) -> dict:
    col = cfg.data.columns
    if task.name == "cls":
        return {col.get("text", "text"): text, col.get("label", "label"): prediction["label"]}
    tagged = [(w, t) for w, t in zip(prediction["tokens"], prediction["tags"]) if t is not None]  # cut words: none
    return {col.get("tokens", "tokens"): [w for w, _ in tagged], col.get("tags", "tags"): [t for _, t in tagged]}
