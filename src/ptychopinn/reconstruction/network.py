"""The network engine: a trained bundle + a scan -> the stitched complex object, in one pass.

``predict_group_patches`` (amplitudes -> [physics estimate] -> generator -> overlap constraint ->
complex patches) is the one patch-prediction path of training (the LightningModule calls it) and
inference.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from ptychopinn.config import INFERENCE_BATCH_SIZE, PHASE_SYNC_ITERATIONS, ModelConfig
from ptychopinn.data.grouping import group_positions
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import PtychoPINNError
from ptychopinn.io.bundle import ModelBundle, load_bundle
from ptychopinn.io.spill import SPILL_BYTES, SpillArray
from ptychopinn.log import get_logger
from ptychopinn.physics.forward import (
    OverlapGeometry,
    init_gain,
    overlap_constrain,
    probe_weight,
    projection_estimate,
)
from ptychopinn.reconstruction.engine import ENGINES, Progress, StopRequest
from ptychopinn.reconstruction.result import Reconstruction
from ptychopinn.reconstruction.stitching import stitch

log = get_logger("inference")


def predict_group_patches(
    generator: torch.nn.Module,
    model_config: ModelConfig,
    counts: torch.Tensor,
    a0: float | torch.Tensor,
    offsets_xy: torch.Tensor,
    probe: torch.Tensor,
    weight: torch.Tensor,
    gain: float | torch.Tensor,
    estimate: torch.Tensor | None = None,
    bad_pixels: torch.Tensor | None = None,
    precision: str = "32-true",
) -> torch.Tensor:
    """Complex patches (B, C, N, N) for groups of measured ``counts`` (B, C, N, N).

    a0: amplitude normalisation (scalar or (B, 1, 1, 1)); probe: (K, N, N) or (B, 1, K, N, N);
    weight: (N, N) or (B, 1, N, N); gain: the scan's data-initialised gain (scalar or (B,)),
    used only to compute the physics estimate when ``estimate`` (B, C, N, N) is not given;
    bad_pixels: optional (N, N) bool, zero in ``counts`` and left free by the estimate;
    precision: the generator's (``autocast``); the estimate and the constraint stay float32.
    """
    amplitude = counts.clamp_min(0).sqrt() / a0
    offsets_xy = offsets_xy.to(torch.float32)
    constrain = counts.shape[1] > 1
    inputs = (amplitude,)
    geometry = None  # the groups' overlap geometry, shared by the estimate and the constraint
    if model_config.physics_iterations > 0:
        if estimate is None:
            if constrain:
                geometry = OverlapGeometry(offsets_xy, weight, counts.shape[-1], torch.complex64)
            with torch.no_grad():
                estimate = projection_estimate(
                    counts,
                    probe,
                    gain,
                    model_config.physics_iterations,
                    offsets_xy if constrain else None,
                    weight,
                    bad_pixels,
                    geometry=geometry,
                )
        inputs = (amplitude, estimate)
    with autocast(counts.device, precision):  # the generator only: the estimate is float32
        patches = generator(*inputs)
    if constrain:
        if estimate is not None and model_config.overlap_constraint == "correction":
            # the estimate is already consistent: only the network's change of it is averaged
            # (averaging the estimate again blurs it)
            change = overlap_constrain(patches - estimate, offsets_xy, weight, geometry, fill=0.0)
            patches = estimate + change
        else:
            patches = overlap_constrain(patches, offsets_xy, weight, geometry)
    return patches


def autocast(device: torch.device, precision: str):
    """The autocast context of an inference ``precision`` (``config.INFERENCE_PRECISIONS``) on
    ``device``: none for 32-true; bfloat16, or float16 on CUDA for 16-mixed."""
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "16-mixed" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def covering_groups(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A subset of groups (G, C) that contains every pattern, and which member to keep.

    Groups are visited in order (one group was seeded at every position); a group is kept if it
    holds a pattern no kept group holds yet, and each pattern is taken from the first kept group
    that holds it. With gridsize 2 this needs about half the groups (measured 2x faster
    inference). Returns (rows of the kept groups, (len(rows), C) bool mask of members to take).
    """
    covered = np.zeros(int(indices.max()) + 1, dtype=bool)
    rows, take = [], []
    for g, members in enumerate(indices):
        new = ~covered[members]  # a group's members are distinct (group_positions)
        if new.any():
            rows.append(g)
            take.append(new)
            covered[members] = True
    return np.asarray(rows, dtype=np.int64), np.asarray(take, dtype=bool).reshape(
        len(rows), indices.shape[1]
    )


def predict_patches(
    bundle: ModelBundle,
    scan: ScanData,
    batch_size: int = INFERENCE_BATCH_SIZE,
    seed: int = 0,
    quiet: bool = True,
    generator: torch.nn.Module | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Network patches for every pattern: (M, N, N) complex64, in memory.

    With gridsize > 1 the scan is grouped like training (one group seeded at every position),
    a covering subset of the groups is run (``covering_groups``), the group's patches are
    overlap-constrained as in training, and each position's patch is taken from the first kept
    group that holds it.
    """
    return group_patch_store(
        bundle.model_config,
        bundle.data_config.neighbors,
        generator or bundle.build_generator(),
        scan,
        batch_size=batch_size,
        seed=seed,
        quiet=quiet,
        device=device,
        memory_bytes=float("inf"),
    ).tensor()


def pass_groups(mc: ModelConfig, neighbors: int, scan: ScanData, seed: int = 0):
    """The groups of a network pass over ``scan`` (checked against model ``mc``): grouped like
    training, one group seeded at every position from ``neighbors`` nearest neighbours, and the
    covering subset that is run (``covering_groups``). Returns (groups, rows, take); a scan
    that cannot go through the model is a one-line PtychoPINNError."""
    if scan.patch_size != mc.n:
        raise PtychoPINNError(
            f"{scan.source}: diffraction: patterns are {scan.patch_size}x{scan.patch_size} "
            f"but the model was trained on N={mc.n}"
        )
    if scan.n_patterns < mc.channels:
        raise PtychoPINNError(
            f"{scan.source}: diffraction: {scan.n_patterns} patterns; gridsize "
            f"{mc.gridsize} needs at least {mc.channels}"
        )
    groups = group_positions(
        scan.positions_px, mc.gridsize, neighbors, n_groups=scan.n_patterns, seed=seed
    )
    return (groups, *covering_groups(groups.indices))


def group_patch_store(
    mc: ModelConfig,
    neighbors: int,
    net: torch.nn.Module,
    scan: ScanData,
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    seed: int = 0,
    quiet: bool = True,
    device: str | torch.device = "cpu",
    memory_bytes: float = SPILL_BYTES,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    precision: str = "32-true",
) -> SpillArray:
    """Patches of every pattern of ``scan`` by ``predict_group_patches`` with generator ``net``
    (model ``mc``, groups drawn from ``neighbors`` nearest neighbours) into a ``SpillArray`` (a
    temporary file past ``memory_bytes``): the network engine's pass, and the estimate engine's
    with a generator that returns its estimate. The counts are read one batch at a time (bad
    pixels zeroed per batch, never a copy of the scan). ``progress``/``stop``: the engine hooks
    (``reconstruction.engine``), per batch of groups; a stop leaves the patterns not reached yet
    flat (1). ``precision``: the network's (``predict_group_patches``)."""
    groups, order, take = pass_groups(mc, neighbors, scan, seed)
    net = net.to(device)
    a0 = scan.amplitude_scale()
    bad = None
    if scan.bad_pixels is not None:  # as in training: no input, no constraint at bad pixels
        bad = torch.as_tensor(scan.bad_pixels).to(device)
    probe = torch.as_tensor(scan.probe).to(device)
    weight = probe_weight(probe)
    gain = init_gain(scan.mean_counts, scan.probe)  # as for the training estimates
    out = SpillArray((scan.n_patterns, mc.n, mc.n), np.complex64, memory_bytes=memory_bytes)
    cuda = torch.device(device).type == "cuda"
    steps = -(-len(order) // batch_size)
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), unit="group", desc="inference")
    done = np.zeros(scan.n_patterns, dtype=bool)
    with torch.inference_mode():
        for step, s in enumerate(range(0, len(order), batch_size), start=1):
            if step > 1 and stop is not None and stop():  # between steps
                rest = np.flatnonzero(~done)
                for r in range(0, len(rest), 4096):
                    piece = rest[r : r + 4096]
                    out.write(piece, torch.ones(len(piece), mc.n, mc.n, dtype=torch.complex64))
                break
            rows = order[s : s + batch_size]
            idx = groups.indices[rows]
            offsets = torch.as_tensor(groups.offsets_px[rows]).to(device)
            counts = torch.as_tensor(scan.diffraction[idx])
            if cuda:  # page-locked host batch: the copy to the GPU overlaps the work before it
                counts = counts.pin_memory()
            counts = counts.to(device, non_blocking=cuda)
            if bad is not None:
                counts = counts.masked_fill(bad, 0.0)
            patches = predict_group_patches(
                net,
                mc,
                counts,
                a0,
                offsets,
                probe,
                weight,
                gain,
                bad_pixels=bad,
                precision=precision,
            )
            keep = take[s : s + batch_size]
            out.write(idx[keep], patches[torch.as_tensor(keep)].cpu())
            done[idx[keep]] = True
            if bar is not None:
                bar.update(len(rows))
            if progress is not None:
                progress(step, steps, {"patterns": int(done.sum())})
    if bar is not None:
        bar.close()
    return out


def stitched_pass(
    mc: ModelConfig,
    neighbors: int,
    net: torch.nn.Module,
    scan: ScanData,
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    seed: int = 0,
    quiet: bool = True,
    device: str | torch.device = "cpu",
    phase_sync_iterations: int = PHASE_SYNC_ITERATIONS,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    precision: str = "32-true",
) -> Reconstruction:
    """``group_patch_store`` of every pattern (the network in ``precision``), stitched onto one
    canvas (the ground-truth object's frame when the scan carries one and the positions fit in
    it, else a canvas just covering the scan). ``metadata["history"]``: patterns done after
    each batch."""
    history: list[dict] = []

    def record(step, total, info):
        history.append({"step": step, **info})
        if progress is not None:
            progress(step, total, info)

    t0 = time.perf_counter()
    patches = group_patch_store(
        mc,
        neighbors,
        net,
        scan,
        batch_size=batch_size,
        seed=seed,
        quiet=quiet,
        device=device,
        progress=record,
        stop=stop,
        precision=precision,
    )
    return stitched_patches(
        patches,
        scan,
        time.perf_counter() - t0,
        phase_sync_iterations,
        history=history,
        precision=precision,
        devices=1,
        patterns_per_process=[scan.n_patterns],
    )


def stitched_patches(
    patches: SpillArray,
    scan: ScanData,
    network_seconds: float,
    phase_sync_iterations: int = PHASE_SYNC_ITERATIONS,
    **metadata,
) -> Reconstruction:
    """Every pattern's network ``patches`` (closed here) stitched onto one canvas (the
    ground-truth object's frame when the scan carries one and the positions fit in it, else a
    canvas just covering the scan); ``network_seconds``: how long the pass that made them took;
    ``metadata`` entries are added to the result's."""
    t0 = time.perf_counter()
    shape = scan.object_truth.shape if scan.object_truth is not None else None
    try:
        obj, illum, offset = stitch(
            patches, scan.positions_px, scan.probe, shape, phase_sync_iterations
        )
    finally:
        patches.close()
    return Reconstruction(
        object=obj,
        offset_px=offset,
        positions_px=scan.positions_px,
        illumination=illum,
        probe=scan.probe,
        metadata={
            "source": scan.source,
            "seconds": network_seconds + time.perf_counter() - t0,
            "network_seconds": network_seconds,
            "patterns_per_second": scan.n_patterns / max(network_seconds, 1e-9),
            **metadata,
        },
    )


def reconstruct(
    model: ModelBundle | str | Path,
    scan: ScanData,
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    seed: int = 0,
    quiet: bool = True,
    device: str | torch.device = "cpu",
    phase_sync_iterations: int = PHASE_SYNC_ITERATIONS,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    precision: str = "32-true",
) -> Reconstruction:
    """Single-pass reconstruction of ``scan`` with a trained model, stitched onto one canvas
    (``stitched_pass`` with the bundle's generator, in ``precision``)."""
    bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
    recon = stitched_pass(
        bundle.model_config,
        bundle.data_config.neighbors,
        bundle.build_generator(),
        scan,
        batch_size=batch_size,
        seed=seed,
        quiet=quiet,
        device=device,
        phase_sync_iterations=phase_sync_iterations,
        progress=progress,
        stop=stop,
        precision=precision,
    )
    return label_network_result(recon, bundle, scan)


def label_network_result(
    recon: Reconstruction, bundle: ModelBundle, scan: ScanData
) -> Reconstruction:
    """``recon`` labelled as the network's (method, model manifest), logged."""
    recon.metadata.update({"method": "ptychopinn network", "model": bundle.manifest})
    log.info(
        "reconstructed %d patterns in %.2f s (%.0f patterns/s network only)",
        scan.n_patterns,
        recon.metadata["seconds"],
        recon.metadata["patterns_per_second"],
    )
    return recon


@ENGINES.register("network")
class NetworkEngine:
    """A trained bundle's single pass (``reconstruct``); a start is not used (the network needs
    none)."""

    name = "network"

    def __init__(
        self,
        model: ModelBundle | str | Path,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
        seed: int = 0,
        device: str | torch.device = "cpu",
        phase_sync_iterations: int = PHASE_SYNC_ITERATIONS,
        quiet: bool = True,
    ):
        self.bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
        self.options = dict(
            batch_size=batch_size,
            seed=seed,
            device=device,
            phase_sync_iterations=phase_sync_iterations,
            quiet=quiet,
        )

    def run(self, scan, start=None, *, progress=None, stop=None) -> Reconstruction:
        return reconstruct(self.bundle, scan, progress=progress, stop=stop, **self.options)
