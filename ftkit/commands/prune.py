"""`ftkit prune`: a finished cls or tag run made smaller — its least important layers and feed-forward neurons
removed (``pruning``), then a short recovery fine-tuning through the ordinary training run. The output is a
complete run dir of full fine-tuning: a plain transformers checkpoint with fewer parameters, plus ``prune.json``
(what was removed, parameters before and after).

``--gradual`` removes the layers one at a time: each stage takes one layer from the stage before and recovers
(by distillation from that stage with ``--distil``); the stages before the last are run dirs built once into the
cache, keyed by the weights and settings they come from, so a rerun continues where one stopped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftkit import config as config_mod
from ftkit.errors import UsageError
from ftkit.rundir import layout
from ftkit.util.files import write_text

HEADS_REFUSED = ("--heads: attention heads are not pruned: transformers 5 removed prune_heads, and BERT-style "
                 "attention takes its head size from hidden_size / num_attention_heads, so fewer heads of the "
                 "original size cannot be written as a config stock transformers loads; prune --ffn and --layers")


def prune(run: str, output: str | None, *, ffn: float = 0.0, layers: int = 0, heads: float | None = None,
          samples: int = 256, distil: bool = False, gradual: bool = False, flags: dict | None = None,
          sets: list[str] | None = None, **train_kw) -> dict:
    from ftkit.commands.train import train
    from ftkit.rundir.runs import locate
    from ftkit.training.distributed import world_size

    if heads:
        raise UsageError(HEADS_REFUSED)
    if not layout.is_finished(run):
        raise UsageError(f"{run}: not a finished ftkit run dir")
    if not output:
        raise UsageError("no run directory: pass --output RUN_DIR")
    if ffn == 0 and layers == 0:
        raise UsageError("nothing to prune: give --ffn SHARE and/or --layers N")
    if gradual and layers == 0:
        raise UsageError("--gradual removes layers one at a time: give --layers N (N >= 1) with it")
    if gradual and world_size() > 1:
        raise UsageError(f"--gradual: started as {world_size()} processes; its stages are built one process at a "
                         "time — run it without a launcher")
    depth = json.loads((Path(run) / layout.MODEL_CONFIG).read_text(encoding="utf-8")).get("num_hidden_layers")
    if depth and layers >= depth:
        raise UsageError(f"--layers {layers}: the model has {depth} layers; remove 0 to {depth - 1}")
    target = locate(run)
    if not target.task.classifies:
        raise UsageError(f"{run}: a {target.task.name} run; pruning covers cls and tag runs (tasks whose model "
                         "scores classes)")
    flags, sets, where = flags or {}, sets or [], f"run {run}"
    config_mod.derived(target.cfg, where, recovery(target, output, distil), flags, sets)  # bad settings: before pruning
    stages, quiet = [], train_kw.get("quiet", False)
    for stage in range(1, layers + 1 if gradual else 1):
        if not quiet:
            print(f"prune --gradual: stage {stage} of {layers}, one layer removed and recovered"
                  + (f" into {output}" if stage == layers else ""), file=sys.stderr)
        if stage < layers:  # the last stage is the run itself
            target, report = recovered_stage(target, where, samples, distil, flags, sets, quiet)
            stages.append(report)
    path, report = pruned(target, ffn, 1 if gradual else layers, samples)
    cfg = config_mod.derived(target.cfg, where, {**recovery(target, output, distil), "model": {"name": str(path)}},
                             flags, sets)
    summary = train(cfg, **train_kw)
    if (Path(cfg.output) / layout.SUMMARY).is_file():
        if gradual:
            report = composed([*stages, {**report, "held_out": summary["eval"]}])
        write_text(Path(cfg.output) / layout.PRUNE_REPORT, json.dumps(report, indent=2) + "\n")
    return summary


def recovery(target, output: str, distil: bool) -> dict:
    """The recovery run's own settings: full fine-tuning for the default length, from ``target`` when distilling."""
    own = {"method": "full", "output": output, "train": {"epochs": 1.0, "min_steps": config_mod.DEFAULT_MIN_STEPS}}
    if distil:
        own["distill"] = {"teacher": str(target.path.resolve())}
    return own


def recovered_stage(target, where: str, samples: int, distil: bool, flags: dict, sets: list[str], quiet: bool):
    """One layer of ``target`` removed and recovered, as a run dir in the cache (keyed by the run's weights and
    settings and by the recovery's) -> (its Target, its prune report with its held-out metrics)."""
    from ftkit.commands.train import train
    from ftkit.rundir.runs import derived_checkpoint, locate, weight_files

    path, report = pruned(target, 0.0, 1, samples)

    def build(folder: Path) -> None:
        cfg = config_mod.derived(target.cfg, where, {**recovery(target, str(folder), distil),
                                                     "model": {"name": str(path)}}, flags, sets)
        train(cfg, quiet=quiet)
        write_text(folder / layout.PRUNE_REPORT, json.dumps(report, indent=2) + "\n")

    sources = [*weight_files(target), target.path / layout.CONFIG]
    out = derived_checkpoint("prune-stages", sources, json.dumps([samples, distil, flags, sets]), build)
    held_out = layout.read_summary(out)["eval"]
    return locate(str(out)), {**report, "recovered": str(out), "held_out": held_out}


def composed(stages: list[dict]) -> dict:
    """The report of a gradual pruning: what was removed from the first stage's run, in its layer numbers, with
    every stage's own report."""
    first, last = stages[0], stages[-1]
    kept = list(range(first["layers"]["before"]))
    for stage in stages:
        kept = [kept[i] for i in stage["layers"]["kept"]]
    return {"run": first["run"], "ffn_removed": last["ffn_removed"], "layers_removed": len(stages),
            "samples": first["samples"], "gradual": True, "layers": {"before": first["layers"]["before"], "kept": kept},
            "intermediate_size": {"before": first["intermediate_size"]["before"],
                                  "after": last["intermediate_size"]["after"]},
            "parameters": {"before": first["parameters"]["before"], "after": last["parameters"]["after"]},
            "stages": stages}


def pruned(target, ffn: float, layers: int, samples: int) -> tuple[Path, dict]:
    """The run's model (adapter merged) pruned by importance measured on ``samples`` of its training rows; cached by
    the run's weights and the arguments -> (checkpoint dir, report)."""
    from ftkit.rundir.runs import derived_checkpoint, weight_files

    def build(folder: Path) -> None:
        from ftkit.modeling.pruning import importance, keep_layers, keep_neurons, plan
        from ftkit.rundir.runs import load_trained, merged

        loaded = load_trained(target, quant="none")
        model = merged(loaded)
        before = sum(p.numel() for p in model.parameters())
        width, depth = model.config.intermediate_size, model.config.num_hidden_layers
        neurons, layer_scores = importance(model, scoring_batches(loaded, samples))
        kept_layers, kept_neurons = plan(neurons, layer_scores, ffn, layers)
        keep_layers(model, kept_layers)
        keep_neurons(model, kept_neurons)
        report = {"run": str(target.path.resolve()), "ffn_removed": ffn, "layers_removed": layers,
                  "samples": samples, "layers": {"before": depth, "kept": kept_layers,
                                                 "importance": [round(v, 8) for v in layer_scores]},
                  "intermediate_size": {"before": width, "after": model.config.intermediate_size},
                  "parameters": {"before": before, "after": sum(p.numel() for p in model.parameters())}}
        model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        write_text(folder / layout.PRUNE_REPORT, json.dumps(report, indent=2) + "\n")

    out = derived_checkpoint("pruned", weight_files(target), json.dumps([ffn, layers, samples]), build)
    return out, json.loads((out / layout.PRUNE_REPORT).read_text(encoding="utf-8"))


def scoring_batches(loaded, samples: int, batch_size: int = 16) -> list[dict]:
    """Batches of the run's own training rows (not its held-out ones), with their gold labels."""
    from ftkit.commands.inference import model_labels, settings
    from ftkit.data.sources import held_out_split, read_training

    cfg, task = settings(loaded, []), loaded.task
    table = read_training(cfg.data.train)[0]
    rows = list(range(len(table))) if cfg.data.eval else held_out_split(table, cfg.data.eval_fraction,
                                                                        cfg.train.seed)[0]
    rows = rows[:samples]
    targets = task.targets(table, cfg, model_labels(loaded.model))
    enc = task.encode(loaded.tokenizer, table, cfg, loaded.model.config)
    feats = task.features(enc, targets, rows, cfg, training=True)  # as the run trained: the loss it learnt
    collate = task.collator(loaded.tokenizer, cfg)
    return [collate(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]
