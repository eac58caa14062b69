"""The README's figures, from the commands the README documents: each entry below runs its command in a fresh run
dir, and the README's blocks between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` are rewritten from
what the runs gave, as is ``bench/FIGURES.json`` (the figures, each with its command, date and machine).

    python bench/figures.py                 # rerun every command (about 15 minutes on 2 CPU cores), rewrite both
    python bench/figures.py --only demo     # one entry: the others keep their recorded figures
    python bench/figures.py --render        # rewrite the README from bench/FIGURES.json, running nothing
    python bench/figures.py --keep runs/figures   # ... and keep the run dirs (bench/screenshots.py shows them)

Run it before a release (and after any change of a default); tests/test_real.py trains the demo again and
checks that it gives the accuracy recorded here, and tests/test_bench.py that the README shows what is recorded.
Accuracies are deterministic on one machine class (same CPU kind, 2 cores); training times are not: they vary
with what else the shared machine runs, so they are given as measured, with the date."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RECORD = ROOT / "bench" / "FIGURES.json"


@dataclass(frozen=True)
class Figure:
    name: str
    command: list[str]  # ftkit's arguments, with RUN where the run dir goes
    shown_as: str  # the command as the README gives it
    what: str  # model + data, as the table says it


FIGURES = [
    Figure("demo", ["train", "--output", "RUN"], "make demo", "MiniLM + polarity (LoRA, the built-in defaults)"),
    Figure("cls-lora", ["train", "cls-lora", "--output", "RUN"], "ftkit train cls-lora", "MiniLM + polarity"),
    Figure("tag-lora", ["train", "tag-lora", "--output", "RUN"], "ftkit train tag-lora", "MiniLM + pos-wsj"),
    Figure("gen-lora", ["train", "gen-lora", "--output", "RUN"], "ftkit train gen-lora", "SmolLM2-135M + chatterbot"),
]


def run(figure: Figure, keep: Path | None = None) -> dict:
    """The command, in a fresh run dir (``keep``/NAME, replaced, or a temporary one), and what its metrics.json
    says."""
    with tempfile.TemporaryDirectory(prefix=f"figures-{figure.name}-") as work:
        out = keep / figure.name if keep else Path(work) / "run"
        args = [str(out) if a == "RUN" else a for a in figure.command] + (["--overwrite"] if keep else [])
        subprocess.run([sys.executable, "-m", "ftkit", *args, "--quiet"], check=True, cwd=ROOT)
        summary = json.loads((out / "metrics.json").read_text())
    main = summary["main_metric"]
    record = {"command": "ftkit " + " ".join(figure.command), "main_metric": main,
              "value": round(summary["eval"][main], 4), "steps": summary["train"]["steps"],
              "train_rows": summary["train"]["train_rows"], "eval_rows": summary["train"]["eval_rows"],
              "seconds": round(summary["train"]["seconds"]),
              "date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} CPU cores, "
                                                                     f"{platform.processor() or platform.machine()}"}
    if "macro_f1" in summary["eval"]:
        record["macro_f1"] = round(summary["eval"]["macro_f1"], 4)
    if summary.get("baseline"):
        record["baseline"] = {"method": summary["baseline"]["method"],
                              "value": round(summary["baseline"][main], 4)}
    return record


def _result(r: dict) -> str:
    name = {"accuracy": "accuracy", "perplexity": "perplexity", "entity_f1": "entity F1"}.get(r["main_metric"],
                                                                                           r["main_metric"])
    text = f"{name} {r['value']:.4f}"
    if "baseline" in r:
        text += f" (TF-IDF baseline {r['baseline']['value']:.4f})"
    return text


def render(record: dict) -> dict[str, str]:
    """The README's blocks, by name, from the recorded figures."""
    demo = record["demo"]
    blocks = {"demo": (
        f"`make demo` on {demo['machine'].split(',')[0]}: **{demo['value']:.4f} held-out accuracy** (macro-F1 "
        f"{demo['macro_f1']:.4f}) on `polarity` ({demo['train_rows']:,} train / {demo['eval_rows']:,} held-out "
        f"sentences, {demo['steps']} steps; the TF-IDF baseline beside it: {demo['baseline']['value']:.4f}), "
        f"{demo['seconds']} s of training ({demo['date']}; the time varies with what else the machine runs, the "
        "accuracy does not). The first run also downloads the model and data packages, ~110 MB, once. This is one "
        "seed and split; over three of each the defaults gave 0.8233 in bench/defaults.py's `scheduler` study "
        "(2026-12-02, the lock before this one; `bench/DEFAULTS.md`).")}
    rows = ["| command | model + data | held-out result | training |", "|---|---|---|---|"]
    for figure in FIGURES:
        r = record[figure.name]
        rows.append(f"| `{figure.shown_as}` | {figure.what} ({r['train_rows']:,} / {r['eval_rows']:,} rows) | "
                    f"{_result(r)} | {r['seconds']} s, {r['steps']} steps |")
    blocks["recipes"] = (f"Measured with `python bench/figures.py` on {demo['date']} ({demo['machine']}):\n\n"
                         + "\n".join(rows))
    return blocks


def rewrite(text: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(\n<!-- /figures:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- figures:{name} --> ... <!-- /figures:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[f.name for f in FIGURES], help="rerun these only")
    parser.add_argument("--render", action="store_true", help="rewrite the README from the record; run nothing")
    parser.add_argument("--keep", type=Path, help="keep the run dirs in this folder (one per figure, by name)")
    args = parser.parse_args(argv)
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if not args.render:
        for figure in FIGURES:
            if args.only is None or figure.name in args.only:
                print(f"figures: {figure.name}: ftkit {' '.join(figure.command)}", flush=True)
                record[figure.name] = run(figure, args.keep)
                RECORD.write_text(json.dumps(record, indent=2) + "\n")  # kept as each finishes
    README.write_text(rewrite(README.read_text(), render(record)))
    print(f"wrote {RECORD.relative_to(ROOT)} and the README's figures")


if __name__ == "__main__":
    main()
