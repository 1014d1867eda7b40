"""Atomic writes: the old file survives a failed write, and no temporary file is left."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pytest

from common.storage.atomic import write_atomically, write_text_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_text_atomically(target, "old")

    def half_then_fail(handle: IO[bytes]) -> None:
        handle.write(b"new, half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_atomically(target, half_then_fail)

    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["result.json"]


def test_a_write_replaces_the_whole_file_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "cache.bin"
    write_text_atomically(target, "a much longer first version")

    write_text_atomically(target, "short")

    assert target.read_text() == "short"
    assert target.stat().st_mode & 0o777 == 0o644
