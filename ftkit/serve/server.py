"""`ftkit serve` itself: checks, binding, loading the models in the background, graceful shutdown."""

from __future__ import annotations

import contextlib
import os

from ftkit.errors import UsageError, first_line
from ftkit.util.webserver import AccessLog, bind, check_available, logger, server as web_server, url

log = logger("serve")


def serve(specs: list[str], *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          task: str | None = None, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
          max_input_chars: int = 100_000, shutdown_timeout: float = 30.0) -> None:
    """Serve ``specs`` (RUN or NAME=RUN) until SIGTERM or Ctrl-C; returns once in-flight requests are answered."""
    from ftkit.serve.pool import parse

    # the numbers' ranges are checked as the command's options are parsed (cli.more.serve)
    check_available("serve")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run on the one inference thread
    served = parse(specs, task)  # bad RUN arguments fail here, before anything binds or loads
    sock = bind(host, port)
    from ftkit.serve.api import Gate, State, build_app
    from ftkit.serve.batcher import Batcher
    from ftkit.serve.pool import load, run_batch

    state = State({s.name: s for s in served}, api_key=api_key or None, max_input_chars=max_input_chars, log=log)
    failed: list[BaseException] = []
    server = None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(1, thread_name_prefix="ftkit-infer")  # one model call at a time
        state.batcher = Batcher(lambda name, items: run_batch(state.served[name], items), executor,
                                max_batch=max_batch, max_wait=max_wait_ms / 1000, max_queue=max_queue)

        def loaded(future):
            if future.exception() is not None:
                failed.append(future.exception())
                server.should_exit = True
            else:
                state.ready = True
                log(f"ready: {', '.join(state.served)}")

        loading = asyncio.get_running_loop().run_in_executor(executor, load, served, log)
        loading.add_done_callback(loaded)
        try:
            yield
        finally:
            await state.batcher.close()
            executor.shutdown(wait=False, cancel_futures=True)

    server = web_server(AccessLog(Gate(build_app(state, lifespan), state), log), shutdown_timeout)
    log(f"listening on {url(sock)} (loading {len(served)} model{'s' if len(served) != 1 else ''}; GET /ready says "
        "when they are ready)")
    server.run(sockets=[sock])
    if failed:
        e = failed[0]
        raise e if isinstance(e, UsageError) else RuntimeError(f"loading the models failed: {first_line(e)}")
    log("stopped")
