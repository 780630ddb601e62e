"""Read scans in the NPZ layout tike ships its measured data in (e.g. ``siemens-star-small.npz.bz2``
in the tike 0.26.0 source distribution).

The layout and its conventions (what :func:`read_tike` converts):

- ``data``: (1, M, N, N) or (M, N, N) photon counts with the zero frequency at the array
  *corner* (numpy FFT order). ScanData wants it at the centre: ``fftshift`` over the last two axes.
- ``scan``: (1, M, 2) or (M, 2) probe positions in object pixels, the *minimum corner* of each
  probe window, the *vertical* coordinate first: ``(row, col)``. ScanData wants probe centres as
  ``(x, y)``: ``x = col + N // 2``, ``y = row + N // 2`` (window pixel ``j`` of a probe centred at
  ``c`` is object pixel ``c - N // 2 + j`` here, ``corner + j`` in tike).
- ``probe``: (..., K, N, N) complex probe in the sample plane, K incoherent modes on the
  third-last axis; every other leading axis must have length 1.

Nothing is unpickled (``allow_pickle=False``, headers checked before reading, see
:func:`ptychopinn.data.npz.read_members`). A ``.npz.bz2`` file is decompressed to a temporary
file first, refusing more bytes than this machine's memory.
"""

from __future__ import annotations

import bz2
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ptychopinn.data.limits import memory_bytes, require_file
from ptychopinn.data.npz import check_units, read_members, to_counts
from ptychopinn.data.readers import BZIP2_MAGIC
from ptychopinn.data.scan import ScanData, is_real_array
from ptychopinn.errors import DataError

SOURCE_FORMAT = "tike"
_CHUNK = 1 << 22


def _decompressed_members(path: Path, src: str) -> dict[str, np.ndarray]:
    limit = memory_bytes()
    fd, tmp_name = tempfile.mkstemp(suffix=".npz", prefix="ptychopinn-tike-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with bz2.open(path, "rb") as fh:
                    total = 0
                    while chunk := fh.read(_CHUNK):
                        total += len(chunk)
                        if total > limit:
                            raise DataError(
                                src,
                                "file",
                                "decompresses to more bytes than this machine's memory; refused",
                            )
                        out.write(chunk)
            except (OSError, EOFError, ValueError) as exc:
                raise DataError(src, "file", f"not a readable bzip2 file ({exc})") from None
        return read_members(tmp, src, mmap_bytes=float("inf"))  # the file is removed next
    finally:
        tmp.unlink(missing_ok=True)


def _single_leading(arr: np.ndarray, src: str, key: str, tail: int, what: str) -> np.ndarray:
    """Drop leading axes of length 1 down to ``tail`` trailing axes."""
    lead = arr.shape[: arr.ndim - tail]
    if arr.ndim < tail or math.prod(lead) != 1:
        raise DataError(src, key, f"expected {what}, got shape {arr.shape}")
    return arr.reshape(arr.shape[arr.ndim - tail :])


def read_tike(path: str | Path, diffraction_units: str = "auto") -> ScanData:
    """Load a tike-layout NPZ (or ``.npz.bz2``) scan into ScanData (module docstring).

    Metadata records ``source_format`` 'tike', ``probe_known`` False (a tike probe is a guess),
    ``diffraction_units_read`` and the conventions applied.
    """
    path = Path(path)
    src = str(path)
    check_units(src, diffraction_units)
    require_file(path, src, "a tike NPZ file")
    with open(path, "rb") as fh:
        compressed = fh.read(len(BZIP2_MAGIC)) == BZIP2_MAGIC
    arrays = _decompressed_members(path, src) if compressed else read_members(path, src)
    for key in ("data", "scan", "probe"):
        if key not in arrays:
            raise DataError(
                src,
                key,
                f"missing; a tike scan holds 'data', 'scan' and 'probe', "
                f"the file has {sorted(arrays)}",
            )
    data = _single_leading(
        np.asarray(arrays["data"]), src, "data", 3, "(1, M, N, N) or (M, N, N) patterns"
    )
    m, h, w = data.shape
    if h != w:
        raise DataError(src, "data", f"patterns must be square (N, N), got {h} x {w}")
    if not is_real_array(data):
        raise DataError(src, "data", f"expected real numbers, got dtype {data.dtype}")
    if not np.isfinite(data).all():
        raise DataError(src, "data", f"{int((~np.isfinite(data)).sum())} NaN/inf values")
    scan = _single_leading(
        np.asarray(arrays["scan"]), src, "scan", 2, "(1, M, 2) or (M, 2) positions (row, col)"
    )
    if scan.shape != (m, 2):
        raise DataError(
            src,
            "scan",
            f"expected {m} positions of 2 coordinates (row, col), got shape {scan.shape}",
        )
    if not is_real_array(scan):
        raise DataError(src, "scan", f"expected real numbers, got dtype {scan.dtype}")
    probe = np.asarray(arrays["probe"])
    if not np.iscomplexobj(probe):
        raise DataError(src, "probe", f"expected a complex array, got dtype {probe.dtype}")
    if probe.ndim < 2 or probe.shape[-2:] != (h, w):
        raise DataError(
            src, "probe", f"expected (..., K, {h}, {w}) to match the patterns, got {probe.shape}"
        )
    if probe.ndim > 3 and math.prod(probe.shape[:-3]) != 1:
        raise DataError(
            src,
            "probe",
            f"expected every axis before (K, N, N) to have length 1 "
            f"(no eigen-probes or per-position probes), got {probe.shape}",
        )
    probe = probe.reshape(-1, h, w)

    counts, units = to_counts(data, diffraction_units, src, "data")
    counts = np.fft.fftshift(counts, axes=(-2, -1))
    scan = scan.astype(np.float64)
    positions = np.stack([scan[:, 1] + h // 2, scan[:, 0] + h // 2], axis=1)
    metadata = {
        "source_format": SOURCE_FORMAT,
        "probe_known": False,
        "diffraction_units_read": units,
        "conventions": "tike: data fftshifted (zero frequency corner -> centre); scan "
        "(row, col) window corner -> probe centre (x, y) = (col, row) + N//2",
    }
    return ScanData(
        diffraction=counts, positions_px=positions, probe=probe, metadata=metadata, source=src
    )
