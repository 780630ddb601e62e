"""Scan-sized numpy arrays in file-backed memory (numpy only: readers import this without torch)."""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from ptychopinn.errors import PtychoPINNError


def scratch_array(shape, dtype, directory=None) -> np.memmap:
    """A writable numpy array of ``shape`` and ``dtype`` in a temporary file that is already
    removed from its directory: its pages are file-backed (written back and dropped by the
    kernel under memory pressure, unlike anonymous memory) and the space is freed when the last
    view of the array goes. The space is reserved first, so a full disk is a clear error here and
    not a crash (SIGBUS) at the first write to a page that does not fit."""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = max(math.prod(shape) * dtype.itemsize, 1)
    fd, path = tempfile.mkstemp(prefix="ptychopinn-scratch-", suffix=".bin", dir=directory)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            raise PtychoPINNError(
                f"{os.path.dirname(path)}: cannot reserve {nbytes / 2**30:.2f} GiB of scratch "
                f"space for a {shape} {dtype} array ({exc.strerror}); free disk space or set "
                "TMPDIR to a larger disk"
            ) from None
        with open(fd, "r+b", closefd=False) as fh:
            return np.memmap(fh, dtype=dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(path)


@dataclass(frozen=True)
class MappedFile:
    """Where a memory-mapped array's bytes are: what a process sends instead of the array."""

    path: str
    offset: int
    shape: tuple
    dtype: str
    fortran: bool

    def open(self, mode: str = "r") -> np.memmap:
        """The array, mapped read-only (``mode`` "c": copy-on-write, writes stay private)."""
        return np.memmap(
            self.path,
            dtype=np.dtype(self.dtype),
            mode=mode,
            offset=self.offset,
            shape=self.shape,
            order="F" if self.fortran else "C",
        )


def portable(array):
    """A ``MappedFile`` for an array that is a whole memory map of a named file (an uncompressed
    NPZ member, a contiguous HDF5 dataset, or a plain view of one), so that pickling sends where
    the bytes are, not the bytes; anything else (in memory, a part of a map, a scratch array
    whose file has no name) as it is."""
    mapped = array
    while isinstance(mapped, np.ndarray) and not (
        isinstance(mapped, np.memmap) and isinstance(mapped.base, mmap.mmap)
    ):
        mapped = mapped.base
    if (
        not isinstance(mapped, np.memmap)
        or not isinstance(mapped.filename, (str, os.PathLike))
        or not os.path.isfile(mapped.filename)
        or array.shape != mapped.shape
        or array.dtype != mapped.dtype
        or array.ctypes.data != mapped.ctypes.data
        or array.strides != mapped.strides
    ):
        return array
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    return MappedFile(
        os.fspath(mapped.filename), int(mapped.offset), array.shape, array.dtype.str, fortran
    )


def unportable(value):
    """The array of ``portable``'s answer, mapped again (or as it came)."""
    return value.open() if isinstance(value, MappedFile) else value
