"""Documentation generated from the code, so that it cannot drift from it: the task x method support table (each
method's own up-front checks) and the configuration reference (every config field's help, default and type, the
tasks' and methods' parameters included — the same words `--help` shows).

`python -m ftkit.commands.support --write` refreshes them in README.md, docs/methods.md and
docs/reference/config.md; tests keep them in sync (tests/test_matrix.py, tests/test_docs.py)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ftkit import config
from ftkit.errors import UsageError

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"
ROOT = Path(__file__).resolve().parents[2]
TABLE_IN = ("README.md", "docs/methods.md")
REFERENCE = "docs/reference/config.md"


def table() -> str:
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    tasks = TASKS.names()
    lines = ["| method | " + " | ".join(f"`{t}`" for t in tasks) + " | `--quant 8bit` / `4bit` | `export --merge` |",
             "|---" * (len(tasks) + 3) + "|"]
    for m in METHODS.names():
        cells = [_verdict({"task": t, "method": m}) for t in tasks]
        cells.append(_verdict({"task": tasks[0], "method": m, "model": {"quant": "8bit"}}))
        cells.append("yes" if METHODS.get(m).mergeable else "no (use --adapter-only)")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(raw: dict) -> str:
    try:
        config.build(raw)
        return "yes"
    except UsageError as e:
        return f"no: {e}"


def block() -> str:
    return f"{START}\n{table()}\n{END}"


def _fields(cls, prefix: str) -> list[str]:
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kind, text = kind.replace(" | ", " or "), f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | `{default!r}` | `{kind}` | {text} |")
    return rows


def reference() -> str:
    """docs/reference/config.md: every key a recipe, a flag or --set may give."""
    from ftkit.methods import METHODS
    from ftkit.tasks import TASKS

    head = "| key | default | type | what it does |\n|---|---|---|---|"
    parts = ["# Configuration reference", "",
             "Generated from the config fields' documentation by `python -m ftkit.commands.support --write` (a test "
             "keeps it in sync): the same words `ftkit train --help` shows. Precedence: built-in defaults < recipe "
             "YAML < flags < `--set key=value`. `task` and `method` take a name, or in a recipe a mapping with `name` "
             "and the parameters below.", "", "## Top level", "", head, *_fields(config.Config, "")]
    for name, cls in config.SECTIONS.items():
        parts += ["", f"## `{name}`", "", config.Config.__dataclass_fields__[name].metadata["help"], "", head,
                  *_fields(cls, f"{name}.")]
    for kind, registry in (("task", TASKS), ("method", METHODS)):
        for name in registry.names():
            rows = _fields(registry.get(name).params, f"{kind}.")
            parts += ["", f"## {kind} `{name}`", ""] + ([head, *rows] if rows else ["No parameters."])
    return "\n".join(parts) + "\n"


def main() -> None:
    write = "--write" in sys.argv
    for name in TABLE_IN:
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        start, end = text.index(START), text.index(END) + len(END)
        if write:
            path.write_text(text[:start] + block() + text[end:], encoding="utf-8")
    if write:
        (ROOT / REFERENCE).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / REFERENCE).write_text(reference(), encoding="utf-8")
    else:
        print(block())


if __name__ == "__main__":
    main()
