"""Shared steps of the CLI workflows (infer, reconstruct, demo): outputs and refinement."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ptychopinn.data.scan import ScanData
from ptychopinn.inference import Reconstruction
from ptychopinn.io.atomic import check_new_output

RECONSTRUCTION_FILES = ("reconstruction.npz", "amplitude_phase.png")


def write_reconstruction_outputs(recon: Reconstruction, output_dir: str | Path,
                                 overwrite: bool = False, title: str = "reconstruction") -> list[Path]:
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
    save_complex_png(recon.object, targets[1], title=title, mask=mask)
    return targets


def refine_reconstruction(recon: Reconstruction | None, scan: ScanData, epochs: int, *,
                          quiet: bool = True, seed: int = 0, refine_probe: bool = False,
                          **kwargs) -> Reconstruction:
    """Physics refinement on the scan's own Poisson likelihood, from ``recon`` or a flat start."""
    from ptychopinn.refinement import refine

    initial, offset = (None, None) if recon is None else (recon.object, recon.offset_px)
    result = refine(scan, initial, offset, epochs=epochs, seed=seed, refine_probe=refine_probe,
                    quiet=quiet, **kwargs)
    metadata = dict(recon.metadata) if recon is not None else {"source": scan.source}
    metadata.update({"refine_epochs": epochs, "refine_losses": list(map(float, result.losses)),
                     "refine_seconds": result.seconds,
                     "method": (metadata.get("method", "flat start") + " + physics refinement")})
    base = recon or Reconstruction(object=result.object, offset_px=np.asarray(result.offset_px),
                                   positions_px=scan.positions_px, illumination=result.illumination,
                                   probe=result.probe)
    return replace(base, object=result.object, offset_px=np.asarray(result.offset_px),
                   illumination=result.illumination, probe=result.probe, metadata=metadata)


def self_supervised_reconstruction(scan: ScanData, output_dir: str | Path | None, *,
                                   model_config=None, data_config=None, training_config=None,
                                   execution_config=None, refine_epochs: int = 0,
                                   overwrite: bool = False):
    """Train on the scan itself (no labels), reconstruct it, optionally refine.

    Returns (Reconstruction, TrainResult). The bundle is written to ``output_dir`` when given.
    """
    from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
    from ptychopinn.inference import reconstruct
    from ptychopinn.training.fit import fit

    execution_config = execution_config or ExecutionConfig()
    result = fit([scan], None, model_config=model_config or ModelConfig(),
                 data_config=data_config or DataConfig(),
                 training_config=training_config or TrainingConfig(),
                 execution_config=execution_config, output_dir=output_dir, overwrite=overwrite)
    batch = execution_config.inference_batch_size or result.bundle.training_config.batch_size
    recon = reconstruct(result.bundle, scan, batch_size=batch, seed=execution_config.seed,
                        quiet=execution_config.quiet)
    recon.metadata["method"] = "ptychopinn self-supervised network"
    if refine_epochs:
        recon = refine_reconstruction(recon, scan, refine_epochs, quiet=execution_config.quiet,
                                      seed=execution_config.seed)
    return recon, result


def evaluate_against_truth(recon: Reconstruction, scan: ScanData) -> dict:
    """Metrics of ``recon`` against the scan's ground-truth object (ambiguities removed)."""
    from ptychopinn.evaluation import evaluate_reconstruction

    if scan.object_truth is None:
        raise ValueError(f"{scan.source}: objectGuess: no ground truth to evaluate against")
    return evaluate_reconstruction(recon.object, scan.object_truth, offset_px=recon.offset_px,
                                   illumination=recon.illumination, positions_px=scan.positions_px,
                                   probe=scan.probe)
