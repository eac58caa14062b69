"""`ftkit ui`: a local dashboard of run dirs and sweeps (FastAPI on uvicorn, the ``serve`` extra).

- ``runs``: finding and reading run and sweep dirs inside the given folders (status, curves, metrics);
- ``svg``: charts drawn on the server; ``pages``: the HTML; ``app``: the routes;
- ``jobs``: runs launched from the page (``--allow-launch`` only).
"""

from __future__ import annotations

from pathlib import Path

from ftkit.errors import UsageError


def ui(folders: list[str], *, host: str = "127.0.0.1", port: int = 7860, allow_launch: bool = False) -> None:
    """Serve the dashboard until SIGTERM or Ctrl-C (launched runs are then stopped with a checkpoint)."""
    import contextlib

    from ftkit.util.webserver import AccessLog, bind, check_available, logger, server, url

    roots = [Path(f) for f in folders or ["."]]
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder (give folders that hold run dirs, e.g. runs/)")
    check_available("ui")
    sock = bind(host, port)
    from ftkit.ui.app import build_app
    from ftkit.ui.jobs import Jobs

    log, jobs = logger("ui"), Jobs()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            jobs.shutdown()

    web = server(AccessLog(build_app(roots, allow_launch, jobs, lifespan), log))
    log(f"dashboard on {url(sock)} for {', '.join(str(r) for r in roots)}"
        + (" (launching runs allowed)" if allow_launch else ""))
    web.run(sockets=[sock])
    log("stopped")
