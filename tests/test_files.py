"""retrain.files.replacing: whole files only, with the permissions any new file would get."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retrain.files import replacing


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_the_file_appears_whole_with_the_umask_mode(tmp_path: Path, umask_022) -> None:
    target = tmp_path / "vectors.weights.h5"
    with replacing(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".weights.h5")
        temporary.write_bytes(b"payload")
        assert not target.exists()
    assert target.read_bytes() == b"payload"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_stricter_umask_is_honoured(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        with replacing(tmp_path / "a.npy") as temporary:
            temporary.write_bytes(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.npy").stat().st_mode) == 0o600


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_threads_replacing_one_file_leave_one_whole_version(tmp_path: Path) -> None:
    """Each writer gets a temporary name of its own, so concurrent writers never share one."""
    target = tmp_path / "entry.npy"
    payloads = [bytes([n]) * 4096 for n in range(64)]

    def write(payload: bytes) -> None:
        with replacing(target) as temporary:
            temporary.write_bytes(payload)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, payloads))
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
