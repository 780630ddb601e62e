"""Refuse inputs before reading them: a path that is not a file, arrays that cannot fit in
memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ptychopinn.errors import DataError


def require_file(path: Path, src: str, expected: str) -> None:
    """DataError unless ``path`` is an existing file (``expected`` names what it should be, e.g.
    'an NPZ file'): every reader's one existence check."""
    if not path.exists():
        raise DataError(src, "file", "no such file")
    if path.is_dir():
        raise DataError(src, "file", f"is a directory, expected {expected}")


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (a large number where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_allocation(src: str, key: str, shape, itemsize: int, what: str = "array") -> int:
    """Bytes needed for ``shape`` x ``itemsize``; DataError when that exceeds physical memory."""
    if any(int(s) < 0 for s in shape):
        raise DataError(src, key, f"invalid shape {tuple(shape)}")
    nbytes = math.prod(int(s) for s in shape) * int(itemsize)
    limit = memory_bytes()
    if nbytes > limit:
        raise DataError(
            src,
            key,
            f"{what} of shape {tuple(int(s) for s in shape)} would need "
            f"{_gib(nbytes)}, more than this machine's {_gib(limit)} of memory",
        )
    return nbytes
