"""Run dirs written by an earlier ftkit keep working: tests/fixtures/pre-layout holds a cls LoRA run and a gen LoRA
run (tiny bases beside them) written at commit ff80c9f, before the package was reorganised into layers, together with
what eval and predict gave then (expected.json, made by ``python tests/test_old_run_dirs.py --record``). They were
written under /tmp/fx; a copy is relocated as a user moving the folders would (the recorded paths rewritten)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "pre-layout"
WRITTEN_AT = "/tmp/fx"
TEXTS = ["a superb and moving film", "dull , tedious and flat"]
PROMPTS = ["copy : superb", "copy : dull film"]


def relocate(to: Path) -> Path:
    shutil.copytree(FIXTURE, to, dirs_exist_ok=True)
    for f in to.rglob("*"):
        if f.suffix in (".yaml", ".json", ".md") and f.is_file():
            f.write_text(f.read_text(encoding="utf-8").replace(WRITTEN_AT, str(to)), encoding="utf-8")
    return to


def observe(root: Path, scratch: Path) -> dict:
    """What eval and predict say about the two runs (the figures expected.json records)."""
    got = {}
    for run, data, extra in (("cls-run", "eval.csv", []), ("gen-run", "ge.jsonl", [])):
        out = scratch / f"{run}-eval.json"
        result = run_cli("eval", root / run, "--data", root / data, "--output", out, *extra)
        assert result.exit_code == 0, result.output
        got[f"{run} eval"] = {k: v for k, v in json.loads(out.read_text()).items() if isinstance(v, (int, float))}
    for run, texts in (("cls-run", TEXTS), ("gen-run", PROMPTS)):
        out = scratch / f"{run}-predict.jsonl"
        result = run_cli("predict", root / run, *[a for t in texts for a in ("--text", t)], "--output", out,
                         *(["--max-new-tokens", "6"] if run == "gen-run" else []))
        assert result.exit_code == 0, result.output
        got[f"{run} predict"] = [json.loads(line) for line in out.read_text().splitlines()]
    return got


def close(got, want, tol=1e-4) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k], tol) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(close(g, w, tol) for g, w in zip(got, want))
    if isinstance(want, float):
        return isinstance(got, (int, float)) and abs(got - want) <= tol * max(1.0, abs(want))
    return got == want


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Path:
    return relocate(tmp_path_factory.mktemp("old-runs"))


def test_an_old_run_dir_evals_and_predicts_as_it_did(old, tmp_path):
    want = json.loads((FIXTURE / "expected.json").read_text())
    got = observe(old, tmp_path)
    assert close(got, want), (got, want)


@pytest.mark.parametrize("run", ["cls-run", "gen-run"])
def test_an_old_run_dir_exports_merged_and_serves(old, tmp_path, run):
    from conftest import LiveServer

    httpx = pytest.importorskip("httpx")
    out = tmp_path / "merged"
    result = run_cli("export", old / run, "--merge", "--output", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    server = LiveServer("serve", f"m={old / run}")
    try:
        server.wait_ready()
        if run == "cls-run":
            r = httpx.post(f"{server.url}/v1/predict", json={"model": "m", "input": TEXTS}, timeout=60)
        else:
            r = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": PROMPTS[0], "max_tokens": 4,
                                                                 "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        server.stop()


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        root = relocate(Path(d) / "runs")
        scratch = Path(d) / "scratch"
        scratch.mkdir()
        (FIXTURE / "expected.json").write_text(json.dumps(observe(root, scratch), indent=1) + "\n")
