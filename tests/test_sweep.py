"""`ftkit sweep`: grid and random trials as normal run dirs, a leaderboard, the best config as a recipe, resuming a
half-done sweep, failed trials recorded without stopping the sweep, and bad input refused before any trial."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from ftkit.commands import sweep


@pytest.fixture
def recipe(tiny_model, sentiment, tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(f"""# tiny sweep base
task: cls
method: lora
model: {{name: {tiny_model}}}
data: {{train: {sentiment['train']}, eval: {sentiment['eval']}, max_length: 32}}
train: {{batch_size: 16, max_steps: 6, eval_every: 3, save_every: 3}}
""")
    return path


def test_grid_sweep_ranks_trials_and_saves_the_best_config_as_a_recipe(recipe, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", recipe, "--param", "lr=1e-4,2e-2", "--param", "method.r=2,8", "--output", out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "leaderboard.json").read_text())
    assert [r["status"] for r in rows] == ["done"] * 4
    assert {(r["params"]["train.lr"], r["params"]["method.r"]) for r in rows} == {
        ("1e-4", "2"), ("1e-4", "8"), ("2e-2", "2"), ("2e-2", "8")}
    for r in rows:  # each trial is a normal run dir, and the leaderboard holds its figures
        metrics = json.loads((out / r["trial"] / "metrics.json").read_text())
        assert r["value"] == metrics["eval"]["accuracy"] and r["metric"] == "accuracy"
        saved = (out / r["trial"] / "ftkit.yaml").read_text()
        assert f"lr: {float(r['params']['train.lr'])}" in saved and f"r: {r['params']['method.r']}" in saved
    assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
    small, large = ({r["trainable_params"] for r in rows if r["params"]["method.r"] == v} for v in ("2", "8"))
    assert max(small) < min(large)
    board = (out / "leaderboard.md").read_text()
    assert board.splitlines()[0].startswith("| rank | trial | train.lr | method.r | metric")
    assert rows[0]["trial"] in result.output and "best:" in result.output

    best = out / "best.yaml"
    assert best.read_text().startswith(f"# best of sweep sweep: {rows[0]['trial']}")
    again = run_cli("train", best, "--output", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["eval"]["accuracy"] == rows[0]["value"]


def test_random_strategy_draws_distinct_trials_reproducibly():
    params = {"train.lr": ["1", "2", "3"], "method.r": ["4", "8"]}
    a = sweep.plan_trials(params, "random", 4, seed=1)
    assert len(a) == 4 and len({tuple(t.items()) for t in a}) == 4
    assert a == sweep.plan_trials(params, "random", 4, seed=1)
    assert sweep.plan_trials(params, "random", 4, seed=2) != a
    assert len(sweep.plan_trials(params, "random", 50, seed=1)) == 6  # at most every combination
    assert sweep.plan_trials(params, "grid", 2, seed=0) == [{"train.lr": "1", "method.r": "4"},
                                                            {"train.lr": "1", "method.r": "8"}]


def test_an_interrupted_sweep_resumes_where_it_stopped(recipe, tmp_path, monkeypatch):
    import ftkit.training.loop

    real, calls = ftkit.training.loop.evaluate, {"n": 0}

    def ctrl_c_at_fourth(*a, **k):  # the 2nd trial's 2nd evaluation (step 6), after its step-3 checkpoint
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ftkit.training.loop, "evaluate", ctrl_c_at_fourth)
    out = tmp_path / "sweep"
    args = ["sweep", recipe, "--param", "lr=1e-3,1e-2,3e-2", "--strategy", "random", "--trials", "3", "--output", out]
    assert run_cli(*args).exit_code == 130
    first = out / "trial-000" / "metrics.json"
    assert first.is_file() and not (out / "trial-001" / "metrics.json").exists()
    assert (out / "trial-001" / "checkpoints").is_dir()
    stamp = first.stat().st_mtime_ns
    monkeypatch.undo()

    refused = run_cli(*args)
    assert refused.exit_code == 2 and "pass --resume to continue the sweep" in refused.output
    changed = run_cli(*args[:-2], "--seed", "5", "--output", out, "--resume")
    assert changed.exit_code == 2 and "--resume: seed is 5 here but 0 in" in changed.output

    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "trial-000" not in result.output.split("| rank")[0]  # finished trials are not run again
    assert "trial-001 (2/3): train.lr=" in result.output and "[resumed]" in result.output
    assert first.stat().st_mtime_ns == stamp
    rows = json.loads((out / "leaderboard.json").read_text())
    assert [r["status"] for r in rows] == ["done"] * 3


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(recipe, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", recipe, "--param", "batch_size=16,1000", "--output", out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "leaderboard.json").read_text())
    assert rows[0]["status"] == "done" and rows[0]["params"] == {"train.batch_size": "16"}
    assert rows[1]["status"].startswith("failed: UsageError:") and "fewer than one batch" in rows[1]["status"]
    assert "failed: UsageError" in result.output


@pytest.mark.parametrize("args, expected", [
    (["--param", "lr"], "--param 'lr': expected key=value1,value2"),
    (["--param", "lr=1e-3,"], "--param 'lr=1e-3,': expected key=value1,value2"),
    (["--param", "method.nope=1,2"], "trial 0 (method.nope=1): "),
    (["--param", "lr=-1,1e-3"], "trial 0 (train.lr=-1): config key 'train.lr': got -1"),
    (["--param", "lr=1e-3", "--param", "train.lr=1e-2"], "train.lr is given twice"),
    (["--param", "lr=1e-3", "--strategy", "bayes"], "--strategy bayes: expected grid or random"),
    (["--param", "lr=1e-3", "--trials", "0"], "Invalid value for '--trials': got 0, expected an integer >= 1"),
])
def test_bad_sweeps_are_refused_before_any_trial(recipe, tmp_path, args, expected):
    out = tmp_path / "sweep"
    result = run_cli("sweep", recipe, *args, "--output", out)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not out.exists()


def test_unknown_recipe_is_refused(tmp_path):
    result = run_cli("sweep", "no-such-recipe", "--param", "lr=1e-3", "--output", tmp_path / "s")
    assert result.exit_code == 2 and "not a recipe file nor a shipped recipe" in result.output
