"""What every engine returns: a reconstruction on one canvas, and reading it back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptychopinn.io.atomic import atomic_path


@dataclass
class Reconstruction:
    """A stitched reconstruction.

    object: (H, W) complex64 canvas; offset_px: (x, y), canvas pixel = scan pixel + offset;
    positions_px: (M, 2) scan positions (scan frame); illumination: (H, W) float32 placed probe
    intensity (the scanned region); probe: (K, N, N) complex64.
    """

    object: np.ndarray
    offset_px: np.ndarray
    positions_px: np.ndarray
    illumination: np.ndarray
    probe: np.ndarray
    metadata: dict = field(default_factory=dict)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    object=self.object.astype(np.complex64),
                    offset_px=np.asarray(self.offset_px, dtype=np.float64),
                    positions_px=self.positions_px,
                    illumination=self.illumination.astype(np.float32),
                    probe=self.probe.astype(np.complex64),
                    metadata=np.array(json.dumps(self.metadata, default=str)),
                )
        return path


def load_reconstruction(path: str | Path) -> Reconstruction:
    """Read a ``reconstruction.npz`` (validated by ``evaluation.io.load_reconstruction_file``)."""
    from ptychopinn.evaluation.io import load_reconstruction_file

    f = load_reconstruction_file(path)
    return Reconstruction(
        object=f.object,
        offset_px=f.offset_px,
        positions_px=f.positions_px if f.positions_px is not None else np.zeros((0, 2)),
        illumination=(
            f.illumination.astype(np.float32)
            if f.illumination is not None
            else np.ones(f.object.shape, np.float32)
        ),
        probe=f.probe if f.probe is not None else np.zeros((1, 1, 1), np.complex64),
        metadata=f.metadata,
    )
