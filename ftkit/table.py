"""The in-memory table every data source is read into (files by ftkit.data, built-in datasets by ftkit.catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError


@dataclass
class Table:
    """Columns of equal length, plus where each row came from (for error messages)."""

    source: str
    columns: dict[str, list]
    where: list[str] = field(default_factory=list)  # e.g. "line 12" per row; empty = "row i"

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where_is(self, i: int) -> str:
        return self.where[i] if self.where else f"row {i + 1}"

    def locate(self, i: int) -> str:
        return f"{self.source}: {self.where_is(i)}"

    def column(self, name: str, role: str) -> list:
        if name not in self.columns:
            found = ", ".join(self.columns) or "none"
            raise UsageError(f"{self.source}: no column {name!r} for the {role} (set data.columns.{role}=...); "
                             f"columns found: {found}")
        return self.columns[name]

    def text_column(self, name: str, role: str) -> list[str]:
        """``column``, with every value a non-empty string."""
        values = self.column(name, role)
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v.strip():
                raise UsageError(f"{self.locate(i)}: empty or non-text value {v!r} in the {role} column")
        return values

    def select(self, idx: list[int]) -> Table:
        return Table(self.source, {k: [v[i] for i in idx] for k, v in self.columns.items()},
                     [self.where[i] for i in idx] if self.where else [f"row {i + 1}" for i in idx])
