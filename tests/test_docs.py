"""The documentation: the site under docs/ builds with `mkdocs build --strict` (a broken page, link or anchor fails
it), every page is in its navigation, the generated configuration reference is current, and the README stays a
short front page whose links all resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"


def build(where: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MKDOCS, "build", "--strict", "--site-dir", str(site)], cwd=where, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def mkdocs():
    if not MKDOCS.exists():
        pytest.skip("mkdocs is not installed (the test extra has it)")
    return MKDOCS


def test_the_site_builds_strictly_and_a_broken_link_fails_it(mkdocs, tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    with open(copy / "docs" / "usage.md", "a", encoding="utf-8") as f:
        f.write("\nSee [a page that is not there](missing.md).\n")
    broken = build(copy, tmp_path / "site2")
    assert broken.returncode != 0 and "missing.md" in broken.stderr


def _nav_pages(nav) -> set[str]:
    pages = set()
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_page_is_in_the_navigation():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == _nav_pages(nav)


def test_the_configuration_reference_is_current():
    from ftkit.commands import support

    assert (ROOT / support.REFERENCE).read_text() == support.reference(), \
        "run `python -m ftkit.commands.support --write`"
    text = support.reference()
    for key in ("train.lr", "data.max_length", "model.quant", "method.r", "task.max_new_tokens"):
        assert f"`{key}`" in text


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)", text)
    assert links and all((ROOT / link).exists() for link in links), [x for x in links if not (ROOT / x).exists()]
    assert "make demo" in text and "make test" in text
