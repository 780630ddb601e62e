"""Ptychodus ``product.h5`` + ``diffraction.h5`` files, read and written with plain h5py.

The layout is described in INTEROP.md; this module never imports ptychodus (the contract tests
check it against the real package).

Frames and units:

- Ptychodus positions are probe centres in metres (world frame). Our positions are object
  pixels of the product's object array: ``x_px = (x_m - center_x_m) / pixel_width_m +
  (width_px - 1) / 2`` (same for y), the centred-pixel convention Ptychodus uses. The grid
  (shape, pixel size, centre) is an :class:`ObjectGrid`.
- Patterns are photon counts with zero frequency at the array centre, as ScanData wants.
- Patterns are paired with positions by scan-index *value*, never by row.

Public API: :class:`ObjectGrid`, :func:`read_ptychodus`, :func:`write_product`,
:func:`write_diffraction`, and for ScanData: :func:`scan_object_grid`,
:func:`scan_product_attrs`, :func:`write_product_for_scan`, :func:`write_diffraction_for_scan`,
:func:`export_scan`, :func:`canvas_to_grid`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from ptychopinn.data.geometry import ObjectGrid, ScanGeometry
from ptychopinn.data.limits import check_allocation, require_file
from ptychopinn.data.npz import check_units, to_counts
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError, PtychoPINNError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.scratch import scratch_array
from ptychopinn.log import get_logger

log = get_logger("data.ptychodus")

#: Planck constant times the speed of light, eV * m (wavelength_m = HC_EV_M / energy_eV)
HC_EV_M = 1.239841984e-6

#: metadata keys written by :func:`read_ptychodus`
ATTRS_KEY = "ptychodus_product_attrs"
SOURCE_FORMAT = "ptychodus"

#: root attributes of product.h5 (canonical spelling) and the default used when one is absent;
#: ``None`` marks the two that Ptychodus itself requires.
PRODUCT_ATTRS: dict[str, object] = {
    "name": "Unnamed",
    "comments": "",
    "detector_object_distance_m": None,
    "photon_energy_eV": None,
    "probe_photon_count": 0.0,
    "exposure_time_s": 0.0,
    "mass_attenuation_m2_per_kg": 0.0,
    "tomography_angle_deg": 0.0,
    "tilt_angle_deg": 0.0,
    "focus_object_distance_m": 0.0,
    "far_field": True,
}
#: canonical name -> older spelling still found in files (read both, write both)
LEGACY_ATTRS = {
    "photon_energy_eV": "probe_energy_eV",
    "mass_attenuation_m2_per_kg": "mass_attenuation_m2_kg",
}
_POSITIVE_ATTRS = ("detector_object_distance_m", "photon_energy_eV")
#: placeholders written for a scan that carries no experiment geometry (with a warning)
PLACEHOLDER_ATTRS = {"detector_object_distance_m": 1.0, "photon_energy_eV": 10_000.0}


# --------------------------------------------------------------------------------------------
# geometry


def wavelength_m(photon_energy_eV: float) -> float:  # noqa: N803
    return HC_EV_M / photon_energy_eV


def far_field_pixel_size_m(
    photon_energy_eV: float,
    detector_object_distance_m: float,  # noqa: N803
    detector_pixel_size_m: float,
    n: int,
) -> float:
    """Object-plane pixel size of far-field data: wavelength * distance / (N * detector pixel)."""
    return wavelength_m(photon_energy_eV) * detector_object_distance_m / (n * detector_pixel_size_m)


# --------------------------------------------------------------------------------------------
# reading helpers


@contextlib.contextmanager
def _open_h5(path: Path, src: str):
    require_file(path, src, "an HDF5 file")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(src, "file", f"not a readable HDF5 file ({exc})") from None
    try:
        with fh:
            yield fh
    except Exception as exc:
        if isinstance(exc, PtychoPINNError) or not _raised_by_h5py(exc):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(src, "file", f"damaged HDF5 file ({type(exc).__name__}: {first})") from None


def _raised_by_h5py(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is h5py's: the file's bytes, not our code."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and "h5py" in Path(last.tb_frame.f_code.co_filename).parts


def _dataset(fh: h5py.File, src: str, key: str, required: bool = True):
    if key not in fh:
        if not required:
            return None
        raise DataError(src, key, f"missing dataset; the file has {sorted(fh.keys())}")
    obj = fh[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(src, key, f"is a {type(obj).__name__}, expected a dataset")
    return obj


def _read(ds, src: str, key: str, dtype=None) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize if dtype is not None else ds.dtype.itemsize
    check_allocation(src, key, ds.shape, itemsize, what="dataset")
    try:
        return ds.astype(dtype)[()] if dtype is not None else ds[()]
    except (OSError, ValueError, TypeError) as exc:  # truncated/corrupt chunks, unconvertible types
        raise DataError(src, key, f"unreadable ({type(exc).__name__}: {exc})") from None


#: Pattern datasets at least this large (bytes, as float32) are not read into memory: a
#: contiguous float32 dataset is memory-mapped where it lies in the file, any other is converted
#: to float32 in slices into a scratch file (``ptychopinn.io.spill.scratch_array``).
MAP_BYTES = 64 * 2**20
#: Patterns per slice read (bounded by bytes too: about 64 MiB of float32 per slice).
SLICE_BYTES = 64 * 2**20


def _contiguous_offset(ds) -> int | None:
    """Byte offset of a contiguous, unfiltered, little-endian float32 dataset in its file (the
    layout ``np.memmap`` can map as is), else None."""
    if ds.chunks is not None or ds.dtype != np.dtype("<f4") or ds.external:
        return None
    try:
        return ds.id.get_offset()
    except (OSError, ValueError, TypeError):
        return None


def read_patterns(
    ds,
    path: Path,
    src: str,
    key: str,
    rows: np.ndarray | None = None,
    map_bytes: float | None = None,
) -> np.ndarray:
    """(len(rows), H, W) float32 patterns of the 3-D dataset ``ds`` (all rows when ``rows`` is
    None; ``rows`` increasing). Below ``map_bytes`` (default ``MAP_BYTES``) a plain read; above
    it no scan-sized allocation: a contiguous float32 dataset (all rows) is memory-mapped
    copy-on-write, anything else (chunked, compressed, integer, a subset of rows) is read in
    slices of about ``SLICE_BYTES`` and converted into a scratch file."""
    map_bytes = MAP_BYTES if map_bytes is None else map_bytes
    n, h, w = ds.shape
    m = n if rows is None else len(rows)
    if m * h * w * 4 < map_bytes:
        out = _read(ds, src, key, np.float32)
        return out if rows is None else out[rows]
    offset = _contiguous_offset(ds) if rows is None else None
    if offset is not None:
        return np.memmap(path, dtype=np.float32, mode="c", offset=offset, shape=(n, h, w))
    out = scratch_array((m, h, w), np.float32)
    step = max(1, int(SLICE_BYTES // (h * w * 4)))
    try:
        for s in range(0, m, step):
            if rows is None:
                out[s : s + step] = ds[s : s + step]
                continue
            want = rows[s : s + step]
            lo, hi = int(want[0]), int(want[-1]) + 1
            # a span at most 4x the wanted rows is read whole, a sparser one row by row
            out[s : s + len(want)] = ds[lo:hi][want - lo] if hi - lo <= 4 * len(want) else ds[want]
    except (OSError, ValueError, TypeError) as exc:  # truncated/corrupt chunks
        raise DataError(src, key, f"unreadable ({type(exc).__name__}: {exc})") from None
    return out


def _scalar(value):
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"expected a scalar, got shape {arr.shape}")
    value = arr.reshape(()).item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _float_attr(attrs, src: str, where: str, names: Sequence[str], default=None, positive=False):
    """First present attribute among ``names`` as float; ``default`` when none (None = required)."""
    for name in names:
        if name in attrs:
            try:
                value = float(_scalar(attrs[name]))
            except (TypeError, ValueError) as exc:
                raise DataError(src, f"{where}{name}", f"expected a number ({exc})") from None
            if not math.isfinite(value):
                raise DataError(src, f"{where}{name}", f"expected a finite number, got {value}")
            if positive and value <= 0:
                raise DataError(src, f"{where}{name}", f"expected a number > 0, got {value:g}")
            return value
    if default is None:
        also = f" (or the older '{names[1]}')" if len(names) > 1 else ""
        raise DataError(src, f"{where}{names[0]}", f"missing required attribute{also}")
    return default


def _read_product_attrs(fh: h5py.File, src: str) -> dict:
    attrs = fh.attrs
    out: dict[str, object] = {}
    for key, default in PRODUCT_ATTRS.items():
        names = (key, LEGACY_ATTRS[key]) if key in LEGACY_ATTRS else (key,)
        if key in ("name", "comments"):
            out[key] = str(_scalar(attrs[key])) if key in attrs else default
        elif key == "far_field":
            out[key] = bool(_scalar(attrs[key])) if key in attrs else default
        else:
            out[key] = _float_attr(attrs, src, "", names, default, positive=key in _POSITIVE_ATTRS)
    if "polarization" in attrs:
        out["polarization"] = str(_scalar(attrs["polarization"]))
    return out


def _read_object(fh: h5py.File, src: str):
    ds = _dataset(fh, src, "object")
    if ds.ndim not in (2, 3):
        raise DataError(
            src,
            "object",
            f"expected a 2-D (H, W) or 3-D (layers, H, W) array, got shape {ds.shape}",
        )
    if ds.dtype.kind != "c":
        raise DataError(src, "object", f"expected a complex array, got dtype {ds.dtype}")
    shape = ds.shape if ds.ndim == 3 else (1, *ds.shape)
    if min(shape) < 1:
        raise DataError(
            src,
            "object",
            f"empty object array {ds.shape}; the product has no object "
            "geometry to place positions on",
        )
    pw = _float_attr(ds.attrs, src, "object.", ("pixel_width_m",), positive=True)
    ph = _float_attr(ds.attrs, src, "object.", ("pixel_height_m",), positive=True)
    cx = _float_attr(ds.attrs, src, "object.", ("center_x_m",))
    cy = _float_attr(ds.attrs, src, "object.", ("center_y_m",))
    arr = _read(ds, src, "object").reshape(shape)
    if not np.isfinite(arr).all():
        raise DataError(src, "object", f"{int((~np.isfinite(arr)).sum())} NaN/inf values")
    layers = shape[0]
    if layers > 1:
        log.warning(
            "%s: object has %d layers; using their product (projected transmission) "
            "as the single-slice object",
            src,
            layers,
        )
    obj = np.prod(arr, axis=0) if layers > 1 else arr[0]
    spacing = []
    sds = _dataset(fh, src, "object_layer_spacing_m", required=False)
    if sds is not None:
        spacing = [
            float(v) for v in np.asarray(_read(sds, src, "object_layer_spacing_m")).reshape(-1)
        ]
    grid = ObjectGrid(shape[1:], pw, ph, cx, cy)
    return obj, grid, layers, spacing


def _read_probe(fh: h5py.File, src: str, grid: ObjectGrid):
    ds = _dataset(fh, src, "probe")
    if ds.ndim not in (2, 3, 4):
        raise DataError(
            src,
            "probe",
            f"expected a 2-D to 4-D array (coherent, incoherent, H, W), got shape {ds.shape}",
        )
    if ds.dtype.kind != "c":
        raise DataError(src, "probe", f"expected a complex array, got dtype {ds.dtype}")
    if min(ds.shape) < 1:
        raise DataError(src, "probe", f"empty probe array {ds.shape}")
    pw = _float_attr(ds.attrs, src, "probe.", ("pixel_width_m",), grid.pixel_width_m, positive=True)
    ph = _float_attr(
        ds.attrs, src, "probe.", ("pixel_height_m",), grid.pixel_height_m, positive=True
    )
    if ds.ndim == 4:
        if ds.shape[0] > 1:
            log.info("%s: probe has %d coherent (OPR) modes; using the first", src, ds.shape[0])
        probe = _read(ds, src, "probe")[0]
    else:
        probe = _read(ds, src, "probe")
    probe = probe if probe.ndim == 3 else probe[None]
    if not (
        math.isclose(pw, grid.pixel_width_m, rel_tol=1e-6)
        and math.isclose(ph, grid.pixel_height_m, rel_tol=1e-6)
    ):
        # the forward model samples probe and object on the same pixels
        log.warning(
            "%s: probe pixels (%.6g x %.6g m) differ from object pixels (%.6g x %.6g m); "
            "the probe is used as if sampled on the object grid",
            src,
            pw,
            ph,
            grid.pixel_width_m,
            grid.pixel_height_m,
        )
    if not np.isfinite(probe).all():
        raise DataError(src, "probe", f"{int((~np.isfinite(probe)).sum())} NaN/inf values")
    return probe, pw, ph


def _read_positions(fh: h5py.File, src: str):
    ids = _dataset(fh, src, "probe_position_indexes")
    xs = _dataset(fh, src, "probe_position_x_m")
    ys = _dataset(fh, src, "probe_position_y_m")
    for key, ds in (
        ("probe_position_indexes", ids),
        ("probe_position_x_m", xs),
        ("probe_position_y_m", ys),
    ):
        if ds.ndim != 1:
            raise DataError(src, key, f"expected a 1-D array, got shape {ds.shape}")
    if ids.dtype.kind not in "iu":
        raise DataError(src, "probe_position_indexes", f"expected integers, got dtype {ids.dtype}")
    for key, ds in (("probe_position_x_m", xs), ("probe_position_y_m", ys)):
        if ds.dtype.kind not in "iuf":
            raise DataError(src, key, f"expected real numbers, got dtype {ds.dtype}")
        if ds.shape != ids.shape:
            raise DataError(
                src, key, f"{ds.shape[0]} values but probe_position_indexes has {ids.shape[0]}"
            )
    index = _read(ids, src, "probe_position_indexes").astype(np.int64)
    x_m = _read(xs, src, "probe_position_x_m", np.float64)
    y_m = _read(ys, src, "probe_position_y_m", np.float64)
    for key, v in (("probe_position_x_m", x_m), ("probe_position_y_m", y_m)):
        if not np.isfinite(v).all():
            raise DataError(src, key, f"{int((~np.isfinite(v)).sum())} NaN/inf values")
    if index.size == 0:
        raise DataError(src, "probe_position_indexes", "no probe positions")
    return index, x_m, y_m


def _examples(values: np.ndarray, k: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:k])
    return shown + (", ..." if values.size > k else "")


def pair_by_index(
    pattern_index: np.ndarray,
    position_index: np.ndarray,
    x_m: np.ndarray,
    y_m: np.ndarray,
    *,
    source: str = "<memory>",
):
    """Pair patterns with positions by scan-index value.

    Args:
        pattern_index: (P,) scan index of each pattern, in file order.
        position_index, x_m, y_m: (Q,) scan index and world position of each probe position.
    Returns:
        ``(rows, x_m, y_m)``: the pattern rows kept (ascending, file order) and the (len(rows),)
        paired positions. Patterns without a position and positions without a pattern are
        dropped with a warning; duplicated position indexes are averaged (as Ptychodus does).
    Raises:
        DataError: when no pattern pairs with any position.
    """
    pattern_index = np.asarray(pattern_index, np.int64)
    uniq, inverse, counts = np.unique(
        np.asarray(position_index, np.int64), return_inverse=True, return_counts=True
    )
    mean_x = np.bincount(inverse, weights=x_m) / counts
    mean_y = np.bincount(inverse, weights=y_m) / counts
    if (counts > 1).any():
        log.warning(
            "%s: %d probe_position_indexes values occur more than once (e.g. %s); "
            "averaging their positions",
            source,
            int((counts > 1).sum()),
            _examples(uniq[counts > 1]),
        )
    slot = np.searchsorted(uniq, pattern_index).clip(0, max(uniq.size - 1, 0))
    matched = uniq[slot] == pattern_index
    if not matched.any():
        raise DataError(
            source,
            "indexes",
            f"no pattern index matches a probe_position_indexes value (pattern indexes "
            f"span [{pattern_index.min()}, {pattern_index.max()}], position indexes span "
            f"[{uniq.min()}, {uniq.max()}])",
        )
    if not matched.all():
        lost = pattern_index[~matched]
        log.warning(
            "%s: dropping %d of %d patterns whose index has no probe position (e.g. %s)",
            source,
            lost.size,
            pattern_index.size,
            _examples(lost),
        )
    unused = ~np.isin(uniq, pattern_index)
    if unused.any():
        log.warning(
            "%s: dropping %d probe positions with no diffraction pattern (e.g. index %s)",
            source,
            int(unused.sum()),
            _examples(uniq[unused]),
        )
    rows = np.flatnonzero(matched)
    return rows, mean_x[slot[rows]], mean_y[slot[rows]]


def _read_diffraction(fh: h5py.File, src: str):
    pds = _dataset(fh, src, "patterns")
    if pds.ndim != 3:
        raise DataError(src, "patterns", f"expected a 3-D (n, H, W) array, got shape {pds.shape}")
    if pds.dtype.kind not in "iuf":
        raise DataError(src, "patterns", f"expected real counts, got dtype {pds.dtype}")
    n, h, w = pds.shape
    if n == 0:
        raise DataError(src, "patterns", "no diffraction patterns")
    dw = _float_attr(pds.attrs, src, "patterns.", ("detector_pixel_width_m",), positive=True)
    dh = _float_attr(pds.attrs, src, "patterns.", ("detector_pixel_height_m",), positive=True)
    ids = _dataset(fh, src, "indexes")
    if ids.ndim != 1 or ids.shape[0] != n:
        raise DataError(src, "indexes", f"expected shape ({n},) to match patterns, got {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise DataError(src, "indexes", f"expected integers, got dtype {ids.dtype}")
    index = _read(ids, src, "indexes").astype(np.int64)
    bad = None
    bds = _dataset(fh, src, "bad_pixels", required=False)
    if bds is not None:
        if bds.shape != (h, w):
            raise DataError(
                src, "bad_pixels", f"expected shape ({h}, {w}) to match patterns, got {bds.shape}"
            )
        if bds.dtype.kind not in "biu":
            raise DataError(src, "bad_pixels", f"expected a boolean mask, got dtype {bds.dtype}")
        bad = _read(bds, src, "bad_pixels").astype(bool)
    return pds, index, bad, (dw, dh)


# --------------------------------------------------------------------------------------------
# reader


def read_ptychodus(
    product_path: str | Path,
    diffraction_path: str | Path,
    *,
    diffraction_units: str = "auto",
    source: str | None = None,
) -> ScanData:
    """Load a Ptychodus ``product.h5`` + ``diffraction.h5`` pair into ScanData.

    - Patterns pair with positions by scan-index value (``/indexes`` in the diffraction file,
      ``probe_position_indexes`` in the product); unmatched ones are dropped with a warning,
      negative indexes (unfilled slots of an assembly buffer) silently. The pattern file order
      is kept.
    - Positions (metres) become object pixels of the product's object grid (module docstring).
    - ``diffraction``: (M, N, N) float32 counts; pixels flagged in ``/bad_pixels`` are set to 0
      and the mask is ``ScanData.bad_pixels``. ``diffraction_units``: Ptychodus files hold counts,
      so 'auto' and 'counts' read them as they are; 'amplitude' squares them.
    - ``probe``: the incoherent modes of the first coherent mode, (K, N, N); must be N x N.
    - ``object_truth``: the product's object (the initial guess in Ptychodus files); the product
      of the layers when there are several.
    - ``scan_index``: the paired ``probe_position_indexes`` values.
    - ``geometry``: the product's object grid (its pixel size) and ``scan_index`` =
      ``"position_index"`` (``data.geometry.ScanGeometry``).
    - ``metadata``: ``ptychodus_product_attrs`` (root attributes, canonical spellings),
      ``object_layers``, ``object_layer_spacing_m``, probe and detector pixel sizes,
      ``photon_energy_eV``, ``detector_object_distance_m``, and file names.

    Raises:
        DataError: naming the file and the dataset/attribute, for missing, corrupt, mismatched
            or non-finite data, or when no pattern pairs with a position.
    """
    product_path, diffraction_path = Path(product_path), Path(diffraction_path)
    psrc, dsrc = str(product_path), str(diffraction_path)
    check_units(dsrc, diffraction_units)

    with _open_h5(product_path, psrc) as fh:
        attrs = _read_product_attrs(fh, psrc)
        obj, grid, layers, spacing = _read_object(fh, psrc)
        probe, probe_pw, probe_ph = _read_probe(fh, psrc, grid)
        pos_index, x_m, y_m = _read_positions(fh, psrc)

    with _open_h5(diffraction_path, dsrc) as fh:
        pds, pat_index, bad, (det_w, det_h) = _read_diffraction(fh, dsrc)
        n, h, w = pds.shape
        if probe.shape[-2:] != (h, w):
            raise DataError(
                psrc,
                "probe",
                f"probe is {probe.shape[-2]} x {probe.shape[-1]} but the patterns in "
                f"{dsrc} are {h} x {w}; they must match",
            )
        filled = pat_index >= 0
        if not filled.any():
            raise DataError(dsrc, "indexes", "every index is negative (no assembled patterns)")
        rows, x_m, y_m = pair_by_index(
            pat_index[filled], pos_index, x_m, y_m, source=f"{psrc} + {dsrc}"
        )
        rows = np.flatnonzero(filled)[rows]
        assert not np.any(np.diff(rows) < 0), "pair_by_index keeps the file's (increasing) order"
        patterns = read_patterns(
            pds, diffraction_path, dsrc, "patterns", None if rows.size == n else rows
        )
    # Ptychodus files hold counts: 'auto' reads them as counts, 'amplitude' squares them
    patterns, _ = to_counts(
        patterns, "amplitude" if diffraction_units == "amplitude" else "counts", dsrc, "patterns"
    )
    try:
        scan = assemble_scan(
            patterns=patterns,
            bad_pixels=bad,
            probe=probe,
            object_=obj,
            grid=grid,
            attrs=attrs,
            x_m=x_m,
            y_m=y_m,
            scan_index=pat_index[rows],
            object_layers=layers,
            layer_spacing_m=spacing,
            probe_pixels_m=(probe_pw, probe_ph),
            units_read="amplitude" if diffraction_units == "amplitude" else "counts",
            source=source or f"{psrc} + {dsrc}",
            extra_metadata={
                "product_file": psrc,
                "diffraction_file": dsrc,
                "detector_pixel_width_m": det_w,
                "detector_pixel_height_m": det_h,
            },
        )
    except DataError as exc:  # name the file and the key as spelled there
        where = {
            "diffraction": (dsrc, "patterns"),
            "bad_pixels": (dsrc, "bad_pixels"),
            "probe": (psrc, "probe"),
            "object": (psrc, "object"),
            "positions": (psrc, "probe_position_x_m/probe_position_y_m"),
            "scan_index": (dsrc, "indexes"),
        }.get(exc.key, (exc.source, exc.key))
        raise DataError(*where, exc.problem) from None
    log.info(
        "%s + %s: %d patterns of %d x %d paired with positions; object %d x %d at %.4g m/px",
        psrc,
        dsrc,
        rows.size,
        h,
        w,
        grid.height_px,
        grid.width_px,
        grid.pixel_width_m,
    )
    return scan


def assemble_scan(
    *,
    patterns: np.ndarray,
    bad_pixels: np.ndarray | None,
    probe: np.ndarray,
    object_: np.ndarray,
    grid: ObjectGrid,
    attrs: dict,
    x_m: np.ndarray,
    y_m: np.ndarray,
    scan_index: np.ndarray,
    object_layers: int,
    layer_spacing_m,
    probe_pixels_m: tuple[float, float],
    units_read: str,
    source: str,
    extra_metadata: dict | None = None,
) -> ScanData:
    """The one Ptychodus product -> ScanData conversion (files: ``read_ptychodus``; in memory:
    ``integrations.ptychodus.scan_from_reconstruct_input``): float32 ``patterns`` (zeroed at
    ``bad_pixels``, in place), positions in metres -> pixels of ``grid``, ``object_`` as
    ``object_truth``, and the metadata both keep (grid, root attributes, pixel sizes, layers)."""
    if bad_pixels is not None and bad_pixels.any():
        patterns[:, bad_pixels] = 0  # no information there; clears detector fill values / NaN
    metadata = {
        "source_format": SOURCE_FORMAT,
        **(extra_metadata or {}),
        ATTRS_KEY: attrs,
        "object_layers": int(object_layers),
        "object_layer_spacing_m": [float(v) for v in layer_spacing_m],
        "probe_pixel_width_m": float(probe_pixels_m[0]),
        "probe_pixel_height_m": float(probe_pixels_m[1]),
        "photon_energy_eV": attrs["photon_energy_eV"],
        "detector_object_distance_m": attrs["detector_object_distance_m"],
        "diffraction_units_read": units_read,
    }
    return ScanData(
        diffraction=patterns,
        positions_px=grid.to_px(x_m, y_m),
        probe=probe,
        object_truth=object_,
        bad_pixels=bad_pixels,
        scan_index=scan_index,
        metadata=metadata,
        source=source,
        geometry=ScanGeometry(grid, scan_index="position_index"),
    )


# --------------------------------------------------------------------------------------------
# writers


def _pixel_pair(value, what: str) -> tuple[float, float]:
    """A pixel size given as one number or (width, height) -> (width, height) floats > 0."""
    vals = np.atleast_1d(np.asarray(value, np.float64)).reshape(-1)
    if vals.size == 1:
        vals = np.repeat(vals, 2)
    if vals.size != 2 or not np.all(np.isfinite(vals)) or not np.all(vals > 0):
        raise PtychoPINNError(
            f"{what}: expected a finite size > 0 or (width, height), got {value!r}"
        )
    return float(vals[0]), float(vals[1])


def _canonical_attrs(attrs: Mapping | None) -> dict:
    """Product root attributes with defaults, accepting legacy spellings; validates the required."""
    given = dict(attrs or {})
    for new, old in LEGACY_ATTRS.items():
        if new not in given and old in given:
            given[new] = given[old]
    out: dict[str, object] = {}
    for key, default in PRODUCT_ATTRS.items():
        value = given.get(key, default)
        if value is None:
            raise PtychoPINNError(
                f"product attributes: '{key}' is required (Ptychodus cannot load a "
                "product without it)"
            )
        if key in ("name", "comments"):
            out[key] = str(value)
        elif key == "far_field":
            out[key] = bool(value)
        else:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PtychoPINNError(
                    f"product attributes: '{key}' must be a number, got {value!r}"
                ) from None
            if not math.isfinite(value) or (key in _POSITIVE_ATTRS and value <= 0):
                raise PtychoPINNError(
                    f"product attributes: '{key}' must be finite"
                    f"{' and > 0' if key in _POSITIVE_ATTRS else ''}, got {value!r}"
                )
            out[key] = value
    if given.get("polarization") is not None:
        out["polarization"] = str(given["polarization"])
    return out


def _losses_arrays(losses) -> tuple[np.ndarray, np.ndarray]:
    if losses is None:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim == 1:
        return np.arange(arr.size, dtype=np.int64), arr
    if arr.ndim == 2 and arr.shape[1] == 2:
        if not np.all(arr[:, 0] == np.round(arr[:, 0])):
            raise PtychoPINNError("losses: epochs (first column) must be integers")
        return arr[:, 0].astype(np.int64), arr[:, 1]
    raise PtychoPINNError(
        f"losses: expected (E,) values or (E, 2) (epoch, value) pairs, got shape {arr.shape}"
    )


def write_product(
    path: str | Path,
    *,
    object_: np.ndarray,
    grid: ObjectGrid,
    probe: np.ndarray,
    positions_px: np.ndarray,
    scan_index: np.ndarray | None = None,
    attrs: Mapping | None = None,
    probe_pixel_size_m=None,
    losses=None,
    overwrite: bool = False,
) -> Path:
    """Write a Ptychodus ``product.h5`` (atomically; refuses to replace a file unless
    ``overwrite``).

    Args:
        object_: (H, W) or (1, H, W) complex object on ``grid`` (its shape must be
            ``grid.shape_hw``; use :func:`canvas_to_grid` to put a stitched canvas there).
            Written as (1, H, W) with ``center_x_m/center_y_m/pixel_width_m/pixel_height_m``
            attributes and an empty
            ``object_layer_spacing_m``.
        grid: the object's sampling; positions are converted with :meth:`ObjectGrid.to_m`.
        probe: (N, N) or (K, N, N) complex, written as (1, K, N, N).
        positions_px: (M, 2) probe centres in object pixels (x, y).
        scan_index: (M,) ints written as ``probe_position_indexes`` (default 0..M-1); they pair the
            positions with the diffraction file's ``/indexes``.
        attrs: root attributes (see ``PRODUCT_ATTRS``; older spellings accepted);
            ``detector_object_distance_m`` and ``photon_energy_eV`` are required. Both spellings
            of the energy and the mass attenuation are written.
        probe_pixel_size_m: float or (width, height); default the object pixel size.
        losses: None, (E,) values (epochs 0..E-1) or (E, 2) (epoch, value) pairs.
    """
    path = Path(path)
    obj = np.asarray(object_)
    if obj.ndim == 3 and obj.shape[0] == 1:
        obj = obj[0]
    if obj.ndim != 2:
        raise PtychoPINNError(
            f"{path}: object must be (H, W) or (1, H, W), got shape {np.shape(object_)}"
        )
    if obj.shape != grid.shape_hw:
        raise PtychoPINNError(
            f"{path}: object is {obj.shape[0]} x {obj.shape[1]} but the product grid is "
            f"{grid.height_px} x {grid.width_px}; place it on the grid first (canvas_to_grid)"
        )
    if not np.isfinite(obj).all():
        raise PtychoPINNError(f"{path}: object has NaN/inf values")
    if not np.iscomplexobj(obj):
        obj = obj.astype(np.complex64)
    pr = np.asarray(probe)
    pr = pr[None] if pr.ndim == 2 else pr
    if pr.ndim != 3 or pr.shape[1] != pr.shape[2] or not np.iscomplexobj(pr):
        raise PtychoPINNError(
            f"{path}: probe must be complex (N, N) or (K, N, N), got {pr.dtype} {np.shape(probe)}"
        )
    if not np.isfinite(pr).all():
        raise PtychoPINNError(f"{path}: probe has NaN/inf values")
    pos = np.asarray(positions_px, np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0 or not np.isfinite(pos).all():
        raise PtychoPINNError(
            f"{path}: positions_px must be a finite (M, 2) array, got shape {pos.shape}"
        )
    m = pos.shape[0]
    index = np.arange(m, dtype=np.int64) if scan_index is None else np.asarray(scan_index)
    if index.shape != (m,) or not (index.dtype.kind in "iu" or np.all(index == np.round(index))):
        raise PtychoPINNError(
            f"{path}: scan_index must be ({m},) integers, got {index.dtype} {index.shape}"
        )
    index = index.astype(np.int64)
    root = _canonical_attrs(attrs)
    ppw, pph = _pixel_pair(
        probe_pixel_size_m
        if probe_pixel_size_m is not None
        else (grid.pixel_width_m, grid.pixel_height_m),
        "probe_pixel_size_m",
    )
    loss_epochs, loss_values = _losses_arrays(losses)
    x_m, y_m = grid.to_m(pos)

    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as fh:
            for key, value in root.items():
                fh.attrs[key] = value
            for new, old in LEGACY_ATTRS.items():
                fh.attrs[old] = root[new]
            fh.create_dataset("probe_position_indexes", data=index)
            fh.create_dataset("probe_position_x_m", data=x_m)
            fh.create_dataset("probe_position_y_m", data=y_m)
            dp = fh.create_dataset("probe", data=pr[None])
            dp.attrs["pixel_width_m"] = ppw
            dp.attrs["pixel_height_m"] = pph
            do = fh.create_dataset("object", data=obj[None])
            do.attrs["center_x_m"] = grid.center_x_m
            do.attrs["center_y_m"] = grid.center_y_m
            do.attrs["pixel_width_m"] = grid.pixel_width_m
            do.attrs["pixel_height_m"] = grid.pixel_height_m
            fh.create_dataset("object_layer_spacing_m", data=np.zeros(0, np.float64))
            fh.create_dataset("loss_epochs", data=loss_epochs)
            fh.create_dataset("loss_values", data=loss_values)
    return path


def write_diffraction(
    path: str | Path,
    patterns: np.ndarray,
    indexes: np.ndarray | None = None,
    bad_pixels: np.ndarray | None = None,
    *,
    detector_pixel_size_m,
    dtype=None,
    compression: str | None = "lzf",
    overwrite: bool = False,
) -> Path:
    """Write a Ptychodus assembled ``diffraction.h5`` (atomically).

    Args:
        patterns: (n, H, W) counts, zero frequency at the centre; stored in ``dtype`` (default:
            the array's own; an integer dtype such as uint16 requires integer counts in range).
        indexes: (n,) scan indexes (default 0..n-1).
        bad_pixels: (H, W) bool, True = bad (default none bad; the dataset is always written
            because Ptychodus's loader requires it).
        detector_pixel_size_m: float or (width, height), metres.
    """
    path = Path(path)
    pats = np.asarray(patterns)
    if pats.ndim != 3 or pats.shape[0] == 0 or pats.dtype.kind not in "iuf":
        raise PtychoPINNError(
            f"{path}: patterns must be a real (n, H, W) array, got {pats.dtype} {pats.shape}"
        )
    n, h, w = pats.shape
    if dtype is not None and np.dtype(dtype) != pats.dtype:
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if (
                not np.all(np.isfinite(pats))
                or np.any(pats != np.round(pats))
                or pats.min() < info.min
                or pats.max() > info.max
            ):
                raise PtychoPINNError(
                    f"{path}: patterns cannot be stored as {dt} without loss "
                    f"(need integer counts in [{info.min}, {info.max}])"
                )
        pats = pats.astype(dt)
    index = np.arange(n, dtype=np.int64) if indexes is None else np.asarray(indexes)
    if index.shape != (n,) or index.dtype.kind not in "iu":
        raise PtychoPINNError(
            f"{path}: indexes must be ({n},) integers, got {index.dtype} {index.shape}"
        )
    bad = np.zeros((h, w), bool) if bad_pixels is None else np.asarray(bad_pixels).astype(bool)
    if bad.shape != (h, w):
        raise PtychoPINNError(f"{path}: bad_pixels must be ({h}, {w}), got {bad.shape}")
    dw, dh = _pixel_pair(detector_pixel_size_m, "detector_pixel_size_m")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("indexes", data=index.astype(np.int64), compression=compression)
            dp = fh.create_dataset("patterns", data=pats, compression=compression)
            dp.attrs["detector_pixel_width_m"] = dw
            dp.attrs["detector_pixel_height_m"] = dh
            fh.create_dataset("bad_pixels", data=bad, compression=compression)
    return path


# --------------------------------------------------------------------------------------------
# ScanData helpers


def scan_product_attrs(scan: ScanData, *, name: str | None = None) -> dict:
    """Product root attributes for ``scan``: those read from its product, else from flat metadata
    keys (``photon_energy_eV``, ``detector_object_distance_m``, ...), else placeholders for the
    two required ones (with a warning and a note in ``comments``)."""
    md = scan.metadata
    if isinstance(md.get(ATTRS_KEY), Mapping):
        attrs = dict(md[ATTRS_KEY])
    else:
        attrs = {k: md[k] for k in PRODUCT_ATTRS if k in md and md[k] is not None}
        for new, old in LEGACY_ATTRS.items():
            if new not in attrs and md.get(old) is not None:
                attrs[new] = md[old]
        missing = [k for k, v in PLACEHOLDER_ATTRS.items() if k not in attrs]
        if missing:
            log.warning(
                "%s: no %s in the scan metadata; writing placeholder values %s",
                scan.source,
                " / ".join(missing),
                {k: PLACEHOLDER_ATTRS[k] for k in missing},
            )
            attrs.update({k: PLACEHOLDER_ATTRS[k] for k in missing})
            note = f"placeholder {', '.join(missing)} (unknown geometry)"
            attrs["comments"] = f"{attrs['comments']}; {note}" if attrs.get("comments") else note
    if name is not None:
        attrs["name"] = name
    return _canonical_attrs(attrs)


def scan_object_grid(scan: ScanData, *, pixel_size_m: float | None = None) -> ObjectGrid:
    """The object grid of ``scan``: the one read from its product, else a new one.

    ``pixel_size_m`` applies only to a scan without a grid. A new grid has the shape of
    ``scan.object_truth`` (else just covers the positions, origin at object pixel 0), centre
    (0, 0) m, and pixel size ``pixel_size_m``, else a pixel size found in the metadata, else the
    far-field size from energy/distance/detector pixel in the metadata, else 1.0 m with a warning.
    """
    grid = scan.geometry.object_grid
    if grid is not None:
        if pixel_size_m is not None and pixel_size_m != grid.pixel_width_m:
            log.warning(
                "%s: keeping the product's object pixel size %.6g m (ignoring %.6g m)",
                scan.source,
                grid.pixel_width_m,
                pixel_size_m,
            )
        return grid
    md = scan.metadata
    size = pixel_size_m if pixel_size_m is not None else scan.geometry.pixel_width_m
    if size is None:
        try:
            size = far_field_pixel_size_m(
                float(md["photon_energy_eV"]),
                float(md["detector_object_distance_m"]),
                float(md["detector_pixel_width_m"]),
                scan.patch_size,
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            size = None
    if size is None or not (math.isfinite(size) and size > 0):
        log.warning(
            "%s: no object pixel size in the scan metadata; using 1.0 m per pixel", scan.source
        )
        size = 1.0
    if scan.object_truth is not None:
        shape = scan.object_truth.shape
    else:
        n = scan.patch_size
        far = np.ceil(scan.positions_px.max(axis=0)).astype(int) + (n - n // 2) + 1
        shape = (max(int(far[1]), n), max(int(far[0]), n))
    return ObjectGrid(shape, size, size, 0.0, 0.0)


def canvas_to_grid(canvas: np.ndarray, offset_px, shape_hw, fill: complex = 1.0) -> np.ndarray:
    """Crop/pad a stitched canvas onto an object grid.

    ``canvas`` (Hc, Wc) has ``canvas pixel = object pixel + offset_px`` (offset (x, y), whole
    pixels, as returned by stitching); the result is (H, W) = ``shape_hw`` in object pixels, with
    ``fill`` where the canvas does not reach.
    """
    canvas = np.asarray(canvas)
    off = np.asarray(offset_px, np.float64).reshape(-1)
    if off.size != 2 or not np.all(np.abs(off - np.round(off)) < 1e-6):
        raise PtychoPINNError(f"canvas offset must be whole pixels (x, y), got {offset_px!r}")
    ox, oy = (int(round(v)) for v in off)
    h, w = (int(v) for v in shape_hw)
    out = np.full((h, w), fill, dtype=np.result_type(canvas.dtype, np.complex64))
    # object rows/cols [y0, y1) map to canvas rows [y0 + oy, y1 + oy)
    y0, y1 = max(0, -oy), min(h, canvas.shape[0] - oy)
    x0, x1 = max(0, -ox), min(w, canvas.shape[1] - ox)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = canvas[y0 + oy : y1 + oy, x0 + ox : x1 + ox]
    return out


def _product_scan_index(scan: ScanData) -> np.ndarray:
    # NPZ 'scan_index' means an object id (zeros = one object), not a pattern index: only
    # position indexes (from a Ptychodus file: ScanGeometry.scan_index) are written back as such.
    if scan.scan_index is not None and scan.geometry.scan_index == "position_index":
        return scan.scan_index
    return np.arange(scan.n_patterns, dtype=np.int64)


def write_product_for_scan(
    path: str | Path,
    scan: ScanData,
    object_: np.ndarray | None = None,
    *,
    probe: np.ndarray | None = None,
    losses=None,
    grid: ObjectGrid | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``product.h5`` for ``scan`` on its grid (:func:`scan_object_grid` unless ``grid``).

    ``object_`` (default: ``scan.object_truth``, else ones) must be on that grid; ``probe``
    defaults to ``scan.probe``; positions, scan indexes and root attributes
    (:func:`scan_product_attrs`) come from the scan, so a product read with
    :func:`read_ptychodus` is written back on the same grid with the same indexes.
    """
    grid = grid or scan_object_grid(scan)
    if object_ is None:
        object_ = (
            scan.object_truth
            if scan.object_truth is not None
            else np.ones(grid.shape_hw, np.complex64)
        )
    if int(scan.metadata.get("object_layers", 1) or 1) > 1:
        log.warning(
            "%s: the input product had %s object layers; writing one (single-slice) layer",
            scan.source,
            scan.metadata["object_layers"],
        )
    md = scan.metadata
    probe_px = None
    if md.get("probe_pixel_width_m") and md.get("probe_pixel_height_m"):
        probe_px = (md["probe_pixel_width_m"], md["probe_pixel_height_m"])
    return write_product(
        path,
        object_=object_,
        grid=grid,
        probe=scan.probe if probe is None else probe,
        positions_px=scan.positions_px,
        scan_index=_product_scan_index(scan),
        attrs=scan_product_attrs(scan, name=name),
        probe_pixel_size_m=probe_px,
        losses=losses,
        overwrite=overwrite,
    )


def write_diffraction_for_scan(
    path: str | Path, scan: ScanData, *, dtype=None, overwrite: bool = False
) -> Path:
    """Write ``diffraction.h5`` for ``scan`` (counts, its bad pixels, indexes as in the product).

    Detector pixel size: from the metadata, else the far-field size implied by the object pixel
    size, energy and distance of :func:`scan_object_grid` / :func:`scan_product_attrs`.
    """
    md = scan.metadata
    if md.get("detector_pixel_width_m") and md.get("detector_pixel_height_m"):
        det = (md["detector_pixel_width_m"], md["detector_pixel_height_m"])
    else:
        grid, attrs = scan_object_grid(scan), scan_product_attrs(scan)
        lam_z = wavelength_m(attrs["photon_energy_eV"]) * attrs["detector_object_distance_m"]
        det = (
            lam_z / (scan.patch_size * grid.pixel_width_m),
            lam_z / (scan.patch_size * grid.pixel_height_m),
        )
    return write_diffraction(
        path,
        scan.diffraction,
        _product_scan_index(scan),
        scan.bad_pixels,
        detector_pixel_size_m=det,
        dtype=dtype,
        overwrite=overwrite,
    )


def export_scan(
    scan: ScanData,
    product_path: str | Path,
    diffraction_path: str | Path,
    *,
    dtype=None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``scan`` as a Ptychodus (product.h5, diffraction.h5) pair that reads back equal."""
    return (
        write_product_for_scan(product_path, scan, overwrite=overwrite),
        write_diffraction_for_scan(diffraction_path, scan, dtype=dtype, overwrite=overwrite),
    )
