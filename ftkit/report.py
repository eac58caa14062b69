"""What a run tells the user: the progress display, metrics.jsonl, and the run dir's model card."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Reporter:
    """Writes metrics.jsonl and shows progress: a rich bar on a terminal, plain log lines otherwise (CI logs).
    Only the main process reports (``enabled``); ``quiet`` keeps it to warnings (metrics.jsonl is still written).
    With ``cfg``, the trackers of its ``train.report_to`` get the same records (``train/loss``, ``eval/accuracy``...)."""

    def __init__(self, run_dir: Path, enabled: bool = True, quiet: bool = False, cfg=None):
        self.run_dir, self.path = run_dir, run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.shows = enabled and not quiet
        self.cfg, self.trackers = cfg, []
        self._progress = None

    def _track(self, values: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def _write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def resumed(self, step: int, checkpoint: str | None) -> None:
        """Drop the records a killed run wrote after its last checkpoint (they will be written again) and a last
        line it may have left half-written."""
        if self.enabled and self.path.is_file():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line + "\n")
                except ValueError:
                    pass
            self.path.write_text("".join(kept), encoding="utf-8")
        self.note(f"resumed from {checkpoint} (step {step})" if checkpoint
                  else "no checkpoint to resume from: starting at step 0")

    def start(self, total: int, done: int = 0) -> None:
        if self.enabled and self.cfg is not None:
            from ftkit import tracking

            self.trackers = tracking.start(self.cfg, self.run_dir, done)
        if not self.shows:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
            self._task = self._progress.add_task("train", total=total, completed=done, info="")
            self._progress.start()
        self.total = total

    def log(self, record: dict) -> None:
        self._write({"type": "train", **record})
        self._track({f"train/{k}": v for k, v in record.items() if k != "step"}, record["step"])
        if not self.shows:
            return
        info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['samples_per_s']:.1f} samples/s"
        if self._progress:
            self._progress.update(self._task, completed=record["step"], info=info)
        else:
            print(f"step {record['step']}/{self.total}  {info}", file=sys.stderr, flush=True)

    def eval(self, step: int, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._write({"type": "eval", "step": step, **{f"eval_{k}": v for k, v in scalars.items()}})
        self._track({f"eval/{k}": v for k, v in scalars.items()}, step)
        self.note(f"eval @ step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()))

    def note(self, text: str) -> None:
        if self.shows:
            self.warn(text)

    def warn(self, text: str) -> None:
        """Shown even with --quiet."""
        if not self.enabled:
            return
        if self._progress:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        if self._progress:
            self._progress.stop()
            self._progress = None


def model_card(cfg, *, base: str, trainable: int, total: int, metrics: dict, seconds: float, n_train: int,
               n_eval: int, adapter: bool, auto_class: str, labelled: bool, hub_task: str,
               load_note: str | None = None) -> str:
    """The run dir's README.md: what was trained, on what, how well, and how to load it without ftkit. ``base``:
    the base model's public name where it has one (the loading lines then work anywhere), else its path;
    ``load_note``: what the method says a user must know to load it."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scalars.items())
    if adapter:  # the base, with the run's label maps (the base's config has none), then the adapter over it
        labels = ("labels = AutoConfig.from_pretrained(RUN_DIR)  # the run's label maps\n" if labelled else "")
        kwargs = (", num_labels=labels.num_labels,\n    id2label=labels.id2label, label2id=labels.label2id"
                  if labelled else "")
        load = (f"from peft import PeftModel\nfrom transformers import {'AutoConfig, ' if labelled else ''}{auto_class}\n"
                f"{labels}base = {auto_class}.from_pretrained({base!r}{kwargs})\n"
                "model = PeftModel.from_pretrained(base, RUN_DIR)")
        if load_note:
            load += f"\n# {load_note}"
    else:
        load = f"from transformers import {auto_class}\nmodel = {auto_class}.from_pretrained(RUN_DIR)"
    import yaml

    header = {"base_model": base, "library_name": "peft" if adapter else "transformers",
              "pipeline_tag": hub_task, "tags": ["ftkit", cfg.task_name, cfg.method_name],
              "datasets": [cfg.data.train], "metrics": [k for k in scalars if k != "step"],
              "model-index": [{"name": Path(cfg.output or "run").name, "results": [{
                  "task": {"type": hub_task},
                  "dataset": {"name": cfg.data.eval or f"{cfg.data.train} (held-out split)", "type": "ftkit"},
                  "metrics": [{"type": k, "value": v} for k, v in scalars.items() if k != "step"]}]}]}
    hyper = {**{f"method.{k}": v for k, v in cfg.method.items()},
             **{f"train.{k}": v for k, v in vars(cfg.train).items()},
             "data.max_length": cfg.data.max_length, "model.quant": cfg.model.quant}
    hyper_rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
    return f"""---
{yaml.safe_dump(header, sort_keys=False).rstrip()}
---

# {cfg.task_name} / {cfg.method_name} fine-tune of `{cfg.model.name}`

Trained with ftkit on `{cfg.data.train}` ({n_train} training rows, {n_eval} held-out rows) in {seconds:.0f} s.
Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%).

## Results (best evaluation, step {metrics.get("step", "?")})

| metric | value |
|---|---|
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


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def print_eval(metrics: dict) -> None:
    """Headline metrics, then a per-class table when the task reports one."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    console.print("  ".join(f"[bold]{k}[/] {v:.4f}" if isinstance(v, float) else f"[bold]{k}[/] {v}"
                            for k, v in scalars.items()))
    for key, title in (("per_class", "class"), ("per_entity", "entity")):
        if metrics.get(key):
            table = Table(title, "precision", "recall", "f1", "support")
            for name, m in metrics[key].items():
                table.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                              str(m["support"]))
            console.print(table)


def print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("", "", show_header=False)
    table.add_row("model", f"{info['model']} ({info['path']})")
    table.add_row("task / method", f"{info['task']} / {info['method']}")
    table.add_row("parameters", f"{info['total_params']:,}")
    table.add_row("trainable", f"{info['trainable_params']:,} ({100 * info['trainable_share']:.2f}%)")
    table.add_row("weights in memory" + (f" ({info['quant']})" if info["quant"] != "none" else ""),
                  human_bytes(info["weights_bytes"]))
    table.add_row("+ gradients and AdamW state", human_bytes(info["training_state_bytes"]))
    table.add_row(f"+ activations (batch {info['batch_size']} x {info['max_length']} tokens, {info['precision']}"
                  + (", checkpointed" if info["gradient_checkpointing"] else "") + ")",
                  human_bytes(info["activations_bytes"]))
    table.add_row("estimated peak training memory", human_bytes(info["estimated_peak_bytes"]))
    if info["quant"] != "none":
        table.add_row("note", "bitsandbytes' own kernel buffers are not included (on CPU they measured as much "
                              "again for minilm 8bit: README)")
    Console().print(table)


def print_dry_run(result: dict) -> None:
    import yaml

    d = result["dry_run"]
    print("# resolved config\n" + yaml.safe_dump(result["config"], sort_keys=False).rstrip())
    print(f"# data\ntrain rows {d['train_rows']}, eval rows {d['eval_rows']}")
    lengths = "  ".join(f"{k} {v}" for k, v in d["length_tokens"].items())
    print(f"tokens per training row: {lengths}; {d['long_rows']} rows would be {d['long_rows_are']} at "
          f"data.max_length={d['max_length']}")
    if "label_counts" in d:
        print("labels: " + ", ".join(f"{k} {v}" for k, v in d["label_counts"].items()))
    print("# model")
    print_info(d["model"])
