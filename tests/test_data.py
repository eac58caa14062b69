"""Data readers, held-out splits, the tokenization cache and length-grouped batching."""

from __future__ import annotations

import json

import pytest

from conftest import write_rows
from ftkit.data.cache import cached_encodings
from ftkit.data.sources import Table, held_out_split, read_table
from ftkit.errors import UsageError
from ftkit.training.loop import length_grouped_batches

ROWS = [{"text": "a good film", "label": "positive"}, {"text": 'said "awful", twice', "label": "negative"},
        {"text": "commas, tabs\tand ünïcode", "label": "positive"}]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_format_reads_the_same_columns(tmp_path, suffix):
    table = read_table(str(write_rows(tmp_path / f"d{suffix}", ROWS)))
    assert table.columns == {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}


# str.splitlines ends a line at each of these; in a data file they are text (web text carries them)
ODD_TEXT = ["page\x0cbreak", "next\x85line", "line\u2028separator", "para\u2029separator", "file\x1cseparator"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_lines_end_only_at_newlines(tmp_path, suffix):
    rows = [{"text": text, "label": n} for n, text in enumerate(ODD_TEXT)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":  # U+0085, U+2028 and U+2029 written as they are (JSON strings may hold them unescaped)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    else:
        write_rows(path, rows)  # csv: \r\n between rows, as the csv module writes them
    table = read_table(str(path))
    first, name = {".csv": (2, "line"), ".tsv": (2, "line"), ".jsonl": (1, "line"), ".json": (1, "item")}[suffix]
    assert table.columns["text"] == ODD_TEXT
    assert table.where == [f"{name} {first + n}" for n in range(len(ODD_TEXT))]  # each row where it is in the file


def test_json_object_of_columns(tmp_path):
    (tmp_path / "d.json").write_text('{"text": ["a", "b"], "label": [0, 1]}')
    assert read_table(str(tmp_path / "d.json")).columns == {"text": ["a", "b"], "label": [0, 1]}


@pytest.mark.parametrize("name, content, message", [
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n', r"d.jsonl: line 2: invalid JSON"),
    ("d.jsonl", '{"text": "a"}\n[1, 2]\n', r"d.jsonl: line 2: expected a JSON object, found list"),
    ("d.json", '[{"text": "a"},\n {"text": }]', r"d.json: line 2: invalid JSON"),
    ("d.csv", 'text,label\n"a",1\n"b",2,3\n', r"d.csv: line 3: expected 2 fields \(text, label\), found 3"),
    ("d.csv", "", r"d.csv: no data rows"),
    ("d.csv", "text,label\n", r"d.csv: no data rows"),
    ("d.xml", "<a/>",
     r"d.xml: unknown data format ..xml.; expected one of .csv, .tsv, .jsonl, .json, .parquet, .conll"),
    ("d.parquet", "not parquet", r"d.parquet: cannot read as parquet"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UsageError, match=message):
        read_table(str(tmp_path / name))


def test_non_utf8_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"text,label\nok,1\ncaf\xe9,2\n")
    with pytest.raises(UsageError, match=r"d.csv: line 3: not UTF-8 \(byte 0xe9\)"):
        read_table(str(tmp_path / "d.csv"))


def test_missing_file_and_unknown_name():
    with pytest.raises(UsageError, match=r"nope.csv: no such file, and not a built-in dataset \(polarity, pos-wsj"):
        read_table("nope.csv")


def test_held_out_split_is_seeded_and_disjoint():
    table = Table("t", {"x": list(range(100))})
    train, held = held_out_split(table, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert held_out_split(table, 0.1, seed=3) == (train, held)
    assert held_out_split(table, 0.1, seed=4) != (train, held)


def test_tokenization_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"input_ids": [[1, 2, 3], [4], []], "token_type_ids": [[0, 0, 0], [0], []]}

    first = cached_encodings({"k": 1}, compute)
    second = cached_encodings({"k": 1}, compute)
    assert first == second == compute() and len(calls) == 2  # computed once by the cache, once by the assert
    assert len(list((tmp_path / "tokenized").glob("*.npz"))) == 1
    cached_encodings({"k": 2}, compute)
    assert len(calls) == 3


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    import random

    lengths = [random.Random(i).randint(1, 100) for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    rng = random.Random(0)
    order = list(range(1000))
    rng.shuffle(order)
    random_padded = sum(16 * max(lengths[i] for i in order[s:s + 16]) for s in range(0, 1000, 16))
    assert padded < 0.75 * random_padded
    assert length_grouped_batches(lengths, 16, seed=0, epoch=1) != batches  # reshuffled every epoch


def test_txt_files_hold_one_document_per_line_or_per_paragraph(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first doc\n  second doc  \n\n", encoding="utf-8")  # trailing blank lines: still per line
    table = read_table(str(lines))
    assert table.columns == {"text": ["first doc", "second doc"]} and table.where == ["line 1", "line 2"]
    paras = tmp_path / "paras.txt"
    paras.write_text("\nintro line one\nline two\n\n\nnext paragraph\n", encoding="utf-8")
    table = read_table(str(paras))
    assert table.columns == {"text": ["intro line one line two", "next paragraph"]}
    assert table.where == ["line 2", "line 6"]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("one\u2028still one\x0cand one\r\ntwo\rthree\n", encoding="utf-8", newline="")
    assert read_table(str(mixed)).columns == {"text": ["one\u2028still one\x0cand one", "two", "three"]}
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UsageError, match="empty.txt: no data rows"):
        read_table(str(empty))
