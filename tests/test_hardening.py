"""Bad input: one clear line, exit code 2, nothing written and nothing overwritten. Unsafe input: refused unless
explicitly allowed. Property-based tests: the data readers and the config loader either load or fail cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fail_at_evaluation, run_cli, train_args, write_rows
from ftkit import config
from ftkit.data.sources import read_table
from ftkit.errors import UsageError


# --------------------------------------------------------------------------------------------- bad data files
def _bytes(text: str | bytes):
    return lambda d: text if isinstance(text, bytes) else text.encode()


DATA_CASES = {  # name: (file name, content, expected message)
    "missing file": ("absent.csv", None, "absent.csv: no such file, and not a built-in dataset"),
    "empty file": ("empty.csv", b"", "empty.csv: no data rows"),
    "header only": ("header.csv", b"text,label\n", "header.csv: no data rows"),
    "unknown extension": ("data.xlsx", b"x", "unknown data format '.xlsx'; expected one of .csv"),
    "malformed jsonl": ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n',
                        "bad.jsonl: line 2: invalid JSON"),
    "malformed json": ("bad.json", b'[{"text": "a", "label": "x"},', "bad.json: line 1: invalid JSON"),
    "malformed csv": ("bad.csv", b'text,label\n"a",x\n"unterminated,pos\n', "bad.csv: line 3"),
    "misnamed column": ("cols.csv", b"sentence,y\na,b\nc,d\n", "columns found: sentence, y"),
    "semicolon csv": ("semi.csv", b"text;label\na;x\nb;y\n", "columns found: text;label (one column: is the file "
                      "separated by ';'? .csv files are read with ',', .tsv with tabs)"),
    "null text": ("null.jsonl", b'{"text": null, "label": "x"}\n{"text": "b", "label": "y"}\n',
                  "null.jsonl: line 1: empty or non-text value None in the text column"),
    "empty text": ("blank.csv", b"text,label\n  ,x\nb,y\n", "blank.csv: line 2: empty or non-text value"),
    "mixed label types": ("mixed.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": "neg"}\n',
                          "mixed.jsonl: the label column mixes numbers (line 1) and text (line 2)"),
    "null label": ("nolab.jsonl", b'{"text": "a", "label": null}\n{"text": "b", "label": "neg"}\n',
                   "nolab.jsonl: line 1: missing or invalid label None"),  # was: "mixes numbers (line 1) and text"
    "non-utf8": ("latin.csv", b"text,label\ncaf\xe9 ok,x\nb,y\n", "latin.csv: line 2: not UTF-8 (byte 0xe9)"),
    "single huge line": ("huge.csv", b"text,label\n" + b"x" * 200_000 + b",pos\nb,neg\n",
                         "huge.csv: line 2: malformed CSV: field larger than field limit"),
    "one label only": ("one.csv", b"text,label\na,x\nb,x\n", "every row has the label 'x'"),
    "fewer rows than a batch": ("small.csv", b"text,label\na,x\nb,y\nc,x\nd,y\n",
                                "small.csv: 3 training rows are fewer than one batch (train.batch_size 16)"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_training_data(case, tiny_model, sentiment, tmp_path):
    name, content, expected = DATA_CASES[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "run"
    result = run_cli("train", "--model", tiny_model, "--data", path, "--output", out, "--batch-size", "16",
                     "--max-length", "32")
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_bad_eval_data(tiny_model, sentiment, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    nolabel = write_rows(tmp_path / "nolabel.csv", [{"text": "a film", "label": ""}])
    for path, expected in ((empty, "empty.csv: no data rows"),
                           (nolabel, "nolabel.csv: line 2: missing or invalid label ''")):
        out = tmp_path / "run"
        result = run_cli(*train_args(tiny_model, {**sentiment, "eval": path}, out))
        assert result.exit_code == 2 and expected in result.output, result.output
        assert not out.exists()


def test_tags_and_tokens_of_different_lengths(tiny_model, tmp_path):
    rows = [{"tokens": ["mary", "was", "here"], "tags": ["B-PER", "O"]}] * 20
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("train", "--task", "tag", "--model", tiny_model, "--data", path, "--output", tmp_path / "run")
    assert result.exit_code == 2 and "tags.jsonl: line 1: 3 tokens but 2 tags" in result.output


# --------------------------------------------------------------------------------------------- bad config
CONFIG_CASES = [
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'; valid keys:"),
    (["--set", "train.batch_size=many"], "config key 'train.batch_size': expected an integer, got 'many'"),
    (["--lr", "-1"], "Invalid value for '--lr': got -1, expected a number > 0"),
    (["--set", "train.lr=-1"], "config key 'train.lr': got -1.0, expected a number > 0"),
    (["--set", "method.r=0"], "config key 'method.r': got 0, expected an integer >= 1"),
    (["--max-length", "100"], "config key 'data.max_length': got 100, but"),  # the tiny model has 64 positions
    (["--method", "prompt", "--max-length", "64"], "got 64, but {model} has 64 positions, 20 of them taken by the "
                                                   "virtual tokens of method 'prompt'; use --max-length 44 or less"),
    (["--method", "prefix", "--set", "method.num_virtual_tokens=64"], "{model} has 64 positions, all taken by the "
                                                                      "64 virtual tokens of method 'prefix'"),
    (["--method", "prefix", "--quant", "8bit"], "method 'prefix' cannot train on a quantized base"),
    (["--method", "full", "--quant", "8bit"], "method 'full' cannot train a 8bit quantized base"),
    (["--task", "gen", "--method", "head"], "method 'head' needs a task with a new head"),
    (["--method", "prefix", "--gradient-checkpointing"], "method 'prefix' cannot train with "
                                                          "train.gradient_checkpointing"),
    (["--resume", "--overwrite"], "--overwrite and --resume exclude each other"),
]


@pytest.mark.parametrize("extra, expected", CONFIG_CASES, ids=[c[1][:40] for c in CONFIG_CASES])
def test_bad_config_is_refused_before_loading(extra, expected, tiny_model, sentiment, tmp_path, monkeypatch):
    import ftkit.rundir.base

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ftkit.rundir.base, "load_for_training", never)
    out = tmp_path / "run"
    args = train_args(tiny_model, sentiment, out)
    if "--max-length" in extra:
        args = args[:args.index("--max-length")] + args[args.index("--max-length") + 2:]
    result = run_cli(*args, *extra)
    assert result.exit_code == 2 and expected.format(model=tiny_model) in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_tokens_leave_room_in_the_default_max_length(method, tiny_model, tmp_path):
    """Prompt/prefix tuning put 20 virtual tokens in front of the input: on a 64-position model the default
    max_length is 44, so rows longer than the model trains (and `info` estimates) instead of crashing."""
    rows = [{"text": " ".join(["the good film"] * 40), "label": ["positive", "negative"][i % 2]} for i in range(16)]
    data = write_rows(tmp_path / "long.jsonl", rows)
    result = run_cli("train", "--model", tiny_model, "--data", data, "--method", method, "--max-steps", "2",
                     "--batch-size", "8", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "ftkit.yaml").read_text())["data"]["max_length"] == 44
    assert run_cli("eval", tmp_path / "run", "--data", data).exit_code == 0
    info = run_cli("info", tiny_model, "--method", method, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["max_length"] == 44, info.output


# --------------------------------------------------------------------------------------------- bad models
def test_bad_model_paths(tiny_model, tiny_seq2seq, sentiment, tmp_path):
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for f in tiny_model.iterdir():
        if f.name.startswith(("config", "model")):
            shutil.copy(f, no_tokenizer)
    adapter_run = tmp_path / "adapter-run"
    assert run_cli(*train_args(tiny_model, sentiment, adapter_run, "--max-steps", "2")).exit_code == 0
    bare_adapter = tmp_path / "bare-adapter"
    assert run_cli("export", adapter_run, "--adapter-only", "--output", bare_adapter).exit_code == 0
    unfinished = tmp_path / "unfinished"
    shutil.copytree(adapter_run, unfinished)
    (unfinished / "metrics.json").unlink()
    prompt_run = tmp_path / "prompt-run"
    assert run_cli(*train_args(tiny_model, sentiment, prompt_run, "--max-steps", "2", "--method", "prompt",
                               "--max-length", "40")).exit_code == 0
    cases = [
        (tmp_path / "nowhere", "no such model directory, and not a built-in model"),
        (tmp_path, "not a Hugging Face checkpoint (expected a directory with config.json)"),
        (tiny_seq2seq, "checkpoint has no AutoModelForSequenceClassification architecture"),
        (no_tokenizer, "cannot load a tokenizer from this checkpoint"),
        (bare_adapter, "is a bare adapter, not a base model; train from the run dir it came from"),
        (unfinished, "training did not finish in this run dir (no metrics.json); nothing to train from"),
        (prompt_run, "method prompt adds virtual tokens and cannot be merged into its base"),
    ]
    for model, expected in cases:
        out = tmp_path / "run"
        result = run_cli(*train_args(model, sentiment, out))
        assert result.exit_code == 2 and expected in result.output, (model, result.output)
        assert not out.exists()


def test_pickle_weights_are_refused_unless_allowed(tiny_model, sentiment, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    weights = pickled / "model.safetensors"
    torch.save(load_file(weights), pickled / "pytorch_model.bin")
    weights.unlink()
    out = tmp_path / "run"
    result = run_cli(*train_args(pickled, sentiment, out, "--max-steps", "2"))
    assert result.exit_code == 2 and "pytorch_model.bin), which can run code when loaded" in result.output
    assert "--allow-pickle" in result.output and not out.exists()
    result = run_cli(*train_args(pickled, sentiment, out, "--max-steps", "2", "--allow-pickle"))
    assert result.exit_code == 0, result.output
    result = run_cli("eval", pickled, "--task", "cls", "--data", sentiment["eval"])
    assert result.exit_code == 2 and "which can run code when loaded" in result.output


# --------------------------------------------------------------------------------------------- output
def test_an_existing_run_is_never_overwritten_or_deleted_by_mistake(tiny_model, sentiment, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for extra, expected in (([], "exists and is not empty; pass --overwrite to replace it"),
                            (["--overwrite"], "is not an ftkit run dir (no ftkit.yaml); refusing to delete it"),
                            (["--resume"], "is not an ftkit run dir (no ftkit.yaml); refusing to resume it")):
        result = run_cli(*train_args(tiny_model, sentiment, out, *extra))
        assert result.exit_code == 2 and expected in result.output, result.output
        assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tiny_model, sentiment, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli(*train_args(tiny_model, sentiment, blocker / "run"))
    assert result.exit_code == 2 and f"{blocker} is a file, so nothing can be written under it" in result.output
    run, folder = tmp_path / "run", tmp_path / "folder.png"
    assert run_cli(*train_args(tiny_model, sentiment, run, "--max-steps", "2")).exit_code == 0
    folder.mkdir()
    evaluate = ("eval", run, "--data", sentiment["eval"])
    for args, expected in (  # eval and predict did the work, then failed (exit 1) renaming onto the folder
            ((*evaluate, "--output", folder), f"--output {folder}: exists and is a directory; expected a file name"),
            ((*evaluate, "--confusion-png", folder), f"--confusion-png {folder}: exists and is a directory"),
            ((*evaluate, "--output", blocker / "m.json"), f"{blocker} is a file"),
            (("predict", run, "--text", "a film", "--output", folder), f"--output {folder}: exists and is a dir"),
            (("predict", run, "--text", "a film", "--output", blocker / "p.jsonl"), f"{blocker} is a file"),
            (("export", run, "--output", blocker / "export"), f"{blocker} is a file")):  # was a FileExistsError
        result = run_cli(*args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind


def test_a_full_disk_leaves_no_run_that_looks_complete(tiny_model, sentiment, tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedTokenizerBase

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)  # the run's last files
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2"))
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert not (out / "metrics.json").exists()
    assert run_cli("eval", out, "--data", sentiment["eval"]).exit_code == 2  # "training did not finish"


# --------------------------------------------------------------------------------------------- safety
def test_remote_code_is_off_unless_asked_for(tiny_model, sentiment, tmp_path):
    assert config.build({}).model.trust_remote_code is False
    out = tmp_path / "run"
    assert run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2", "--trust-remote-code")).exit_code == 0
    assert "trust_remote_code: true" in (out / "ftkit.yaml").read_text()


def test_no_secret_from_the_environment_reaches_the_run_dir(tiny_model, sentiment, tmp_path, monkeypatch):
    secret = "hf_SECRET_0123456789abcdef"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(var, secret)
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2"))
    assert result.exit_code == 0 and secret not in result.output
    for f in out.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_a_pickled_object_in_a_checkpoint_is_not_loaded(tiny_model, sentiment, tmp_path, monkeypatch):
    """Checkpoint state is read with weights_only=True: a file carrying arbitrary Python objects is skipped."""
    import torch

    fail_at_evaluation(monkeypatch, 3)
    out = tmp_path / "run"
    args = train_args(tiny_model, sentiment, out, "--max-steps", "8", "--set", "train.eval_every=2")
    assert run_cli(*args).exit_code == 1
    monkeypatch.undo()
    newest = max((out / "checkpoints").glob("step-*"))  # step 4 (checkpoints follow the evaluations)
    torch.save({"state": Evil(), "param_groups": []}, newest / "optimizer.bin")
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert f"checkpoint {newest.name} is unreadable (UnpicklingError" in result.output
    assert "resumed from" in result.output and "step-00000002" in result.output


class Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


# --------------------------------------------------------------------------------------------- properties
CELL = st.one_of(st.text(max_size=30), st.integers(-5, 5), st.none(), st.booleans(),
                 st.floats(allow_nan=True, allow_infinity=True))
ROWS = st.lists(st.dictionaries(st.sampled_from(["text", "label", "tokens", "x y", "é"]), CELL, max_size=4),
                max_size=6)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _loads_or_usage_error(path: Path):
    try:
        table = read_table(str(path))
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert len({len(v) for v in table.columns.values()}) <= 1  # columns of equal length
    return table


@FAST
@given(rows=ROWS, suffix=st.sampled_from([".jsonl", ".json"]))
def test_json_readers_load_or_fail_cleanly(rows, suffix, tmp_path):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":  # characters written as they are, U+2028 and the like included
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    table = _loads_or_usage_error(path)
    if table is not None and rows and all(set(r) == set(rows[0]) and r for r in rows):
        got, want = ({k: table.columns[k] for k in rows[0]}, {k: [r[k] for r in rows] for k in rows[0]})
        assert repr(got) == repr(want)  # repr: NaN == NaN


@FAST
@given(texts=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6),
       labels=st.lists(st.text(max_size=10), min_size=6, max_size=6), suffix=st.sampled_from([".csv", ".tsv"]))
def test_csv_readers_round_trip(texts, labels, suffix, tmp_path):
    rows = [{"text": t, "label": labels[i]} for i, t in enumerate(texts)]
    path = write_rows(tmp_path / f"d{suffix}", rows)  # what the csv module writes reads back as it was
    assert read_table(str(path)).columns == {"text": texts, "label": labels[:len(texts)]}


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".conll",
                                                             ".parquet"]))
def test_arbitrary_bytes_never_crash_a_reader(data, suffix, tmp_path):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(data)
    _loads_or_usage_error(path)


KEYS = st.sampled_from(["task", "method", "model", "data", "train", "output", "lr", "name", "r", "epochs",
                        "batch_size", "quant", "max_length", "columns", "seed", "precision", "bogus"])
VALUES = st.recursive(CELL | st.sampled_from(["cls", "tag", "gen", "lora", "full", "8bit", "bf16", "1e-4"]),
                      lambda inner: st.dictionaries(KEYS, inner, max_size=4) | st.lists(inner, max_size=3),
                      max_leaves=12)


@FAST
@given(raw=st.dictionaries(KEYS, VALUES, max_size=5))
def test_config_loader_builds_or_fails_cleanly(raw):
    try:
        cfg = config.build(config.merge_layers([("hypothesis", raw)]))
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert config.build(cfg.to_dict()) == cfg  # what it saves, it reads back the same


@FAST
@given(items=st.lists(st.text(max_size=30), max_size=4))
def test_set_overrides_parse_or_fail_cleanly(items):
    try:
        config.resolve(None, {}, items)
    except UsageError as e:
        assert str(e) and "\n" not in str(e)


def test_a_read_only_parent_is_refused(tiny_model, sentiment, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = run_cli(*train_args(tiny_model, sentiment, parent / "run"))
        assert result.exit_code == 2 and "(permission denied)" in result.output
    finally:
        parent.chmod(0o755)


# --------------------------------------------------------------------------------------------- every verb's numbers
# (verb, the arguments it needs to get as far as its options, option, a bad value): every numeric option of every
# command has a row (test_every_numeric_option_has_a_row), so a new option is covered by adding one
BAD_NUMBERS = [
    *[("train", [], opt, bad) for opt, bad in (("--epochs", "0"), ("--max-steps", "0"), ("--lr", "0"),
                                                 ("--batch-size", "0"), ("--grad-accum", "0"), ("--max-length", "0"),
                                                 ("--seed", "-1"))],
    ("eval", ["RUN", "--data", "d.csv"], "--batch-size", "0"),
    ("eval", ["RUN", "--data", "d.csv"], "--max-new-tokens", "0"),
    ("predict", ["RUN", "--text", "good"], "--batch-size", "-1"),
    ("predict", ["RUN", "--text", "good"], "--max-new-tokens", "-5"),
    ("sweep", ["cls-lora", "--param", "lr=1e-3", "--output", "S"], "--trials", "0"),
    ("sweep", ["cls-lora", "--param", "lr=1e-3", "--output", "S"], "--seed", "-1"),
    ("info", [], "--batch-size", "0"),
    ("info", [], "--max-length", "-3"),
    *[("serve", ["RUN"], opt, bad) for opt, bad in (("--port", "70000"), ("--port", "-1"), ("--max-batch", "0"),
                                                      ("--max-wait-ms", "-1"), ("--max-queue", "0"),
                                                      ("--max-input-chars", "0"))],
    ("ui", [], "--port", "65536"),
    *[("distill", ["RUN"], opt, bad) for opt, bad in (("--alpha", "1.5"), ("--alpha", "-0.1"), ("--temperature", "0"),
                                                        ("--epochs", "-1"), ("--max-steps", "0"), ("--lr", "-1e-3"),
                                                        ("--batch-size", "0"), ("--seed", "-2"))],
    *[("prune", ["RUN"], opt, bad) for opt, bad in (("--ffn", "1"), ("--ffn", "-0.1"), ("--layers", "-1"),
                                                      ("--samples", "0"), ("--epochs", "0"), ("--max-steps", "0"),
                                                      ("--lr", "0"), ("--batch-size", "0"), ("--seed", "-1"))],
]
UNBOUNDED = {("prune", "--heads")}  # refused whatever its value, with the reason (tested in test_prune.py)


@pytest.mark.parametrize("verb, args, option, bad", BAD_NUMBERS, ids=[f"{v} {o} {b}" for v, _, o, b in BAD_NUMBERS])
def test_a_number_out_of_range_is_refused_as_it_is_parsed(verb, args, option, bad, monkeypatch, tmp_path):
    """Refused before anything is read or loaded (RUN does not even exist), in one line naming the option."""
    import ftkit.rundir.runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ftkit.rundir.runs, "locate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("located")))
    result = run_cli(verb, *args, option, bad)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': got {float(bad):g}, expected" in result.output, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: root {verb}: "), result.output


def test_every_numeric_option_has_a_row():
    import typing

    import typer.main

    from ftkit.cli.app import app

    numeric = set()
    for verb, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            kinds = set(typing.get_args(param.type_descriptor.annotation)) | {param.type_descriptor.annotation}
            if kinds & {int, float} and param.opts[0].startswith("--"):
                numeric.add((verb, param.opts[0]))
    assert numeric - UNBOUNDED == {(verb, option) for verb, _, option, _ in BAD_NUMBERS}


def test_click_usage_errors_are_one_line():
    for args, message in ((["eval", "RUN", "--data", "d", "--bogus"], "error: root eval: No such option: --bogus"),
                          (["trian"], "error: root: No such command 'trian'. Did you mean 'train'?"),
                          (["eval"], "error: root eval: Missing argument 'run'."),
                          (["eval", "RUN", "--data", "d", "--batch-size", "many"], "error: root eval: Invalid value for '--batch-size'")):
        result = run_cli(*args)
        assert result.exit_code == 2 and result.output.startswith(message), result.output
        assert result.output.count("\n") == 1, result.output


def test_a_task_that_does_not_match_the_run_is_refused(tiny_model, sentiment, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*train_args(tiny_model, sentiment, out, "--max-steps", "2")).exit_code == 0
    tags = tmp_path / "tags.jsonl"
    tags.write_text(json.dumps({"tokens": ["mary", "was", "here"], "tags": ["B-PER", "O", "O"]}) + "\n")
    for verb in (["eval", out, "--data", tags], ["predict", out, "--text", "good"]):
        result = run_cli(*verb, "--task", "tag")
        assert result.exit_code == 2, result.output
        assert f"--task tag: {out} is a cls run" in result.output and "Traceback" not in result.output
    result = run_cli("eval", out, "--data", sentiment["train"], "--set", "task.problem=regression")
    assert result.exit_code == 2 and "the model was trained for single_label" in result.output, result.output


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tiny_model, sentiment, tmp_path):
    """Where the permission bits say yes but the file system says no (root on /proc, a read-only mount)."""
    result = run_cli("eval", tiny_model, "--task", "cls", "--data", sentiment["train"], "--output", "/proc/m.json")
    assert result.exit_code == 2 and "--output /proc/m.json: cannot write under /proc" in result.output, result.output
