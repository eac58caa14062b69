"""ftkit.util.files: a file is replaced whole or left as it was."""

from __future__ import annotations

import pytest

from ftkit.util.files import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    with atomic_path(target, ".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent
        tmp.write_text("new\n")
    assert target.read_text() == "new\n" and len(list(target.parent.iterdir())) == 1
