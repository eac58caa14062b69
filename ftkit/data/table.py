"""The in-memory table every data source is read into (files by ftkit.data.sources, built-in datasets by
ftkit.data.catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftkit.errors import UsageError


@dataclass
class Table:
    """Columns of equal length, plus where each row came from (for error messages)."""

    source: str
    columns: dict[str, list]
    where: list[str] = field(default_factory=list)  # e.g. "line 12" per row; empty = "row i"
    located: bool = False  # ``where`` names the file too (tables put together from several files: ``concat``)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where_is(self, i: int) -> str:
        return self.where[i] if self.where else f"row {i + 1}"

    def locate(self, i: int) -> str:
        return self.where_is(i) if self.located else f"{self.source}: {self.where_is(i)}"

    def column(self, name: str, role: str) -> list:
        if name not in self.columns:
            found = ", ".join(self.columns) or "none"
            only = next(iter(self.columns)) if len(self.columns) == 1 else ""
            sep = next((c for c in ";\t|," if c in only), None)  # a header read as one column: another separator
            hint = f" (one column: is the file separated by {sep!r}? .csv files are read with ',', .tsv with tabs)" \
                if sep else ""
            raise UsageError(f"{self.source}: no column {name!r} for the {role} (set data.columns.{role}=...); "
                             f"columns found: {found}{hint}")
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
                     [self.where[i] for i in idx] if self.where else [f"row {i + 1}" for i in idx], self.located)


def concat(tables: list[Table]) -> Table:
    """Tables one after another; a column one of them lacks is None in its rows (the task's checks name them)."""
    if len(tables) == 1:
        return tables[0]
    names = list(dict.fromkeys(c for t in tables for c in t.columns))
    columns = {c: [v for t in tables for v in t.columns.get(c, [None] * len(t))] for c in names}
    return Table(" + ".join(t.source for t in tables), columns,
                 [t.locate(i) for t in tables for i in range(len(t))], located=True)
