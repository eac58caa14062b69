"""`ftkit serve`: a real server process on 127.0.0.1 (a free port), driven by the official openai client and httpx.

One server holds a gen run, two cls LoRA runs on one base (sharing it), a tag run, an mlm run and an ONNX export,
behind an API key; a second, small one (a queue of 2) is overloaded, loses a client mid-stream, and is stopped with
SIGTERM while requests are in flight."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import LiveServer, run_cli, sentiment_rows, train_args

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def Serve(*args, env: dict | None = None) -> LiveServer:
    return LiveServer("serve", *args, env=env)


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_causal, sentiment, copy_data, ner, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    out = {"gen": root / "gen", "cls_a": root / "cls_a", "cls_b": root / "cls_b", "tag": root / "tag",
           "mlm": root / "mlm", "onnx": root / "onnx"}
    for args in (train_args(tiny_causal, copy_data, out["gen"], "--task", "gen", "--epochs", "4", "--lr", "1e-2"),
                 train_args(tiny_model, sentiment, out["cls_a"], "--max-steps", "30"),
                 train_args(tiny_model, sentiment, out["cls_b"], "--max-steps", "10", "--seed", "7"),
                 train_args(tiny_model, ner, out["tag"], "--task", "tag", "--max-steps", "20"),
                 train_args(tiny_model, sentiment, out["mlm"], "--task", "mlm", "--max-steps", "10"),
                 ["export", out["cls_a"], "--format", "onnx", "--output", out["onnx"]]):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def server(runs):
    s = Serve(f"gen={runs['gen']}", f"a={runs['cls_a']}", f"b={runs['cls_b']}", f"tag={runs['tag']}",
              f"mlm={runs['mlm']}", f"onnx={runs['onnx'] / 'model.onnx'}", "--max-input-chars", "500",
              env={"FTKIT_API_KEY": KEY})
    try:
        s.wait_ready(AUTH)
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def expected(run, texts: list[str], *extra: str) -> list[dict]:
    """What `ftkit predict` prints for ``texts``."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.jsonl"  # a file: a single gen --text on stdout would stream plain text
        result = run_cli("predict", run, *[a for t in texts for a in ("--text", t)], *extra, "--output", out)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in out.read_text().splitlines()]


def same_prediction(got: dict, want: dict) -> bool:
    """Equal rows; probabilities may differ in the last digits (batches pad differently)."""
    if set(got) != set(want):
        return False
    for k, v in want.items():
        if k == "probs":
            if got[k].keys() != v.keys() or any(abs(got[k][c] - v[c]) > 1e-4 for c in v):
                return False
        elif got[k] != v:
            return False
    return True


def test_openai_client_chat_stream_completions_models(server, client, runs):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"gen", "a", "b", "tag", "mlm", "onnx"}
    messages = [{"role": "user", "content": "what word : the movie good was"}]
    chat = client.chat.completions.create(model="gen", messages=messages, max_tokens=12, temperature=0)
    text = chat.choices[0].message.content
    assert chat.object == "chat.completion" and chat.model == "gen" and text
    assert chat.usage.completion_tokens >= 1 and chat.usage.total_tokens == \
        chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert chat.choices[0].finish_reason in ("stop", "length")
    # the same reply as `ftkit predict` (greedy, same prompt rendering)
    assert text == expected(runs["gen"], [messages[0]["content"]], "--max-new-tokens", "12")[0]["response"]

    stream = client.chat.completions.create(model="gen", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text
    assert sum(bool(p) for p in pieces) >= min(2, chat.usage.completion_tokens - 1)  # streamed in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    done = client.completions.create(model="gen", prompt="what word : good", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    streamed = client.completions.create(model="gen", prompt="what word : good", max_tokens=5, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    stop_at = done.choices[0].text.strip().split(" ")[0]
    if stop_at:  # a stop string cuts the text before it
        cut = client.completions.create(model="gen", prompt="what word : good", max_tokens=5, temperature=0,
                                        stop=[stop_at])
        assert stop_at not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"

    seeded = [client.chat.completions.create(model="gen", messages=messages, max_tokens=8, temperature=1.0,
                                             seed=3).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=messages)
    with pytest.raises(openai.BadRequestError, match="is a cls model"):
        client.chat.completions.create(model="a", messages=messages)


def test_predict_under_concurrency_each_gets_its_own_answer(server, runs):
    texts = [r["text"] for r in sentiment_rows(40, seed=11)]
    want = {m: dict(zip(texts, expected(runs[run], texts))) for m, run in (("a", "cls_a"), ("b", "cls_b"))}
    assert any(want["a"][t]["probs"] != want["b"][t]["probs"] for t in texts)  # two different adapters
    jobs = [(("a", "b")[i % 2], texts[(i * 7) % len(texts)]) for i in range(200)]
    results: dict[int, dict] = {}

    async def worker(queue: asyncio.Queue, http: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            model, text = jobs[i]
            r = await http.post(f"{server.url}/v1/predict", json={"model": model, "input": text}, headers=AUTH)
            assert r.status_code == 200, r.text
            assert i not in results
            results[i] = r.json()

    async def main():
        queue = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)
        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.wait_for(asyncio.gather(*(worker(queue, http) for _ in range(16))), 240)

    asyncio.run(main())
    assert sorted(results) == list(range(200))  # none lost, none duplicated
    for i, (model, text) in enumerate(jobs):
        body = results[i]
        assert body["model"] == model and len(body["data"]) == 1
        assert same_prediction(body["data"][0], want[model][text]), (i, body, want[model][text])
    shared = {m["id"]: m["shares_base_with"] for m in httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]}
    assert shared["b"] == "a" and shared["a"] is None


def test_predict_lists_tag_mlm_and_onnx(server, runs):
    texts = ["john was in paris", "the plot was good"]
    r = httpx.post(f"{server.url}/v1/predict", json={"model": "tag", "input": texts}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["data"] == expected(runs["tag"], texts)
    r = httpx.post(f"{server.url}/v1/predict", json={"model": "onnx", "input": texts}, headers=AUTH, timeout=60)
    assert r.status_code == 200
    assert all(same_prediction(g, w) for g, w in zip(r.json()["data"], expected(runs["onnx"] / "model.onnx", texts)))
    masked = ["the movie was [MASK]", "a [MASK] plot"]
    r = httpx.post(f"{server.url}/v1/predict", json={"model": "mlm", "input": masked}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["data"] == expected(runs["mlm"], masked)
    r = httpx.post(f"{server.url}/v1/predict", json={"model": "mlm", "input": [masked[0], "no mask here"]},
                   headers=AUTH, timeout=60)
    assert r.status_code == 400 and "input.1: no [MASK] in the text" in r.json()["error"]["message"]


@pytest.mark.parametrize("route, body, status, message", [
    ("/v1/predict", b'{"model": "a", "input": ', 400, "not valid JSON"),
    ("/v1/predict", {"model": "zzz", "input": "good"}, 404, "'zzz' is not served here"),
    ("/v1/predict", {"model": "a", "input": "  "}, 400, "input: empty text"),
    ("/v1/predict", {"model": "a", "input": []}, 400, "input: an empty list"),
    ("/v1/predict", {"model": "a", "input": "good " * 200}, 400, "at most 500"),
    ("/v1/predict", {"input": "good"}, 400, "model: required"),
    ("/v1/predict", {"model": "a"}, 400, "input: Field required"),
    ("/v1/chat/completions", {"model": "gen", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
     400, "temperature"),
    ("/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
     400, "max_tokens"),
    ("/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999},
     400, "leaving"),
    ("/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n: 3"),
    ("/v1/chat/completions", {"model": "gen", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ("/v1/completions", {"model": "gen", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/nothing", {}, 404, "no route"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(server, route, body, status, message):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.url}{route}", headers=AUTH, timeout=30, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] and "Traceback" not in r.text
    assert httpx.post(f"{server.url}/v1/predict", json={"model": "a", "input": "good"}, headers=AUTH,
                      timeout=30).status_code == 200


def test_api_key(server):
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness needs no key
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/ready", headers=AUTH).json()["status"] == "ready"
    assert any(re.search(r"GET /v1/models 401 [\d.]+ ms", line) for line in server.lines)  # one line per request


def test_overload_disconnect_and_sigterm(runs):
    s = Serve(runs["gen"], "--max-queue", "2", "--max-batch", "1")
    try:
        s.wait_ready()
        url = f"{s.url}/v1/completions"
        long = {"prompt": "what word : good", "max_tokens": 40, "temperature": 0}

        # a client gone mid-stream frees its slot: two more requests are then taken
        with httpx.stream("POST", url, json={**long, "stream": True}, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        time.sleep(0.5)

        async def burst(n: int):
            async with httpx.AsyncClient(timeout=60) as http:
                return await asyncio.gather(*(http.post(url, json=long) for _ in range(n)))

        assert [r.status_code for r in asyncio.run(burst(2))] == [200, 200]
        codes = [r for r in asyncio.run(burst(8))]
        busy = [r for r in codes if r.status_code == 503]
        assert busy and all(r.headers.get("Retry-After") for r in busy)
        assert "busy" in busy[0].json()["error"]["message"]
        assert {r.status_code for r in codes} <= {200, 503}

        # SIGTERM with requests in flight: they are answered, then the process exits 0
        answers: list = []

        def ask():
            answers.append(httpx.post(url, json=long, timeout=60).status_code)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert s.proc.wait(60) == 0, "\n".join(s.lines)
        assert answers == [200, 200]
    finally:
        s.stop()


def test_bad_arguments_fail_before_binding(runs, tmp_path, cli):
    for args, message in ((["serve", tmp_path / "none"], "no such model directory"),
                          (["serve", runs["cls_a"], f"cls_a={runs['cls_b']}"], "two models are named 'cls_a'"),
                          (["serve", runs["cls_a"], "--max-batch", "0"], "'--max-batch': got 0"),
                          (["serve", runs["cls_a"], "--port", "70000"], "--port")):
        result = cli(*args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


@pytest.mark.real
def test_a_built_in_model_is_served_zero_shot():
    s = Serve("smollm2-135m")
    try:
        s.wait_ready(timeout=300)
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="smollm2-135m", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert reply.choices[0].message.content.strip() and reply.usage.completion_tokens <= 8
    finally:
        s.stop()
