"""Token tagging: CoNLL reading, sub-token label alignment, metrics on known inputs, CLI round trip."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, train_args, write_rows
from ftkit import config
from ftkit.data.sources import Table, read_table
from ftkit.errors import UsageError
from ftkit.tasks import TASKS
from ftkit.tasks.tag import IGNORE, detect_scheme

TAG = TASKS.get("tag")


def test_conll_reader(tmp_path):
    path = tmp_path / "d.conll"
    path.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n")
    table = read_table(str(path))
    assert table.columns == {"tokens": [["EU", "rejects"], ["Peter", "Blackburn"]],
                             "tags": [["B-ORG", "O"], ["B-PER", "I-PER"]]}
    assert table.locate(1).endswith("line 7")
    odd = tmp_path / "odd.conll"  # a token holding U+00A0 or U+0085, CRLF endings, a line of a form feed alone
    odd.write_text("10\xa0000 CD O\r\nEU\x85 NNP B-ORG\r\n\x0c\r\nPeter\tNNP\tB-PER\r\n", encoding="utf-8",
                   newline="")
    assert read_table(str(odd)).columns == {"tokens": [["10\xa0000", "EU\x85"], ["Peter"]],
                                            "tags": [["O", "B-ORG"], ["B-PER"]]}
    (tmp_path / "bad.conll").write_text("EU B-ORG\nrejects\n")
    with pytest.raises(UsageError, match=r"bad.conll: line 2: expected a token and its tag"):
        read_table(str(tmp_path / "bad.conll"))


def _cfg(**task):
    return config.build({"task": {"name": "tag", **task}, "data": {"max_length": 8}})


def test_labels_go_on_the_first_subtoken(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    table = Table("t", {"tokens": [["the", "xyz", "film"]], "tags": [["O", "B-LOC", "O"]]})
    labels = ["B-LOC", "O"]
    assert tok.tokenize("xyz") == ["x", "##y", "##z"]  # one word, three sub-tokens
    for label_all, expected in ((False, [IGNORE, 1, 0, IGNORE, IGNORE, 1, IGNORE]),
                                (True, [IGNORE, 1, 0, 0, 0, 1, IGNORE])):
        cfg = _cfg(label_all_subtokens=label_all)
        enc = TAG.encode(tok, table, cfg, None)
        (feat,) = TAG.features(enc, TAG.targets(table, cfg, labels), [0], cfg, training=True)
        assert feat["labels"] == expected
        assert "word_ids" not in feat
        # evaluation always scores the first sub-token only
        (feat,) = TAG.features(enc, TAG.targets(table, cfg, labels), [0], cfg, training=False)
        assert feat["labels"] == [IGNORE, 1, 0, IGNORE, IGNORE, 1, IGNORE]


def test_truncation_is_counted(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    table = Table("t", {"tokens": [["the"] * 20, ["the", "film"]], "tags": [["O"] * 20, ["O", "O"]]})
    cfg = _cfg()
    notes = []
    feats = TAG.features(TAG.encode(tok, table, cfg, None), TAG.targets(table, cfg, ["O"]), [0, 1], cfg,
                         training=True, notes=notes)
    assert len(feats) == 2 and len(feats[0]["input_ids"]) == 8
    assert notes == ["note: 1 of 2 training sentences are longer than data.max_length=8 tokens and were cut (their "
                     "last words are not trained on; evaluation reads every word)"]
    # evaluation: the long sentence in windows of at most 8 tokens (specials included), every word labelled once
    evals = TAG.features(TAG.encode(tok, table, cfg, None), TAG.targets(table, cfg, ["O"]), [0, 1], cfg,
                         training=False)
    windows = [f for f in evals[:-1]]
    assert [f["window"] for f in evals] == list(range(len(windows))) + [0] and len(windows) == 4  # 20 words / 6
    assert all(len(f["input_ids"]) <= 8 for f in windows) and windows[0]["input_ids"] == feats[0]["input_ids"]
    assert sum(label != IGNORE for f in windows for label in f["labels"]) == 20


def test_a_word_split_across_windows_is_labelled_once(tiny_model):
    """A word whose sub-tokens run from one window into the next is scored at its first sub-token only."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    table = Table("t", {"tokens": [["the", "film", "was", "film", "xyz", "good"]],
                        "tags": [["O", "O", "O", "O", "B-LOC", "O"]]})
    cfg = _cfg(label_all_subtokens=True)  # [CLS] the film was film x ##y [SEP] | [CLS] ##z good [SEP]
    enc = TAG.encode(tok, table, cfg, None)
    assert enc["windows"] == [[8, 4]]
    feats = TAG.features(enc, TAG.targets(table, cfg, ["B-LOC", "O"]), [0], cfg, training=False)
    assert [f["labels"] for f in feats] == [[IGNORE, 1, 1, 1, 1, 0, IGNORE, IGNORE], [IGNORE, IGNORE, 1, IGNORE]]


def test_scheme_detection():
    assert detect_scheme(["B-PER", "I-PER", "O"]) == "iob2"
    assert detect_scheme(["B-PER", "E-PER", "S-LOC", "O"]) == "iobes"
    assert detect_scheme(["NN", "VB", "DT"]) == "none"
    assert detect_scheme([",", "-NONE-", "NN"]) == "none"


def test_metrics_on_hand_computed_example():
    import numpy as np

    labels = ["B-LOC", "B-PER", "I-PER", "O"]
    ref = np.array([0, IGNORE, 1, 2, 3, 0, IGNORE])  # the window's number (eval_batch), then the labels
    pred = np.array([3, 1, 2, 3, 3, 0])  # misses the location; positions with IGNORE refs are not scored
    m = TAG.metrics([pred], [ref], labels, _cfg())
    # the same sentence in two windows (B-PER | I-PER across the edge) scores the same: joined again
    split = TAG.metrics([pred[:2], np.array([3, 2, 3, 3, 0])],
                        [np.array([0, IGNORE, 1]), np.array([1, IGNORE, 2, 3, 0, IGNORE])], labels, _cfg())
    assert {k: split[k] for k in ("accuracy", "entity_f1")} == {k: m[k] for k in ("accuracy", "entity_f1")}
    # a name cut short at the window's edge is a miss, as it is in the whole sentence (apart, both halves "match")
    cut = TAG.metrics([np.array([3, 1]), np.array([3, 3])], [np.array([0, IGNORE, 1]), np.array([1, IGNORE, 2])],
                      labels, _cfg())
    assert cut["entity_f1"] == 0.0 and cut["accuracy"] == 0.5
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["entity_precision"] == pytest.approx(1.0)
    assert m["entity_recall"] == pytest.approx(0.5)
    assert m["entity_f1"] == pytest.approx(2 / 3)
    assert m["per_entity"]["PER"]["f1"] == 1.0 and m["per_entity"]["LOC"]["recall"] == 0.0
    assert "entity_f1" not in TAG.metrics([pred], [ref], labels, _cfg(scheme="none"))


def test_unseen_gold_tags_count_as_errors():
    """A gold tag the model was not trained on (UNSEEN): a wrong word for token accuracy, a missed entity for
    entity recall, its own row in the per-tag table; the known tags' scores are unchanged."""
    import numpy as np

    from ftkit.tasks._common import UNSEEN, UNSEEN_ROW

    labels = ["B-LOC", "B-PER", "I-PER", "O"]
    ref = np.array([0, IGNORE, 1, 2, 3, UNSEEN, 3])
    pred = np.array([3, 1, 2, 3, 3, 3])
    m = TAG.metrics([pred], [ref], labels, _cfg())
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["entity_precision"] == 1.0 and m["entity_recall"] == pytest.approx(0.5)
    assert m["per_class"][UNSEEN_ROW]["support"] == 1 and m["per_class"]["O"]["recall"] == 1.0
    assert sum(map(sum, m["confusion_matrix"]["matrix"])) == 4


def test_an_ambiguous_tag_in_the_eval_file_does_not_stop_the_run(tiny_model, ner, tmp_path):
    """Real treebanks write an ambiguous word as two tags joined by `|`: the run trains, warns, and scores it."""
    from conftest import ner_rows

    rows = ner_rows(20, seed=5)
    rows[3]["tags"][rows[3]["tags"].index("O")] = "VBG|NN"
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = run_cli("train", "--task", "tag", "--model", tiny_model, "--data", ner["train"], "--eval-data", path,
                     "--output", out, "--max-steps", "4", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert "dev.jsonl: 1 label the model was not trained on, scored as errors (they take no loss): 'VBG|NN' (1)" \
        in result.stderr
    assert json.loads((out / "metrics.json").read_text())["eval"]["per_class"]["(not seen in training)"] == \
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_mismatched_tags_are_a_usage_error(tmp_path, tiny_model, ner):
    bad = write_rows(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]},
                                              {"tokens": ["a", "b"], "tags": ["O"]}])
    result = run_cli(*train_args(tiny_model, {**ner, "train": bad}, tmp_path / "r"), "--task", "tag")
    assert result.exit_code == 2 and "bad.jsonl: line 2: 2 tokens but 1 tags" in result.output


@pytest.fixture(scope="module", params=["lora", "full"])
def tag_run(request, tiny_model, ner, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"tag-{request.param}") / "run"
    result = run_cli(*train_args(tiny_model, ner, out, "--task", "tag", "--method", request.param, "--epochs", "10",
                                 "--lr", "2e-2" if request.param == "lora" else "5e-3"))
    assert result.exit_code == 0, result.output
    return request.param, out


def test_tag_round_trip(tag_run, ner, tmp_path):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from ftkit.rundir.runs import load_trained

    method, out = tag_run
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["eval"]["entity_f1"] >= 0.8 and summary["eval"]["accuracy"] >= 0.9
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < 0.5 * losses[0]

    result = run_cli("eval", out, "--data", ner["eval"], "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["entity_f1"] == summary["eval"]["entity_f1"]

    # predict returns words (not sub-tokens) with their tags, from raw text and from pre-split tokens
    row = json.loads(run_cli("predict", out, "--text", "mary was in london").stdout)
    assert row["tokens"] == ["mary", "was", "in", "london"] and len(row["tags"]) == 4
    preds = tmp_path / "p.jsonl"
    assert run_cli("predict", out, "--file", ner["eval"], "--output", preds).exit_code == 0
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    truth = [json.loads(x) for x in ner["eval"].read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [t["tokens"] for t in truth]
    assert sum(r["tags"] == t["tags"] for r, t in zip(rows, truth)) >= 0.8 * len(truth)

    assert run_cli("export", out, "--output", tmp_path / "merged").exit_code == 0
    merged = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tok([["john", "is", "in", "paris"]], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**batch).logits - load_trained(str(out)).model(**batch).logits).abs().max().item()
    assert diff <= 1e-4
    if method == "lora":
        from peft import AutoPeftModelForTokenClassification
        from transformers import AutoConfig

        labels = AutoConfig.from_pretrained(out)
        plain = AutoPeftModelForTokenClassification.from_pretrained(
            out, num_labels=labels.num_labels, id2label=labels.id2label, label2id=labels.label2id).eval()
        with torch.no_grad():
            assert (plain(**batch).logits - merged(**batch).logits).abs().max().item() <= 1e-4


def test_every_word_of_a_sentence_longer_than_max_length_is_tagged(tag_run, tmp_path):
    """Past data.max_length (32 tokens here) a sentence is read in windows: the words after the first window get
    their tags (they came back null), and a short sentence batched with it gets what it gets alone."""
    from conftest import FILLER

    _, out = tag_run
    long = [*(FILLER * 10)[:40], "london", *(FILLER * 10)[:20]]
    short = ["mary", "was", "in", "paris"]
    rows = []
    for i, sents in enumerate([[short], [long, short]]):
        path = write_rows(tmp_path / f"in{i}.jsonl", [{"tokens": t} for t in sents])
        result = run_cli("predict", out, "--file", path, "--output", tmp_path / f"{i}.jsonl")
        assert result.exit_code == 0, result.output
        rows.append([json.loads(x) for x in (tmp_path / f"{i}.jsonl").read_text().splitlines()])
    (alone,), (long_row, batched) = rows
    assert long_row["tokens"] == long and None not in long_row["tags"] and None not in long_row["scores"]
    assert long_row["tags"][40].startswith("B-")  # the name, in the second window
    assert batched["tags"] == alone["tags"] and batched["scores"] == pytest.approx(alone["scores"], abs=1e-4)


def test_eval_scores_every_word_of_a_long_sentence(tag_run, tmp_path):
    """eval reads a sentence longer than data.max_length (32 tokens here) in windows, as predict does: every word
    is scored, and the scores are those of predict's tags, entities across a window's edge included."""
    from conftest import FILLER

    _, out = tag_run
    long = [*(FILLER * 10)[:29], "mary", "london", *(FILLER * 10)[:30], "john", "paris", "was"]
    gold = ["O"] * 29 + ["B-PER", "B-LOC"] + ["O"] * 30 + ["B-PER", "B-LOC", "O"]
    short = ["mary", "was", "in", "paris"]
    data = write_rows(tmp_path / "long.jsonl", [{"tokens": long, "tags": gold},
                                                {"tokens": short, "tags": ["B-PER", "O", "O", "B-LOC"]}])
    result = run_cli("eval", out, "--data", data, "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert sum(c["support"] for c in metrics["per_class"].values()) == len(long) + len(short)
    assert run_cli("predict", out, "--file", data, "--output", tmp_path / "p.jsonl").exit_code == 0
    predicted = [json.loads(x)["tags"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    words = [(p, g) for tags, golds in zip(predicted, [gold, ["B-PER", "O", "O", "B-LOC"]]) for p, g in zip(tags, golds)]
    assert metrics["accuracy"] == pytest.approx(sum(p == g for p, g in words) / len(words))
    from ftkit.tasks.tag import entity_metrics

    entities = entity_metrics([gold, ["B-PER", "O", "O", "B-LOC"]], predicted, "iob2")
    assert metrics["entity_f1"] == pytest.approx(entities["entity_f1"])


def test_run_curves_and_confusion_image(tiny_model, ner, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, ner, out, "--task", "tag", "--max-steps", "6",
                                 "--set", "train.eval_every=2", "--set", "train.log_every=1"))
    assert result.exit_code == 0, result.output
    curves = imread(out / "curves.png")
    assert curves.shape[0] > 200 and curves.shape[1] > 600 and curves.std() > 0.05  # drawn, not blank
    png = tmp_path / "cm.png"
    result = run_cli("eval", out, "--data", ner["eval"], "--confusion-png", png)
    assert result.exit_code == 0, result.output
    assert imread(png).shape[0] > 200
    result = run_cli("eval", out, "--data", ner["eval"], "--confusion-png", tmp_path / "cm.jpg")
    assert result.exit_code == 2 and "expected a .png file name" in result.output
