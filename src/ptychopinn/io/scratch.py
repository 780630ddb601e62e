"""Scan-sized numpy arrays in file-backed memory (numpy only: readers import this without torch)."""

from __future__ import annotations

import math
import os
import tempfile

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
