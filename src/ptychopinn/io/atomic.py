"""Atomic outputs: write to a temporary sibling, then rename. Never overwrite silently."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ptychopinn.errors import PtychoPINNError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (umask() is not thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_new_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise PtychoPINNError(f"{path}: output already exists; choose another path or pass --overwrite")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary file path next to ``path``; on success rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give outputs normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory next to ``path``; on success move it into place."""
    path = check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
