"""cls beyond one class per row: multi-label (sigmoid + BCE, thresholds) and regression (one output, MSE), through
train, eval, predict, export (merged and ONNX), stock transformers, the baseline, and the refusals."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, run_cli, train_args, write_rows

PLACES = ["paris", "london"]


def topic_rows(n: int, seed: int, as_list: bool) -> list[dict]:
    """Each row mentions any of: a positive word, a negative word, a place; its labels say which."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [name for name in ("pos", "neg", "place") if rng.random() < 0.45] or ([] if i % 7 else ["pos"])
        words = rng.sample(FILLER, rng.randint(2, 5))
        for name, pool in (("pos", POSITIVE), ("neg", NEGATIVE), ("place", PLACES)):
            if name in labels:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
        rows.append({"text": " ".join(words), "label": labels if as_list else ",".join(labels)})
    return rows


def score_rows(n: int, seed: int) -> list[dict]:
    """The value: 2 per positive word, -1 per negative word, plus 0.5."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 2)
        words = rng.sample(FILLER, rng.randint(2, 5)) + rng.sample(POSITIVE, pos) + rng.sample(NEGATIVE, neg)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": 2.0 * pos - neg + 0.5})
    return rows


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    d = tmp_path_factory.mktemp("topics")
    return {"train": write_rows(d / "train.csv", topic_rows(240, 1, as_list=False)),
            "eval": write_rows(d / "eval.jsonl", topic_rows(60, 2, as_list=True))}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    d = tmp_path_factory.mktemp("scores")
    return {"train": write_rows(d / "train.csv", score_rows(240, 1)),
            "eval": write_rows(d / "eval.jsonl", score_rows(60, 2))}


def trained(recipe: str, model, data, out):
    """The shipped recipe, fully fine-tuned for 20 epochs (LoRA learns slowly on the random tiny model)."""
    result = run_cli("train", recipe, *train_args(model, data, out, "--epochs", "20", "--method", "full",
                                                  "--max-length", "32")[1:])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def multi_run(tiny_model, topics, tmp_path_factory):
    return trained("cls-multilabel", tiny_model, topics, tmp_path_factory.mktemp("multi") / "run")


@pytest.fixture(scope="module")
def regression_run(tiny_model, scores, tmp_path_factory):
    return trained("cls-regression", tiny_model, scores, tmp_path_factory.mktemp("regression") / "run")


def evaluate(model, data, out, *extra):
    result = run_cli("eval", model, "--data", data, "--output", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def predictions(model, data, out, *extra):
    result = run_cli("predict", model, "--file", data, "--output", out, *extra)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_multi_label_learns_and_stores_its_problem_and_threshold(multi_run, topics):
    config = json.loads((multi_run / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "neg", "1": "place", "2": "pos"}
    summary = json.loads((multi_run / "metrics.json").read_text())
    assert summary["main_metric"] == "micro_f1" and summary["eval"]["micro_f1"] > 0.85, summary
    assert config["multi_label_threshold"] == summary["eval"]["threshold"]
    assert set(summary["eval"]["per_class"]) == {"neg", "place", "pos"}
    base = summary["baseline"]
    assert base["method"] == "tf-idf + logistic regression per class" and 0 <= base["micro_f1"] <= 1


def test_multi_label_eval_and_predict_use_the_tuned_threshold(multi_run, topics, tmp_path):
    threshold = json.loads((multi_run / "config.json").read_text())["multi_label_threshold"]
    m = evaluate(multi_run, topics["eval"], tmp_path / "m.json")
    assert m["threshold"] == threshold and m["micro_f1"] > 0.85
    rows = predictions(multi_run, topics["eval"], tmp_path / "p.jsonl")
    gold = [json.loads(line)["label"] for line in topics["eval"].read_text().splitlines()]
    assert all(set(r["labels"]) == {k for k, p in r["probs"].items() if p >= threshold} for r in rows)
    hits = sum(set(r["labels"]) == set(g) for r, g in zip(rows, gold))
    assert hits / len(rows) == pytest.approx(m["exact_match"])
    # --set overrides the tuned threshold
    high = predictions(multi_run, topics["eval"], tmp_path / "q.jsonl", "--set", "task.threshold=0.99")
    assert sum(map(len, (r["labels"] for r in high))) <= sum(map(len, (r["labels"] for r in rows)))


def test_multi_label_merged_export_loads_in_stock_transformers(multi_run, topics, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "merged"
    assert run_cli("export", multi_run, "--merge", "--output", out).exit_code == 0
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.problem_type == "multi_label_classification"
    tok = AutoTokenizer.from_pretrained(out)
    rows = predictions(multi_run, topics["eval"], tmp_path / "p.jsonl")
    enc = tok([r["text"] for r in rows[:8]], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.sigmoid()
    want = torch.tensor([[r["probs"][model.config.id2label[k]] for k in range(3)] for r in rows[:8]])
    assert torch.allclose(probs, want, atol=1e-4)
    # stock transformers' own loss is the binary cross-entropy ftkit trains with
    labels = (probs > 0.5).float()
    loss = model(**enc, labels=labels).loss
    assert torch.isclose(loss, torch.nn.functional.binary_cross_entropy(probs, labels), atol=1e-5)


def test_multi_label_onnx_export_matches_the_run(multi_run, topics, tmp_path):
    out = tmp_path / "onnx"
    assert run_cli("export", multi_run, "--format", "onnx", "--output", out).exit_code == 0
    run, exported = (evaluate(m, topics["eval"], tmp_path / f"{i}.json") for i, m in enumerate((multi_run, out)))
    assert exported["micro_f1"] == run["micro_f1"] and exported["threshold"] == run["threshold"]
    assert abs(exported["loss"] - run["loss"]) < 1e-5


def test_multi_label_metrics_equal_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    from ftkit.tasks._scores import multi_label_metrics

    rng = np.random.default_rng(0)
    gold, pred = rng.random((50, 4)) < 0.4, rng.random((50, 4)) < 0.5
    gold[:, 3] = False  # a class absent from the references: out of the macro mean
    m = multi_label_metrics(pred, gold, ["a", "b", "c", "d"])
    assert m["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert m["micro_precision"] == pytest.approx(precision_score(gold, pred, average="micro"))
    assert m["micro_recall"] == pytest.approx(recall_score(gold, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(gold[:, :3], pred[:, :3], average="macro"))
    assert m["per_class"]["b"]["f1"] == pytest.approx(f1_score(gold[:, 1], pred[:, 1]))
    assert m["exact_match"] == pytest.approx((gold == pred).all(1).mean())


def test_the_threshold_is_tuned_on_the_evaluation_split():
    from types import SimpleNamespace

    from ftkit.tasks._scores import multi_label_metrics
    from ftkit.tasks.cls import Classification

    rng = np.random.default_rng(1)
    gold = rng.random((80, 3)) < 0.3
    probs = gold * 0.25 + rng.random((80, 3)) * 0.4  # positives sit higher, all below 0.65
    cfg = SimpleNamespace(task={"problem": "multi_label", "threshold": None, "tune_threshold": True})
    m = Classification().metrics(list(probs), list(gold.astype(float)), ["a", "b", "c"], cfg)
    best = max(multi_label_metrics(probs >= t / 100, gold, ["a", "b", "c"])["micro_f1"] for t in range(5, 100, 5))
    assert m["micro_f1"] == pytest.approx(best) and m["threshold"] != 0.5
    assert m["micro_f1"] > multi_label_metrics(probs >= 0.5, gold, ["a", "b", "c"])["micro_f1"]


def test_regression_learns_and_round_trips(regression_run, scores, tmp_path):
    config = json.loads((regression_run / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "label"}
    summary = json.loads((regression_run / "metrics.json").read_text())
    assert summary["main_metric"] == "r2" and summary["eval"]["r2"] > 0.7, summary
    assert summary["baseline"]["method"] == "tf-idf + ridge regression"
    m = evaluate(regression_run, scores["eval"], tmp_path / "m.json")
    assert m["r2"] == pytest.approx(summary["eval"]["r2"], abs=1e-6)
    rows = predictions(regression_run, scores["eval"], tmp_path / "p.jsonl")
    gold = np.array([json.loads(line)["label"] for line in scores["eval"].read_text().splitlines()])
    pred = np.array([r["value"] for r in rows])
    assert np.mean((pred - gold) ** 2) == pytest.approx(m["mse"], rel=1e-4)
    assert set(rows[0]) == {"text", "value"}
    no_matrix = run_cli("eval", regression_run, "--data", scores["eval"], "--confusion-png", tmp_path / "c.png")
    assert no_matrix.exit_code == 2 and "has no confusion matrix" in no_matrix.output, no_matrix.output

    one = run_cli("predict", regression_run, "--text", "great superb film")
    assert one.exit_code == 0 and json.loads(one.stdout)["value"] > 3, one.output
    out = tmp_path / "onnx"
    assert run_cli("export", regression_run, "--format", "onnx", "--output", out).exit_code == 0
    assert evaluate(out, scores["eval"], tmp_path / "o.json")["mse"] == pytest.approx(m["mse"], rel=1e-4)


def test_regression_metrics_equal_scipy_and_scikit_learn():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, r2_score

    from ftkit.tasks._scores import regression_metrics

    rng = np.random.default_rng(2)
    gold = rng.normal(size=40).round(1)  # ties, as real scores have
    pred = gold + rng.normal(scale=0.5, size=40)
    m = regression_metrics(pred, gold)
    assert m["r2"] == pytest.approx(r2_score(gold, pred)) and m["mae"] == pytest.approx(mean_absolute_error(gold, pred))
    assert m["pearson"] == pytest.approx(pearsonr(pred, gold)[0])
    assert m["spearman"] == pytest.approx(spearmanr(pred, gold)[0])
    assert regression_metrics(np.zeros(5), np.arange(5.0))["pearson"] == 0.0  # constant output: no NaN


def test_labels_that_are_lists_mean_multi_label(tiny_model, topics, tmp_path):
    """A list can only mean several classes per row: task.problem left unset becomes multi_label, saying so; numbers
    stay class ids and strings one class each (a delimited string needs task.problem=multi_label)."""
    lists = write_rows(tmp_path / "lists.jsonl", topic_rows(64, 3, as_list=True))
    out = tmp_path / "r"
    result = run_cli("train", "--model", tiny_model, "--data", lists, "--output", out, "--max-steps", "2",
                     "--batch-size", "8", "--max-length", "32")
    assert result.exit_code == 0, result.output
    assert "lists.jsonl: line 1 has a list of labels, so task.problem is multi_label" in result.output
    import yaml

    saved = yaml.safe_load((out / "ftkit.yaml").read_text())["task"]
    assert saved["problem"] == "multi_label"
    assert json.loads((out / "config.json").read_text())["problem_type"] == "multi_label_classification"
    for name, label in (("strings", lambda i: ["pos,neg", "place"][i % 2]), ("numbers", lambda i: i % 2)):
        data = write_rows(tmp_path / f"{name}.jsonl", [{"text": r["text"], "label": label(i)} for i, r in
                                                       enumerate(topic_rows(32, 4, as_list=True))])
        dry = run_cli("train", "--model", tiny_model, "--data", data, "--dry-run", "--batch-size", "8")
        assert dry.exit_code == 0 and "problem: single_label" in dry.output, dry.output


def test_dry_run_counts_multi_label_classes(tiny_model, topics, tmp_path):
    result = run_cli(*train_args(tiny_model, topics, tmp_path / "r", "--dry-run", "--set", "task.problem=multi_label"))
    assert result.exit_code == 0, result.output
    train = [r.split(",") if r else [] for r in (row["label"] for row in topic_rows(240, 1, as_list=False))]
    counts = {name: sum(name in t for t in train) for name in ("neg", "place", "pos")}
    assert f"labels: neg {counts['neg']}, place {counts['place']}, pos {counts['pos']}" in result.output


@pytest.mark.parametrize("rows, sets, message", [
    ([{"text": "good", "label": "1.5"}, {"text": "bad", "label": "x"}], ["task.problem=regression"],
     "line 2: label 'x' is not a number (task.problem=regression)"),
    ([{"text": "good", "label": "1.5"}, {"text": "bad", "label": "1e400"}], ["task.problem=regression"],
     "line 2: label '1e400' is not a finite number (task.problem=regression)"),
    ([{"text": "good", "label": ["a"]}, {"text": "bad", "label": ["b"]}], ["task.problem=single_label"],
     "line 1: the label is a list ['a'], but task.problem is single_label; for several classes per row leave "
     "task.problem unset or set it to multi_label"),
    ([{"text": "good", "label": 1.5}, {"text": "bad", "label": 2}], [],
     "line 1: label 1.5 is not a class name or an integer; for a number to predict set --set task.problem=regression"),
    ([{"text": "good", "label": 2.0}, {"text": "bad", "label": 2}], ["task.problem=regression"],
     "every row has the value 2.0; regression needs targets that vary"),
    ([{"text": "good", "label": "a"}, {"text": "bad", "label": "b"}], ["task.problem=ordinal"],
     "config key 'task.problem': got 'ordinal', expected single_label or multi_label or regression"),
    ([{"text": "good", "label": "a"}, {"text": "bad", "label": "b"}],
     ["task.problem=multi_label", "task.threshold=1.5"], "config key 'task.threshold': got 1.5, expected a number in"),
    ([{"text": "good", "label": "a"}, {"text": "bad", "label": "b"}], ["task.tune_threshold=true"],
     "config key 'task.tune_threshold': a multi-label setting; task.problem is single_label"),
    ([{"text": "good", "label": "a"}, {"text": "bad", "label": "b"}],
     ["task.problem=multi_label", "train.label_smoothing=0.1"], "config key 'train.label_smoothing': got 0.1, expected "
     "its default for task cls (the classification objectives and distillation need one class per row"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model, tmp_path, rows, sets, message):
    data = write_rows(tmp_path / "d.jsonl", rows * 8)
    args = ["train", "--model", tiny_model, "--data", data, "--output", tmp_path / "r", "--batch-size", "2"]
    result = run_cli(*args, *[x for s in sets for x in ("--set", s)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_a_multi_label_run_cannot_teach(multi_run, tmp_path):
    result = run_cli("distill", multi_run, "--output", tmp_path / "s")
    assert result.exit_code == 2 and "distill.teacher" in result.output and "one class per row" in result.output, \
        result.output


def test_served_answers_equal_predict(multi_run, regression_run, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from conftest import LiveServer

    texts = ["good film in paris", "the plot was dull", "superb great acting"]
    server = LiveServer("serve", f"topics={multi_run}", f"score={regression_run}")
    try:
        server.wait_ready({})
        for name, run in (("topics", multi_run), ("score", regression_run)):
            got = httpx.post(f"{server.url}/v1/predict", json={"model": name, "input": texts}, timeout=60).json()
            result = run_cli("predict", run, *[a for t in texts for a in ("--text", t)], "--output", tmp_path / "p")
            assert result.exit_code == 0, result.output
            want = [json.loads(line) for line in (tmp_path / "p").read_text().splitlines()]
            for g, w in zip(got["data"], want):
                assert g.keys() == w.keys() and g.get("labels") == w.get("labels"), (g, w)
                assert g.get("value", 0) == pytest.approx(w.get("value", 0), abs=1e-4)
    finally:
        server.stop()
