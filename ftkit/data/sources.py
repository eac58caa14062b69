"""Reading training data (files or built-in datasets) into columns, column mapping, held-out splits."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from ftkit.data.table import Table, concat
from ftkit.errors import UsageError

FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".conll", ".iob", ".bio", ".txt")


def read_table(spec: str) -> Table:
    """A built-in dataset name or a path to csv/tsv/jsonl/json/parquet."""
    from ftkit.data import catalog

    if spec in catalog.DATASETS:
        return catalog.load_dataset(spec)
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"{spec}: no such file, and not a built-in dataset ({', '.join(catalog.DATASETS)})")
    if path.is_dir():
        raise UsageError(f"{spec}: is a directory; expected a data file ({', '.join(FORMATS)})")
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise UsageError(f"{spec}: unknown data format {suffix or '(no extension)'!r}; expected one of "
                         f"{', '.join(FORMATS)}")
    table = reader(path)
    if len(table) == 0:
        raise UsageError(f"{spec}: no data rows")
    return table


def sources(spec) -> list[str]:
    """The files or built-in datasets of a data spec: one, or a list of them (``data.train: [a.csv, b.csv]``)."""
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def spec_name(spec) -> str:
    return " + ".join(sources(spec))


def read_training(spec) -> tuple[Table, list[int]]:
    """The training data — several sources read and put one after another — and, per row, which source it came
    from."""
    tables = [read_table(s) for s in sources(spec)]
    return concat(tables), [k for k, t in enumerate(tables) for _ in range(len(t))]


def mix(idx: list[int], origin: list[int], weights: list[float], seed: int) -> tuple[list[int], list[str]]:
    """Training rows ``idx`` redrawn so that source k makes up weights[k] / sum(weights) of them, the total staying
    ``len(idx)``: a source short of its share is repeated (whole copies, then a seeded sample of the rest), one
    over it is sampled down (seeded). -> (the rows, drawn once for the run; a line per source for the log)."""
    rng = random.Random(seed)
    by_source = [[i for i in idx if origin[i] == k] for k in range(len(weights))]
    out, notes = [], []
    for k, (rows, w) in enumerate(zip(by_source, weights)):
        want = round(len(idx) * w / sum(weights))
        if not rows:
            raise UsageError(f"data.train source {k + 1} has no training rows (all held out?); pass --eval-data "
                             "or give it more rows")
        copies, rest = divmod(want, len(rows))
        out += rows * copies + sorted(rng.sample(rows, rest))
        notes.append(f"{len(rows)} rows -> {want} ({100 * want / max(1, len(idx)):.0f}%)")
    return out, notes


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line}: not UTF-8 (byte {raw[e.start]:#04x}); re-save the file as UTF-8") \
            from None


def text_lines(path: Path) -> list[str]:
    """A UTF-8 file's lines, ended by \\n, \\r\\n or \\r only: ``str.splitlines`` also ends a line at form feeds,
    U+0085 and U+2028/U+2029, which text taken from the web carries inside its lines (and JSON strings may hold
    unescaped)."""
    return io.StringIO(_text(path), newline=None).read().split("\n")


def _from_rows(path: Path, rows: list[dict], where: list[str]) -> Table:
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    return Table(str(path), {n: [r.get(n) for r in rows] for n in names}, where)


def _read_delimited(path: Path, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(_text(path), newline=""), delimiter=delimiter)  # as csv wants its files opened
    try:
        header = next(reader, None)
        if header is None:
            return Table(str(path), {})
        rows, where = [], []
        for values in reader:
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(header):
                raise UsageError(f"{path}: line {reader.line_num}: expected {len(header)} fields "
                                 f"({', '.join(header)}), found {len(values)}")
            rows.append(dict(zip(header, values)))
            where.append(f"line {reader.line_num}")
    except csv.Error as e:
        raise UsageError(f"{path}: line {reader.line_num}: malformed {path.suffix[1:].upper()}: {e}") from None
    table = _from_rows(path, rows, where)
    if not rows:
        table.columns = {h: [] for h in header}
    return table


def _read_jsonl(path: Path) -> Table:
    rows, where = [], []
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: line {n}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}: line {n}: expected a JSON object, found {type(obj).__name__}")
        rows.append(obj)
        where.append(f"line {n}")
    return _from_rows(path, rows, where)


def _read_json(path: Path) -> Table:
    try:
        obj = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):  # {column: [values]}
        lengths = {len(v) for v in obj.values()}
        if len(lengths) > 1:
            raise UsageError(f"{path}: columns have different lengths: "
                             + ", ".join(f"{k}={len(v)}" for k, v in obj.items()))
        return Table(str(path), obj)
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise UsageError(f"{path}: expected a list of JSON objects (or an object of column lists)")
    return _from_rows(path, obj, [f"item {i + 1}" for i in range(len(obj))])


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        return Table(str(path), pq.read_table(path).to_pydict())
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UsageError(f"{path}: cannot read as parquet: {e}") from None


def _read_conll(path: Path) -> Table:
    """CoNLL-style tagging data: one token per line, its tag in the last column (columns separated by spaces or
    tabs), a blank line between sentences; ``-DOCSTART-`` lines are skipped. Gives columns ``tokens`` and ``tags``."""
    tokens, tags, where = [], [], []
    cur_tok, cur_tag, start = [], [], 0
    for n, line in enumerate(text_lines(path) + [""], 1):
        # columns split at spaces and tabs only: a token may hold U+00A0 (str.split would cut it there)
        parts = [p for p in line.replace("\t", " ").split(" ") if p] if line.strip() else []
        if not parts or parts[0] == "-DOCSTART-":
            if cur_tok:
                tokens.append(cur_tok)
                tags.append(cur_tag)
                where.append(f"line {start}")
            cur_tok, cur_tag = [], []
            continue
        if len(parts) < 2:
            raise UsageError(f"{path}: line {n}: expected a token and its tag separated by a space or tab, "
                             f"found {line.strip()!r}")
        if not cur_tok:
            start = n
        cur_tok.append(parts[0])
        cur_tag.append(parts[-1])
    return Table(str(path), {"tokens": tokens, "tags": tags} if tokens else {}, where)


def _read_txt(path: Path) -> Table:
    """Raw text (for mlm, or gen's plain-text mode): one document per line; or, when the file has blank lines,
    blank-line-separated paragraphs (a paragraph's lines joined by spaces). Gives the column ``text``."""
    lines = [line.strip() for line in text_lines(path)]
    filled = [n for n, line in enumerate(lines) if line]
    paragraphs = bool(filled) and "" in lines[filled[0]:filled[-1]]  # a blank line between two text lines
    docs, where, cur, start = [], [], [], 0
    for n, line in enumerate(lines + [""], 1):
        if line:
            if not cur:
                start = n
            cur.append(line)
            if paragraphs:
                continue
        if cur:
            docs.append(" ".join(cur))
            where.append(f"line {start}")
            cur = []
    return Table(str(path), {"text": docs} if docs else {}, where)


_READERS = {
    ".txt": _read_txt,
    ".conll": _read_conll,
    ".iob": _read_conll,
    ".bio": _read_conll,
    ".csv": lambda p: _read_delimited(p, ","),
    ".tsv": lambda p: _read_delimited(p, "\t"),
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}


def held_out_split(table: Table, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, eval) of a seeded shuffle split: the same seed and data always give the same split."""
    idx = list(range(len(table)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(idx) * fraction))
    if len(idx) - n_eval < 1:
        raise UsageError(f"{table.source}: {len(idx)} rows are too few to hold out an eval split; "
                         "pass --eval-data")
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


def fingerprint(spec) -> str:
    """Identifies the content of a data spec for caching (file size + mtime, or the built-in's name)."""
    from ftkit.data import catalog

    if isinstance(spec, (list, tuple)):
        return "+".join(fingerprint(s) for s in spec)
    if spec in catalog.DATASETS:
        return f"builtin:{spec}:{catalog.DATASETS[spec].version}"
    st = Path(spec).stat()
    return f"{Path(spec).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def same_data(a: str, b: str) -> bool:
    """Whether two data specs hold the same data: the same built-in dataset, or two files with the same content
    (wherever they lie)."""
    import hashlib

    from ftkit.data import catalog

    if a in catalog.DATASETS or b in catalog.DATASETS:
        return a == b
    pa, pb = Path(a), Path(b)
    if not (pa.is_file() and pb.is_file()) or pa.stat().st_size != pb.stat().st_size:
        return False
    if pa.resolve() == pb.resolve():
        return True
    digests = []
    for path in (pa, pb):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests.append(h.digest())
    return digests[0] == digests[1]


def to_features(encodings: dict[str, list[list]], targets: list, idx: list[int]) -> list[dict]:
    """Rows ``idx`` as model-ready feature dicts: the encoded columns plus ``labels``."""
    return [{**{k: v[i] for k, v in encodings.items()}, "labels": targets[i]} for i in idx]
