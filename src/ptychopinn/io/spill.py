"""Per-pattern arrays that go to a temporary file when they would not fit a memory budget.

Network patches of a 1e5-pattern scan at N = 64 are 3.3 GB, the physics estimates of its training
groups (gridsize 2) 13 GB: ``SpillArray`` holds them in memory when they are small and in a
temporary file otherwise, mapped only for each read or write (so neither the data nor its pages
stay in the process's resident memory between accesses).
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref

import numpy as np
import torch

#: Arrays larger than this (bytes) are kept in a temporary file by default.
SPILL_BYTES = 512 * 2**20


class SpillArray:
    """An array of ``shape`` (rows first) and numpy ``dtype``, rows written and read by index.

    In memory (a torch tensor) when it takes at most ``memory_bytes``, else in a temporary file
    in ``directory`` (default the system's temporary directory), removed when this object is
    closed or collected. It pickles by reference when file-backed (a spawned data-loader or DDP
    worker maps the same file instead of receiving a copy); only the creating object removes it.
    """

    def __init__(
        self, shape, dtype=np.complex64, memory_bytes: float = SPILL_BYTES, directory=None
    ):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.path = None
        self._ram = None
        self._finalizer = None
        nbytes = math.prod(self.shape) * self.dtype.itemsize
        if nbytes <= memory_bytes:
            self._ram = torch.zeros(self.shape, dtype=_torch_dtype(self.dtype))
            return
        fd, path = tempfile.mkstemp(prefix="ptychopinn-spill-", suffix=".bin", dir=directory)
        try:
            os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, path)

    @classmethod
    def of(cls, values) -> "SpillArray":
        """An in-memory SpillArray holding ``values`` (no copy of a tensor); a SpillArray as is."""
        if isinstance(values, SpillArray):
            return values
        t = torch.as_tensor(values)
        out = cls((0,), np.dtype(str(t.dtype).removeprefix("torch.")))
        out.shape, out._ram = tuple(t.shape), t
        return out

    @classmethod
    def attach(cls, path: str, shape, dtype=np.complex64) -> "SpillArray":
        """The file-backed SpillArray another process created at ``path`` (its rows shared with
        it); this object never removes the file."""
        out = cls.__new__(cls)
        out.shape, out.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        out.path, out._ram, out._finalizer = str(path), None, None
        return out

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def in_memory(self) -> bool:
        return self._ram is not None

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode=mode, shape=self.shape)

    def write(self, indices, values: torch.Tensor) -> None:
        """Set the rows ``indices`` (an index array or a slice) to ``values``."""
        if self._ram is not None:
            key = indices if isinstance(indices, slice) else torch.as_tensor(np.asarray(indices))
            self._ram[key] = values.to(self._ram.dtype)
            return
        mapped = self._map("r+")
        mapped[indices if isinstance(indices, slice) else np.asarray(indices)] = (
            values.detach().cpu().numpy().astype(self.dtype, copy=False)
        )
        mapped.flush()
        del mapped

    def read(self, indices) -> torch.Tensor:
        """The rows ``indices`` (an int, an index array or a slice) as a tensor (a copy for a
        file-backed array)."""
        if self._ram is not None:
            if isinstance(indices, (slice, int, np.integer)):
                return self._ram[indices]
            return self._ram[torch.as_tensor(np.asarray(indices))]
        mapped = self._map("r")
        out = torch.from_numpy(np.array(mapped[indices]))
        del mapped
        return out

    __getitem__ = read

    def tensor(self) -> torch.Tensor:
        """All rows in memory."""
        return self._ram if self._ram is not None else self.read(slice(None))

    def close(self) -> None:
        """Remove the file now (a file-backed array); an in-memory one is left as is."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_finalizer"] = None  # a copy never removes the creator's file
        return state


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
