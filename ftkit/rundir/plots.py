"""Images a run leaves behind: ``curves.png`` (losses and the main metric against the step) and a confusion
matrix. matplotlib is imported here only, with the non-interactive Agg backend."""

from __future__ import annotations

import json
from pathlib import Path

from ftkit.util.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def curves(history: Path, path: Path, title: str, main_metric: str) -> Path:
    """Train loss, eval loss and the main metric from a run's history (metrics.jsonl) -> ``path`` (a PNG)."""
    plt = _pyplot()
    records = [json.loads(line) for line in history.read_text(encoding="utf-8").splitlines()]
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        left.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss",
                  color="tab:orange")
        key = f"eval_{main_metric}"
        right.plot([r["step"] for r in evals], [r.get(key) for r in evals], "o-", color="tab:green")
    left.set(xlabel="optimizer step", ylabel="loss", title="loss")
    left.legend()
    right.set(xlabel="optimizer step", ylabel=main_metric, title=f"eval {main_metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "confusion matrix") -> Path:
    """Rows: true label, columns: predicted; counts written in the cells when there is room."""
    plt = _pyplot()
    n = len(labels)
    size = max(4.0, min(0.32 * n + 2, 18.0))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center",
                        color="white" if count > top / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path
