"""ScanData: one ptychographic scan in memory, validated at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ptychopinn.config import PROBE_REFINEMENT
from ptychopinn.data.geometry import ScanGeometry, pop_geometry
from ptychopinn.data.limits import memory_bytes
from ptychopinn.errors import ConfigError, DataError, PtychoPINNError


def is_real_array(arr: np.ndarray) -> bool:
    """Real numbers: integer or floating dtype (booleans, complex, strings and objects are not)."""
    return np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)


#: Patterns per piece when validating counts (temporary masks per piece, not per scan).
CHECK_CHUNK = 8192


def _check_counts(d: np.ndarray, src: str) -> bool:
    """DataError for NaN/inf or negative counts; a piece at a time, so a memory-mapped scan is
    read once and no scan-sized mask is built. Returns whether any count is nonzero."""
    bad = 0
    low = np.inf
    nonzero = False
    for s in range(0, d.shape[0], CHECK_CHUNK):
        piece = d[s : s + CHECK_CHUNK]
        finite = np.isfinite(piece)
        if not finite.all():
            bad += int((~finite).sum())
            continue
        low = min(low, float(piece.min()))
        nonzero = nonzero or bool(piece.any())
    if bad:
        raise DataError(src, "diffraction", f"{bad} NaN/inf values")
    if low < 0:
        raise DataError(
            src, "diffraction", f"negative counts (min {low:g}); expected photon counts >= 0"
        )
    return nonzero


#: pattern subsets of :meth:`ScanData.patterns`
PATTERN_SUBSETS = ("all", "even", "odd")


@dataclass(frozen=True, eq=False)
class ScanData:
    """A scan: diffraction counts, positions, probe and optional extras.

    Attributes:
        diffraction: (M, N, N) float32 photon counts, zero frequency at the array centre.
        positions_px: (M, 2) float64 probe-centre positions in object pixels, columns (x, y).
        probe: (K, N, N) complex64, K >= 1 incoherent modes.
        object_truth: optional (H, W) complex64 ground truth (simulations) or initial guess.
        bad_pixels: optional (N, N) bool, True = pixel excluded from the loss.
        scan_index: optional (M,) int64 scan index of each pattern (what it means:
            ``geometry.scan_index``).
        metadata: free-form JSON-serialisable facts (photons, simulation settings, the source
            format's attributes).
        source: file name (or description) used in error messages.
        geometry: typed geometry (``data.geometry.ScanGeometry``: object grid, pixel size, what
            ``scan_index`` means); None: read from ``metadata`` (files written before it).
    """

    diffraction: np.ndarray
    positions_px: np.ndarray
    probe: np.ndarray
    object_truth: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "<memory>"
    geometry: ScanGeometry | None = None

    def __post_init__(self):
        src = self.source
        d = np.asarray(self.diffraction)
        if d.ndim != 3:
            raise DataError(
                src, "diffraction", f"expected a 3-D (M, N, N) array, got shape {d.shape}"
            )
        m, h, w = d.shape
        if m == 0:
            raise DataError(src, "diffraction", "empty scan: 0 diffraction patterns")
        if h != w:
            raise DataError(src, "diffraction", f"patterns must be square (N, N), got {h} x {w}")
        if not is_real_array(d):
            raise DataError(src, "diffraction", f"expected real numbers, got dtype {d.dtype}")
        d = d.astype(np.float32, copy=False)  # a float32 memory map stays one
        measured = _check_counts(d, src)
        pos = np.asarray(self.positions_px)
        if not is_real_array(pos):
            raise DataError(src, "positions", f"expected real numbers, got dtype {pos.dtype}")
        pos = pos.astype(np.float64, copy=False)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise DataError(src, "positions", f"expected shape (M, 2) as (x, y), got {pos.shape}")
        if pos.shape[0] != m:
            raise DataError(
                src, "positions", f"{pos.shape[0]} positions for {m} diffraction patterns"
            )
        if not np.isfinite(pos).all():
            raise DataError(src, "positions", "NaN/inf positions")
        span = pos.max(axis=0) - pos.min(axis=0) + h + 8  # (x, y) extent of the object canvas
        if span[0] * span[1] * 8 > memory_bytes():
            raise DataError(
                src,
                "positions",
                f"span {span[0] - h - 8:.4g} x {span[1] - h - 8:.4g} "
                "pixels: the object canvas would not fit in memory (positions must be "
                "in object pixels, not metres or nanometres?)",
            )
        p = np.asarray(self.probe)
        if not np.iscomplexobj(p):
            raise DataError(src, "probe", f"expected a complex array, got dtype {p.dtype}")
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[1:] != (h, w):
            raise DataError(
                src, "probe", f"expected (N, N) or (K, N, N) with N={h}, got {np.shape(self.probe)}"
            )
        if not np.isfinite(p).all():
            raise DataError(src, "probe", "NaN/inf values")
        if not np.any(np.abs(p) > 0):
            raise DataError(src, "probe", "probe is zero everywhere")
        obj = self.object_truth
        if obj is not None:
            obj = np.asarray(obj)
            if not np.issubdtype(obj.dtype, np.number):
                raise DataError(src, "object", f"expected complex numbers, got dtype {obj.dtype}")
            if obj.ndim != 2:
                raise DataError(
                    src, "object", f"expected a 2-D (H, W) array, got shape {obj.shape}"
                )
            if not np.isfinite(obj).all():
                raise DataError(src, "object", "NaN/inf values")
            obj = obj.astype(np.complex64, copy=False)
        bad = self.bad_pixels
        if bad is not None:
            bad = np.asarray(bad)
            if not (bad.dtype == np.bool_ or np.issubdtype(bad.dtype, np.integer)):
                raise DataError(
                    src, "bad_pixels", f"expected a boolean mask, got dtype {bad.dtype}"
                )
            if bad.shape != (h, w):
                raise DataError(src, "bad_pixels", f"expected shape ({h}, {w}), got {bad.shape}")
            bad = bad.astype(bool, copy=False)
            if bad.all():
                raise DataError(src, "bad_pixels", "every pixel is marked bad")
        if not measured:
            raise DataError(
                src,
                "diffraction",
                f"every count of all {m} patterns is zero: nothing "
                "was measured (detector off, wrong dataset or wrong units?)",
            )
        idx = self.scan_index
        if idx is not None:
            idx = np.asarray(idx)
            if not np.issubdtype(idx.dtype, np.integer):
                raise DataError(src, "scan_index", f"expected integers, got dtype {idx.dtype}")
            if idx.shape != (m,):
                raise DataError(src, "scan_index", f"expected shape ({m},), got {idx.shape}")
            idx = idx.astype(np.int64, copy=False)
        object.__setattr__(self, "diffraction", d)
        object.__setattr__(self, "positions_px", pos)
        object.__setattr__(self, "probe", p.astype(np.complex64, copy=False))
        object.__setattr__(self, "object_truth", obj)
        object.__setattr__(self, "bad_pixels", bad)
        object.__setattr__(self, "scan_index", idx)
        if not isinstance(self.metadata, Mapping):
            raise DataError(
                src,
                "metadata",
                f"expected a mapping of names to values, got {type(self.metadata).__name__}",
            )
        # the geometry is held once, typed: geometry keys in the metadata (an older file, or
        # ``replace(scan, metadata=...)``) move into it
        metadata = dict(self.metadata)
        try:
            found = pop_geometry(metadata)
            geometry = (self.geometry or ScanGeometry()).updated(found, metadata)
        except PtychoPINNError as exc:
            raise DataError(src, "metadata", str(exc)) from None
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "geometry", geometry)

    @property
    def n_patterns(self) -> int:
        return self.diffraction.shape[0]

    @property
    def patch_size(self) -> int:
        return self.diffraction.shape[-1]

    @property
    def n_modes(self) -> int:
        return self.probe.shape[0]

    @property
    def mean_counts(self) -> float:
        """Mean total counts per pattern (over good pixels)."""
        d = self.diffraction
        if self.bad_pixels is None:
            return float(d.sum(axis=(1, 2), dtype=np.float64).mean())
        good = (~self.bad_pixels).astype(d.dtype)  # a weighted sum: no masked copy of the scan
        return float(np.einsum("mij,ij->m", d, good, dtype=np.float64).mean())

    def subset(self, indices) -> "ScanData":
        indices = np.asarray(indices)
        return replace(
            self,
            diffraction=self.diffraction[indices],
            positions_px=self.positions_px[indices],
            scan_index=None if self.scan_index is None else self.scan_index[indices],
        )

    def patterns(self, which: str) -> "ScanData":
        """``"all"`` (this scan), ``"even"`` (patterns 0, 2, 4, ...) or ``"odd"`` (1, 3, 5, ...):
        two disjoint halves for half-scan FRC. The half records ``patterns`` in its metadata."""
        if which == "all":
            return self
        if which not in PATTERN_SUBSETS:
            raise DataError(
                self.source,
                "patterns",
                f"unknown subset {which!r}; expected one of {list(PATTERN_SUBSETS)}",
            )
        if self.n_patterns < 4:
            raise DataError(
                self.source,
                "patterns",
                f"halving needs at least 4 patterns, the scan has {self.n_patterns}",
            )
        half = self.subset(np.arange(0 if which == "even" else 1, self.n_patterns, 2))
        return replace(half, metadata={**self.metadata, "patterns": which})

    def amplitude_scale(self) -> float:
        """The dataset-level normalisation a0 (PHYSICS.md section 4).

        ``A / a0`` has a mean per-pattern energy of (N/2)^2.
        """
        return float(np.sqrt(max(self.mean_counts, 1e-12)) / (self.patch_size / 2))


def probe_is_known(scan: ScanData) -> bool:
    """Whether the scan's probe is the true probe rather than a guess: a ``probe_known`` entry in
    its metadata decides; scans made by ``ptychopinn simulate`` (``simulation`` metadata) carry
    the probe that made them. Everything else (measured data, Ptychodus products, other tools'
    files) holds a guess."""
    known = scan.metadata.get("probe_known")
    if known is not None:
        return bool(known)
    return "simulation" in scan.metadata


def resolve_probe_refinement(choice: str, scan: ScanData) -> bool:
    """Whether refinement retrieves the probe for ``choice`` (auto/on/off) on ``scan``."""
    if choice not in PROBE_REFINEMENT:
        raise ConfigError(
            f"refine_probe: invalid value {choice!r}; expected one of {list(PROBE_REFINEMENT)}"
        )
    return choice == "on" or (choice == "auto" and not probe_is_known(scan))
