"""`ftkit serve` itself: checks, binding, loading the models in the background, graceful shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

from ftkit.errors import UsageError, first_line


def check_available() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"ftkit serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'ftkit[serve]'") \
            from None


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} ftkit serve: {line}", file=sys.stderr, flush=True)


def serve(specs: list[str], *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          task: str | None = None, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
          max_input_chars: int = 100_000, shutdown_timeout: float = 30.0) -> None:
    """Serve ``specs`` (RUN or NAME=RUN) until SIGTERM or Ctrl-C; returns once in-flight requests are answered."""
    from ftkit.serve.pool import parse

    for flag, value, least in (("--max-batch", max_batch, 1), ("--max-queue", max_queue, 1),
                               ("--max-input-chars", max_input_chars, 1)):
        if value < least:
            raise UsageError(f"{flag}: got {value}, expected {least} or more")
    if max_wait_ms < 0:
        raise UsageError(f"--max-wait-ms: got {max_wait_ms}, expected 0 or more")
    check_available()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run on the one inference thread
    served = parse(specs, task)  # bad RUN arguments fail here, before anything binds or loads
    sock = _bind(host, port)
    import uvicorn

    from ftkit.serve.api import Gate, State, build_app
    from ftkit.serve.batcher import Batcher
    from ftkit.serve.pool import load, run_batch

    state = State({s.name: s for s in served}, api_key=api_key or None, max_input_chars=max_input_chars, log=log)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

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

    config = uvicorn.Config(Gate(build_app(state, lifespan), state), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=shutdown_timeout)
    server = _server_class()(config)
    where = sock.getsockname()
    log(f"listening on http://{_url_host(where[0])}:{where[1]} (loading {len(served)} model"
        f"{'s' if len(served) != 1 else ''}; GET /ready says when they are ready)")
    server.run(sockets=[sock])
    if failed:
        e = failed[0]
        raise e if isinstance(e, UsageError) else RuntimeError(f"loading the models failed: {first_line(e)}")
    log("stopped")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: got {port}, expected 0-65535 (0: any free port)")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's headers and body are written separately, and without it the body
    # waits for the client's delayed ACK of the headers (~40 ms a request on Linux; measured 44 ms -> 1.2 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM or Ctrl-C that shut it down gracefully ends the process with exit 0
        (uvicorn re-raises the signal once it has shut down, so the process would die of it)."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
