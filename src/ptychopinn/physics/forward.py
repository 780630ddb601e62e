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


def edge_taper(n: int, width: int = 3, dtype=torch.float32) -> torch.Tensor:
    """(n, n) separable sin^2 ramp from 0 at the border to 1 after ``width`` pixels."""
    ramp = torch.ones(n, dtype=dtype)
    t = torch.sin(0.5 * math.pi * (torch.arange(width, dtype=dtype) + 0.5) / width) ** 2
    ramp[:width], ramp[n - width :] = t, t.flip(0)
    return ramp[:, None] * ramp[None, :]


def probe_weight(probe: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Stitching/averaging weight (N, N): total probe intensity normalised to peak 1, plus a
    floor, tapered smoothly to zero at the window border (so sub-pixel Fourier placement of
    weighted patches does not ring)."""
    modes = probe if probe.dim() == 3 else probe[None]
    intensity = modes.abs().square().sum(dim=0)
    n = intensity.shape[-1]
    return (intensity / intensity.max() + floor) * edge_taper(n, dtype=intensity.dtype).to(
        intensity.device
    )


def phase_factors(
    patches: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Unit complex factors (...,) that best rotate each patch (..., N, N) onto ``reference``
    (weighted least squares over each patch): the free global phase of a far-field patch."""
    c = (weight * reference * patches.conj()).sum(dim=(-2, -1))
    return torch.polar(torch.ones_like(c.real), torch.angle(c))


class OverlapGeometry:
    """What ``overlap_constrain`` needs of a batch's offsets and weight, computed once: the group
    canvas size, the members' positions on it, the weight and its placed sum (regularised).
    ``projection_estimate`` reuses one for all its iterations (the offsets do not change)."""

    def __init__(self, offsets_xy: torch.Tensor, weight: torch.Tensor, n: int, dtype):
        b, c = offsets_xy.shape[:2]
        reach = int(math.ceil(float(offsets_xy.abs().max()))) if offsets_xy.numel() else 0
        half = n // 2 + SHIFT_PAD + reach + 1
        self.n = n
        self.size = 2 * half + n
        self.pos = offsets_xy + half + n // 2
        self.w = weight.to(dtype).expand(b, c, n, n)
        den = place_patches(self.w, self.pos, (self.size, self.size), kernel="bilinear").real
        # Where no patch has weight (window borders) the regularised average falls back to a
        # flat object (1) instead of amplifying ringing, which the sub-pixel re-extraction would
        # pick up.
        self.delta = 1e-6 * den.amax(dim=(-2, -1), keepdim=True)
        self.den = den + self.delta


def overlap_constrain(
    patches: torch.Tensor,
    offsets_xy: torch.Tensor,
    weight: torch.Tensor,
    geometry: OverlapGeometry | None = None,
) -> torch.Tensor:
    """Make the C patches of each group mutually consistent (PHYSICS.md section 3).

    patches: (B, C, N, N) complex; offsets_xy: (B, C, 2) positions relative to the group centroid;
    weight: (N, N) real. The patches are placed on a small group canvas with ``place_patches``,
    averaged with ``weight`` where they overlap, and re-extracted with ``extract_patches``.
    ``geometry``: a precomputed ``OverlapGeometry(offsets_xy, weight, N, patches.dtype)``.
    """
    b, c, n, _ = patches.shape
    if c == 1:
        return patches
    g = geometry or OverlapGeometry(offsets_xy, weight, n, patches.dtype)
    num = place_patches(patches * g.w, g.pos, (g.size, g.size), kernel="bilinear")
    return extract_patches((num + g.delta) / g.den, g.pos, n, kernel="bilinear")


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
        self.log_gain = nn.Parameter(
            torch.tensor(math.log(gain), dtype=torch.float32), requires_grad=trainable_gain
        )

    @property
    def gain(self) -> torch.Tensor:
        return self.log_gain.exp()

    def constrain(self, patches: torch.Tensor, offsets_xy: torch.Tensor) -> torch.Tensor:
        return overlap_constrain(patches, offsets_xy, self.weight)

    def forward(
        self, patches: torch.Tensor, offsets_xy: torch.Tensor | None = None
    ) -> torch.Tensor:
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


def projection_estimate(
    counts: torch.Tensor,
    probe: torch.Tensor,
    gain: torch.Tensor,
    iterations: int,
    offsets_xy: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bad_pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """A physics-only first estimate of the object patches of each group (no learning).

    Starting from a flat object, ``iterations`` rounds of the error-reduction projection:
    replace the far-field modulus by the measured one (``sqrt(counts / gain)``), back-propagate,
    update the object with the probe-weighted step ``conj(P) / max|P|^2``, then (groups of C > 1)
    make the C patches consistent with ``overlap_constrain``. With incoherent modes the moduli
    are scaled by ``sqrt(measured / predicted)`` (the modal projection).

    counts: (B, C, N, N) measured counts; probe: (N, N), (K, N, N) or per-sample (B, 1, K, N, N);
    gain: scalar or (B,) tensor; offsets_xy: (B, C, 2); weight: (N, N) or (B, 1, N, N);
    bad_pixels: optional (N, N) bool: there the modulus is left free (not replaced).
    Returns (B, C, N, N) complex64. It anchors each patch's free global phase to the flat start
    and puts real-space information where the generator's output is, so the network learns a
    correction rather than a Fourier inversion.
    """
    modes = probe[None] if probe.dim() == 2 else probe
    gain = torch.as_tensor(gain, dtype=torch.float32, device=counts.device)
    g = gain.view(-1, 1, 1, 1) if gain.dim() == 1 else gain
    measured = (counts.clamp_min(0) / g).sqrt()
    obj = torch.ones(counts.shape, dtype=torch.complex64, device=counts.device)
    step = modes.conj() / modes.abs().square().sum(dim=-3, keepdim=True).amax(
        dim=(-2, -1), keepdim=True
    )
    constrain = offsets_xy is not None and obj.shape[1] > 1 and weight is not None
    geometry = OverlapGeometry(offsets_xy, weight, obj.shape[-1], obj.dtype) if constrain else None
    for _ in range(iterations):
        psi = obj.unsqueeze(-3) * modes  # (B, C, K, N, N)
        far = far_field(psi)
        predicted = far.abs().square().sum(dim=-3, keepdim=True).sqrt()
        ratio = measured.unsqueeze(-3) / (
            predicted + 1e-6 * predicted.amax(dim=(-2, -1), keepdim=True) + 1e-12
        )
        if bad_pixels is not None:
            ratio = torch.where(bad_pixels.to(ratio.device), torch.ones_like(ratio), ratio)
        far = far * ratio
        new_psi = torch.fft.ifft2(torch.fft.ifftshift(far, dim=(-2, -1)), norm="ortho")
        obj = obj + (step * (new_psi - psi)).sum(dim=-3)
        if constrain:
            obj = overlap_constrain(obj, offsets_xy, weight, geometry)
    return obj
