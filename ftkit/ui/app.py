"""The dashboard's routes. Only run and sweep dirs inside the given folders are read (anything else: 404);
launching, stopping and resuming runs exist only with --allow-launch."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from ftkit.rundir import layout
from ftkit.ui import pages
from ftkit.ui.jobs import Jobs
from ftkit.ui.runs import files, locate, read_run, read_sweep, scan


def build_app(roots: list[Path], allow_launch: bool, jobs: Jobs | None = None, lifespan=None) -> FastAPI:
    app = FastAPI(title="ftkit ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    jobs = jobs or Jobs()

    def running() -> dict[Path, bool]:
        return jobs.dirs()

    def the_run(key: str):
        path = locate(roots, key)
        run = read_run(key, path, running()) if path else None
        if run is None:
            raise HTTPException(404, f"no run dir {key!r} under the dashboard's folders")
        return run

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)
        message = str(e.detail) if e.status_code != 404 or e.detail != "Not Found" else \
            f"nothing at {request.url.path}"
        return HTMLResponse(pages.page(f"{e.status_code}", f"<p>{pages.escape(message)}</p>"), e.status_code)

    @app.get("/static/ui.css")
    async def css():
        return Response(pages.CSS, media_type="text/css")

    @app.get("/static/ui.js")
    async def js():
        return Response(pages.SCRIPT, media_type="application/javascript")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        runs, sweeps = scan(roots, running())
        return pages.runs_list(runs, sweeps, allow_launch)

    @app.get("/run/{key:path}", response_class=HTMLResponse)
    async def run_page(key: str):
        run = the_run(key)
        return pages.run_page(run, files(run), allow_launch)

    @app.get("/api/charts/{key:path}", response_class=HTMLResponse)
    async def charts(key: str):
        from ftkit.ui.runs import curves

        return pages.charts_html(curves(the_run(key)))

    @app.get("/compare", response_class=HTMLResponse)
    async def compare(request: Request):
        keys = list(dict.fromkeys(request.query_params.getlist("run")))
        if len(keys) < 2:
            raise HTTPException(400, "pick two or more runs to compare (tick them in the list)")
        return pages.compare_page([the_run(k) for k in keys], allow_launch)

    @app.get("/sweep/{key:path}", response_class=HTMLResponse)
    async def sweep(key: str):
        path = locate(roots, key, "sweep.json")
        if path is None:
            raise HTTPException(404, f"no sweep dir {key!r} under the dashboard's folders")
        s = read_sweep(key, path)
        trials = {str(r.get("trial")): f"{key}/{r.get('trial')}" for r in s.leaderboard
                  if locate(roots, f"{key}/{r.get('trial')}")}
        return pages.sweep_page(s, trials, allow_launch)

    if allow_launch:
        add_launch_routes(app, roots, jobs)
    return app


def add_launch_routes(app: FastAPI, roots: list[Path], jobs: Jobs) -> None:
    from ftkit.config.recipes import shipped

    recipes = shipped()

    def the_job(job_id: str):
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"no job {job_id!r}")
        return jobs.jobs[job_id]

    @app.get("/launch", response_class=HTMLResponse)
    async def launch_form():
        return pages.launch_form(sorted(recipes), {}, {})

    @app.post("/launch", response_class=HTMLResponse)
    async def launch(request: Request):
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        values = {k: form.get(k, "") for k in ("recipe", "output", "overrides")}
        errors = jobs.check(recipes, values["recipe"], values["output"], values["overrides"], roots[0])
        if errors:
            return HTMLResponse(pages.launch_form(sorted(recipes), values, errors), status_code=400)
        out = roots[0] / values["output"].strip()
        sets = [a for line in values["overrides"].splitlines() if line.strip() for a in ("--set", line.strip())]
        job = jobs.start([values["recipe"], "--output", str(out), *sets], out)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.post("/resume/{key:path}")
    async def resume(key: str):
        path = locate(roots, key)
        if path is None:
            raise HTTPException(404, f"no run dir {key!r} under the dashboard's folders")
        job = jobs.start([str(path / layout.CONFIG), "--resume"], path)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(job_id: str):
        return pages.job_page(job_id, the_job(job_id).command)

    @app.get("/api/jobs/{job_id}/log")
    async def job_log(job_id: str, offset: int = 0):
        job = the_job(job_id)
        with job.log.open("rb") as f:
            f.seek(max(0, offset))
            chunk = f.read(256 * 1024)
        run = next((i for i, root in enumerate(roots) if job.run_dir == root.resolve()
                    or root.resolve() in job.run_dir.parents), None)
        link = None
        if run is not None and layout.is_run(job.run_dir):
            rel = job.run_dir.relative_to(roots[run].resolve()).as_posix()
            link = f"/run/{quote(f'{run}/{rel}')}"
        return {"text": chunk.decode("utf-8", "replace"), "offset": max(0, offset) + len(chunk),
                "status": job.status, "run": link}

    @app.post("/jobs/{job_id}/stop")
    async def stop(job_id: str):
        jobs.stop(the_job(job_id))
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)
