"""Image-quality metrics of a reconstruction against ground truth (pure numpy).

All metrics are computed after :func:`ptychopinn.evaluation.align.align_to_truth` has removed the
far-field ambiguities, and only inside the scanned region:

- PSNR (dB) of amplitude and of phase: ``10 log10(data_range^2 / MSE)`` over the region, with
  ``data_range`` the range (max - min) of the ground truth inside the region.
- SSIM of amplitude and of phase: Wang et al. (IEEE TIP 13, 600, 2004): Gaussian window
  sigma 1.5 (truncated at 3.5 sigma, 11 x 11), K1 = 0.01, K2 = 0.03, population (co)variances,
  symmetric edge padding. The SSIM map is computed on the region's bounding box grown by the
  window radius (so masked pixels see real neighbours) and averaged over the region's pixels.
  Without a mask it equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=...)``.
- Phase images are compared modulo 2 pi: the reconstruction's phase is taken as
  ``angle(truth) + wrap(angle(recon) - angle(truth))`` so a wrap at +-pi is not an error.
- Complex NRMSE: ``min_c ||c * recon - truth|| / ||truth||`` over the region, c a complex scalar.
- FRC (Fourier ring correlation) between the aligned reconstruction and the ground truth on the
  region's bounding box: weighted mean removed, apodised by the region mask blurred with a
  Gaussian (sigma 2 px, so the window falls smoothly to zero at the region's edge), zero-padded
  to a square of side L; rings of width 1/L cycles/px;
  ``FRC = Re sum F1 conj(F2) / sqrt(sum |F1|^2 sum |F2|^2)``. Resolution: the first ring (after
  the DC ring) where the FRC falls below the 1/2-bit threshold of van Heel & Schatz (J. Struct.
  Biol. 151, 250, 2005), ``T(n) = (0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n))`` with n
  the pixels in the ring, linearly interpolated between rings. The threshold was derived for two
  independent half-data-set reconstructions; here one side is the noiseless truth, which makes it
  a conservative (pessimistic) criterion. If the FRC never crosses, the resolution is reported as
  Nyquist (0.5 cycles/px, 2 px) with ``frc_crossed_threshold = False``.

Non-finite values (e.g. the PSNR of an exact match) are reported as None so the result is strict
JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptychopinn.data.geometry import PIXEL_SIZE_KEYS  # the one list of pixel-size keys
from ptychopinn.errors import PtychoPINNError
from ptychopinn.evaluation.align import (
    AMBIGUITIES,
    ILLUMINATION_FRACTION,
    SHRINK_PX,
    AlignedPair,
    align_to_truth,
    gaussian_filter,
    gaussian_kernel,
    mask_bbox,
)

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
FRC_WINDOW_SIGMA_PX = 2.0

#: scalar metrics reported for the reconstruction and for the flat baseline
METRIC_KEYS = (
    "amplitude_psnr",
    "amplitude_ssim",
    "phase_psnr",
    "phase_ssim",
    "complex_nrmse",
    "frc_resolution_px",
    "frc_resolution_cycles_per_px",
    "frc_resolution_m",
    "frc_crossed_threshold",
)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mask_or_all(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != tuple(shape):
        raise PtychoPINNError(f"mask: shape {m.shape} differs from the images {tuple(shape)}")
    if not m.any():
        raise PtychoPINNError("mask: no pixels selected")
    return m


def data_range_of(truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Range (max - min) of ``truth`` in ``mask``; if it is zero (below 1e-5 of the largest
    value, e.g. the amplitude of a pure phase object stored in complex64), the largest absolute
    value, else 1, so PSNR/SSIM stay defined."""
    t = np.asarray(truth, dtype=np.float64)[_mask_or_all(mask, np.shape(truth))]
    rng = float(t.max() - t.min())
    # below float32 round-off of the values, a range is noise (a stored pure-phase object)
    if rng > 1e-5 * max(float(np.abs(t).max()), 1e-300):
        return rng
    peak = float(np.abs(t).max())
    return peak if peak > 0 else 1.0


def psnr(
    recon: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB of real images (H, W) inside ``mask``; inf if equal."""
    r = np.asarray(recon, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if r.shape != t.shape:
        raise PtychoPINNError(f"psnr: shapes differ, {r.shape} vs {t.shape}")
    m = _mask_or_all(mask, t.shape)
    rng = data_range_of(t, m) if data_range is None else float(data_range)
    mse = float(np.mean((r[m] - t[m]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def ssim_map(
    recon: np.ndarray,
    truth: np.ndarray,
    data_range: float,
    sigma: float = SSIM_SIGMA,
    truncate: float = SSIM_TRUNCATE,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """Per-pixel SSIM (H, W) of two real images with a Gaussian window (Wang et al. 2004)."""
    x = np.asarray(recon, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.shape != y.shape:
        raise PtychoPINNError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    win = gaussian_kernel(sigma, truncate).size
    if min(x.shape) < win:
        raise PtychoPINNError(f"ssim: images {x.shape} are smaller than the {win}x{win} window")
    if not data_range > 0:
        raise PtychoPINNError(f"ssim: data_range must be > 0, got {data_range}")

    def blur(a):
        return gaussian_filter(a, sigma, truncate, mode="symmetric")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(
    recon: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = None,
    mask: np.ndarray | None = None,
    sigma: float = SSIM_SIGMA,
) -> float:
    """Mean SSIM of real images (H, W).

    Without ``mask``: the mean over the map with a window-radius border cropped (as
    scikit-image does). With ``mask``: the map is computed on the mask's bounding box grown by the
    window radius and averaged over the mask's pixels.
    """
    t = np.asarray(truth, dtype=np.float64)
    r = np.asarray(recon, dtype=np.float64)
    rng = data_range_of(t, mask) if data_range is None else float(data_range)
    pad = gaussian_kernel(sigma, SSIM_TRUNCATE).size // 2
    if mask is None:
        smap = ssim_map(r, t, rng, sigma)
        return float(smap[pad:-pad, pad:-pad].mean()) if pad else float(smap.mean())
    m = _mask_or_all(mask, t.shape)
    rows, cols = mask_bbox(m, margin=pad)
    smap = ssim_map(r[rows, cols], t[rows, cols], rng, sigma)
    return float(smap[m[rows, cols]].mean())


def complex_nrmse(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``min_c ||c recon - truth|| / ||truth||`` over ``mask`` (c complex: scale and phase)."""
    r = np.asarray(recon, dtype=np.complex128)
    t = np.asarray(truth, dtype=np.complex128)
    m = _mask_or_all(mask, t.shape)
    r, t = r[m], t[m]
    nt = float(np.vdot(t, t).real)
    if nt == 0:
        raise PtychoPINNError("complex_nrmse: ground truth is zero in the region")
    nr = float(np.vdot(r, r).real)
    c = np.vdot(r, t) / nr if nr > 0 else 0.0
    return float(np.linalg.norm(c * r - t) / math.sqrt(nt))


def half_bit_threshold(ring_pixels: np.ndarray) -> np.ndarray:
    """1/2-bit information threshold (van Heel & Schatz 2005) for rings of ``ring_pixels``
    pixels."""
    n = np.maximum(np.asarray(ring_pixels, dtype=np.float64), 1.0)
    s = np.sqrt(n)
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


@dataclass
class FRCResult:
    """Fourier ring correlation curve.

    frequency_cycles_per_px, frc, threshold, ring_pixels: (R,) arrays, ring k at k / L cycles/px;
    resolution_cycles_per_px: first crossing below the threshold (Nyquist 0.5 if none, with
    crossed False); resolution_px: its period 1 / frequency.
    """

    frequency_cycles_per_px: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    ring_pixels: np.ndarray
    resolution_cycles_per_px: float
    crossed: bool

    @property
    def resolution_px(self) -> float:
        return (
            1.0 / self.resolution_cycles_per_px if self.resolution_cycles_per_px > 0 else math.inf
        )

    def curve_dict(self) -> dict:
        """The curve as JSON lists: frequency_cycles_per_px, frc, threshold_half_bit, ring_pixels
        (the ``frc_curve`` entry of metrics.json)."""
        return {
            "frequency_cycles_per_px": [float(v) for v in self.frequency_cycles_per_px],
            "frc": [float(v) for v in self.frc],
            "threshold_half_bit": [float(v) for v in self.threshold],
            "ring_pixels": [int(v) for v in self.ring_pixels],
        }


def frc_resolution(
    frequency: np.ndarray, frc_curve: np.ndarray, threshold: np.ndarray
) -> tuple[float, bool]:
    """First frequency (cycles/px, linear interpolation) where ``frc`` drops below ``threshold``,
    skipping the DC ring. Returns (frequency, crossed); (0.5, False) if it never drops."""
    d = np.asarray(frc_curve, float) - np.asarray(threshold, float)
    f = np.asarray(frequency, float)
    if d.size < 2:
        return 0.5, False
    if d[1] < 0:  # ring 0 is DC alone (zero after mean removal): no interpolation below ring 1
        return float(f[1]), True
    for k in range(2, d.size):
        if d[k] < 0:
            t = d[k - 1] / (d[k - 1] - d[k])
            return float(f[k - 1] + t * (f[k] - f[k - 1])), True
    return 0.5, False


def frc(
    image_a: np.ndarray,
    image_b: np.ndarray,
    mask: np.ndarray | None = None,
    window_sigma_px: float = FRC_WINDOW_SIGMA_PX,
) -> FRCResult:
    """Fourier ring correlation of two (H, W) images (real or complex) on ``mask``'s bounding box.

    The window is ``mask`` blurred by a Gaussian of ``window_sigma_px`` (zero outside the box) times
    the mask; without a mask, a separable Hann window over the whole image.
    """
    a = np.asarray(image_a, dtype=np.complex128)
    b = np.asarray(image_b, dtype=np.complex128)
    if a.shape != b.shape:
        raise PtychoPINNError(f"frc: shapes differ, {a.shape} vs {b.shape}")
    if mask is None:
        h, w = a.shape
        win = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    else:
        m = _mask_or_all(mask, a.shape)
        rows, cols = mask_bbox(m)
        a, b, m = a[rows, cols], b[rows, cols], m[rows, cols]
        win = gaussian_filter(m.astype(np.float64), window_sigma_px, mode="constant") * m
    sw = win.sum()
    if sw <= 0:
        raise PtychoPINNError("frc: empty window")
    a = (a - (win * a).sum() / sw) * win
    b = (b - (win * b).sum() / sw) * win
    size = max(a.shape)
    size += size % 2
    fa = np.fft.fft2(a, s=(size, size))
    fb = np.fft.fft2(b, s=(size, size))
    k = np.fft.fftfreq(size) * size
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64).ravel()
    n_rings = size // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]

    def ring_sum(v):
        return np.bincount(ring, weights=v.ravel()[keep], minlength=n_rings)[:n_rings]

    num = ring_sum((fa * np.conj(fb)).real)
    den = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    curve = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    pixels = np.bincount(ring, minlength=n_rings)[:n_rings].astype(np.int64)
    freq = np.arange(n_rings) / size
    thr = half_bit_threshold(pixels)
    res, crossed = frc_resolution(freq, curve, thr)
    return FRCResult(freq, curve, thr, pixels, res, crossed)


def phase_images(recon: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recon_phase, truth_phase) in radians, the reconstruction's unwrapped onto the truth's."""
    t = np.asarray(truth, dtype=np.complex128)
    r = np.asarray(recon, dtype=np.complex128)
    pt = np.angle(t)
    return pt + np.angle(r * np.conj(t)), pt


def metrics_from_alignment(
    pair: AlignedPair, pixel_size_m: float | None = None, with_curve: bool = True
) -> dict:
    """Scalar metrics (METRIC_KEYS plus data ranges and the alignment parameters) of an aligned
    pair.

    With ``with_curve`` the FRC curve is added under ``frc_curve`` as lists:
    frequency_cycles_per_px, frc, threshold_half_bit, ring_pixels.
    """
    r, t, m = pair.recon, pair.truth, pair.mask
    amp_r, amp_t = np.abs(r), np.abs(t)
    ph_r, ph_t = phase_images(r, t)
    amp_range = data_range_of(amp_t, m)
    ph_range = data_range_of(ph_t, m)
    curve = frc(r, t, m)
    res_px = curve.resolution_px
    out = {
        "amplitude_psnr": psnr(amp_r, amp_t, amp_range, m),
        "amplitude_ssim": ssim(amp_r, amp_t, amp_range, m),
        "phase_psnr": psnr(ph_r, ph_t, ph_range, m),
        "phase_ssim": ssim(ph_r, ph_t, ph_range, m),
        "complex_nrmse": complex_nrmse(r, t, m),
        "frc_resolution_px": res_px,
        "frc_resolution_cycles_per_px": curve.resolution_cycles_per_px,
        "frc_resolution_m": res_px * pixel_size_m if pixel_size_m else None,
        "frc_crossed_threshold": bool(curve.crossed),
        "amplitude_data_range": amp_range,
        "phase_data_range_rad": ph_range,
    }
    out = {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in out.items()}
    out.update(pair.params)
    if with_curve:
        out["frc_curve"] = curve.curve_dict()
    return out


def flat_baseline_pair(pair: AlignedPair) -> AlignedPair:
    """The "reconstruct nothing" baseline on ``pair``'s frame: constant amplitude (mean of the
    truth's amplitude in the region), zero phase, given the same phase offset, ramp and scale
    freedoms as the reconstruction (a translation means nothing for a constant)."""
    level = float(np.abs(pair.truth)[pair.mask].mean())
    flat = np.full(pair.truth.shape, level, dtype=np.complex128)
    return align_to_truth(
        flat, pair.truth, region_mask=pair.mask, remove=("phase_offset", "phase_ramp", "scale")
    )


def evaluate_reconstruction(
    recon_object: np.ndarray,
    ground_truth: np.ndarray,
    region_mask: np.ndarray | None = None,
    offset_px=None,
    *,
    illumination: np.ndarray | None = None,
    positions_px=None,
    radius_px: float | None = None,
    probe: np.ndarray | None = None,
    illumination_fraction: float = ILLUMINATION_FRACTION,
    shrink_px: int = SHRINK_PX,
    pixel_size_m: float | None = None,
    remove=AMBIGUITIES,
    baseline: bool = True,
) -> dict:
    """Align ``recon_object`` to ``ground_truth`` and measure it (see the module docstring).

    Arguments as :func:`ptychopinn.evaluation.align.align_to_truth`; ``pixel_size_m`` adds
    ``frc_resolution_m``. Returns a JSON-serialisable dict: the METRIC_KEYS (PSNR in dB, None
    where infinite), data ranges, alignment parameters (shift_x_px, shift_y_px, phase_offset_rad,
    phase_ramp_x_rad_per_px, phase_ramp_y_rad_per_px, amplitude_scale, region_source,
    region_pixels, region_bbox_px [x0, y0, x1, y1]), ``frc_curve`` (lists) and, with
    ``baseline``, ``baseline_flat`` (the METRIC_KEYS of the flat-object baseline).
    """
    pair = align_to_truth(
        recon_object,
        ground_truth,
        offset_px=offset_px,
        region_mask=region_mask,
        illumination=illumination,
        positions_px=positions_px,
        radius_px=radius_px,
        probe=probe,
        illumination_fraction=illumination_fraction,
        shrink_px=shrink_px,
        remove=remove,
    )
    return evaluate_aligned(pair, pixel_size_m=pixel_size_m, baseline=baseline)


def evaluate_aligned(
    pair: AlignedPair, pixel_size_m: float | None = None, baseline: bool = True
) -> dict:
    """:func:`evaluate_reconstruction` for an already aligned pair (the CLI reuses the pair for
    plots)."""
    out = metrics_from_alignment(pair, pixel_size_m)
    if baseline:
        base = metrics_from_alignment(flat_baseline_pair(pair), pixel_size_m, with_curve=False)
        out["baseline_flat"] = {k: base[k] for k in METRIC_KEYS}
    return out


def pixel_size_from_metadata(*metadatas: dict) -> float | None:
    """The first positive object pixel size (metres) found under PIXEL_SIZE_KEYS, else None."""
    for md in metadatas:
        if not isinstance(md, dict):
            continue
        for key in PIXEL_SIZE_KEYS:
            try:
                value = float(md.get(key))
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value > 0:
                return value
    return None
