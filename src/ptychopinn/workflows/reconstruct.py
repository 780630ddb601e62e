"""Reconstruction workflows over the engines: refine a start (or a flat object), train on the scan
itself and reconstruct it (self-supervised), measure against ground truth."""

from __future__ import annotations

from pathlib import Path

from ptychopinn.config import inference_batch_size
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError
from ptychopinn.reconstruction.result import Reconstruction


def network_reconstruction(
    bundle,
    scan: ScanData,
    *,
    device: str = "cpu",
    devices: int = 1,
    strategy: str = "auto",
    batch_size: int,
    seed: int = 0,
    quiet: bool = True,
    phase_sync_iterations: int,
    precision: str = "32-true",
) -> Reconstruction | None:
    """A trained ``bundle``'s single pass over ``scan``, stitched: on one ``device``
    (``reconstruction.network.reconstruct``) or, with ``devices`` > 1, in that many processes
    of ``device``'s type under Lightning ``strategy`` (``training.predict``); the network in
    ``precision`` (``config.InferConfig.inference_precision``). None in the
    further processes a ``ddp`` launcher started (only rank 0 stitches)."""
    import time

    from ptychopinn.reconstruction.network import (
        label_network_result,
        reconstruct,
        stitched_patches,
    )

    if devices == 1:
        return reconstruct(
            bundle,
            scan,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            device=device,
            phase_sync_iterations=phase_sync_iterations,
            precision=precision,
        )
    from ptychopinn.training.predict import distributed_patch_store

    t0 = time.perf_counter()
    done = distributed_patch_store(
        bundle.model_config,
        bundle.data_config.neighbors,
        bundle.build_generator(),
        scan,
        accelerator=device,
        devices=devices,
        strategy=strategy,
        batch_size=batch_size,
        seed=seed,
        quiet=quiet,
        precision=precision,
    )
    if done is None:
        return None
    patches, per_process = done
    recon = stitched_patches(
        patches,
        scan,
        time.perf_counter() - t0,
        phase_sync_iterations,
        precision=precision,
        devices=devices,
        patterns_per_process=per_process,
    )
    return label_network_result(recon, bundle, scan)


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
    run_config=None,
    overwrite: bool = False,
    device: str = "cpu",
):
    """Train on the scan itself (no labels), reconstruct it, and refine it when
    ``run_config.refine.refine_epochs`` > 0.

    ``run_config``: a ``config_factory.RunConfig`` (None: the defaults). Returns
    (Reconstruction, TrainResult). The bundle and the audit are written to ``output_dir`` when
    given; the single pass and refinement run on ``device`` (training on the execution config's
    accelerator).
    """
    from ptychopinn.config_factory import build_run_config
    from ptychopinn.reconstruction.gradient import GradientEngine
    from ptychopinn.reconstruction.network import reconstruct
    from ptychopinn.training.fit import fit

    rc = run_config or build_run_config()
    e = rc.execution
    result = fit([scan], None, run_config=rc, output_dir=output_dir, overwrite=overwrite)
    recon = reconstruct(
        result.bundle,
        scan,
        batch_size=inference_batch_size(rc.infer.inference_batch_size),
        phase_sync_iterations=rc.infer.phase_sync_iterations,
        precision=rc.infer.inference_precision,
        seed=e.seed,
        quiet=e.quiet,
        device=device,
    )
    recon.metadata["method"] = "ptychopinn self-supervised network"
    if rc.refine.refine_epochs:
        engine = GradientEngine.from_config(rc.refine, seed=e.seed, quiet=e.quiet, device=device)
        recon = engine.run(scan, recon)
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
