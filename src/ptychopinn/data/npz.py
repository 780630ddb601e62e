"""Read and write the PtychoPINN NPZ schema (INTEROP.md)."""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ptychopinn.data.limits import check_allocation, require_file
from ptychopinn.data.scan import ScanData, is_real_array
from ptychopinn.errors import DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.scratch import scratch_array
from ptychopinn.log import get_logger

log = get_logger("data")

UNITS = ("auto", "counts", "amplitude")


def detect_units(diffraction: np.ndarray) -> tuple[str, str]:
    """Guess counts vs amplitudes. Returns (units, reason).

    Counts are integer-valued; amplitudes (sqrt of counts, often normalised) are not.
    """
    sample = diffraction.reshape(-1)[:2_000_000].astype(np.float64)
    if np.issubdtype(diffraction.dtype, np.integer):
        return "counts", f"integer dtype {diffraction.dtype}"
    frac = np.abs(sample - np.round(sample))
    if np.all(frac < 1e-6) and sample.max() > 1:
        return "counts", f"values are integers (max {sample.max():g})"
    return "amplitude", f"values are not integer-valued (max {sample.max():g})"


def check_units(src: str, diffraction_units: str) -> None:
    """DataError unless ``diffraction_units`` is one of UNITS (every reader's one check)."""
    if diffraction_units not in UNITS:
        raise DataError(
            src,
            "diffraction_units",
            f"unknown value {diffraction_units!r}; expected one of {list(UNITS)}",
        )


#: Patterns per piece when converting counts (temporaries per piece, not per scan).
CONVERT_CHUNK = 4096


def to_counts(values: np.ndarray, units: str, src: str, key: str) -> tuple[np.ndarray, str]:
    """(float32 counts, units read) from a reader's (M, ...) pattern array: 'auto' detects
    counts vs amplitudes (and logs why), 'amplitude' refuses negative values and squares (in
    float64), 'counts' converts as is. float32 counts are returned as they are (a memory map
    stays one); a conversion goes piece by piece into a new array, a scratch file
    (``ptychopinn.io.spill.scratch_array``) when it reaches ``MMAP_BYTES``."""
    if units == "auto":
        units, why = detect_units(values)
        log.info(
            "%s: diffraction units detected as '%s' (%s); override with --diffraction-units",
            src,
            units,
            why,
        )
    if units != "amplitude" and values.dtype == np.float32:
        return values, units
    nbytes = math.prod(values.shape) * 4
    out = (
        np.empty(values.shape, np.float32)
        if nbytes < MMAP_BYTES
        else scratch_array(values.shape, np.float32)
    )
    for s in range(0, max(len(values), 1), CONVERT_CHUNK):
        piece = values[s : s + CONVERT_CHUNK]
        if units == "amplitude":
            if (piece < 0).any():
                raise DataError(
                    src,
                    key,
                    f"negative amplitudes (min {float(piece.min()):g}, "
                    f"pattern {s + int(np.argmin(piece.reshape(len(piece), -1).min(1)))})",
                )
            out[s : s + CONVERT_CHUNK] = np.square(piece.astype(np.float64))
        else:
            out[s : s + CONVERT_CHUNK] = piece
    return out, units


def _to_str(value) -> str:
    arr = np.asarray(value)
    return str(arr.item() if arr.shape == () else arr)


#: What a damaged archive can raise while being parsed (all caused by the file's bytes).
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    struct.error,
    UnicodeDecodeError,
    SyntaxError,
    NotImplementedError,
    OverflowError,
    TypeError,
)


#: Uncompressed NPZ members at least this large (bytes) are memory-mapped, not read.
MMAP_BYTES = 64 * 2**20


def _npy_header(fh) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream ``fh``, left at the data's start."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def _mapped_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A copy-on-write memory map of a stored (uncompressed) ``.npy`` member, or None when the
    member is compressed (then it must be read)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the local file header: name and extra-field lengths at 26 and 28
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(fh)
        offset = fh.tell()
    return np.memmap(
        path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def _streamed_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A compressed ``.npy`` member decompressed piece by piece into a scratch file
    (``ptychopinn.io.spill.scratch_array``): file-backed pages, no scan-sized allocation."""
    with zf.open(info) as fh:
        shape, fortran, dtype = _npy_header(fh)
        out = scratch_array(shape[::-1] if fortran else shape, dtype)
        raw = memoryview(out.reshape(-1).view(np.uint8))
        pos = 0
        while pos < len(raw):
            got = fh.readinto(raw[pos : pos + 2**24])
            if not got:
                raise EOFError(f"the member ends after {pos} of {len(raw)} bytes")
            pos += got
        del raw
    return out.T if fortran else out


def read_members(path: Path, src: str, mmap_bytes: float | None = None) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of the archive, never unpickling and never allocating more than a
    member's header can justify: a header that claims more bytes than the member holds (a
    truncated or corrupt file) or than this machine's memory is refused before reading.

    An uncompressed member (``np.savez``) of at least ``mmap_bytes`` (default ``MMAP_BYTES``) is
    memory-mapped copy-on-write instead of read: its pages are the file's (page cache), read
    when used; a compressed one that large is decompressed in pieces into a scratch file."""
    mmap_bytes = MMAP_BYTES if mmap_bytes is None else mmap_bytes
    arrays: dict[str, np.ndarray] = {}
    member = "file"
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as fh:
                magic = fh.read(6)
            what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
            raise DataError(src, "file", f"{what}; expected an NPZ archive of named arrays")
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                if not member.endswith(".npy"):
                    continue
                key = member[: -len(".npy")]
                with zf.open(info) as fh:
                    shape, _, dtype = _npy_header(fh)
                    if dtype.hasobject:
                        raise DataError(
                            src,
                            key,
                            "holds Python objects (pickled data); refused: "
                            "expected numeric or string arrays",
                        )
                    header = fh.tell()
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size - header:
                        raise DataError(
                            src,
                            key,
                            f"header claims shape {shape} ({nbytes} bytes) but "
                            f"the member holds {info.file_size - header} bytes "
                            "(truncated or corrupt file)",
                        )
                    if nbytes >= mmap_bytes:
                        mapped = _mapped_member(path, info)
                        if mapped is None:  # compressed: decompressed into a scratch file
                            mapped = _streamed_member(zf, info)
                        arrays[key] = mapped
                        continue
                    check_allocation(src, key, shape, dtype.itemsize)
                with zf.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
    except DataError:
        raise
    except _PARSE_ERRORS as exc:
        where = member.removesuffix(".npy")
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(
            src, where, f"not a readable NPZ archive ({type(exc).__name__}: {first})"
        ) from None
    if not arrays:
        raise DataError(src, "file", "an archive with no .npy arrays; expected an NPZ scan file")
    return arrays


def _real_vector(arrays: dict, src: str, key: str) -> np.ndarray:
    arr = np.asarray(arrays[key])
    if not is_real_array(arr):
        raise DataError(src, key, f"expected real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64).reshape(-1)


def read_npz(path: str | Path, diffraction_units: str = "auto") -> ScanData:
    """Load a PtychoPINN NPZ file into ScanData (counts).

    ``diffraction_units``: 'auto' honours a ``diffraction_units`` entry in the file, else detects
    (and logs the decision); 'counts' or 'amplitude' override both.
    """
    path = Path(path)
    src = str(path)
    check_units(src, diffraction_units)
    require_file(path, src, "an NPZ file")
    arrays = read_members(path, src)

    key = "diff3d" if "diff3d" in arrays else "diffraction" if "diffraction" in arrays else None
    if key is None:
        raise DataError(
            src,
            "diff3d",
            f"missing; expected 'diff3d' or 'diffraction' among keys {sorted(arrays)}",
        )
    for k in ("xcoords", "ycoords", "probeGuess"):
        if k not in arrays:
            raise DataError(src, k, f"missing required key; file has {sorted(arrays)}")
    diff = arrays[key]
    if diff.ndim != 3:
        raise DataError(src, key, f"expected a 3-D (M, N, N) array, got shape {diff.shape}")
    x = _real_vector(arrays, src, "xcoords")
    y = _real_vector(arrays, src, "ycoords")
    if x.shape != y.shape:
        raise DataError(src, "ycoords", f"{y.size} values but xcoords has {x.size}")
    m = x.size
    if diff.shape[0] != m and diff.shape[2] == m and diff.shape[0] == diff.shape[1]:
        log.warning(
            "%s: %s has legacy (N, N, M) layout %s; transposing to (M, N, N)", src, key, diff.shape
        )
        diff = np.moveaxis(diff, 2, 0)
    if diff.shape[0] != m:
        raise DataError(
            src, key, f"{diff.shape[0]} patterns but xcoords/ycoords have {m} positions"
        )
    if m == 0:
        raise DataError(src, key, "empty scan: 0 diffraction patterns")
    if diff.shape[1] != diff.shape[2]:
        raise DataError(
            src, key, f"patterns must be square (N, N), got {diff.shape[1]} x {diff.shape[2]}"
        )
    if not is_real_array(diff):
        raise DataError(src, key, f"expected real numbers, got dtype {diff.dtype}")
    if not np.isfinite(diff).all():
        raise DataError(src, key, f"{int((~np.isfinite(diff)).sum())} NaN/inf values")

    units = diffraction_units
    if units == "auto":
        if "diffraction_units" in arrays:
            units = _to_str(arrays["diffraction_units"]).lower()
            if units not in ("counts", "amplitude"):
                raise DataError(
                    src,
                    "diffraction_units",
                    f"unknown value {units!r}; expected 'counts' or 'amplitude'",
                )
            log.info("%s: diffraction units '%s' (recorded in the file)", src, units)
    counts, units = to_counts(diff, units, src, key)

    probe = arrays["probeGuess"]
    if not np.iscomplexobj(probe):
        raise DataError(src, "probeGuess", f"expected a complex array, got dtype {probe.dtype}")
    if probe.ndim not in (2, 3) or probe.shape[-2:] != counts.shape[1:]:
        raise DataError(
            src,
            "probeGuess",
            f"expected (N, N) or (K, N, N) with N={counts.shape[1]}, got {probe.shape}",
        )

    metadata = {}
    if "metadata" in arrays:
        try:
            metadata = json.loads(_to_str(arrays["metadata"]))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(src, "metadata", f"not valid JSON ({exc})") from None
        if not isinstance(metadata, dict):
            raise DataError(
                src,
                "metadata",
                f"expected a JSON object (a mapping of names to values), "
                f"got {type(metadata).__name__}",
            )
    metadata["diffraction_units_read"] = units
    obj = arrays.get("objectGuess")
    if obj is not None and obj.ndim != 2:
        raise DataError(src, "objectGuess", f"expected a 2-D (H, W) array, got shape {obj.shape}")
    bad = arrays.get("bad_pixels")
    scan_index = arrays.get("scan_index")
    try:
        return ScanData(
            diffraction=counts,
            positions_px=np.stack([x, y], axis=1),
            probe=probe,
            object_truth=obj,
            bad_pixels=bad,
            scan_index=scan_index,
            metadata=metadata,
            source=src,
        )
    except DataError as exc:  # name the key as it is spelled in the file
        file_key = {
            "diffraction": key,
            "positions": "xcoords/ycoords",
            "probe": "probeGuess",
            "object": "objectGuess",
        }.get(exc.key, exc.key)
        raise DataError(src, file_key, exc.problem) from None


def write_npz(scan: ScanData, path: str | Path, overwrite: bool = False) -> Path:
    """Write ScanData as a PtychoPINN NPZ holding counts, with units recorded explicitly."""
    path = Path(path)
    arrays = {
        "diff3d": scan.diffraction.astype(np.float32),
        "diffraction_units": np.array("counts"),
        "xcoords": scan.positions_px[:, 0],
        "ycoords": scan.positions_px[:, 1],
        "xcoords_start": scan.positions_px[:, 0],
        "ycoords_start": scan.positions_px[:, 1],
        "probeGuess": scan.probe[0] if scan.n_modes == 1 else scan.probe,
        "metadata": np.array(
            json.dumps({**scan.metadata, **scan.geometry.as_metadata()}, default=str)
        ),
    }
    if scan.object_truth is not None:
        arrays["objectGuess"] = scan.object_truth
    if scan.bad_pixels is not None:
        arrays["bad_pixels"] = scan.bad_pixels
    if scan.scan_index is not None:
        arrays["scan_index"] = scan.scan_index
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
