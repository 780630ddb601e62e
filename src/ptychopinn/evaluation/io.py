"""Read what ``evaluate`` compares: a ``reconstruction.npz`` and a ground-truth object (numpy only).

The reconstruction file (written by ``ptychopinn infer``) holds ``object`` (H, W) complex64,
``offset_px`` (2,) (x, y) with canvas pixel = object pixel + offset, ``positions_px`` (M, 2),
``illumination`` (H, W) float32, ``probe`` (K, N, N) complex64 and ``metadata`` (JSON string);
only ``object`` is required. Ground truth is the ``objectGuess`` (PtychoPINN scan NPZ) or
``object`` array of any NPZ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptychopinn.data.limits import require_file
from ptychopinn.errors import DataError


@dataclass
class ReconstructionFile:
    """Arrays of a reconstruction file; optional entries are None when absent."""

    object: np.ndarray
    offset_px: np.ndarray
    positions_px: np.ndarray | None = None
    illumination: np.ndarray | None = None
    probe: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "<memory>"


def _load_arrays(path: str | Path) -> tuple[str, dict]:
    path = Path(path)
    src = str(path)
    require_file(path, src, "an NPZ file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise DataError(src, "file", "holds a single array, not an NPZ archive")
            return src, {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a user error here
        raise DataError(src, "file", f"not a readable NPZ archive ({type(exc).__name__})") from None


def _metadata(src: str, arrays: dict) -> dict:
    if "metadata" not in arrays:
        return {}
    raw = np.asarray(arrays["metadata"])
    try:
        value = json.loads(str(raw.item() if raw.shape == () else raw))
    except json.JSONDecodeError as exc:
        raise DataError(src, "metadata", f"not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else {"value": value}


def _object(src: str, key: str, value) -> np.ndarray:
    obj = np.asarray(value)
    if obj.ndim == 3 and obj.shape[0] == 1:  # a single-layer stack (Ptychodus layout)
        obj = obj[0]
    if obj.ndim != 2:
        raise DataError(src, key, f"expected a 2-D (H, W) object, got shape {obj.shape}")
    if not np.issubdtype(obj.dtype, np.number) or obj.dtype == bool:
        raise DataError(src, key, f"expected numbers, got dtype {obj.dtype}")
    if not np.isfinite(obj).all():
        raise DataError(src, key, f"{int((~np.isfinite(obj)).sum())} NaN/inf values")
    if min(obj.shape) < 1:
        raise DataError(src, key, f"empty object, shape {obj.shape}")
    return obj.astype(np.complex64)


def load_reconstruction_file(path: str | Path) -> ReconstructionFile:
    """Read and validate a ``reconstruction.npz``; errors name the file and key."""
    src, arrays = _load_arrays(path)
    if "object" not in arrays:
        raise DataError(
            src, "object", f"missing; not a reconstruction file (keys: {sorted(arrays)})"
        )
    obj = _object(src, "object", arrays["object"])
    offset = np.asarray(arrays.get("offset_px", np.zeros(2)))
    if (
        offset.shape != (2,)
        or not np.issubdtype(offset.dtype, np.number)
        or not np.isfinite(offset).all()
    ):
        raise DataError(
            src, "offset_px", f"expected two finite numbers (x, y), got shape {offset.shape}"
        )
    pos = arrays.get("positions_px")
    if pos is not None:
        pos = np.asarray(pos, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or not np.isfinite(pos).all():
            raise DataError(
                src,
                "positions_px",
                f"expected finite (M, 2) positions (x, y), got shape {pos.shape}",
            )
        if pos.shape[0] == 0:
            pos = None
    ill = arrays.get("illumination")
    if ill is not None:
        ill = np.asarray(ill, dtype=np.float64)
        if ill.shape != obj.shape:
            raise DataError(
                src, "illumination", f"shape {ill.shape} differs from the object {obj.shape}"
            )
        if not np.isfinite(ill).all() or not ill.max() > 0:
            raise DataError(src, "illumination", "expected finite values with a positive maximum")
    probe = arrays.get("probe")
    if probe is not None:
        probe = np.asarray(probe)
        if probe.ndim not in (2, 3) or not np.iscomplexobj(probe) or not np.any(np.abs(probe) > 0):
            probe = None  # only used to size a fallback region; an odd probe is not fatal
    return ReconstructionFile(
        object=obj,
        offset_px=offset.astype(np.float64),
        positions_px=pos,
        illumination=ill,
        probe=probe,
        metadata=_metadata(src, arrays),
        source=src,
    )


def load_ground_truth(path: str | Path) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Ground-truth object from an NPZ: ``objectGuess`` (scan files) or ``object``.

    Returns (object (H, W) complex64, metadata dict, positions (M, 2) (x, y) or None from the
    file's ``xcoords``/``ycoords`` when present).
    """
    src, arrays = _load_arrays(path)
    key = "objectGuess" if "objectGuess" in arrays else "object" if "object" in arrays else None
    if key is None:
        raise DataError(
            src,
            "objectGuess",
            f"missing; a ground truth needs 'objectGuess' or 'object' (keys: {sorted(arrays)})",
        )
    obj = _object(src, key, arrays[key])
    positions = None
    if "xcoords" in arrays and "ycoords" in arrays:
        x = np.asarray(arrays["xcoords"], dtype=np.float64).reshape(-1)
        y = np.asarray(arrays["ycoords"], dtype=np.float64).reshape(-1)
        if x.shape == y.shape and x.size and np.isfinite(x).all() and np.isfinite(y).all():
            positions = np.stack([x, y], axis=1)
    return obj, _metadata(src, arrays), positions
