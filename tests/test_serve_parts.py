"""The server's parts in-process: batched generation (per-request sampling, stop strings, streams, cancellation)
and the dynamic batcher (batches formed, each caller its own result, bounded admission, failures kept apart)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ftkit.serve.batcher import Batcher, Overloaded
from ftkit.serve.generate import GenRequest, _held_back, generate_batch


@pytest.fixture(scope="module")
def lm(tiny_causal):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_causal), AutoTokenizer.from_pretrained(tiny_causal)


def ids(tok, text):
    return tok(text)["input_ids"]


def test_a_batch_decodes_each_row_as_alone(lm):
    model, tok = lm
    prompts = [ids(tok, "what word : the movie good"), ids(tok, "the plot"), ids(tok, "really very dull story was")]
    alone = []
    for p in prompts:
        r = GenRequest(p, 8)
        generate_batch(model, tok, [r])
        alone.append((r.text, r.completion_tokens, r.finish_reason))
    together = [GenRequest(p, 8) for p in prompts]
    generate_batch(model, tok, together)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in together] == alone
    assert all(r.finish_reason == "length" and r.completion_tokens == 8 for r in together)  # random weights


def test_budgets_seeds_and_streams_are_per_request(lm):
    model, tok = lm
    p = ids(tok, "what word : the movie good")
    streamed: list[str] = []
    reqs = [GenRequest(p, 3), GenRequest(p, 9, temperature=1.0, seed=5, on_text=streamed.append),
            GenRequest(p, 9, temperature=1.0, top_p=0.9, seed=6)]
    generate_batch(model, tok, reqs)
    assert [r.completion_tokens for r in reqs] == [3, 9, 9]
    assert "".join(streamed) == reqs[1].text and len(streamed) >= 2
    again = GenRequest(p, 9, temperature=1.0, seed=5)
    generate_batch(model, tok, [again])
    assert again.text == reqs[1].text  # the seed decides, not the batch
    other = GenRequest(p, 9, temperature=1.0, seed=99)
    generate_batch(model, tok, [other])
    assert other.text != reqs[1].text
    tiny_p = GenRequest(p, 9, temperature=1.0, top_p=1e-6, seed=1)  # nucleus of one token: greedy
    greedy = GenRequest(p, 9)
    generate_batch(model, tok, [tiny_p, greedy])
    assert tiny_p.text == greedy.text


def test_stop_strings_end_the_row_and_are_never_streamed(lm):
    model, tok = lm
    p = ids(tok, "what word : the movie good")
    full = GenRequest(p, 10)
    generate_batch(model, tok, [full])
    words = full.text.split(" ")
    stop = " ".join(words[2:4])  # a stop string spanning tokens in the middle of the text
    streamed: list[str] = []
    cut = GenRequest(p, 10, stop=["never there", stop], on_text=streamed.append)
    generate_batch(model, tok, [cut])
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert "".join(streamed) == cut.text and cut.completion_tokens < 10
    assert _held_back("abc st", ["stop"]) == 2 and _held_back("abc", ["stop"]) == 0
    assert _held_back("xs", ["s", "st"]) == 1


def test_a_cancelled_row_ends_and_the_others_go_on(lm):
    model, tok = lm
    p = ids(tok, "what word : the movie good")
    seen: list[str] = []
    gone = GenRequest(p, 20)
    gone.on_text = lambda t: (seen.append(t), gone.cancelled.set())  # the client leaves after its first piece
    stays = GenRequest(p, 20)
    generate_batch(model, tok, [gone, stays])
    assert gone.finish_reason == "cancelled" and gone.completion_tokens <= 2
    assert stays.finish_reason == "length" and stays.completion_tokens == 20


def run_batcher(coro_factory, run_batch, **kw):
    async def main():
        with ThreadPoolExecutor(1) as ex:
            batcher = Batcher(run_batch, ex, **{"max_batch": 4, "max_wait": 0.05, "max_queue": 100, **kw})
            try:
                return await coro_factory(batcher)
            finally:
                await batcher.close()

    return asyncio.run(main())


def test_batcher_gathers_concurrent_requests_and_answers_each_its_own():
    sizes: list[tuple[str, int]] = []

    def run_batch(model, items):
        sizes.append((model, len(items)))
        time.sleep(0.01)
        return [f"{model}:{i}" for i in items]

    async def go(b: Batcher):
        return await asyncio.gather(*(b.submit("ab"[i % 2], i) for i in range(18)))

    results = run_batcher(go, run_batch)
    assert results == [f"{'ab'[i % 2]}:{i}" for i in range(18)]
    assert max(n for _, n in sizes) == 4 and sum(n for _, n in sizes) == 18 and len(sizes) <= 6
    assert all(m in "ab" for m, _ in sizes)  # a batch is one model's


def test_batcher_admission_is_bounded():
    async def go(b: Batcher):
        b.admit(2)
        with pytest.raises(Overloaded, match="--max-queue 3"):
            b.admit(2)
        b.release(2)
        b.admit(3)
        b.release(3)
        return b.admitted

    assert run_batcher(go, lambda m, items: items, max_queue=3) == 0


def test_batcher_failures_reach_only_their_callers():
    def run_batch(model, items):
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    async def go(b: Batcher):
        return await asyncio.gather(*(b.submit("m", i) for i in range(6)), return_exceptions=True)

    out = run_batcher(go, run_batch)
    assert [o for i, o in enumerate(out) if i != 3] == [0, 10, 20, 40, 50] and str(out[3]) == "bad 3"


def test_batcher_skips_requests_whose_caller_left():
    ran: list[int] = []
    gate = threading.Event()

    def run_batch(model, items):
        gate.wait(5)
        ran.extend(items)
        return items

    async def go(b: Batcher):
        first = b.submit("m", 0)  # occupies the inference thread
        await asyncio.sleep(0.1)
        left = b.submit("m", 1)
        left.cancel()
        kept = b.submit("m", 2)
        gate.set()
        return await first, await kept

    assert run_batcher(go, run_batch, max_batch=1) == (0, 2) and ran == [0, 2]
