"""Generation: prompt masking, chat rendering, perplexity, causal and seq2seq round trips."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pytest

from conftest import run_cli, train_args, write_rows
from ftkit import config
from ftkit.data.sources import Table
from ftkit.tasks import TASKS
from ftkit.tasks.gen import IGNORE

GEN = TASKS.get("gen")


def _cfg(**task):
    return config.build({"task": {"name": "gen", **task}, "data": {"max_length": 64}})


@pytest.fixture(scope="module")
def tok(tiny_causal):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_causal)


def test_prompt_tokens_are_masked(tok):
    table = Table("t", {"prompt": ["the film was good"], "response": ["nice story"]})
    enc = GEN.encode(tok, table, _cfg(template="plain"), None)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    n_prompt = len(tok("the film was good")["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == "nice story [SEP]"  # the response ends with EOS, which is learned


def test_chat_only_assistant_turns_are_learned(tok):
    msgs = [{"role": "user", "content": "good ?"}, {"role": "assistant", "content": "nice"},
            {"role": "user", "content": "bad ?"}, {"role": "assistant", "content": "awful"}]
    enc = GEN.encode(tok, Table("t", {"messages": [msgs]}), _cfg(), None)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    learned = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])
    assert learned == "nice [SEP] awful [SEP]"


def test_pairs_use_the_chat_template_when_there_is_one(tok):
    table = Table("t", {"prompt": ["good ?"], "response": ["nice"]})
    chat = GEN.encode(tok, table, _cfg(), None)
    assert tok.decode(chat["input_ids"][0]) == "user : good? [SEP] assistant : nice [SEP]"


def test_text_format_learns_every_token(tok):
    cfg = config.build({"task": "gen", "data": {"format": "text"}})
    enc = GEN.encode(tok, Table("t", {"text": ["the plot was dull"]}), cfg, None)
    assert enc["labels"] == enc["input_ids"]


def test_perplexity_is_token_weighted():
    m = GEN.metrics([6.0, 2.0], [3, 1], [], _cfg())  # summed NLL and label-token counts per example
    assert m["loss"] == pytest.approx(2.0) and m["perplexity"] == pytest.approx(math.exp(2.0)) and m["tokens"] == 4


def test_generation_metrics_on_known_outputs(monkeypatch):
    table = Table("t", {"prompt": ["a", "b"], "response": ["the cat sat", "good"]})
    monkeypatch.setattr(GEN, "predict", lambda *a, **k: [{"response": "the cat"}, {"response": "Good"}])
    m = GEN.generation_metrics(None, None, table, _cfg())
    assert m["exact_match"] == 0.5  # case and spacing are normalised
    # ROUGE-L F1: "the cat" vs "the cat sat": P = 1, R = 2/3 -> F = 0.8; "good" exact -> 1
    assert m["rougeL"] == pytest.approx((0.8 + 1.0) / 2)


@pytest.fixture(scope="module", params=["lora", "full"])
def causal_run(request, tiny_causal, copy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"gen-{request.param}") / "run"
    result = run_cli(*train_args(tiny_causal, copy_data, out, "--task", "gen", "--method", request.param,
                                 "--epochs", "6", "--lr", "1e-2" if request.param == "lora" else "3e-3",
                                 "--set", "train.log_every=2"))
    assert result.exit_code == 0, result.output
    return request.param, out


def test_causal_round_trip(causal_run, tiny_causal, copy_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftkit.rundir.runs import load_trained

    method, out = causal_run
    summary = json.loads((out / "metrics.json").read_text())
    # zero-shot baseline on the same data with the plain base model (task found from its architecture)
    result = run_cli("eval", tiny_causal, "--data", copy_data["eval"], "--output", tmp_path / "base.json")
    assert result.exit_code == 0, result.output
    base = json.loads((tmp_path / "base.json").read_text())
    assert summary["eval"]["perplexity"] < 0.5 * base["perplexity"]
    result = run_cli("eval", out, "--data", copy_data["eval"], "--output", tmp_path / "run.json", "--generate",
                     "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    tuned = json.loads((tmp_path / "run.json").read_text())
    assert tuned["perplexity"] == pytest.approx(summary["eval"]["perplexity"], rel=1e-4)
    assert 0 <= tuned["exact_match"] <= 1 and 0 <= tuned["rougeL"] <= 1

    preds = tmp_path / "p.jsonl"
    result = run_cli("predict", out, "--file", copy_data["eval"], "--output", preds, "--max-new-tokens", "3")
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(rows) == 24 and all(set(r) == {"prompt", "response"} for r in rows)
    result = run_cli("predict", out, "--text", "what word : the film was superb", "--max-new-tokens", "3")
    assert result.exit_code == 0 and not result.stdout.startswith("{")  # streamed as plain text

    assert run_cli("export", out, "--output", tmp_path / "merged").exit_code == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    batch = AutoTokenizer.from_pretrained(tmp_path / "merged")(["what word : a good plot"], return_tensors="pt")
    with torch.no_grad():
        reference = load_trained(str(out)).model(**batch).logits
        assert (merged(**batch).logits - reference).abs().max().item() <= 1e-4
    if method == "lora":
        from peft import AutoPeftModelForCausalLM

        plain = AutoPeftModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            assert (plain(**batch).logits - reference).abs().max().item() <= 1e-4


def test_predict_reads_the_whole_prompt_and_refuses_one_the_model_cannot_hold(causal_run):
    """data.max_length (32 here) is the length of training rows, not of prompts: a longer prompt is generated from
    whole (it was cut to its first 32 tokens, losing the turn that asks for the answer). One that leaves the model
    (64 positions) no room for a response is refused, naming it; a response runs at most to the last position."""
    import dataclasses

    from ftkit.rundir.runs import load_trained

    _, out = causal_run
    loaded = load_trained(str(out))
    seen, generate = [], loaded.model.generate

    def spy(**kw):
        seen.append(kw)
        return generate(**kw)

    loaded.model.generate = spy
    cfg = dataclasses.replace(loaded.cfg, task={**loaded.cfg.task, "max_new_tokens": 64})
    prompt = "what word : " + " ".join(["the film was superb"] * 10)
    chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
    whole = loaded.tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert 32 < len(whole) < 64
    (row,) = loaded.task.predict(loaded.model, loaded.tokenizer, loaded.task.text_input(prompt, cfg), cfg)
    assert row["prompt"] == prompt and seen[0]["input_ids"][0].tolist() == whole
    assert seen[0]["max_new_tokens"] == 64 - len(whole)  # not 64: the model has 64 positions

    result = run_cli("predict", out, "--text", " ".join(["the film was superb"] * 16))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: --text: text 1: the prompt is 69 tokens; this model "
                                                      "takes at most 64, prompt and response together")


def test_chat_messages_train(tmp_path, tiny_causal):
    rows = [{"messages": [{"role": "user", "content": f"the {w} film ?"}, {"role": "assistant", "content": w}]}
            for w in ["good", "bad", "nice", "dull"] * 10]
    data = {"train": write_rows(tmp_path / "c.jsonl", rows), "eval": write_rows(tmp_path / "e.jsonl", rows[:8])}
    result = run_cli(*train_args(tiny_causal, data, tmp_path / "run", "--task", "gen", "--max-steps", "4"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("method", ["full", "lora"])
def test_seq2seq_round_trip(method, tiny_seq2seq, copy_data, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_seq2seq, copy_data, out, "--task", "gen", "--method", method, "--epochs", "3", "--lr",
                      "5e-3", "--set", "train.log_every=2")
    if method == "lora":  # gen's default targets are all linear layers; peft has no per-architecture ones here
        result = run_cli(*args, "--set", "method.target_modules=null")
        assert result.exit_code == 2 and "no default targets for EncoderDecoderModel" in result.output
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < 0.7 * losses[0]
    result = run_cli("eval", out, "--data", copy_data["eval"], "--generate", "--max-new-tokens", "3",
                     "--output", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert {"perplexity", "exact_match", "rougeL"} <= set(json.loads((tmp_path / "m.json").read_text()))
    result = run_cli("export", out, "--output", tmp_path / "merged")
    assert result.exit_code == 0, result.output


def test_gen_data_without_known_columns_is_a_usage_error(tmp_path, tiny_causal):
    bad = write_rows(tmp_path / "b.jsonl", [{"question": "a", "answer": "b"}] * 4)
    result = run_cli(*train_args(tiny_causal, {"train": bad, "eval": bad}, tmp_path / "r", "--task", "gen"))
    assert result.exit_code == 2
    assert ("gen data needs `prompt`+`response`, `messages`, `conversations` (ShareGPT), `instruction`+`output` "
            "(Alpaca) or `text` columns") in result.output
    assert "columns found: question, answer" in result.output


def test_plain_text_training_and_a_missing_pad_token(tmp_path, tiny_causal):
    """Continued LM training on plain text, with a tokenizer that has no pad token (EOS stands in)."""
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "nopad"
    shutil.copytree(tiny_causal, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = None
    tok.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token is None
    rows = [{"text": f"the {w} film was really {w}"} for w in ["good", "bad", "dull", "nice"] * 10]
    data = {"train": write_rows(tmp_path / "t.jsonl", rows), "eval": write_rows(tmp_path / "e.jsonl", rows[:8])}
    out = tmp_path / "run"
    result = run_cli(*train_args(model_dir, data, out, "--task", "gen", "--max-steps", "6",
                                 "--set", "data.format=text"))
    assert result.exit_code == 0, result.output
    assert AutoTokenizer.from_pretrained(out).pad_token == tok.eos_token
    result = run_cli("predict", out, "--file", data["eval"], "--max-new-tokens", "2", "--set", "task.do_sample=true",
                     "--set", "task.temperature=0.7")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 8


def test_rows_whose_response_is_cut_away_are_skipped(tmp_path, tiny_causal):
    """A prompt longer than max_length leaves no response token: such rows are skipped with a note (a batch made
    only of them had no loss and stopped the run as NaN); when none is left, one line and exit 2."""
    long_prompt = " ".join(["the good film"] * 20)
    rows = ([{"prompt": long_prompt, "response": "good"}] * 16 + [{"prompt": "the film ?", "response": w}
                                                                   for w in ["good", "bad"] * 8])
    data = {"train": write_rows(tmp_path / "t.jsonl", rows), "eval": write_rows(tmp_path / "e.jsonl", rows[16:24])}
    result = run_cli(*train_args(tiny_causal, data, tmp_path / "run", "--task", "gen", "--max-steps", "4",
                                 "--set", "train.group_by_length=true"))
    assert result.exit_code == 0, result.output
    assert "note: 16 of 32 training rows have no response tokens left within data.max_length=32" in result.output
    only_long = {"train": write_rows(tmp_path / "l.jsonl", rows[:16]), "eval": data["eval"]}
    result = run_cli(*train_args(tiny_causal, only_long, tmp_path / "run2", "--task", "gen", "--max-steps", "2"))
    assert result.exit_code == 2 and "no training row keeps any response token" in result.output, result.output


def test_continued_pretraining_of_a_decoder_on_a_txt_file(tmp_path, tiny_causal):
    """gen's plain-text mode on raw .txt (picked automatically from the `text` column): every token is trained on,
    and the held-out perplexity falls."""
    texts = [f"the {w} film was really {w}" for w in ["good", "bad", "dull", "nice"] * 10]
    train = tmp_path / "corpus.txt"
    train.write_text("\n".join(texts) + "\n", encoding="utf-8")
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(texts[:8]) + "\n", encoding="utf-8")  # blank-line-separated paragraphs
    out = tmp_path / "run"
    result = run_cli("train", "--task", "gen", "--model", tiny_causal, "--data", train, "--eval-data", held,
                     "--output", out, "--batch-size", "8", "--epochs", "3", "--lr", "1e-2")
    assert result.exit_code == 0, result.output
    assert "data:\n  train:" in (out / "ftkit.yaml").read_text() and "format: auto" in (out / "ftkit.yaml").read_text()
    base = run_cli("eval", tiny_causal, "--task", "gen", "--data", held, "--output", tmp_path / "b.json")
    assert base.exit_code == 0, base.output
    before = json.loads((tmp_path / "b.json").read_text())["perplexity"]
    after = json.loads((out / "metrics.json").read_text())["eval"]["perplexity"]
    assert after < before / 2, (before, after)


def test_padding_free_batches_are_not_grouped_by_length_by_default(tmp_path, tiny_causal, tiny_model, copy_data,
                                                                   sentiment, monkeypatch):
    """Packed batches have no padding to cut: length grouping would only gather the longest rows into the same
    steps (gen benchmark, three seeds: peak RSS 2789-3041 vs 2167-2247 MiB, held-out perplexity 7.54-7.95 vs
    6.75-6.97). Padded batches, and an explicit setting, stay as they were."""
    from ftkit.training import loop

    grouped = []

    class Recording(loop.EpochBatches):
        def __init__(self, *args):
            super().__init__(*args)
            grouped.append(self.grouped)

    monkeypatch.setattr(loop, "EpochBatches", Recording)
    runs = [(tiny_causal, copy_data, ["--task", "gen"]),
            (tiny_causal, copy_data, ["--task", "gen", "--set", "train.group_by_length=true"]),
            (tiny_causal, copy_data, ["--task", "gen", "--set", "task.padding_free=false"]),
            (tiny_model, sentiment, ["--task", "cls"])]
    for i, (model, data, extra) in enumerate(runs):
        result = run_cli(*train_args(model, data, tmp_path / f"run{i}", "--max-steps", "2", *extra))
        assert result.exit_code == 0, result.output
    assert grouped == [False, True, True, True]
    # ftkit.yaml holds what ran: the default (null) resolved from the model's config before it loaded
    assert "group_by_length: false" in (tmp_path / "run0" / "ftkit.yaml").read_text()
    assert "group_by_length: true" in (tmp_path / "run3" / "ftkit.yaml").read_text()


@pytest.mark.parametrize("task", ["gen", "cls"])
def test_the_config_is_resolved_once_before_loading(task, tmp_path, tiny_causal, tiny_model, copy_data, sentiment):
    """`--dry-run` (no weights loaded) shows the very config the run then writes to ftkit.yaml: the method's lr,
    the model's max length, length grouping and absolute paths all decided up front."""
    import yaml

    model, data = (tiny_causal, copy_data) if task == "gen" else (tiny_model, sentiment)
    args = ["train", "--model", model, "--data", data["train"], "--eval-data", data["eval"], "--output",
            tmp_path / "run", "--task", task, "--max-steps", "2", "--batch-size", "16"]  # lr, max length: unset
    dry = run_cli(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    shown = yaml.safe_load(dry.output.split("# resolved config\n")[1].split("\n# data")[0])
    assert run_cli(*args).exit_code == 0
    saved = yaml.safe_load((tmp_path / "run" / "ftkit.yaml").read_text())
    assert shown == saved
    assert saved["train"]["lr"] and saved["data"]["max_length"] and saved["train"]["group_by_length"] is not None
    assert Path(saved["data"]["train"]).is_absolute()


CONV = [{"role": "system", "content": "word"}, {"role": "user", "content": "good ?"},
        {"role": "assistant", "content": "nice"}, {"role": "user", "content": "bad ?"},
        {"role": "assistant", "content": "awful"}]


@pytest.mark.parametrize("train_on, learned", [("assistant", "nice [SEP] awful [SEP]"), ("last", "awful [SEP]"),
                                               ("all", None)])
def test_task_train_on_decides_which_tokens_carry_the_loss(tok, train_on, learned):
    """Token by token: a labelled position holds its own token, every other is ignored, and the labelled ones are
    exactly the chosen turns (every token for `all`)."""
    enc = GEN.encode(tok, Table("t", {"messages": [CONV]}), _cfg(train_on=train_on), None)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    assert ids == tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    assert len(labels) == len(ids) and all(lab in (IGNORE, t) for t, lab in zip(ids, labels))
    if learned is None:
        assert labels == ids
        return
    mask = [lab != IGNORE for lab in labels]
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == learned
    # the labelled tokens sit at the end of their turns: the rendering up to each turn's end closes them
    ends = [len(tok.apply_chat_template(CONV[:k + 1], tokenize=True, return_dict=True)["input_ids"]) for k in (2, 4)]
    assert mask[ends[-1] - 1] and (mask[ends[0] - 1] == (train_on == "assistant"))
    plain = GEN.encode(tok, Table("t", {"prompt": ["good ?"], "response": ["nice"]}),
                       _cfg(template="plain", train_on=train_on), None)
    p = len(tok("good ?")["input_ids"])
    assert plain["labels"][0][:p] == [IGNORE] * p and plain["labels"][0][p:] == plain["input_ids"][0][p:]


def test_plain_prompts_train_too_when_train_on_is_all(tok):
    plain = GEN.encode(tok, Table("t", {"prompt": ["good ?"], "response": ["nice"]}),
                       _cfg(template="plain", train_on="all"), None)
    assert plain["labels"][0] == plain["input_ids"][0]


def test_sharegpt_and_alpaca_rows_are_read_as_the_same_messages(tok):
    sharegpt = Table("s", {"conversations": [[{"from": "system", "value": "word"}, {"from": "human", "value": "good ?"},
                                              {"from": "gpt", "value": "nice"}, {"from": "human", "value": "bad ?"},
                                              {"from": "gpt", "value": "awful"}]]})
    assert GEN.encode(tok, sharegpt, _cfg(), None) == GEN.encode(tok, Table("t", {"messages": [CONV]}), _cfg(), None)
    alpaca = Table("a", {"instruction": ["good ?", "good ?"], "input": ["", "film"], "output": ["nice", "nice"],
                         "system": [None, "word"]})
    expected = [[{"role": "user", "content": "good ?"}, {"role": "assistant", "content": "nice"}],
                [{"role": "system", "content": "word"}, {"role": "user", "content": "good ?\n\nfilm"},
                 {"role": "assistant", "content": "nice"}]]
    assert GEN.encode(tok, alpaca, _cfg(), None) == GEN.encode(tok, Table("t", {"messages": expected}), _cfg(), None)
    for table, layout in ((sharegpt, "sharegpt"), (alpaca, "alpaca")):
        cfg, note = GEN.from_data(_cfg(), table)
        assert note.startswith(f"gen data: {layout} (columns ")
    assert GEN.from_data(config.build({"task": "gen", "data": {"format": "chat"}}), sharegpt)[1] is None


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "good ?"}, {"from": "bot", "value": "nice"}]},
     "line 1: turn 2: `from` is 'bot', expected human, gpt or system"),
    ({"conversations": [{"from": "human", "value": "good ?"}, {"from": "function_call", "value": "{}"}]},
     "line 1: turn 2: a tool call; ftkit does not train on tool calls yet"),
    ({"conversations": [{"from": "human", "value": "good ?"}]}, "line 1: no assistant message to learn from"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [{}]}]},
     "line 1: message 2: a tool call"),
    ({"messages": [{"role": "user", "content": "good ?"}, {"role": "assistant", "content": " "}]},
     "line 1: message 2: `content` must be a non-empty string"),
    ({"instruction": "good ?", "input": "", "output": ""}, "line 1: `output` must be a non-empty string"),
    ({"instruction": "good ?", "input": 3, "output": "nice"}, "line 1: `input` must be a string (or empty)"),
])
def test_bad_conversations_are_refused_naming_line_turn_and_field(tiny_causal, tmp_path, row, message):
    data = write_rows(tmp_path / "bad.jsonl", [row] * 20)
    result = run_cli("train", "--task", "gen", "--model", tiny_causal, "--data", data, "--output", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_a_sharegpt_file_trains_evaluates_and_predicts(tiny_causal, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"the {w} film ?"}, {"from": "gpt", "value": w}]}
            for w in ("good", "bad", "nice", "awful") * 12]
    data = write_rows(tmp_path / "sg.jsonl", rows)
    out = tmp_path / "run"
    result = run_cli(*train_args(tiny_causal, {"train": data, "eval": data}, out, "--task", "gen", "--max-steps", "3",
                                 "--set", "task.train_on=last"))
    assert result.exit_code == 0, result.output
    assert "gen data: sharegpt (columns conversations), picked from the columns" in result.output
    assert run_cli("eval", out, "--data", data, "--output", tmp_path / "m.json").exit_code == 0
    preds = tmp_path / "p.jsonl"
    assert run_cli("predict", out, "--file", data, "--output", preds, "--max-new-tokens", "2").exit_code == 0
    first = json.loads(preds.read_text().splitlines()[0])
    assert first["prompt"] == "the good film ?" and isinstance(first["response"], str)
