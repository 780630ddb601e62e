"""The forward model of a far-field ptychography experiment (PHYSICS.md section 2).

exit wave ``psi = O_patch * P_k``; far field ``fftshift(fft2(psi, norm="ortho"))``; expected
counts ``g * sum_k |Psi_k|^2`` (incoherent modes add intensities). Pure torch, no Lightning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptychopinn.physics.shifts import SHIFT_PAD, extract_patches, place_patches


def far_field(psi: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D FFT of (..., N, N) with the zero frequency moved to the array centre."""
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def diffraction_intensity(object_patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Far-field intensity ``sum_k |F(O * P_k)|^2`` without gain.

    object_patches: (..., N, N) complex; probe: (N, N) or (..., K, N, N) complex (K incoherent
    modes; leading probe dimensions broadcast against the patches' leading dimensions).
    Returns (..., N, N) real.
    """
    modes = probe[None] if probe.dim() == 2 else probe
    psi = object_patches.unsqueeze(-3) * modes  # (..., K, N, N)
    return far_field(psi).abs().square().sum(dim=-3)


def probe_weight(probe: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Stitching/averaging weight: total probe intensity normalised to peak 1, plus a floor."""
    modes = probe if probe.dim() == 3 else probe[None]
    intensity = modes.abs().square().sum(dim=0)
    return intensity / intensity.max() + floor


def overlap_constrain(patches: torch.Tensor, offsets_xy: torch.Tensor,
                      weight: torch.Tensor) -> torch.Tensor:
    """Make the C patches of each group mutually consistent (PHYSICS.md section 3).

    patches: (B, C, N, N) complex; offsets_xy: (B, C, 2) positions relative to the group centroid;
    weight: (N, N) real. The patches are placed on a small group canvas with ``place_patches``,
    averaged with ``weight`` where they overlap, and re-extracted with ``extract_patches``.
    """
    b, c, n, _ = patches.shape
    if c == 1:
        return patches
    reach = int(math.ceil(float(offsets_xy.abs().max()))) if offsets_xy.numel() else 0
    half = n // 2 + SHIFT_PAD + reach + 1
    size = 2 * half + n
    pos = offsets_xy + half + n // 2
    w = weight.to(patches.dtype).expand(b, c, n, n)
    num = place_patches(patches * w, pos, (size, size))
    den = place_patches(w, pos, (size, size)).real
    canvas = num / (den + 1e-6 * den.amax(dim=(-2, -1), keepdim=True))
    return extract_patches(canvas, pos, n)


class ForwardModel(nn.Module):
    """Object patches of a group -> expected counts, with a trainable positive global gain.

    The gain is log-parameterised and initialised from data (``init_gain``) so that a
    unit-amplitude object predicts the measured mean counts.
    """

    def __init__(self, probe: torch.Tensor, gain: float = 1.0, trainable_gain: bool = True):
        super().__init__()
        probe = torch.as_tensor(probe)
        if probe.dim() == 2:
            probe = probe[None]
        self.register_buffer("probe", probe.to(torch.complex64))
        self.register_buffer("weight", probe_weight(self.probe))
        self.log_gain = nn.Parameter(torch.tensor(math.log(gain), dtype=torch.float32),
                                     requires_grad=trainable_gain)

    @property
    def gain(self) -> torch.Tensor:
        return self.log_gain.exp()

    def constrain(self, patches: torch.Tensor, offsets_xy: torch.Tensor) -> torch.Tensor:
        return overlap_constrain(patches, offsets_xy, self.weight)

    def forward(self, patches: torch.Tensor, offsets_xy: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, C, N, N) complex -> expected counts (B, C, N, N) float."""
        if offsets_xy is not None:
            patches = self.constrain(patches, offsets_xy)
        return self.gain * diffraction_intensity(patches, self.probe)


def init_gain(mean_counts_per_pattern: float, probe) -> float:
    """Gain that makes a unit-amplitude object predict ``mean_counts_per_pattern`` (Parseval)."""
    probe = torch.as_tensor(probe)
    energy = float(probe.abs().square().sum())
    if energy <= 0:
        raise ValueError("probe has zero energy")
    return max(float(mean_counts_per_pattern), 1e-12) / energy
