"""The TF-IDF + logistic regression baseline beside every cls run (ftkit/data/baseline.py)."""

from __future__ import annotations

import json
import random

from conftest import run_cli, sentiment_rows, train_args, write_rows


def noisy(rows: list[dict], share: float, seed: int) -> list[dict]:
    """Some labels flipped: the baseline cannot be perfect, so its figure depends on exactly what it was fit on."""
    rng = random.Random(seed)
    flip = {"positive": "negative", "negative": "positive"}
    return [{**r, "label": flip[r["label"]]} if rng.random() < share else r for r in rows]


def sklearn_accuracy(train: list[dict], held_out: list[dict], seed: int = 42) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=1000, random_state=seed).fit(vec.fit_transform([r["text"] for r in train]),
                                                                     [r["label"] for r in train])
    preds = model.predict(vec.transform([r["text"] for r in held_out]))
    return sum(p == r["label"] for p, r in zip(preds, held_out)) / len(held_out)


def test_the_baseline_equals_scikit_learn_on_the_same_split(tiny_model, tmp_path):
    train, held_out = noisy(sentiment_rows(160, seed=1), 0.25, 3), noisy(sentiment_rows(40, seed=2), 0.25, 4)
    held_out.append({"text": "a film", "label": "neutral"})  # a label the model never saw: an error for both
    data = {"train": write_rows(tmp_path / "train.csv", train), "eval": write_rows(tmp_path / "eval.csv", held_out)}
    result = run_cli(*train_args(tiny_model, data, tmp_path / "run", "--max-steps", "2", "--lr", "1e-9"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    base = summary["baseline"]
    assert base["method"] == "tf-idf + logistic regression" and base["seconds"] >= 0
    expected = sklearn_accuracy(train, held_out)
    assert 0.5 < expected < 1 and base["accuracy"] == expected
    assert {"macro_f1", "accuracy"} <= set(base)
    # shown beside the run's own figures, and a run that loses to it says so
    assert f"baseline (tf-idf + logistic regression): accuracy={expected:.4f}" in result.output
    assert "is below the tf-idf + logistic regression baseline's" in result.output
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| metric | value | tf-idf + logistic regression baseline |" in card
    assert f"| accuracy | {summary['eval']['accuracy']:.4f} | {expected:.4f} |" in card


def test_the_baseline_on_a_held_out_split_and_sentence_pairs(tiny_model, tmp_path):
    rows = noisy(sentiment_rows(200, seed=5), 0.2, 6)
    rows = [{"text": r["text"].split()[0], "text_pair": " ".join(r["text"].split()[1:]), "label": r["label"]}
            for r in rows]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    result = run_cli("train", "--model", tiny_model, "--data", path, "--output", tmp_path / "run", "--max-steps", "2",
                     "--batch-size", "16", "--max-length", "32")
    assert result.exit_code == 0, result.output
    from ftkit.data.sources import held_out_split, read_table

    train_idx, eval_idx = held_out_split(read_table(str(path)), 0.1, 42)  # the run's own split (its seed)
    joined = [{"text": f"{r['text']} {r['text_pair']}", "label": r["label"]} for r in rows]
    expected = sklearn_accuracy([joined[i] for i in train_idx], [joined[i] for i in eval_idx])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["baseline"]["accuracy"] == expected


def test_the_baseline_can_be_turned_off(tiny_model, sentiment, tmp_path):
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "run", "--max-steps", "2", "--set",
                                 "task.baseline=false"))
    assert result.exit_code == 0, result.output
    assert "baseline" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "tf-idf" not in result.output and "tf-idf" not in (tmp_path / "run" / "README.md").read_text()


def test_texts_without_a_word_train_without_a_baseline(tiny_model, tmp_path):
    """TF-IDF finds no word in texts of single characters (scikit-learn: "empty vocabulary"); the run goes on
    without the baseline instead of failing."""
    rows = [{"text": t, "label": lab} for _ in range(20) for t, lab in (("a", "x"), ("b ?", "y"))]
    path = write_rows(tmp_path / "short.jsonl", rows)
    result = run_cli("train", "--model", tiny_model, "--data", path, "--output", tmp_path / "run", "--max-steps", "2",
                     "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "baseline" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
