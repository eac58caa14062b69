"""`ftkit ui`: the dashboard in a real headless browser (Debian's chromium through Selenium), plus HTTP-level checks.

The fixture folder holds two finished cls runs (different learning rates), an interrupted one and a sweep of two
trials. Screenshots of each page go to tests/artifacts/ui/ (or $FTKIT_UI_SHOTS)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import LiveServer, run_cli, train_args

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path(os.environ.get("FTKIT_UI_SHOTS", Path(__file__).parent / "artifacts" / "ui"))


@pytest.fixture(scope="module")
def folder(tiny_model, sentiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui") / "runs"
    common = ("--max-steps", "12", "--set", "train.log_every=1", "--set", "train.eval_every=3")
    for name, lr in (("slow", "1e-3"), ("fast", "5e-3")):
        result = run_cli(*train_args(tiny_model, sentiment, root / name, *common), "--lr", lr)
        assert result.exit_code == 0, result.output
    stopped = root / "stopped"  # what a killed run leaves: a config, a log, a checkpoint, no metrics.json
    shutil.copytree(root / "slow", stopped)
    (stopped / "metrics.json").unlink()
    (stopped / "checkpoints" / "step-00000006").mkdir(parents=True)
    old = time.time() - 3600
    for p in [stopped, *stopped.rglob("*")]:
        os.utime(p, (old, old))
    recipe = root.parent / "base.yaml"
    recipe.write_text(f"task: cls\nmodel: {{name: {tiny_model}}}\ndata: {{train: {sentiment['train']}, eval: "
                      f"{sentiment['eval']}, max_length: 32}}\ntrain: {{batch_size: 16, max_steps: 3}}\n")
    result = run_cli("sweep", recipe, "--param", "lr=1e-3,5e-3", "--output", root / "sweeps" / "lr")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def dashboard(folder):
    s = LiveServer("ui", folder, "--allow-launch")
    try:
        yield s
    finally:
        assert s.stop() == 0, "\n".join(s.lines)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them with apt where it can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    # chromium's profile and socket folders in pytest's temporary tree (kept for the last 3 sessions), not in /tmp
    scratch = tmp_path_factory.mktemp("chromium")
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    driver = webdriver.Chrome(options=options, service=Service(DRIVER, env={**os.environ, "TMPDIR": str(scratch)}))
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(15)  # a form submitted by a click navigates after click() returns: lookups wait for it
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000  # a page was drawn, not a blank window
    return path


def wait_for(condition, timeout: float = 60, every: float = 0.5):
    """Poll ``condition`` until it holds; an element replaced under it (the page navigated) means: not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if value := condition():
                return value
        except StaleElementReferenceException:
            pass
        time.sleep(every)
    raise AssertionError("timed out")


def test_the_list_shows_every_run_with_its_status_and_filters(dashboard, browser):
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/")
    rows = {r.find_elements(By.TAG_NAME, "a")[0].text: r for r in browser.find_elements(By.CSS_SELECTOR,
                                                                                         "#runs tbody tr")}
    assert {"slow", "fast", "stopped", "trial-000", "trial-001"} <= set(rows)
    assert "finished" in rows["fast"].text and "accuracy" in rows["fast"].text
    assert "interrupted" in rows["stopped"].text and "checkpoint at step 6" in rows["stopped"].text
    assert browser.find_element(By.LINK_TEXT, "lr")  # the sweep
    shot(browser, "list")
    browser.find_element(By.ID, "filter").send_keys("interrupted")
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr") if r.is_displayed()]
    assert len(visible) == 1 and "stopped" in visible[0].text
    browser.find_elements(By.CSS_SELECTOR, "#runs th")[7].click()  # sort by the best value


def test_a_run_page_draws_its_curves_and_metrics(dashboard, browser, folder):
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/")
    browser.find_element(By.LINK_TEXT, "fast").click()
    series = browser.find_elements(By.CSS_SELECTOR, "#charts svg polyline.series")
    names = {s.get_attribute("data-series") for s in series}
    assert {"train loss", "eval loss", "accuracy"} <= names
    train = next(s for s in series if s.get_attribute("data-series") == "train loss")
    assert len(train.get_attribute("points").split()) == 12  # one point per logged step
    metrics = browser.find_element(By.ID, "metrics").text
    assert "accuracy" in metrics and "macro_f1" in metrics
    summary = json.loads((folder / "fast" / "metrics.json").read_text())  # the TF-IDF baseline, under the run's row
    baseline = browser.find_element(By.ID, "baseline").text
    assert baseline.startswith("tf-idf + logistic regression") and f"{summary['baseline']['accuracy']:.4f}" in baseline
    page = browser.find_element(By.TAG_NAME, "main").text
    assert f"ftkit serve {folder / 'fast'}" in page and "train:" in browser.find_element(By.ID, "config").text
    shot(browser, "run")


def test_compare_overlays_runs_and_diffs_their_configs(dashboard, browser):
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/")
    for key in ("0/slow", "0/fast"):
        browser.find_element(By.CSS_SELECTOR, f'input[value="{key}"]').click()
    browser.find_element(By.CSS_SELECTOR, "#compare button").click()
    wait_for(lambda: "Compare" in browser.title)
    chart = browser.find_elements(By.CSS_SELECTOR, "svg[aria-label='accuracy'] polyline.series")
    assert {c.get_attribute("data-series") for c in chart} == {"slow", "fast"}
    assert all(len(c.get_attribute("points").split()) == 4 for c in chart)  # evaluated at steps 3, 6, 9, 12
    diff = browser.find_element(By.ID, "diff").text
    assert "train.lr" in diff and "0.001" in diff and "0.005" in diff and "train.batch_size" not in diff
    assert "accuracy" in browser.find_element(By.ID, "side").text
    shot(browser, "compare")


def test_a_sweep_shows_its_leaderboard_with_links_to_trials(dashboard, browser):
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/")
    browser.find_element(By.LINK_TEXT, "lr").click()
    board = browser.find_element(By.ID, "leaderboard")
    assert len(board.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
    board.find_element(By.LINK_TEXT, "trial-001").click()
    wait_for(lambda: "Run trial-001" in browser.title)
    shot(browser, "sweep-trial")


def test_launch_validates_the_form_then_runs_to_the_end(dashboard, browser, folder, tiny_model, sentiment):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def fill(overrides: str):
        browser.get(dashboard.url + "/launch")
        Select(browser.find_element(By.ID, "recipe")).select_by_visible_text("cls-lora")
        browser.find_element(By.ID, "output").send_keys("from-the-page")
        browser.find_element(By.ID, "overrides").send_keys(overrides)
        browser.find_element(By.ID, "start").click()

    good = (f"model.name={tiny_model}\ndata.train={sentiment['train']}\ndata.eval={sentiment['eval']}\n"
            "train.max_steps=4\ntrain.batch_size=16\ndata.max_length=32")
    fill(good + "\ntrain.lr=fast")
    wait_for(lambda: browser.find_elements(By.ID, "error-overrides"))
    error = browser.find_element(By.ID, "error-overrides").text
    assert "train.lr" in error and "fast" in error  # the CLI's own message, next to the field
    assert not (folder / "from-the-page").exists()
    fill(good)
    wait_for(lambda: "Job" in browser.title)
    wait_for(lambda: browser.find_element(By.ID, "job-status").text in ("finished", "failed (exit 1)",
                                                                          "failed (exit 2)"), timeout=180)
    log = browser.find_element(By.ID, "log").text
    assert browser.find_element(By.ID, "job-status").text == "finished", log
    assert "held-out:" in log and (folder / "from-the-page" / "metrics.json").is_file()
    shot(browser, "job")
    browser.find_element(By.LINK_TEXT, "open the run").click()
    wait_for(lambda: "Run from-the-page" in browser.title)
    assert "finished" in browser.find_element(By.CSS_SELECTOR, "main .status").text


def test_a_launched_run_stops_with_a_checkpoint_and_resumes_from_the_page(dashboard, browser, folder, tiny_model,
                                                                         sentiment):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(dashboard.url + "/launch")
    Select(browser.find_element(By.ID, "recipe")).select_by_visible_text("cls-lora")
    browser.find_element(By.ID, "output").send_keys("long")
    browser.find_element(By.ID, "overrides").send_keys(
        f"model.name={tiny_model}\ndata.train={sentiment['train']}\ndata.eval={sentiment['eval']}\n"
        "train.max_steps=100000\ntrain.batch_size=16\ndata.max_length=32\ntrain.log_every=1")
    browser.find_element(By.ID, "start").click()
    wait_for(lambda: "step " in browser.find_element(By.ID, "log").text, timeout=120)
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: browser.find_element(By.ID, "job-status").text.startswith("stopped"), timeout=120)
    assert "stopped (exit 143)" == browser.find_element(By.ID, "job-status").text
    browser.get(dashboard.url + "/run/0/long")
    wait_for(lambda: "interrupted" in browser.find_element(By.TAG_NAME, "main").text)
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "interrupted" in main and "checkpoint at step" in main and "--resume" in main
    browser.find_element(By.XPATH, "//button[starts-with(., 'resume')]").click()
    wait_for(lambda: "Job" in browser.title)
    wait_for(lambda: "resum" in browser.find_element(By.ID, "log").text.lower(), timeout=120)
    wait_for(lambda: browser.find_element(By.ID, "job-status").text == "running")
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: browser.find_element(By.ID, "job-status").text.startswith("stopped"), timeout=120)


def test_only_run_dirs_inside_the_folders_can_be_read(dashboard, folder):
    for path in ("/run/0/..%2F..%2F..%2Fetc", "/run/0/../../etc/passwd", "/run/1/slow", "/run/x/slow",
                 "/run/0/slow%2Fcheckpoints", "/sweep/0/..%2Fruns", "/api/charts/0/..%2F..", "/run/0/nothing"):
        r = httpx.get(dashboard.url + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
        assert "root:" not in r.text
    assert httpx.get(dashboard.url + "/compare?run=0/slow", timeout=10).status_code == 400


def test_launching_is_off_unless_asked_and_live_pages_refresh(folder, tmp_path):
    """In-process (FastAPI's test client): without --allow-launch the launch routes do not exist; a run that is
    still being written is shown as running and its charts refresh from metrics.jsonl."""
    import json

    from fastapi.testclient import TestClient

    from ftkit.ui.app import build_app

    live = tmp_path / "live"
    shutil.copytree(folder / "slow", live)
    (live / "metrics.json").unlink()
    shutil.rmtree(live / "checkpoints", ignore_errors=True)
    client = TestClient(build_app([tmp_path], allow_launch=False))
    for method, path in (("get", "/launch"), ("post", "/launch"), ("post", "/resume/0/live"), ("get", "/jobs/1")):
        assert getattr(client, method)(path).status_code in (404, 405)
    page = client.get("/run/0/live").text
    assert "running" in page and 'data-refresh="/api/charts/0/live"' in page
    before = client.get("/api/charts/0/live").text.count("<circle")
    with (live / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"type": "train", "step": 13, "loss": 0.5}) + "\n")
    assert client.get("/api/charts/0/live").text.count("<circle") == before + 1


def test_a_missing_folder_is_refused(cli, tmp_path):
    result = cli("ui", tmp_path / "nope")
    assert result.exit_code == 2 and "no such folder" in result.output


def test_a_running_taggers_best_is_its_entity_f1(tmp_path):
    """Before metrics.json names it, the main metric of a running run is read from its evaluations: a tagger reports
    token accuracy too, but its main metric is entity F1."""
    import json

    from ftkit.ui.runs import read_run

    run = tmp_path / "ner"
    run.mkdir()
    (run / "ftkit.yaml").write_text("task: {name: tag}\nmethod: {name: lora}\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"type": "eval", "step": s, "eval_accuracy": a,
                                                           "eval_entity_f1": f}) + "\n"
                                               for s, a, f in ((5, 0.9, 0.4), (10, 0.95, 0.3))))
    r = read_run("0/ner", run)
    assert r.status == "running" and r.main_metric == "entity_f1" and r.best == 0.4 and r.steps == 10


def test_job_logs_are_kept_in_a_temporary_folder_only_while_the_dashboard_runs(tmp_path, monkeypatch):
    import tempfile

    from ftkit.ui.jobs import Jobs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    Jobs().shutdown()
    assert not list(tmp_path.glob("ftkit-ui-jobs-*"))  # a dashboard that launches nothing makes no folder
    jobs = Jobs()
    job = jobs.start(["--help"], tmp_path / "run")
    assert job.process.wait(120) == 0 and "--output" in job.log.read_text()
    assert job.log.parent.parent == tmp_path
    jobs.shutdown()
    assert not list(tmp_path.glob("ftkit-ui-jobs-*"))  # before: one folder left in /tmp per dashboard started
