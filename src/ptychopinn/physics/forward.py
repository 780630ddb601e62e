"""The forward model of a far-field ptychography experiment (PHYSICS.md section 2), once.

Exit wave ``psi_k = O_patch * P_k`` (``exit_waves``); far field
``fftshift(fft2(psi, norm="ortho"))`` (``far_field``, inverse ``back_propagate``); expected
counts ``g * sum_k |Psi_k|^2`` (``expected_counts``; incoherent modes add intensities).
Simulation, training, the physics estimate and refinement all compute counts with these
functions. Refinement uses the documented fast path ``centred=False`` (no fftshift: it compares
with counts ifftshifted once per minibatch) and folds each pattern's sub-pixel shift into its
probe (parity with ``extract_patches`` is tested). The gain is estimated differently per use
(data-initialised and trainable in training, closed-form Poisson ML in refinement) but enters
the model only here. Pure torch, no Lightning.
"""

from __future__ import annotations

import math

import torch

from ptychopinn.physics.shifts import SHIFT_PAD, extract_patches, place_patches, window_index


def exit_waves(object_patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """``O * P_k``: object_patches (..., N, N) complex; probe (N, N) or (..., K, N, N) (K
    incoherent modes; leading probe dimensions broadcast against the patches' leading ones).
    Returns (..., K, N, N)."""
    modes = probe[None] if probe.dim() == 2 else probe
    return object_patches.unsqueeze(-3) * modes


def far_field(psi: torch.Tensor, centred: bool = True) -> torch.Tensor:
    """Orthonormal 2-D FFT of (..., N, N) with the zero frequency moved to the array centre
    (``centred=False``: left at pixel 0, the fast path)."""
    far = torch.fft.fft2(psi, norm="ortho")
    return torch.fft.fftshift(far, dim=(-2, -1)) if centred else far


def back_propagate(far: torch.Tensor) -> torch.Tensor:
    """The inverse of ``far_field`` (centred far field -> exit wave)."""
    return torch.fft.ifft2(torch.fft.ifftshift(far, dim=(-2, -1)), norm="ortho")


def intensity(far: torch.Tensor) -> torch.Tensor:
    """``sum_k |Psi_k|^2`` of a far field (..., K, N, N) -> (..., N, N): squares of the real and
    imaginary parts, so the gradient is defined where the field is zero. Without autograd the
    real and imaginary views are squared separately (2-5x faster on this CPU, measured on
    2,000 x 64^2 fields; with autograd the interleaved form's backward is the faster)."""
    if far.requires_grad and torch.is_grad_enabled():
        return torch.view_as_real(far).square().sum(dim=(-1, -4))
    return (far.real.square() + far.imag.square()).sum(dim=-3)


def diffraction_intensity(
    object_patches: torch.Tensor, probe: torch.Tensor, centred: bool = True
) -> torch.Tensor:
    """Far-field intensity ``sum_k |F(O * P_k)|^2`` without gain: (..., N, N) real.

    object_patches: (..., N, N) complex; probe: (N, N) or (..., K, N, N) complex.
    ``centred=False``: the zero frequency at pixel 0 (``ifftshift`` of the centred intensity).
    """
    return intensity(far_field(exit_waves(object_patches, probe), centred))


def expected_counts(
    object_patches: torch.Tensor,
    probe: torch.Tensor,
    gain: float | torch.Tensor,
    centred: bool = True,
) -> torch.Tensor:
    """The model's expected counts ``g * sum_k |F(O * P_k)|^2`` (gain: a scalar or a tensor that
    broadcasts against the (..., N, N) intensity)."""
    return gain * diffraction_intensity(object_patches, probe, centred)


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
    power = modes.abs().square().sum(dim=0)
    n = power.shape[-1]
    return (power / power.max() + floor) * edge_taper(n, dtype=power.dtype).to(power.device)


def phase_factors(
    patches: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Unit complex factors (...,) that best rotate each patch (..., N, N) onto ``reference``
    (weighted least squares over each patch): the free global phase of a far-field patch."""
    c = (weight * reference * patches.conj()).sum(dim=(-2, -1))
    return torch.polar(torch.ones_like(c.real), torch.angle(c))


#: Relative floor of every place-and-average division (the overlap constraint, stitching): where
#: the placed weight is below about this fraction of its peak, the average falls back to ``fill``
#: (a flat object) instead of dividing by almost nothing; above it the average is unbiased.
AVERAGE_FLOOR = 1e-6


class WeightedAverage:
    """``num / den`` for placed, weighted sums ``num`` and their placed weights ``den`` (peak
    ``peak``), regularised: ``(num + d fill) / (den + d)`` with ``d = floor * peak``. The one
    place-and-average rule of the overlap constraint and of stitching; set up once per ``den``
    (the overlap constraint applies it at every projection iteration). With ``fill=0`` and a
    larger ``floor`` it is a confidence-weighted average that fades where few patches overlap
    (stitching's phase reference). A call's ``fill`` overrides the one set up, reusing the
    inverse."""

    def __init__(
        self,
        den: torch.Tensor,
        peak: float | torch.Tensor,
        fill: float = 1.0,
        floor: float = AVERAGE_FLOOR,
    ):
        self.d = floor * peak
        self.offset = self.d * fill
        self.inverse = 1.0 / (den + self.d)

    def __call__(self, num: torch.Tensor, fill: float | None = None) -> torch.Tensor:
        out = num + (self.offset if fill is None else self.d * fill)
        if torch.is_complex(out) and not torch.is_complex(self.inverse):
            # a real factor on the real/imaginary view: no complex copy of ``inverse``
            return torch.view_as_complex(torch.view_as_real(out) * self.inverse.unsqueeze(-1))
        return out * self.inverse


def weighted_average(
    num: torch.Tensor,
    den: torch.Tensor,
    peak: float | torch.Tensor,
    fill: float = 1.0,
    floor: float = AVERAGE_FLOOR,
) -> torch.Tensor:
    """``WeightedAverage(den, peak, fill, floor)(num)``, for a one-off average."""
    return WeightedAverage(den, peak, fill, floor)(num)


class OverlapGeometry:
    """What ``overlap_constrain`` needs of a batch's offsets and weight, computed once: the group
    canvas size, the members' positions on it, the weight and its placed sum (regularised).
    ``projection_estimate`` reuses one for all its iterations (the offsets do not change)."""

    def __init__(self, offsets_xy: torch.Tensor, weight: torch.Tensor, n: int, dtype):
        b, c = offsets_xy.shape[:2]
        reach = int(math.ceil(float(offsets_xy.abs().max()))) if offsets_xy.numel() else 0
        # the smallest canvas that holds every member's padded window (the first one starts at
        # pixel 1): the average's cost is the canvas's (an extra N/2 margin per side was 2.4x
        # the area at N = 64)
        half = SHIFT_PAD + reach + 1
        self.n = n
        self.size = 2 * half + n
        self.pos = offsets_xy + half + n // 2
        self.index = window_index((b, self.size, self.size), self.pos, n)  # reused every call
        self.w = weight.to(dtype).expand(b, c, n, n)
        self.den = place_patches(
            self.w, self.pos, (self.size, self.size), kernel="bilinear", index=self.index
        ).real
        # Where no patch has weight (window borders) the average falls back to a flat object (1)
        # instead of amplifying ringing, which the sub-pixel re-extraction would pick up.
        self.peak = self.den.amax(dim=(-2, -1), keepdim=True)
        self.average = WeightedAverage(self.den, self.peak)


def overlap_constrain(
    patches: torch.Tensor,
    offsets_xy: torch.Tensor,
    weight: torch.Tensor,
    geometry: OverlapGeometry | None = None,
    fill: float = 1.0,
) -> torch.Tensor:
    """Make the C patches of each group mutually consistent (PHYSICS.md section 3).

    patches: (B, C, N, N) complex; offsets_xy: (B, C, 2) positions relative to the group centroid;
    weight: (N, N) real. The patches are placed on a small group canvas with ``place_patches``,
    averaged with ``weight`` where they overlap, and re-extracted with ``extract_patches``.
    ``geometry``: a precomputed ``OverlapGeometry(offsets_xy, weight, N, patches.dtype)``.
    ``fill``: the value where no patch has weight (1, a flat object; 0 for a correction, which
    makes the constraint linear). Not a projection: at sub-pixel offsets the bilinear placement
    and re-extraction blur, so constraining consistent patches again changes them.
    """
    b, c, n, _ = patches.shape
    if c == 1:
        return patches
    g = geometry or OverlapGeometry(offsets_xy, weight, n, patches.dtype)
    num = place_patches(patches * g.w, g.pos, (g.size, g.size), kernel="bilinear", index=g.index)
    return extract_patches(g.average(num, fill), g.pos, n, kernel="bilinear", index=g.index)


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
    constrain_every: int = 1,
    geometry: OverlapGeometry | None = None,
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
    constrain_every: apply the overlap constraint after every this many iterations (and after
    the last); 1, the package's setting, measured best (benchmarks/estimate_cost.py: every 2nd
    iteration is 1.3-1.5x faster and moves phase SSIM by -0.009 to +0.019 by scan).
    geometry: a precomputed ``OverlapGeometry(offsets_xy, weight, N, torch.complex64)`` (the
    caller's, when it constrains the same groups again).
    Returns (B, C, N, N) complex64. It anchors each patch's free global phase to the flat start
    and puts real-space information where the generator's output is, so the network learns a
    correction rather than a Fourier inversion.
    """
    modes = probe[None] if probe.dim() == 2 else probe
    gain = torch.as_tensor(gain, dtype=torch.float32, device=counts.device)
    g = gain.view(-1, 1, 1, 1) if gain.dim() == 1 else gain
    # the far field stays in FFT order (zero frequency at pixel 0): the measured moduli and the
    # bad pixels are shifted once instead of the field twice per iteration
    measured = torch.fft.ifftshift((counts.clamp_min(0) / g).sqrt(), dim=(-2, -1)).unsqueeze(-3)
    free = None
    if bad_pixels is not None:
        free = torch.fft.ifftshift(bad_pixels.to(counts.device), dim=(-2, -1))
    obj = torch.ones(counts.shape, dtype=torch.complex64, device=counts.device)
    step = modes.conj() / modes.abs().square().sum(dim=-3, keepdim=True).amax(
        dim=(-2, -1), keepdim=True
    )
    # obj + sum_k step_k (psi'_k - obj P_k) == obj keep + sum_k step_k psi'_k
    keep = 1 - (step * modes).sum(dim=-3)
    constrain = offsets_xy is not None and obj.shape[1] > 1 and weight is not None
    if constrain and geometry is None:
        geometry = OverlapGeometry(offsets_xy, weight, obj.shape[-1], obj.dtype)
    for it in range(iterations):
        far = far_field(exit_waves(obj, modes), centred=False)  # (B, C, K, N, N)
        predicted = intensity(far).unsqueeze(-3).sqrt()
        ratio = measured / (predicted + 1e-6 * predicted.amax(dim=(-2, -1), keepdim=True) + 1e-12)
        if free is not None:
            ratio = torch.where(free, torch.ones_like(ratio), ratio)
        # the real modulus ratio on the real/imaginary view (no complex copy of it)
        far = torch.view_as_complex(torch.view_as_real(far) * ratio.unsqueeze(-1))
        obj = obj * keep + (step * torch.fft.ifft2(far, norm="ortho")).sum(dim=-3)
        if constrain and ((it + 1) % constrain_every == 0 or it == iterations - 1):
            obj = overlap_constrain(obj, offsets_xy, weight, geometry)
    return obj
