"""Read CXI 1.6 ptychography files (the Coherent X-ray Imaging Data Bank's HDF5 exchange format)
with h5py.

Datasets read (the first present path of each list):

- patterns, (M, N, N) photon counts, zero frequency at the centre (detector images):
  ``/entry_1/data_1/data``, ``/entry_1/instrument_1/detector_1/data``.
- positions, (M, 2 or 3) metres, columns (x, y[, z]), taken as probe positions on the sample as
  Ptychodus does: ``/entry_1/sample_1/geometry_1/translation``, ``/entry_1/data_1/translation``.
- probe guess, (N, N) or (K, N, N) complex: ``/entry_1/image_1/data``,
  ``/entry_1/instrument_1/source_1/illumination``, ``/entry_1/instrument_1/source_1/probe``.
- bad pixels: ``/entry_1/instrument_1/detector_1/mask`` (bit 0x1 = invalid pixel).
- object pixel size: ``/entry_1/ptychodus/probe_pixel_width_m`` (and height), else
  ``/entry_1/image_1/image_size`` (metres) divided by the probe's shape, else
  wavelength x distance / (N x detector pixel) from ``source_1/energy`` (joules),
  ``detector_1/distance`` and ``detector_1/x_pixel_size`` (and y).

Positions become object pixels ``x_px = x_m / pixel_width_m`` (likewise y); the frame's origin is
arbitrary (canvases are sized from the positions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychopinn.data.geometry import ScanGeometry
from ptychopinn.data.npz import check_units, to_counts
from ptychopinn.data.ptychodus_h5 import (
    _dataset,
    _open_h5,
    _read,
    far_field_pixel_size_m,
    read_patterns,
)
from ptychopinn.data.scan import ScanData, is_real_array
from ptychopinn.errors import DataError

SOURCE_FORMAT = "cxi"
DATA_PATHS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
TRANSLATION_PATHS = ("entry_1/sample_1/geometry_1/translation", "entry_1/data_1/translation")
PROBE_PATHS = (
    "entry_1/image_1/data",
    "entry_1/instrument_1/source_1/illumination",
    "entry_1/instrument_1/source_1/probe",
)
MASK_PATH = "entry_1/instrument_1/detector_1/mask"
PIXEL_INVALID = 0x1
#: joules per electronvolt
EV_J = 1.602176634e-19


def _first(fh, src: str, paths: tuple[str, ...], what: str):
    for p in paths:
        if p in fh:
            return p, _dataset(fh, src, p)
    raise DataError(
        src, "/" + paths[0], f"missing {what}; looked for {', '.join('/' + p for p in paths)}"
    )


def _number(fh, src: str, path: str) -> float | None:
    if path not in fh:
        return None
    value = np.asarray(_read(_dataset(fh, src, path), src, "/" + path), dtype=np.float64)
    if value.size != 1 or not np.isfinite(value).all() or float(value.reshape(())) <= 0:
        raise DataError(
            src, "/" + path, f"expected one finite number > 0, got {value.reshape(-1)[:4]}"
        )
    return float(value.reshape(()))


def _pixel_size(fh, src: str, probe_shape, n: int) -> tuple[float, float, str]:
    pw = _number(fh, src, "entry_1/ptychodus/probe_pixel_width_m")
    ph = _number(fh, src, "entry_1/ptychodus/probe_pixel_height_m")
    if pw is not None and ph is not None:
        return pw, ph, "/entry_1/ptychodus/probe_pixel_width_m"
    if "entry_1/image_1/image_size" in fh:
        size = np.asarray(
            _read(
                _dataset(fh, src, "entry_1/image_1/image_size"), src, "/entry_1/image_1/image_size"
            ),
            dtype=np.float64,
        ).reshape(-1)
        if size.size >= 2 and np.isfinite(size[:2]).all() and (size[:2] > 0).all():
            return (
                float(size[0]) / probe_shape[-1],
                float(size[1]) / probe_shape[-2],
                "/entry_1/image_1/image_size",
            )
    energy_j = _number(fh, src, "entry_1/instrument_1/source_1/energy")
    distance = _number(fh, src, "entry_1/instrument_1/detector_1/distance")
    dx = _number(fh, src, "entry_1/instrument_1/detector_1/x_pixel_size")
    dy = _number(fh, src, "entry_1/instrument_1/detector_1/y_pixel_size") or dx
    if energy_j is None or distance is None or dx is None:
        raise DataError(
            src,
            "/entry_1/instrument_1",
            "cannot work out the object pixel size: "
            "need source_1/energy, detector_1/distance and detector_1/x_pixel_size "
            "(or /entry_1/image_1/image_size)",
        )
    ev = energy_j / EV_J
    return (
        far_field_pixel_size_m(ev, distance, dx, n),
        far_field_pixel_size_m(ev, distance, dy, n),
        "energy, distance and detector pixel size",
    )


def read_cxi(path: str | Path, diffraction_units: str = "auto") -> ScanData:
    """Load a CXI 1.6 file into ScanData (module docstring for the paths and conventions)."""
    path = Path(path)
    src = str(path)
    check_units(src, diffraction_units)
    with _open_h5(path, src) as fh:
        if "entry_1" not in fh:
            raise DataError(
                src,
                "/entry_1",
                f"missing: not a CXI file (top-level groups "
                f"{sorted(fh.keys())}); a Ptychodus product + diffraction pair is "
                "given as --product/--diffraction",
            )
        data_path, ds = _first(fh, src, DATA_PATHS, "diffraction patterns")
        if ds.ndim != 3 or ds.shape[1] != ds.shape[2]:
            raise DataError(
                src, "/" + data_path, f"expected (M, N, N) patterns, got shape {ds.shape}"
            )
        m, n = ds.shape[0], ds.shape[1]
        pos_path, pds = _first(fh, src, TRANSLATION_PATHS, "positions")
        translation = np.asarray(_read(pds, src, "/" + pos_path))
        probe_path, prds = _first(fh, src, PROBE_PATHS, "probe guess")
        probe = np.asarray(_read(prds, src, "/" + probe_path))
        mask = None
        if MASK_PATH in fh:
            mask = np.asarray(_read(_dataset(fh, src, MASK_PATH), src, "/" + MASK_PATH))
        pw, ph, pixel_from = _pixel_size(fh, src, probe.shape, n)
        if ds.dtype.kind not in "iuf":
            raise DataError(src, "/" + data_path, f"expected real numbers, got dtype {ds.dtype}")
        data = read_patterns(ds, path, src, "/" + data_path)  # mapped or sliced when large
    if translation.ndim != 2 or translation.shape[0] != m or translation.shape[1] not in (2, 3):
        raise DataError(
            src,
            "/" + pos_path,
            f"expected ({m}, 3) or ({m}, 2) positions (x, y[, z]) "
            f"in metres for {m} patterns, got shape {translation.shape}",
        )
    if not is_real_array(translation):
        raise DataError(
            src, "/" + pos_path, f"expected real numbers, got dtype {translation.dtype}"
        )
    if not np.iscomplexobj(probe):
        raise DataError(src, "/" + probe_path, f"expected a complex probe, got dtype {probe.dtype}")
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (n, n):
        raise DataError(
            src, "/" + probe_path, f"expected (N, N) or (K, N, N) with N={n}, got {probe.shape}"
        )
    bad = None
    if mask is not None:
        if mask.shape != (n, n) or not np.issubdtype(mask.dtype, np.integer):
            raise DataError(
                src,
                "/" + MASK_PATH,
                f"expected an ({n}, {n}) integer mask, got {mask.shape} {mask.dtype}",
            )
        bad = (mask.astype(np.int64) & PIXEL_INVALID) != 0
        if not bad.any():
            bad = None
    counts, units = to_counts(data, diffraction_units, src, "/" + data_path)
    if bad is not None:
        counts[:, bad] = 0  # in place: the array is this read's own (or a copy-on-write map)
    t = translation.astype(np.float64)
    positions = np.stack([t[:, 0] / pw, t[:, 1] / ph], axis=1)
    metadata = {
        "source_format": SOURCE_FORMAT,
        "probe_known": False,
        "diffraction_units_read": units,
        "object_pixel_size_from": pixel_from,
    }
    return ScanData(
        diffraction=counts,
        positions_px=positions,
        probe=probe,
        bad_pixels=bad,
        metadata=metadata,
        source=src,
        geometry=ScanGeometry(pixel_size_m=(pw, ph)),
    )
