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
    lines = ["| method | " + " | ".join(f"`{t}`" for t in tasks) + " | `export --merge` |",
             "|---" * (len(tasks) + 2) + "|"]
    for m in METHODS.names():
        cells = []
        for t in tasks:
            try:
                config.build({"task": t, "method": m})
                cells.append("yes")
            except UsageError as e:
                cells.append(f"no: {e}")
        merge = "yes" if METHODS.get(m).mergeable else "no (use --adapter-only)"
        lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {merge} |")
    return "\n".join(lines)


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
