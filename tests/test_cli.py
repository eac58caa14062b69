"""The CLI as a user meets it: start-up cost, usage errors, label handling, training options."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import run_cli, train_args, write_rows


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom ftkit.cli.app import app\n"
            "for args in (['--help'], ['train', '--help'], ['train', '--method', 'nope', '--output', 'x'],"
            " ['recipes']):\n"
            "    CliRunner().invoke(app, args)\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftkit", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 1.0


def test_library_setup_leaves_torch_compile_to_the_quantized_kernels_that_need_it():
    # bitsandbytes (imported by peft for every method) torch.compiles kernels at import, which imports torch's
    # inductor: ~0.75 s of each run's start-up; prepare_libraries defers that to the kernels' first call
    code = ("import sys, torch\nreal = torch.compile\nfrom ftkit.util.libraries import prepare_libraries\n"
            "prepare_libraries()\nimport peft, bitsandbytes\n"
            "print('torch._inductor.compile_fx' in sys.modules, torch.compile is real)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_deferred_compile_compiles_once_at_the_first_call_with_the_same_arguments():
    import torch

    from ftkit.util.libraries import deferred_compile

    calls = []

    def compile_fn(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a, **k: ("compiled", fn(*a, **k))

    @deferred_compile(compile_fn, dynamic=False)  # torch.compile(**kwargs) as a decorator
    def double(x):
        return 2 * x

    assert calls == [] and double.__name__ == "double"
    assert (double(3), double(x=4)) == (("compiled", 6), ("compiled", 8))
    assert calls == [{"dynamic": False}]
    module = deferred_compile(compile_fn, torch.nn.Linear(1, 1))  # not a function: compiled at once
    assert callable(module) and len(calls) == 2

    def failing(fn, **kwargs):
        calls.append("failed")
        raise RuntimeError("no compiler")

    plus_one = deferred_compile(failing, lambda x: x + 1)
    assert (plus_one(1), plus_one(2)) == (2, 3) and calls[2:] == ["failed"]  # runs as it is, tried once


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_model, sentiment):
    cases = [
        (["train", "--method", "nope", "--output", tmp_path / "a"], "unknown method 'nope'; choose one of:"),
        (["train", "--set", "train.lrr=1", "--output", tmp_path / "a"], "unknown config key 'train.lrr'"),
        (["train", "--model", tiny_model, "--data", tmp_path / "missing.csv", "--output", tmp_path / "a"],
         "missing.csv: no such file"),
        (["train", "--model", tmp_path / "nomodel", "--data", sentiment["train"], "--output", tmp_path / "a"],
         "nomodel: no such model directory"),
        (["train", "--model", tiny_model, "--data", sentiment["train"]], "no run directory: pass --output"),
        (["train", "no-such-recipe"], "no-such-recipe: not a recipe file nor a shipped recipe"),
        (["eval", tmp_path / "nothing", "--data", sentiment["eval"]], "no such model directory"),
        (["predict", tiny_model], "give --text (one or more) or --file, not both"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    assert not (tmp_path / "a").exists()


def test_refuses_to_overwrite_a_run(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    args = train_args(tiny_model, sentiment, out, "--method", "head", "--max-steps", "1")
    result = run_cli(*args)
    assert result.exit_code == 2 and "exists and is not empty; pass --overwrite" in result.output
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 2 and "not an ftkit run dir" in result.output  # never deletes foreign dirs
    assert (out / "notes.txt").read_text() == "precious"
    (out / "notes.txt").unlink()
    assert run_cli(*args).exit_code == 0
    assert run_cli(*args).exit_code == 2
    assert run_cli(*args, "--overwrite").exit_code == 0


def test_eval_labels_unseen_in_training_are_scored_as_errors(tmp_path, tiny_model, sentiment):
    """Real dev sets carry a rare class the training split lacks: the run goes on, a warning names each unseen
    label with its count, and those rows count as errors (no loss: the head has no output for them)."""
    eval_rows = [{"text": "good film", "label": "positive"}, {"text": "so so", "label": "neutral"},
                 {"text": "awful plot", "label": "negative"}, {"text": "meh", "label": "neutral"}]
    bad = write_rows(tmp_path / "eval.jsonl", eval_rows)
    result = run_cli(*train_args(tiny_model, {**sentiment, "eval": bad}, tmp_path / "r", "--max-steps", "30"))
    assert result.exit_code == 0, result.output
    assert "eval.jsonl: 1 label the model was not trained on, scored as errors (they take no loss): 'neutral' (2)" \
        in result.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["eval"]
    assert metrics["accuracy"] <= 0.5  # the 2 neutral rows of 4 can never be right
    assert metrics["per_class"]["(not seen in training)"]["support"] == 2
    again = run_cli("eval", tmp_path / "r", "--data", bad, "--output", tmp_path / "m.json")
    assert again.exit_code == 0, again.output
    assert "'neutral' (2)" in again.stderr
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["accuracy"] == metrics["accuracy"] and scored["loss"] == pytest.approx(metrics["loss"], abs=1e-6)
    assert sum(map(sum, scored["confusion_matrix"]["matrix"])) == 2  # the rows with a known label


def test_single_label_is_a_usage_error(tmp_path, tiny_model, sentiment):
    bad = write_rows(tmp_path / "train.csv", [{"text": "good", "label": "a"}, {"text": "bad", "label": "a"}])
    result = run_cli(*train_args(tiny_model, {**sentiment, "train": bad}, tmp_path / "r"))
    assert result.exit_code == 2 and "every row has the label 'a'" in result.output


def test_empty_text_is_a_usage_error(tmp_path, tiny_model, sentiment):
    bad = write_rows(tmp_path / "train.csv", [{"text": "good", "label": "a"}, {"text": " ", "label": "b"}])
    result = run_cli(*train_args(tiny_model, {**sentiment, "train": bad}, tmp_path / "r"))
    assert result.exit_code == 2 and "train.csv: line 3: empty or non-text value" in result.output


def test_integer_labels_multiclass_and_renamed_columns(tmp_path, tiny_model):
    """Three integer classes under other column names: label i gets id i, and predictions are the integers."""
    words = {0: "awful", 1: "film", 2: "superb"}
    rows = [{"sentence": f"the {words[i % 3]} story", "y": i % 3} for i in range(90)]
    data = {"train": write_rows(tmp_path / "t.jsonl", rows), "eval": write_rows(tmp_path / "e.jsonl", rows[:30])}
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, data, out, "--method", "full", "--epochs", "6",
                                 "--set", "data.columns.text=sentence", "--set", "data.columns.label=y"))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1", "2": "2"}
    assert json.loads((out / "metrics.json").read_text())["eval"]["accuracy"] >= 0.9
    row = json.loads(run_cli("predict", out, "--text", "the superb story").stdout)
    assert row["label"] == "2" and set(row["probs"]) == {"0", "1", "2"}


def test_sentence_pairs(tmp_path, tiny_model):
    """text_pair is used when present: the label depends only on the second sentence."""
    rows = [{"text": "the plot", "text_pair": "good" if i % 2 else "bad", "label": "pos" if i % 2 else "neg"}
            for i in range(80)]
    data = {"train": write_rows(tmp_path / "t.csv", rows), "eval": write_rows(tmp_path / "e.csv", rows[:20])}
    result = run_cli(*train_args(tiny_model, data, tmp_path / "run", "--method", "full", "--epochs", "5"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["eval"]["accuracy"] == 1.0
    preds = tmp_path / "p.jsonl"
    assert run_cli("predict", tmp_path / "run", "--file", data["eval"], "--output", preds).exit_code == 0
    first = json.loads(preds.read_text().splitlines()[0])
    assert first["text_pair"] == "bad" and first["label"] == "neg"


def test_held_out_split_when_no_eval_data(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    result = run_cli("train", "--model", tiny_model, "--data", sentiment["train"], "--output", out, "--method",
                     "head", "--max-steps", "2", "--set", "data.eval_fraction=0.25")
    assert result.exit_code == 0, result.output
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert (train["train_rows"], train["eval_rows"]) == (120, 40)


def test_grad_accum_and_step_count(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    # 160 rows / batch 16 = 10 batches per epoch; accumulating 4 -> ceil(10 / 4) = 3 optimizer steps per epoch
    result = run_cli(*train_args(tiny_model, sentiment, out, "--method", "head", "--epochs", "2",
                                 "--grad-accum", "4", "--set", "train.log_every=1"))
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["type"] == "eval"] == [3, 6]  # once per epoch by default


def test_early_stopping(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    # a learning rate this small cannot move the metric: patience 2 stops after the 3rd evaluation
    result = run_cli(*train_args(tiny_model, sentiment, out, "--method", "head", "--epochs", "10", "--lr", "1e-12",
                                 "--set", "train.eval_every=2", "--set", "train.patience=2"))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train"]["stopped_early"] is True
    assert summary["train"]["steps"] == 6 and summary["eval"]["step"] == 2
    assert "early stopping" in result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is allowed on CUDA")
def test_fp16_on_cpu_is_refused(tmp_path, tiny_model, sentiment):
    result = run_cli(*train_args(tiny_model, sentiment, tmp_path / "run", "--precision", "fp16"))
    assert result.exit_code == 2 and "fp16 needs a CUDA GPU" in result.output


@pytest.mark.parametrize("method", ["full", "head", "lora"])
def test_info_counts_trainable_parameters(tiny_model, method):
    result = run_cli("info", tiny_model, "--method", method, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    head = 32 * 2 + 2
    expected = {"full": info["total_params"], "head": head, "lora": 2 * 2 * (8 * 32 * 2) + head}[method]
    assert info["trainable_params"] == expected
    assert info["weights_bytes"] >= 4 * info["total_params"] - 4 * 1000  # fp32 (+ peft's copy of the head)


def test_recipes_listing_and_show():
    result = run_cli("recipes")
    assert result.exit_code == 0 and "cls-lora" in result.output
    for args in (["recipes", "cls-lora"], ["recipes", "show", "cls-lora"]):
        result = run_cli(*args)
        assert result.exit_code == 0 and "method:" in result.output
    result = run_cli("recipes", "show")
    assert result.exit_code == 2 and "give a recipe name" in result.output


def test_failure_while_running_exits_1_and_leaves_no_complete_run(tmp_path, tiny_model, sentiment, monkeypatch):
    import ftkit.training.loop

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ftkit.training.loop, "evaluate", boom)
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2"))
    assert result.exit_code == 1
    assert "failed: RuntimeError: disk on fire (run with --debug for the traceback)" in result.output
    assert not (out / "metrics.json").exists()
    result = run_cli("eval", out, "--data", sentiment["eval"])
    assert result.exit_code == 2 and "training did not finish" in result.output


def test_quiet_prints_only_the_summary(tmp_path, tiny_model, sentiment):
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "4", "--set", "train.log_every=1",
                                 "--quiet"))
    assert result.exit_code == 0, result.output
    # a warning (4 steps leave the model below its baseline), then the summary: the run's figures, the baseline's
    lines = result.output.splitlines()
    assert len(lines) == 4 and "is below the tf-idf + logistic regression baseline's" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["held-out", "baseline (tf-idf + logistic regression)",
                                                          "run dir"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5  # 4 steps + the final evaluation


def test_shell_completion_is_offered():
    result = run_cli("--help")
    assert "--install-completion" in result.output


def test_a_closed_output_pipe_ends_quietly():
    """`ftkit recipes | head -1`: when the reader has gone, stop with SIGPIPE's status and no error text."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run([sys.executable, "-m", "ftkit", "recipes"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_version_and_env_for_bug_reports(tmp_path, monkeypatch):
    """`ftkit --version` answers at once; `ftkit env` names ftkit, Python, torch's build, each library (or that it
    is missing), the GPUs, CPUs and the cache with its size, as text and as JSON, without loading a library it
    only reports on."""
    import importlib.metadata

    from ftkit import __version__

    from ftkit.commands import env as envinfo

    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout == f"ftkit {__version__}\n"
    cache = tmp_path / "cache"
    (cache / "packages").mkdir(parents=True)
    (cache / "packages" / "blob").write_bytes(b"x" * 3000)
    monkeypatch.setenv("FTKIT_CACHE", str(cache))
    data = json.loads(run_cli("env", "--json").stdout)
    assert data["ftkit"] == __version__ and data["ftkit_cache"] == str(cache) and data["ftkit_cache_bytes"] == 3000
    assert data["transformers"] == importlib.metadata.version("transformers")
    import torch

    assert data["torch"] == torch.__version__
    assert data["torch_build"] == (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    assert len(data["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert data["cpus"] >= 1
    text = run_cli("env").stdout
    for name in ("ftkit", "python", "platform", "torch", *envinfo.LIBRARIES, "GPUs", "CPUs", "FTKIT_CACHE"):
        assert any(line.split()[0] == name for line in text.splitlines()), name
    assert "(2.9 KiB)" in text
    monkeypatch.setattr(envinfo, "LIBRARIES", (*envinfo.LIBRARIES, "no-such-library-here"))
    assert "no-such-library-here not installed" in " ".join(run_cli("env").stdout.split())
    # the libraries are reported from their metadata: a fresh process running `ftkit env` imports none of them
    probe = ("import sys; from ftkit.cli.app import main; sys.argv = ['ftkit', 'env']\ntry: main()\nexcept SystemExit: "
             "pass\nprint([m for m in ('transformers', 'peft', 'accelerate', 'bitsandbytes') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_eval_on_the_runs_own_training_data_scores_its_held_out_rows(tmp_path, tiny_model, sentiment):
    """`ftkit eval RUN --data TRAIN` (the same file, or a copy of it) scores the rows the run held out, as training
    did, and says so; --all-rows scores every row with a warning about the overlap."""
    import shutil

    out = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--data", sentiment["train"], "--output", out, "--max-steps", "6",
                   "--batch-size", "16").exit_code == 0
    trained = json.loads((out / "metrics.json").read_text())
    copy = shutil.copy(sentiment["train"], tmp_path / "same-rows.csv")
    for data in (sentiment["train"], copy):
        result = run_cli("eval", out, "--data", data, "--output", tmp_path / "m.json")
        assert result.exit_code == 0, result.output
        assert f"was trained on: scoring the {trained['train']['eval_rows']} rows it held out" in result.stderr
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert metrics["rows"] == trained["train"]["eval_rows"] == 16 and metrics["split"] == "held-out"
        assert metrics["accuracy"] == trained["eval"]["accuracy"]
        assert metrics["loss"] == pytest.approx(trained["eval"]["loss"], abs=1e-6)
    everything = run_cli("eval", out, "--data", sentiment["train"], "--all-rows", "--output", tmp_path / "all.json")
    assert everything.exit_code == 0, everything.output
    assert "144 of the 160 rows scored trained it" in everything.stderr
    assert json.loads((tmp_path / "all.json").read_text())["rows"] == 160
    other = run_cli("eval", out, "--data", sentiment["eval"], "--output", tmp_path / "o.json")  # other data: all
    assert other.exit_code == 0 and "trained on" not in other.stderr
    assert json.loads((tmp_path / "o.json").read_text())["split"] == "all"


def test_eval_checks_the_data_before_loading_the_model(tmp_path, tiny_model, sentiment, monkeypatch):
    import ftkit.rundir.runs

    out = tmp_path / "run"
    assert run_cli("train", "--model", tiny_model, "--data", sentiment["train"], "--output", out, "--max-steps", "2",
                   "--batch-size", "16").exit_code == 0

    def never(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(ftkit.rundir.runs, "load_trained", never)
    bad = write_rows(tmp_path / "bad.csv", [{"sentence": "a fine film", "label": "positive"}])
    result = run_cli("eval", out, "--data", bad)
    assert result.exit_code == 2, result.output
    assert "bad.csv: no column 'text' for the text (set data.columns.text=...); columns found: sentence, label" \
        in result.output


def test_texts_longer_than_max_length_are_counted_and_their_predictions_marked(tmp_path, tiny_model, sentiment):
    """cls reads a text up to data.max_length (8 tokens here): training says how many rows reach it, and predict
    marks each text it cut — not one that fits exactly — and counts them on stderr (they were cut silently)."""
    import csv

    out = tmp_path / "run"
    args = train_args(tiny_model, sentiment, out, "--max-steps", "2")
    args[args.index("--max-length") + 1] = "8"
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    for split, path, n in (("training", sentiment["train"], 160), ("evaluation", sentiment["eval"], 40)):
        with open(path, newline="") as f:  # one token a word, plus [CLS] and [SEP]
            reach = sum(len(row["text"].split()) + 2 >= 8 for row in csv.DictReader(f))
        assert 0 < reach < n and f"note: {reach} of {n} {split} rows reach data.max_length=8 tokens" in result.output
    scored = run_cli("eval", out, "--data", sentiment["eval"])
    assert f"note: {reach} of 40 evaluation rows reach data.max_length=8 tokens; the model reads no further\n" \
        in scored.stderr
    texts = ["the movie was really very quite good story plot", "good", "the movie was really very good"]
    result = run_cli("predict", out, *[a for t in texts for a in ("--text", t)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("truncated") for row in rows] == [True, None, None]  # the last fills the 8 tokens exactly
    assert "note: 1 of 3 texts are longer than data.max_length=8 tokens; the model read only their first 8" \
        in result.stderr
