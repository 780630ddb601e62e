"""Atomic, durable outputs: write to a temporary sibling, fsync it, then rename it into place
(and fsync the directory). Never overwrite silently; with ``overwrite`` a file is replaced by one
``rename`` and a directory by an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so at
every moment the old or the new output exists under its name, never neither."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from ptychopinn.errors import PtychoPINNError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (umask() is not
    thread-safe)."""
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
        raise PtychoPINNError(
            f"{path}: output already exists; choose another path or pass --overwrite"
        )
    return path


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to the storage device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames into it) to the storage device, where supported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(a, b, flags: int) -> bool:
    """Linux renameat2; False where the system or file system does not support the flag
    (nothing changed then). Other failures raise OSError (FileExistsError for NOREPLACE)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (RENAME_EXCHANGE); False where unsupported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _written_meanwhile(dst) -> PtychoPINNError:
    return PtychoPINNError(
        f"{dst}: output already exists (written by another run meanwhile); "
        "choose another path or pass --overwrite"
    )


def rename_new(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move ``src`` to ``dst`` only if ``dst`` does not exist, atomically (RENAME_NOREPLACE; a
    hard link for files where that is unsupported): a concurrent writer of the same output makes
    this fail instead of being silently replaced."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
        if Path(src).is_dir():
            if Path(dst).exists():
                raise _written_meanwhile(dst)
            os.replace(src, dst)
            return
        os.link(src, dst)
    except FileExistsError:
        raise _written_meanwhile(dst) from None
    os.unlink(src)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary file path next to ``path``; on success rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = check_new_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give outputs normal permissions
        fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            rename_new(tmp, path)
        fsync_dir(path.parent)
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
        _fsync_tree(tmp)
        if not overwrite:
            rename_new(tmp, path)
        elif path.exists() and exchange(tmp, path):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()  # tmp now holds the old output
        else:
            old = None
            if path.exists():  # no atomic exchange here: keep the old output until the new is in
                old = Path(
                    tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
                )
                os.replace(path, old / "x")
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
