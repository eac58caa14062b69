"""A real wheel: built from the source files alone, installed (not editable) into a fresh venv, and used from
another directory — the recipes travel inside it, and the CLI trains from one by name.

The fresh venv reaches the test venv's libraries (torch and the rest) through a path line in a .pth file, so the
test needs no download; the test venv's editable ftkit is not active there (its finder is a .pth of that
directory, which a path line does not run), so only the installed wheel can answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "ftkit", "tasks")  # what a wheel is built from


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src],
                   check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("ftkit-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "test-venv-libraries.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    subprocess.run([*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
                   check=True, timeout=300)
    return venv


def _run(venv: Path, *args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTKIT_CACHE": str(cwd / "cache")}
    return subprocess.run([venv / "bin" / "ftkit", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_holds_the_package_and_every_recipe(wheel_venv, tmp_path):
    listing = _run(wheel_venv, "recipes", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == sorted(p.stem for p in (REPO / "tasks").glob("*.yaml"))
    shown = _run(wheel_venv, "recipes", "show", "cls-lora", cwd=tmp_path)
    assert shown.stdout == (REPO / "tasks" / "cls-lora.yaml").read_text()
    # the installed copy answers, not the source checkout
    where = subprocess.run([wheel_venv / "bin" / "python", "-c", "import ftkit, ftkit.config.recipes as r; "
                            "print(ftkit.__file__); print(r.RECIPES_DIR)"], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(wheel_venv) for p in where), where
    # every subpackage of the source tree is in the wheel (a package left out of pyproject's list would be missing)
    packages = sorted(p.parent.relative_to(REPO).as_posix().replace("/", ".") for p in (REPO / "ftkit").rglob(
        "__init__.py") if "__pycache__" not in p.parts)
    probe = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    imported = subprocess.run([wheel_venv / "bin" / "python", "-c", probe, *packages], cwd=tmp_path,
                              capture_output=True, text=True)
    assert imported.returncode == 0 and {"ftkit.serve", "ftkit.ui"} <= set(packages), imported.stderr
    version = _run(wheel_venv, "--version", cwd=tmp_path)
    from ftkit import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"ftkit {__version__}"
    env = _run(wheel_venv, "env", "--json", cwd=tmp_path)
    assert env.returncode == 0, env.stderr
    assert Path(json.loads(env.stdout)["ftkit_path"]).is_relative_to(wheel_venv)


def test_the_installed_cli_trains_from_a_recipe_by_name(wheel_venv, tiny_model, sentiment, tmp_path):
    info = _run(wheel_venv, "info", tiny_model, "--method", "lora", "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert 0 < json.loads(info.stdout)["trainable_params"] < json.loads(info.stdout)["total_params"]
    out = tmp_path / "run"
    result = _run(wheel_venv, "train", "cls-lora", "--model", tiny_model, "--data", sentiment["train"],
                  "--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train"]["steps"] == 3
    assert "method:\n  name: lora" in (out / "ftkit.yaml").read_text()  # the recipe's method
