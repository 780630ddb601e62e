"""Run pty-chi from a benchmark: a ScanData in, a reconstruction in ptychopinn's frame out.

pty-chi runs in its own environment (``--ptychi-python``) through ``ptychi_runner.py`` with the
``ptychi_shim`` stand-in for torchvision on its PYTHONPATH; this module only needs numpy and
ptychopinn. The object buffer is ptychopinn's canvas for the scan (``canvas_geometry``), so
pixel = position + offset in both.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHIM = HERE / "ptychi_shim"


class PtychiResult:
    """A pty-chi reconstruction in the shape ``half_scan_frc``/``data_residual`` expect."""

    def __init__(self, obj, probe, offset_px, illumination, seconds, epochs, positions_px=None):
        self.object, self.probe, self.offset_px = obj, probe, np.asarray(offset_px, float)
        self.illumination, self.seconds, self.epochs = illumination, seconds, epochs
        self.positions_px = positions_px  # (M, 2) pty-chi's final positions (x, y)
        #: {epoch: (object, seconds after that epoch)} for ``snapshot_epochs``
        self.snapshots: dict = {}


def illumination(shape, positions, offset, probe):
    import torch

    from ptychopinn.physics.shifts import place_patches

    inten = torch.as_tensor((np.abs(probe) ** 2).sum(0), dtype=torch.complex64)
    pos = torch.as_tensor(positions + offset)
    total = place_patches(
        inten.expand(len(positions), -1, -1).contiguous(), pos, shape, kernel="bilinear"
    )
    return total.real.numpy().astype(np.float32)


def run_ptychi(
    python: str,
    scan,
    algorithm: str,
    epochs: int,
    seed: int,
    threads: int,
    time_limit_s: float | None = None,
    canvas=None,
    refine_probe: bool = True,
    extra_args: tuple = (),
    snapshot_epochs: tuple = (),
) -> PtychiResult:
    """pty-chi on ``scan`` in its own environment (``python``); ``extra_args`` go to
    ptychi_runner.py (e.g. its position-correction flags or ``--noise-model poisson``);
    ``snapshot_epochs``: the object is also kept after these epochs (``PtychiResult.snapshots``)."""
    from ptychopinn.physics.shifts import canvas_geometry

    shape, offset = (
        canvas if canvas is not None else canvas_geometry(scan.positions_px, scan.patch_size)
    )
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(
            inp,
            counts=scan.diffraction,
            positions_xy=scan.positions_px,
            probe=scan.probe,
            canvas_hw=np.asarray(shape),
            origin_xy=np.asarray(offset),
        )
        cmd = [
            python,
            str(HERE / "ptychi_runner.py"),
            str(inp),
            str(out),
            "--algorithm",
            algorithm,
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
            "--threads",
            str(threads),
            *(["--refine-probe"] if refine_probe else []),
            *extra_args,
            *(
                ["--snapshot-epochs", ",".join(map(str, snapshot_epochs))]
                if snapshot_epochs
                else []
            ),
        ]
        if time_limit_s is not None:
            cmd += ["--time-limit-s", f"{time_limit_s:.3f}"]
        env = {**os.environ, "PYTHONPATH": str(SHIM)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with np.load(out) as z:
            obj, probe = z["object"], z["probe"]
            seconds, n_epochs = float(z["seconds"]), int(len(z["epoch_seconds"]))
            positions = z["positions_xy"] if "positions_xy" in z else None
            epoch_s = z["epoch_seconds"]
            snaps = (
                {
                    int(e): (o, float(epoch_s[int(e) - 1]))
                    for e, o in zip(z["snapshot_epochs"], z["snapshots"], strict=True)
                }
                if "snapshots" in z
                else {}
            )
    placed = scan.positions_px if positions is None else positions
    if positions is not None and not np.isfinite(positions).all():
        raise RuntimeError(
            f"pty-chi returned non-finite positions ({np.isnan(positions).sum()} NaN)"
        )
    ill = illumination(obj.shape, placed, offset, probe)
    result = PtychiResult(obj, probe, offset, ill, seconds, n_epochs, positions)
    result.snapshots = snaps
    return result
