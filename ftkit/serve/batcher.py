"""Dynamic batching: requests that arrive together are run together.

Requests wait per model. The dispatcher takes the model whose oldest request has waited longest, gathers up to
``max_batch`` of its requests (waiting at most ``max_wait`` seconds after the oldest for more to come), runs them as
one batch on the single inference thread, and hands each caller its own result. While a batch runs, new requests
gather, so under load batches fill by themselves; the wait applies only while the last batch held more than one
request (a lone client is never delayed). Admission is bounded: past ``max_queue`` requests admitted and
not yet finished, ``admit`` refuses (the server answers 503 with Retry-After) instead of queueing without end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable


class Overloaded(Exception):
    """More requests are waiting or running than the server takes (``max_queue``)."""


class Batcher:
    def __init__(self, run_batch: Callable[[str, list], list], executor: Executor, *, max_batch: int,
                 max_wait: float, max_queue: int):
        """``run_batch(model_name, items) -> results``: one result (or an exception instance) per item, in order;
        it runs on ``executor`` (one thread: batches run one after another)."""
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.waiting: dict[str, deque] = {}
        self.admitted = 0
        self.last_size = 0  # requests in the last batch run
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def admit(self, n: int = 1) -> None:
        """Take slots for a request of ``n`` items; ``release`` them once it is answered (or its stream ends)."""
        if self.admitted + n > self.max_queue:
            raise Overloaded(f"{self.admitted} requests are in the queue (--max-queue {self.max_queue})")
        self.admitted += n

    def release(self, n: int = 1) -> None:
        self.admitted -= n

    def submit(self, model: str, item: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(model, deque()).append((time.monotonic(), item, future))
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._dispatch())
        return future

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.wake.clear()
            ready = [(q[0][0], name) for name, q in self.waiting.items() if q]
            if not ready:
                await self.wake.wait()
                continue
            oldest, name = min(ready)
            queue = self.waiting[name]
            # wait for company only under concurrent load: a lone client's request would just be delayed
            wait = self.max_wait if self.last_size > 1 else 0.0
            while len(queue) < self.max_batch and (left := oldest + wait - time.monotonic()) > 0:
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), left)
            batch = []
            while queue and len(batch) < self.max_batch:
                _, item, future = queue.popleft()
                if not future.done():  # a caller that has gone cancels its future
                    batch.append((item, future))
            if not batch:
                continue
            self.last_size = len(batch)
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, name, [i for i, _ in batch])
            except Exception as e:  # the batch as a whole failed: each caller hears why
                results = [e] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
