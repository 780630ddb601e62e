"""Single-file scan readers: one registry, detection by content.

``read_scan(path, format="auto")`` picks the reader by the file's bytes, never by its name alone:

- ``npz``: the PtychoPINN NPZ schema (``diff3d``/``diffraction``, ``xcoords``, ``ycoords``,
  ``probeGuess``; see :func:`ptychopinn.data.npz.read_npz`).
- ``tike``: the NPZ layout tike ships its measured test data in (``data``, ``scan``, ``probe``;
  optionally bzip2-compressed as ``.npz.bz2``); see :mod:`ptychopinn.data.tike`.
- ``cxi``: CXI 1.6 HDF5 files (``/entry_1``); see :mod:`ptychopinn.data.cxi`.

(Ptychodus scans are a pair of files, read by ``load_scan(product=..., diffraction=...)``.)

Readers register with :func:`register_reader`; a duplicate name is a bug and raises at import.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ptychopinn.data.limits import require_file
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.registry import Registry

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
BZIP2_MAGIC = b"BZh"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``read(path, diffraction_units) -> ScanData`` and ``claims(path,
    head) -> bool`` (whether a file with these first bytes is in its format)."""

    name: str
    read: Callable
    claims: Callable
    description: str


READERS = Registry("data format")


def register_reader(name: str, claims: Callable, description: str):
    """Decorator registering ``read(path, diffraction_units)`` under ``name``."""

    def wrap(read):
        READERS.add(name, Reader(name, read, claims, description))
        return read

    return wrap


def formats() -> tuple[str, ...]:
    """'auto' then every registered reader name (the ``--data-format`` choices)."""
    return ("auto", *READERS)


def _zip_members(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {n.removesuffix(".npy") for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError, ValueError):
        return set()


def _claims_npz(path: Path, head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) and not _claims_tike(path, head)


def _claims_tike(path: Path, head: bytes) -> bool:
    if head.startswith(BZIP2_MAGIC):
        return True  # tike ships its data as .npz.bz2; nothing else we read is bzip2
    return head.startswith(ZIP_MAGIC) and {"data", "scan", "probe"} <= _zip_members(path)


def _claims_cxi(path: Path, head: bytes) -> bool:
    return head.startswith(HDF5_MAGIC)


@register_reader("npz", _claims_npz, "PtychoPINN NPZ (diff3d, xcoords, ycoords, probeGuess)")
def _read_npz(path, diffraction_units):
    from ptychopinn.data.npz import read_npz

    return read_npz(path, diffraction_units=diffraction_units)


@register_reader("tike", _claims_tike, "tike NPZ (data, scan, probe), optionally .npz.bz2")
def _read_tike(path, diffraction_units):
    from ptychopinn.data.tike import read_tike

    return read_tike(path, diffraction_units=diffraction_units)


@register_reader("cxi", _claims_cxi, "CXI 1.6 HDF5 (/entry_1/...)")
def _read_cxi(path, diffraction_units):
    from ptychopinn.data.cxi import read_cxi  # h5py only when needed

    return read_cxi(path, diffraction_units=diffraction_units)


def detect_format(path: str | Path) -> str:
    """The registered format whose reader claims ``path`` (DataError when none does)."""
    path = Path(path)
    src = str(path)
    require_file(path, src, "a scan file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    for reader in READERS.values():
        if reader.claims(path, head):
            return reader.name
    if head.startswith(b"\x93NUMPY"):
        return "npz"  # the NPZ reader explains that a single .npy is not a scan file
    kinds = "; ".join(f"{r.name}: {r.description}" for r in READERS.values())
    raise DataError(
        src,
        "file",
        f"not a scan file this package reads (expected {kinds}; a "
        "Ptychodus product + diffraction pair is given as --product/--diffraction)",
    )


def read_scan(path: str | Path, diffraction_units: str = "auto", format: str = "auto"):
    """Read one scan file with the reader ``format`` ('auto' = :func:`detect_format`)."""
    if format != "auto" and format not in READERS:
        raise ConfigError(
            f"data format: unknown value {format!r}; expected one of {list(formats())}"
        )
    name = detect_format(path) if format == "auto" else format
    return READERS[name].read(path, diffraction_units)
