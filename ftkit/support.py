"""The task x method support table, generated from the registries (each method's own up-front checks).

`python -m ftkit.support --write` refreshes it in README.md; a test keeps the two in sync."""

from __future__ import annotations

import sys
from pathlib import Path

from ftkit import config
from ftkit.errors import UsageError

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


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


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(START), text.index(END) + len(END)
    if "--write" in sys.argv:
        readme.write_text(text[:start] + block() + text[end:], encoding="utf-8")
    else:
        print(block())


if __name__ == "__main__":
    main()
