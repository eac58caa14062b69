"""The run dir's README.md: a Hugging Face model card (YAML header, results, hyper-parameters, how to load it)."""

from __future__ import annotations

from pathlib import Path

from ftkit.data.sources import sources, spec_name


def model_card(cfg, *, base: str, trainable: int, total: int, metrics: dict, seconds: float, n_train: int,
               n_eval: int, adapter: bool, auto_class: str, labelled: bool, hub_task: str,
               load_note: str | None = None, baseline: dict | None = None) -> str:
    """The run dir's README.md: what was trained, on what, how well, and how to load it without ftkit. ``base``:
    the base model's public name where it has one (the loading lines then work anywhere), else its path;
    ``load_note``: what the method says a user must know to load it; ``baseline``: a non-neural model's metrics on
    the same split (ftkit.data.baseline), shown beside the run's."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    theirs = baseline or {}

    def cell(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = "\n".join(f"| {k} | {cell(v)} |" + (f" {cell(theirs.get(k))} |" if baseline else "")
                     for k, v in scalars.items())
    if adapter:  # the base, with the run's label maps (the base's config has none), then the adapter over it
        labels = ("labels = AutoConfig.from_pretrained(RUN_DIR)  # the run's label maps\n" if labelled else "")
        kwargs = (", num_labels=labels.num_labels,\n    id2label=labels.id2label, label2id=labels.label2id"
                  if labelled else "")
        imports = f"{'AutoConfig, ' if labelled else ''}{auto_class}"
        load = (f"from peft import PeftModel\nfrom transformers import {imports}\n"
                f"{labels}base = {auto_class}.from_pretrained({base!r}{kwargs})\n"
                "model = PeftModel.from_pretrained(base, RUN_DIR)")
        if load_note:
            load += f"\n# {load_note}"
    else:
        load = f"from transformers import {auto_class}\nmodel = {auto_class}.from_pretrained(RUN_DIR)"
    import yaml

    trained_on = spec_name(cfg.data.train)
    header = {"base_model": base, "library_name": "peft" if adapter else "transformers",
              "pipeline_tag": hub_task, "tags": ["ftkit", cfg.task_name, cfg.method_name],
              "datasets": sources(cfg.data.train), "metrics": [k for k in scalars if k != "step"],
              "model-index": [{"name": Path(cfg.output or "run").name, "results": [{
                  "task": {"type": hub_task},
                  "dataset": {"name": cfg.data.eval or f"{trained_on} (held-out split)", "type": "ftkit"},
                  "metrics": [{"type": k, "value": v} for k, v in scalars.items() if k != "step"]}]}]}
    hyper = {**{f"method.{k}": v for k, v in cfg.method.items()},
             **{f"train.{k}": v for k, v in vars(cfg.train).items()},
             "data.max_length": cfg.data.max_length, "model.quant": cfg.model.quant}
    hyper_rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
    return f"""---
{yaml.safe_dump(header, sort_keys=False).rstrip()}
---

# {cfg.task_name} / {cfg.method_name} fine-tune of `{cfg.model.name}`

Trained with ftkit on `{trained_on}` ({n_train} training rows, {n_eval} held-out rows) in {seconds:.0f} s.
Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%).

## Results (best evaluation, step {metrics.get("step", "?")})

{f"| metric | value | {baseline['method']} baseline |" if baseline else "| metric | value |"}
{"|---|---|---|" if baseline else "|---|---|"}
{rows}

## Hyper-parameters

| key | value |
|---|---|
{hyper_rows}

## Reproduce

```
ftkit train ftkit.yaml --output NEW_RUN_DIR
```

## Load without ftkit

```python
{load}
```
"""
