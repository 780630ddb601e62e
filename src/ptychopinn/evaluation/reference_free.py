"""Quality measures that need no ground truth: how well a reconstruction explains its own counts
(data residual) and how well two independent reconstructions of the same object agree (half-scan
Fourier ring correlation).

- :func:`data_residual`: the forward model (PHYSICS.md section 2) of the reconstruction's object,
  probe and positions against the measured counts, with the Poisson maximum-likelihood gain.
  Reports the Poisson deviance per good pixel (about 1 for a model as good as the noise allows at
  high counts, less at low counts; larger is worse), the full Poisson NLL per pattern (constant
  ``lgamma(I + 1)`` included, so values compare across reconstructions of the same scan) and the
  amplitude R-factor ``sum |sqrt(lambda) - sqrt(I)| / sum sqrt(I)``.
- :func:`split_halves`: the even and odd patterns of a scan, two disjoint halves.
- :func:`half_scan_frc`: FRC between reconstructions of the two halves, after aligning one to the
  other (shift, phase offset and ramp, amplitude scale removed, as ``evaluate`` does against a
  ground truth), inside the region both lit; the 1/2-bit threshold gives the resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ptychopinn.errors import PtychoPINNError

#: patterns per forward-model batch in :func:`data_residual`
RESIDUAL_BATCH = 128
#: largest shift (px per axis) searched between two half-scan reconstructions: they share the
#: scan's frame, so only the small translation that probe retrieval leaves free separates them
#: (a wider search can lock onto periodic artefacts a whole scan step away, measured)
HALF_SCAN_MAX_SHIFT_PX = 10.0


def split_halves(scan):
    """(even, odd): the scan's patterns 0, 2, 4, ... and 1, 3, 5, ... (``ScanData.patterns``)."""
    return scan.patterns("even"), scan.patterns("odd")


def data_residual(
    object_: np.ndarray, offset_px, probe: np.ndarray, scan, positions_px: np.ndarray | None = None
) -> dict:
    """Data residual of a reconstruction on ``scan`` (module docstring).

    object_: (H, W) complex canvas, canvas pixel = position pixel + ``offset_px`` (x, y);
    probe: (N, N) or (K, N, N); positions_px: (M, 2) (x, y) in the scan's frame, default the
    scan's own. Returns a dict of floats plus ``per_pattern_deviance`` (M,) for plots.
    """
    from ptychopinn.physics.forward import diffraction_intensity
    from ptychopinn.physics.shifts import SHIFT_PAD, extract_patches

    n = scan.patch_size
    probe = np.asarray(probe)
    probe = probe[None] if probe.ndim == 2 else probe
    if probe.ndim != 3 or probe.shape[-2:] != (n, n):
        raise PtychoPINNError(
            f"probe of shape {probe.shape} does not match the scan's {n} x {n} patterns"
        )
    pos = np.asarray(scan.positions_px if positions_px is None else positions_px, np.float64)
    if pos.shape != (scan.n_patterns, 2):
        raise PtychoPINNError(f"{pos.shape[0]} positions for {scan.n_patterns} patterns")
    canvas_pos = pos + np.asarray(offset_px, np.float64).reshape(1, 2)
    obj = np.asarray(object_)
    h, w = obj.shape
    lo = np.floor(canvas_pos) - n // 2 - SHIFT_PAD
    hi = lo + n + 2 * SHIFT_PAD
    if (lo < 0).any() or hi[:, 0].max() > w or hi[:, 1].max() > h:
        pad = int(max(0, -lo.min(), hi[:, 0].max() - w, hi[:, 1].max() - h))
        obj = np.pad(obj, pad, constant_values=1.0)
        canvas_pos = canvas_pos + pad
    canvas = torch.as_tensor(obj, dtype=torch.complex64)
    probe_t = torch.as_tensor(probe, dtype=torch.complex64)
    good = np.ones((n, n), bool) if scan.bad_pixels is None else ~scan.bad_pixels
    good_t = torch.as_tensor(good)
    m = scan.n_patterns

    def model(s):  # (B, N, N) modelled intensity without gain, patterns s .. s + batch
        p = torch.as_tensor(canvas_pos[s : s + RESIDUAL_BATCH])
        return diffraction_intensity(extract_patches(canvas, p, n), probe_t)

    # two passes in batches (memory O(batch), not O(M)): the Poisson ML gain, then the measures
    with torch.no_grad():
        model_sum = sum(float((model(s) * good_t).sum()) for s in range(0, m, RESIDUAL_BATCH))
        count_sum = float((scan.diffraction.sum(axis=0, dtype=np.float64) * good).sum())
        gain = count_sum / max(model_sum, 1e-30)
        eps = max(1e-6 * count_sum / (good.sum() * m), 1e-12)
        nll_sum, amp_diff, amp_sum = 0.0, 0.0, 0.0
        per_pattern_dev = torch.empty(m, dtype=torch.float64)
        for s in range(0, m, RESIDUAL_BATCH):
            lam = model(s).double() * gain
            i = torch.as_tensor(scan.diffraction[s : s + RESIDUAL_BATCH]).double()
            log_lam = torch.log(lam + eps)
            nll_sum += float(((lam - i * log_lam + torch.lgamma(i + 1)) * good_t).sum())
            ratio = torch.where(
                i > 0, i * (torch.log(i.clamp_min(1e-300)) - log_lam), torch.zeros_like(i)
            )
            per_pattern_dev[s : s + len(i)] = (2.0 * (ratio - (i - lam)) * good_t).sum(dim=(-2, -1))
            amp_diff += float(((lam.sqrt() - i.sqrt()).abs() * good_t).sum())
            amp_sum += float((i.sqrt() * good_t).sum())
        r_factor = amp_diff / max(amp_sum, 1e-30)
    n_good = float(good.sum())
    per_pattern_dev = per_pattern_dev / n_good
    result = {
        "poisson_deviance_per_pixel": float(per_pattern_dev.mean()),
        "poisson_nll_per_pattern": nll_sum / m,
        "r_factor": r_factor,
        "gain": gain,
        "n_patterns": int(scan.n_patterns),
        "per_pattern_deviance": per_pattern_dev.numpy().astype(np.float32),
    }
    for key in ("poisson_deviance_per_pixel", "poisson_nll_per_pattern", "r_factor"):
        if not math.isfinite(result[key]):
            raise PtychoPINNError(
                f"data residual {key} is not finite: the reconstruction's "
                "object or probe holds no usable values"
            )
    return result


def _lit(recon, fraction: float) -> np.ndarray:
    ill = np.asarray(recon.illumination, dtype=np.float64)
    if ill.shape != np.shape(recon.object) or not ill.max() > 0:
        raise PtychoPINNError(
            "half-scan FRC needs each reconstruction's illumination map (as "
            "written in reconstruction.npz)"
        )
    return ill >= fraction * ill.max()


def half_scan_frc(
    recon_a,
    recon_b,
    *,
    pixel_size_m: float | None = None,
    illumination_fraction: float | None = None,
    shrink_px: int | None = None,
) -> dict:
    """FRC between two reconstructions of disjoint halves of one scan (module docstring).

    ``recon_a``/``recon_b``: objects with ``object``, ``offset_px`` and ``illumination``
    (``Reconstruction`` or ``ReconstructionFile``) whose canvases share the scan's position frame
    (canvas pixel = position pixel + offset). ``b`` is aligned to ``a``; the region is where both
    are lit above ``illumination_fraction`` of their peaks, eroded by ``shrink_px``.

    Returns resolution entries (``frc_resolution_px``, ``frc_resolution_cycles_per_px``,
    ``frc_resolution_m`` when ``pixel_size_m`` is given, ``frc_crossed_threshold``), the curve
    under ``frc_curve`` and the alignment that was removed under ``alignment``.
    """
    from ptychopinn.evaluation.align import (
        ILLUMINATION_FRACTION,
        SHRINK_PX,
        align_to_truth,
        erode,
    )
    from ptychopinn.evaluation.metrics import frc

    fraction = illumination_fraction or ILLUMINATION_FRACTION
    shrink = SHRINK_PX if shrink_px is None else int(shrink_px)
    a_obj = np.asarray(recon_a.object)
    rel = np.asarray(recon_b.offset_px, np.float64) - np.asarray(recon_a.offset_px, np.float64)
    lit_a, lit_b = _lit(recon_a, fraction), _lit(recon_b, fraction)
    # b's lit map on a's frame (nearest pixel): a pixel (r, c) is b pixel (r, c) + rel
    shift = np.round(rel).astype(int)
    both = np.zeros_like(lit_a)
    h, w = lit_a.shape
    hb, wb = lit_b.shape
    r0, c0 = max(0, -shift[1]), max(0, -shift[0])
    r1, c1 = min(h, hb - shift[1]), min(w, wb - shift[0])
    if r1 > r0 and c1 > c0:
        both[r0:r1, c0:c1] = (
            lit_a[r0:r1, c0:c1]
            & lit_b[r0 + shift[1] : r1 + shift[1], c0 + shift[0] : c1 + shift[0]]
        )
    region = erode(both, shrink)
    pair = align_to_truth(
        recon_b.object,
        a_obj,
        offset_px=rel,
        region_mask=region,
        max_shift_px=HALF_SCAN_MAX_SHIFT_PX,
    )
    curve = frc(pair.recon, pair.truth, pair.mask)
    res_px = curve.resolution_px
    return {
        "frc_resolution_px": float(res_px),
        "frc_resolution_cycles_per_px": float(curve.resolution_cycles_per_px),
        "frc_resolution_m": float(res_px * pixel_size_m) if pixel_size_m else None,
        "frc_crossed_threshold": bool(curve.crossed),
        "region_pixels": int(pair.mask.sum()),
        "frc_curve": curve.curve_dict(),
        "alignment": {
            k: v
            for k, v in pair.params.items()
            if k
            in (
                "shift_x_px",
                "shift_y_px",
                "phase_offset_rad",
                "phase_ramp_x_rad_per_px",
                "phase_ramp_y_rad_per_px",
                "amplitude_scale",
            )
        },
    }
