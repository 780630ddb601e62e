"""Writing a reconstruction's files: ``reconstruction.npz`` and its picture, atomically."""

from __future__ import annotations

from pathlib import Path

from ptychopinn.io.atomic import check_new_output
from ptychopinn.reconstruction.result import Reconstruction

RECONSTRUCTION_FILES = ("reconstruction.npz", "amplitude_phase.png")


def write_reconstruction_outputs(
    recon: Reconstruction,
    output_dir: str | Path,
    overwrite: bool = False,
    title: str = "reconstruction",
) -> list[Path]:
    """Write ``reconstruction.npz`` and an amplitude/phase PNG (with colour bars) atomically.

    Every target is checked before anything is written, so a refused run writes nothing.
    """
    from ptychopinn.evaluation.plots import save_complex_png

    out = Path(output_dir)
    targets = [out / name for name in RECONSTRUCTION_FILES]
    for t in targets:
        check_new_output(t, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    recon.save(targets[0], overwrite=overwrite)
    mask = recon.illumination > 1e-2 * float(recon.illumination.max())
    save_complex_png(recon.object, targets[1], title=title, mask=mask, overwrite=overwrite)
    return targets
