"""Reconstruction workflows over the engines: refine a start (or a flat object), train on the scan
itself and reconstruct it (self-supervised), measure against ground truth."""

from __future__ import annotations

from pathlib import Path

from ptychopinn.config import inference_batch_size
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError
from ptychopinn.reconstruction.result import Reconstruction


def refine_reconstruction(
    recon: Reconstruction | None,
    scan: ScanData,
    epochs: int,
    *,
    quiet: bool = True,
    seed: int = 0,
    refine_probe: bool = False,
    **kwargs,
) -> Reconstruction:
    """Physics refinement on the scan's own Poisson likelihood, from ``recon`` or a flat start:
    the gradient engine (``reconstruction.gradient.GradientEngine``) with these settings.
    ``kwargs``: further ``refine`` arguments."""
    from ptychopinn.reconstruction.gradient import GradientEngine

    engine = GradientEngine(
        epochs=epochs, seed=seed, quiet=quiet, refine_probe=refine_probe, **kwargs
    )
    return engine.run(scan, recon)


def self_supervised_reconstruction(
    scan: ScanData,
    output_dir: str | Path | None,
    *,
    model_config=None,
    data_config=None,
    training_config=None,
    execution_config=None,
    refine_epochs: int = 0,
    overwrite: bool = False,
    refine_kwargs: dict | None = None,
    device: str = "cpu",
):
    """Train on the scan itself (no labels), reconstruct it, optionally refine.

    Returns (Reconstruction, TrainResult). The bundle is written to ``output_dir`` when given;
    the single pass runs on ``device`` (training on the execution config's accelerator).
    """
    from ptychopinn.config import (
        DataConfig,
        ExecutionConfig,
        ModelConfig,
        TrainingConfig,
    )
    from ptychopinn.reconstruction.network import reconstruct
    from ptychopinn.training.fit import fit

    execution_config = execution_config or ExecutionConfig()
    result = fit(
        [scan],
        None,
        model_config=model_config or ModelConfig(),
        data_config=data_config or DataConfig(),
        training_config=training_config or TrainingConfig(),
        execution_config=execution_config,
        output_dir=output_dir,
        overwrite=overwrite,
    )
    batch = inference_batch_size(execution_config.inference_batch_size)
    recon = reconstruct(
        result.bundle,
        scan,
        batch_size=batch,
        seed=execution_config.seed,
        quiet=execution_config.quiet,
        device=device,
    )
    recon.metadata["method"] = "ptychopinn self-supervised network"
    if refine_epochs:
        recon = refine_reconstruction(
            recon,
            scan,
            refine_epochs,
            quiet=execution_config.quiet,
            seed=execution_config.seed,
            **(refine_kwargs or {}),
        )
    return recon, result


def evaluate_against_truth(recon: Reconstruction, scan: ScanData):
    """Align ``recon`` to the scan's ground truth (ambiguities removed) and measure it.

    Returns (metrics dict, AlignedPair) so callers can plot the aligned arrays.
    """
    from ptychopinn.evaluation import align_to_truth, evaluate_aligned

    if scan.object_truth is None:
        raise DataError(scan.source, "objectGuess", "no ground truth to evaluate against")
    pair = align_to_truth(
        recon.object,
        scan.object_truth,
        offset_px=recon.offset_px,
        illumination=recon.illumination,
        positions_px=scan.positions_px,
        probe=scan.probe,
    )
    return evaluate_aligned(pair), pair
