"""Training data beyond one file: several sources mixed in set shares (`data.train: [a, b]`, `data.weights`), and
cls text augmentation (`task.augment`): seeded, training rows only."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import run_cli, sentiment_rows, write_rows

from ftkit.data.sources import mix


def test_mixing_draws_in_the_set_shares():
    origin = [0] * 100 + [1] * 20
    idx = list(range(120))
    rows, notes = mix(idx, origin, [1.0, 1.0], seed=3)
    counts = Counter(origin[i] for i in rows)
    assert len(rows) == 120 and counts == {0: 60, 1: 60}
    small = Counter(i for i in rows if origin[i] == 1)
    assert set(small.values()) == {3}  # the short source repeats whole: each of its rows three times
    assert len(set(i for i in rows if origin[i] == 0)) == 60  # the long one is sampled down, no repeats
    assert mix(idx, origin, [1.0, 1.0], seed=3)[0] == rows and mix(idx, origin, [1.0, 1.0], seed=4)[0] != rows
    rows, _ = mix(idx, origin, [3.0, 1.0], seed=0)
    assert Counter(origin[i] for i in rows) == {0: 90, 1: 30}
    assert notes == ["100 rows -> 60 (50%)", "20 rows -> 60 (50%)"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    return write_rows(d / "a.csv", sentiment_rows(120, seed=11)), write_rows(d / "b.jsonl", sentiment_rows(40, seed=12))


def test_a_run_on_two_sources_mixes_them_and_eval_finds_each_ones_held_out_rows(tiny_model, sources, tmp_path):
    a, b = sources
    out = tmp_path / "run"
    result = run_cli("train", "--model", tiny_model, "--data", a, "--data", b, "--set", "data.weights=[1,1]",
                     "--output", out, "--batch-size", "16", "--max-steps", "5", "--max-length", "32")
    assert result.exit_code == 0, result.output
    # 160 rows, 16 held out over both; the 144 left drawn half from each source
    assert "data mix (data.weights): " in result.output and " -> 72 (50%)" in result.output, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train"]["train_rows"] == 144 and summary["train"]["eval_rows"] == 16
    import yaml

    saved = yaml.safe_load((out / "ftkit.yaml").read_text())["data"]
    assert saved["train"] == [str(a), str(b)] and saved["weights"] == [1.0, 1.0]
    card = (out / "README.md").read_text()
    assert f"- {a}" in card and f"- {b}" in card

    from ftkit.data.sources import held_out_split, read_training

    full, origin = read_training([str(a), str(b)])
    held_b = [i for i in held_out_split(full, 0.1, 42)[1] if origin[i] == 1]
    evaluated = run_cli("eval", out, "--data", b, "--output", tmp_path / "m.json")
    assert evaluated.exit_code == 0, evaluated.output
    assert f"scoring the {len(held_b)} rows it held out" in evaluated.output
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == len(held_b)


@pytest.mark.parametrize("extra, message", [
    (["--set", "data.weights=[1]"], "config key 'data.weights': got [1.0], expected one number > 0 per training "
                                    "source (2 given in data.train)"),
    (["--set", "data.weights=[1,-1]"], "config key 'data.weights'"),
    (["--data", "missing.csv"], "missing.csv: no such file"),
])
def test_bad_mixes_are_refused(tiny_model, sources, tmp_path, extra, message):
    a, b = sources
    result = run_cli("train", "--model", tiny_model, "--data", a, "--data", b, *extra, "--output", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_a_bad_row_in_the_second_source_is_named_by_its_file_and_line(tiny_model, sources, tmp_path):
    a, _ = sources
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good film", "label": "positive"}\n{"text": "", "label": "negative"}\n')
    result = run_cli("train", "--model", tiny_model, "--data", a, "--data", bad, "--output", tmp_path / "r")
    assert result.exit_code == 2 and f"{bad}: line 2: empty or non-text value ''" in result.output, result.output


# ------------------------------------------------------------------------------------------------ augmentation
def test_augmented_words_are_deleted_or_swapped_never_invented():
    from ftkit.tasks.cls import augment_words

    rng = random.Random(0)
    text = "the plot was really very dull and the acting weak"
    for _ in range(50):
        deleted = augment_words(text, "delete", 0.3, rng).split()
        it = iter(text.split())
        assert deleted and all(w in it for w in deleted)  # an ordered subsequence
        swapped = augment_words(text, "swap", 0.2, rng)
        assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    assert augment_words("word", "delete", 0.9, rng) == "word"


def test_augmentation_is_seeded_and_made_of_training_rows_only():
    from ftkit.data.table import Table
    from ftkit.tasks.cls import Classification

    rows = sentiment_rows(30, seed=5)
    table = Table("t", {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    train_idx = list(range(0, 30, 2))  # the odd rows: an evaluation split

    def cfg(seed):
        return SimpleNamespace(task={"augment": ["delete", "swap"], "augment_prob": 0.3, "augment_copies": 2},
                               train=SimpleNamespace(seed=seed), data=SimpleNamespace(columns={}))

    task = Classification()
    targets = list(range(30))
    extra, extra_targets, note = task.augmentation(table, targets, train_idx, cfg(1))
    again = task.augmentation(table, targets, train_idx, cfg(1))[0]
    other = task.augmentation(table, targets, train_idx, cfg(2))[0]
    assert extra.columns == again.columns and extra.columns != other.columns
    assert extra_targets == train_idx * 2 and "2 copies of each of the 15 training rows" in note
    for text, source in zip(extra.columns["text"], extra_targets):  # each from its own training row's words
        assert Counter(text.split()) <= Counter(table.columns["text"][source].split())


def test_a_run_with_augmentation_trains_on_more_rows_and_evaluates_on_the_same(tiny_model, sentiment, tmp_path):
    common = ["train", "--model", tiny_model, "--data", sentiment["train"], "--eval-data", sentiment["eval"],
              "--batch-size", "16", "--max-steps", "3", "--max-length", "32"]
    plain = run_cli(*common, "--output", tmp_path / "plain")
    augmented = run_cli(*common, "--output", tmp_path / "aug", "--set", "task.augment=[swap]")
    assert plain.exit_code == 0 and augmented.exit_code == 0, augmented.output
    p, a = (json.loads((tmp_path / n / "metrics.json").read_text())["train"] for n in ("plain", "aug"))
    assert a["train_rows"] == 2 * p["train_rows"] and a["eval_rows"] == p["eval_rows"] == 40
    bad = run_cli(*common, "--output", tmp_path / "bad", "--set", "task.augment=[shuffle]")
    assert bad.exit_code == 2 and "config key 'task.augment': got 'shuffle'" in bad.output
