"""Patch prediction shared by training and inference (no Lightning): one code path.

amplitudes -> [physics estimate] -> generator -> overlap constraint -> complex patches.
"""

from __future__ import annotations

import torch

from ptychopinn.config import ModelConfig
from ptychopinn.physics.forward import overlap_constrain, projection_estimate


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
) -> torch.Tensor:
    """Complex patches (B, C, N, N) for groups of measured ``counts`` (B, C, N, N).

    a0: amplitude normalisation (scalar or (B, 1, 1, 1)); probe: (K, N, N) or (B, 1, K, N, N);
    weight: (N, N) or (B, 1, N, N); gain: the scan's data-initialised gain (scalar or (B,)),
    used only to compute the physics estimate when ``estimate`` (B, C, N, N) is not given;
    bad_pixels: optional (N, N) bool, zero in ``counts`` and left free by the estimate.
    """
    amplitude = counts.clamp_min(0).sqrt() / a0
    offsets_xy = offsets_xy.to(torch.float32)
    constrain = counts.shape[1] > 1
    if model_config.physics_iterations > 0:
        if estimate is None:
            with torch.no_grad():
                estimate = projection_estimate(
                    counts,
                    probe,
                    gain,
                    model_config.physics_iterations,
                    offsets_xy if constrain else None,
                    weight,
                    bad_pixels,
                )
        patches = generator(amplitude, estimate)
    else:
        patches = generator(amplitude)
    if constrain:
        patches = overlap_constrain(patches, offsets_xy, weight)
    return patches
