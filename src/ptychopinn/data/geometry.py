"""Typed scan geometry: where a scan's pixels are in the world, and what its indexes mean.

``ObjectGrid``: the sampling of an object array (shape, pixel size, centre), as a Ptychodus
product defines it. ``ScanGeometry`` (``ScanData.geometry``): the object grid when the file has
one, the object pixel size when known, and what ``ScanData.scan_index`` means. Readers set it;
writers and the physics-unit consumers (FRC in 1/m, product files) read it instead of format
keys in ``metadata``. It is stored in NPZ metadata (``as_metadata``) and restored on reading,
also from files written before it existed (``pop_geometry``). numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ptychopinn.errors import PtychoPINNError

#: metadata key of the object grid (``ObjectGrid.as_metadata``)
GRID_KEY = "object_grid"
#: metadata keys that may give the object pixel size in metres, in order of preference
PIXEL_SIZE_KEYS = ("object_pixel_size_m", "pixel_size_m", "object_pixel_width_m", "pixel_width_m")
#: what ``ScanData.scan_index`` means: "row" (an id per pattern of the source, e.g. NPZ
#: ``scan_index``, an object id), "position_index" (Ptychodus ``probe_position_indexes``,
#: written back as such)
SCAN_INDEX_KINDS = ("row", "position_index")
#: ``source_format`` of files whose indexes are position indexes (older NPZ metadata)
_POSITION_INDEX_FORMATS = ("ptychodus",)


@dataclass(frozen=True)
class ObjectGrid:
    """Sampling of a Ptychodus object array in the world frame.

    Attributes:
        shape_hw: (height_px, width_px) of the object array.
        pixel_width_m, pixel_height_m: object pixel size (x, y), metres, > 0.
        center_x_m, center_y_m: world position of the array centre, metres.
    """

    shape_hw: tuple[int, int]
    pixel_width_m: float
    pixel_height_m: float
    center_x_m: float = 0.0
    center_y_m: float = 0.0

    def __post_init__(self):
        try:
            h, w = (int(v) for v in self.shape_hw)
        except (TypeError, ValueError):
            raise PtychoPINNError(
                f"object grid: shape_hw must be (height, width), got {self.shape_hw!r}"
            ) from None
        if h < 1 or w < 1:
            raise PtychoPINNError(f"object grid: shape must be positive, got {h} x {w}")
        for key in ("pixel_width_m", "pixel_height_m"):
            value = float(getattr(self, key))
            if not (math.isfinite(value) and value > 0):
                raise PtychoPINNError(
                    f"object grid: {key} must be a finite number > 0, got {value!r}"
                )
            object.__setattr__(self, key, value)
        for key in ("center_x_m", "center_y_m"):
            value = float(getattr(self, key))
            if not math.isfinite(value):
                raise PtychoPINNError(f"object grid: {key} must be finite, got {value!r}")
            object.__setattr__(self, key, value)
        object.__setattr__(self, "shape_hw", (h, w))

    @property
    def height_px(self) -> int:
        return self.shape_hw[0]

    @property
    def width_px(self) -> int:
        return self.shape_hw[1]

    def to_px(self, x_m, y_m) -> np.ndarray:
        """World positions (metres, each (M,)) -> (M, 2) object pixels, columns (x, y)."""
        x = (np.asarray(x_m, np.float64) - self.center_x_m) / self.pixel_width_m + (
            self.width_px - 1
        ) / 2
        y = (np.asarray(y_m, np.float64) - self.center_y_m) / self.pixel_height_m + (
            self.height_px - 1
        ) / 2
        return np.stack([x, y], axis=-1)

    def to_m(self, positions_px) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) object pixels (x, y) -> (x_m, y_m), each (M,) float64; inverse of
        :meth:`to_px`."""
        pos = np.asarray(positions_px, np.float64)
        x_m = (pos[:, 0] - (self.width_px - 1) / 2) * self.pixel_width_m + self.center_x_m
        y_m = (pos[:, 1] - (self.height_px - 1) / 2) * self.pixel_height_m + self.center_y_m
        return x_m, y_m

    def as_metadata(self) -> dict:
        return {
            "height_px": self.height_px,
            "width_px": self.width_px,
            "pixel_width_m": self.pixel_width_m,
            "pixel_height_m": self.pixel_height_m,
            "center_x_m": self.center_x_m,
            "center_y_m": self.center_y_m,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "ObjectGrid | None":
        """The grid recorded by :func:`read_ptychodus` (``metadata['object_grid']``), else None."""
        g = metadata.get(GRID_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(g, Mapping):
            return None
        try:
            return cls(
                (g["height_px"], g["width_px"]),
                g["pixel_width_m"],
                g["pixel_height_m"],
                g.get("center_x_m", 0.0),
                g.get("center_y_m", 0.0),
            )
        except (KeyError, PtychoPINNError) as exc:
            raise PtychoPINNError(
                f"metadata '{GRID_KEY}' is incomplete or invalid ({exc})"
            ) from None


@dataclass(frozen=True)
class ScanGeometry:
    """A scan's geometry, typed (``ScanData.geometry``).

    Attributes:
        object_grid: the object's sampling in the world frame when the file defines one (a
            Ptychodus product), else None.
        pixel_size_m: object pixel size (x, y) in metres when known (the grid's, CXI's, an NPZ's
            metadata), else None.
        scan_index: what ``ScanData.scan_index`` means, one of SCAN_INDEX_KINDS.
    """

    object_grid: ObjectGrid | None = None
    pixel_size_m: tuple[float, float] | None = None
    scan_index: str = "row"

    def __post_init__(self):
        if self.scan_index not in SCAN_INDEX_KINDS:
            raise PtychoPINNError(
                f"scan geometry: scan_index {self.scan_index!r}; expected one of "
                f"{list(SCAN_INDEX_KINDS)}"
            )
        size = self.pixel_size_m
        if size is None and self.object_grid is not None:
            size = (self.object_grid.pixel_width_m, self.object_grid.pixel_height_m)
        if size is not None:
            size = tuple(float(v) for v in size)
            if len(size) != 2 or not all(math.isfinite(v) and v > 0 for v in size):
                raise PtychoPINNError(
                    f"scan geometry: pixel_size_m must be two numbers > 0, got {size!r}"
                )
        object.__setattr__(self, "pixel_size_m", size)

    @property
    def pixel_width_m(self) -> float | None:
        """The object pixel width in metres (square pixels: the pixel size), else None."""
        return None if self.pixel_size_m is None else self.pixel_size_m[0]

    def as_metadata(self) -> dict:
        """The metadata keys this geometry is stored as (``pop_geometry`` reads them back);
        nothing for the default geometry."""
        out: dict = {} if self.scan_index == "row" else {"scan_index_kind": self.scan_index}
        if self.object_grid is not None:
            out[GRID_KEY] = self.object_grid.as_metadata()
        if self.pixel_size_m is not None:
            out["object_pixel_width_m"], out["object_pixel_height_m"] = self.pixel_size_m
            if self.pixel_size_m[0] == self.pixel_size_m[1]:
                out["object_pixel_size_m"] = self.pixel_size_m[0]
        return out

    def updated(self, found: dict, metadata: Mapping | None = None) -> ScanGeometry:
        """This geometry with the fields ``pop_geometry`` found replaced; with no
        ``scan_index_kind`` found, a Ptychodus ``source_format`` in ``metadata`` means position
        indexes."""
        from dataclasses import replace

        found = dict(found)
        if "scan_index" not in found and self.scan_index == "row":
            if (metadata or {}).get("source_format") in _POSITION_INDEX_FORMATS:
                found["scan_index"] = "position_index"
        if "object_grid" in found and "pixel_size_m" not in found:
            found["pixel_size_m"] = None  # the grid's
        return replace(self, **found) if found else self


def pop_geometry(metadata: dict) -> dict:
    """Remove the geometry keys from ``metadata`` (in place) and return the ScanGeometry fields
    they give: ``object_grid``, ``pixel_size_m``, ``scan_index``. So a ScanData holds its
    geometry once, typed, and a metadata dict that sets one (``replace(scan, metadata=...)``,
    an older NPZ) still counts."""
    found: dict = {}
    grid = ObjectGrid.from_metadata(metadata)
    metadata.pop(GRID_KEY, None)
    if grid is not None:
        found["object_grid"] = grid
    width = _positive(metadata.pop("object_pixel_width_m", None))
    height = _positive(metadata.pop("object_pixel_height_m", None))
    sizes = [_positive(metadata.pop(key, None)) for key in PIXEL_SIZE_KEYS if key in metadata]
    square = next((v for v in sizes if v is not None), None)
    if width is not None and height is not None:
        found["pixel_size_m"] = (width, height)
    elif square is not None:
        found["pixel_size_m"] = (square, square)
    kind = metadata.pop("scan_index_kind", None)
    if kind is not None:
        found["scan_index"] = kind
    return found


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None
