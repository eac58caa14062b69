"""Shipped recipes: YAML files in the repository's tasks/ folder, which an installed wheel carries as
ftkit/_recipes/. A recipe's first comment line describes it."""

from __future__ import annotations

from pathlib import Path

from ftkit.errors import UsageError

_PACKAGE = Path(__file__).resolve().parents[1]  # ftkit/
_PACKAGED = _PACKAGE / "_recipes"  # a wheel (pyproject.toml maps tasks/ there)
RECIPES_DIR = _PACKAGED if _PACKAGED.is_dir() else _PACKAGE.parent / "tasks"  # a checkout


def shipped() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find(spec: str) -> Path:
    """A recipe file path, or the name of a shipped recipe."""
    path = Path(spec)
    if path.is_file():
        return path
    recipes = shipped()
    if spec in recipes:
        return recipes[spec]
    if path.suffix in (".yaml", ".yml"):
        raise UsageError(f"{spec}: recipe file not found")
    raise UsageError(f"{spec}: not a recipe file nor a shipped recipe ({', '.join(recipes) or 'none'})")
