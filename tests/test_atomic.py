"""Atomic outputs: nothing partial is ever left behind, nothing is overwritten silently."""

import pytest

from ptychopinn.errors import PtychoPINNError
from ptychopinn.io.atomic import atomic_dir, atomic_path, check_new_output


def test_atomic_path_writes_only_on_success(tmp_path):
    target = tmp_path / "out.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"data")
        assert not target.exists()  # nothing visible under the final name before success
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_an_overwrite_fails(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(b"new but incomplete")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_atomic_path_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(PtychoPINNError, match="already exists") as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert str(target) in str(info.value) and "--overwrite" in str(info.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_path_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_check_new_output(tmp_path):
    assert check_new_output(tmp_path / "new.npz") == tmp_path / "new.npz"
    (tmp_path / "old.npz").write_text("x")
    with pytest.raises(PtychoPINNError):
        check_new_output(tmp_path / "old.npz")
    check_new_output(tmp_path / "old.npz", overwrite=True)


def test_atomic_dir(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "weights.pt").write_bytes(b"w")
            raise ValueError("failed half way")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "weights.pt").write_bytes(b"w")
    assert (target / "weights.pt").read_bytes() == b"w"
    with pytest.raises(PtychoPINNError):
        with atomic_dir(target):
            pass
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "other.pt").write_bytes(b"o")
    assert sorted(p.name for p in target.iterdir()) == ["other.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from ptychopinn.io.atomic import atomic_dir, atomic_path

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
