"""Bring a reconstruction onto the ground-truth frame and remove its unmeasurable ambiguities.

Far-field ptychography cannot determine (PHYSICS.md section 5): a global phase offset, a linear
phase ramp, a global amplitude scale and a sub-pixel translation of the whole object. Metrics are
meaningless until these are removed, and they only mean something where the scan illuminated the
object. :func:`align_to_truth` does both:

1. Frame: ``canvas pixel = ground-truth pixel + offset_px`` (the reconstruction file's convention).
   The integer part of the offset is a crop, the fractional part a Fourier shift; both arrays are
   cropped to the pixels they share.
2. Region (ground-truth frame, bool mask), first available of: an explicit mask; the stitched
   illumination above ``illumination_fraction`` of its maximum, shrunk by ``shrink_px`` pixels
   (square structuring element) so the barely lit, poorly constrained rim does not count; discs of
   ``radius_px`` around the scan positions; the whole shared frame shrunk by ``shrink_px``.
3. Phase ramp (coarse): the amplitude-weighted mean phase gradient of ``truth * conj(recon)``;
   it is nearly insensitive to a small misregistration, so it can be removed first.
4. Translation: cross-correlation of the windowed, mean-removed complex fields; integer peak, then
   a local matrix-multiply DFT upsampled around it (Guizar-Sicairos et al., Opt. Lett. 33, 156
   (2008)) and a parabolic fit on the upsampled grid; applied as a Fourier shift. Repeated (up to
   REGISTRATION_PASSES) until the update is below 1e-3 px.
5. Phase offset and ramp (fine): weighted least-squares plane fit to the wrapped phase residual,
   weights ``|truth| * |recon|`` (amplitude weighted), iterated so wrapping does not bias it.
6. Amplitude scale: least squares of ``|recon|`` against ``|truth|`` inside the region.

Pure numpy. Shapes: objects (H, W) complex; masks (H, W) bool; positions (M, 2) as (x, y) with
x = column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptychopinn.errors import PtychoPINNError

#: default threshold, as a fraction of the peak, that makes a pixel part of the scanned region
ILLUMINATION_FRACTION = 0.1
#: default erosion of the illuminated region, in pixels (drops the weakly constrained rim)
SHRINK_PX = 3
#: smallest region bounding box side: the SSIM Gaussian window (sigma 1.5) is 11 pixels wide
MIN_REGION_SIDE_PX = 11
#: most registration passes (each removes most of the previous pass's window bias)
REGISTRATION_PASSES = 5

AMBIGUITIES = ("translation", "phase_offset", "phase_ramp", "scale")


@dataclass
class AlignedPair:
    """A reconstruction and its ground truth on one frame, ambiguities removed.

    recon, truth: (H, W) complex128 on the shared frame (the ground-truth frame cropped to the
    pixels both arrays cover); mask: (H, W) bool region where metrics count; origin_px: (x, y) of
    the frame's pixel (0, 0) in ground-truth pixels; params: what was removed (shift_x_px,
    shift_y_px, phase_offset_rad at the region centroid, phase_ramp_x/y_rad_per_px,
    amplitude_scale) and how the region was chosen (region_source, region_pixels).
    """

    recon: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    origin_px: tuple[int, int] = (0, 0)
    params: dict = field(default_factory=dict)

    def bbox(self, margin: int = 0) -> tuple[slice, slice]:
        """(rows, cols) slices of the region's bounding box grown by ``margin`` (clipped)."""
        return mask_bbox(self.mask, margin)


# ---------------------------------------------------------------------------------------------
# small numpy image helpers


def gaussian_kernel(sigma: float, truncate: float = 3.5) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(
    image: np.ndarray, sigma: float, truncate: float = 3.5, mode: str = "symmetric"
) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array; ``mode`` is a numpy.pad mode.

    ``mode="symmetric"`` equals scipy.ndimage's ``"reflect"`` (edge sample repeated);
    ``mode="constant"`` pads with zeros.
    """
    k = gaussian_kernel(sigma, truncate)
    r = k.size // 2
    img = np.asarray(image, dtype=np.result_type(image, np.float64))
    padded = np.pad(img, r, mode=mode)
    h, w = img.shape
    rows = sum(k[i] * padded[i : i + h, :] for i in range(k.size))
    return sum(k[i] * rows[:, i : i + w] for i in range(k.size))


def erode(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary erosion by a (2r+1) x (2r+1) square; pixels beyond the array count as outside."""
    mask = np.asarray(mask, dtype=bool)
    r = int(radius_px)
    if r <= 0:
        return mask.copy()
    padded = np.pad(mask, r, constant_values=False).astype(np.int64)
    s = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k = 2 * r + 1
    h, w = mask.shape
    box = s[k : k + h, k : k + w] - s[:h, k : k + w] - s[k : k + h, :w] + s[:h, :w]
    return box == k * k


def mask_bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """(rows, cols) slices of the bounding box of ``mask``, grown by ``margin`` and clipped."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PtychoPINNError("evaluation region: empty; nothing to compare")
    h, w = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)),
    )


def disc_mask(
    shape: tuple[int, int], positions_px, radius_px: float, origin_px=(0, 0)
) -> np.ndarray:
    """Union of discs of ``radius_px`` around ``positions_px`` (M, 2) (x, y) on an (H, W) grid
    whose pixel (0, 0) is at ``origin_px`` in the positions' frame."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2) - np.asarray(origin_px, float)
    r = float(radius_px)
    for x, y in pos:
        r0, r1 = max(int(np.floor(y - r)), 0), min(int(np.ceil(y + r)) + 1, h)
        c0, c1 = max(int(np.floor(x - r)), 0), min(int(np.ceil(x + r)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return mask


def probe_radius_px(probe: np.ndarray, fraction: float = ILLUMINATION_FRACTION) -> float:
    """Radius of a disc with the area where the (mode-summed) probe intensity exceeds ``fraction``
    of its peak. ``probe``: (N, N) or (K, N, N) complex."""
    p = np.asarray(probe)
    inten = np.sum(np.abs(p.reshape((-1,) + p.shape[-2:])) ** 2, axis=0)
    if inten.max() <= 0:
        raise PtychoPINNError("probe: zero everywhere; cannot size the evaluation region")
    area = float(np.count_nonzero(inten > fraction * inten.max()))
    return float(np.sqrt(area / np.pi))


# ---------------------------------------------------------------------------------------------
# registration and phase fitting


def _upsampled_cc(cross_power: np.ndarray, centre_xy, upsample: int, half_width_px: float):
    """Cross-correlation sampled on a fine grid around ``centre_xy`` by a matrix-multiply DFT.

    cross_power: (H, W) FFT(a) * conj(FFT(b)). Returns (xs, ys, |cc| (len(ys), len(xs))).
    """
    h, w = cross_power.shape
    n = int(np.ceil(half_width_px * upsample))
    offs = np.arange(-n, n + 1) / upsample
    xs, ys = centre_xy[0] + offs, centre_xy[1] + offs
    ey = np.exp(2j * np.pi * ys[:, None] * np.fft.fftfreq(h)[None, :])  # (ny, H)
    ex = np.exp(2j * np.pi * np.fft.fftfreq(w)[:, None] * xs[None, :])  # (W, nx)
    return xs, ys, np.abs(ey @ cross_power @ ex)


def _parabolic_peak(values: np.ndarray, i: int) -> float:
    """Sub-sample offset of a peak at index i from a parabola through its neighbours."""
    if i <= 0 or i >= values.size - 1:
        return 0.0
    a, b, c = values[i - 1], values[i], values[i + 1]
    den = a - 2 * b + c
    return 0.0 if den >= 0 else float(0.5 * (a - c) / den)


def register_translation(
    moving: np.ndarray,
    reference: np.ndarray,
    weight: np.ndarray | None = None,
    upsample: int = 20,
    max_shift_px: float | None = None,
) -> np.ndarray:
    """Sub-pixel (dx, dy) such that ``moving(x) ~ reference(x - (dx, dy))``.

    Undo it with ``physics.shifts.shift_image(moving, -shift)``. Both (H, W), real or complex;
    ``weight`` (H, W) >= 0 windows them after their weighted means are removed (otherwise the
    constant background of a transmission object flattens the correlation peak).
    ``max_shift_px`` limits the search to shifts of at most that many pixels per axis (two
    reconstructions in one frame can correlate at a whole scan step through periodic artefacts).
    """
    a = np.asarray(moving, dtype=np.complex128)
    b = np.asarray(reference, dtype=np.complex128)
    w = np.ones(a.shape) if weight is None else np.asarray(weight, dtype=np.float64)
    sw = w.sum()
    if sw <= 0:
        raise PtychoPINNError("evaluation region: empty registration window")
    a = (a - (w * a).sum() / sw) * w
    b = (b - (w * b).sum() / sw) * w
    cross = np.fft.fft2(a) * np.conj(np.fft.fft2(b))
    cc = np.abs(np.fft.ifft2(cross))
    if not np.isfinite(cc).all() or cc.max() <= 0:
        return np.zeros(2)
    h, w_ = cc.shape
    if max_shift_px is not None:
        fy = np.abs(np.fft.fftfreq(h) * h)[:, None] <= max_shift_px
        fx = np.abs(np.fft.fftfreq(w_) * w_)[None, :] <= max_shift_px
        cc = np.where(fy & fx, cc, 0.0)
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
    coarse = np.array([ix if ix <= w_ // 2 else ix - w_, iy if iy <= h // 2 else iy - h], float)
    xs, ys, fine = _upsampled_cc(cross, coarse, upsample, 1.0)
    jy, jx = np.unravel_index(int(np.argmax(fine)), fine.shape)
    step = 1.0 / upsample
    dx = xs[jx] + step * _parabolic_peak(fine[jy, :], jx)
    dy = ys[jy] + step * _parabolic_peak(fine[:, jx], jy)
    return np.array([dx, dy])


def _centred_coords(mask: np.ndarray):
    """Pixel coordinates (x - xc, y - yc) relative to the region centroid (xc, yc)."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    n = max(float(mask.sum()), 1.0)
    xc, yc = float(xx[mask].sum() / n), float(yy[mask].sum() / n)
    return xx - xc, yy - yc


def fit_phase_plane(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray, iterations: int = 3):
    """Phase plane ``c + gx*(x - xc) + gy*(y - yc)`` that best maps ``recon`` onto ``truth``.

    (xc, yc) is the region centroid. Returns (c, gx, gy) such that
    ``truth ~ recon * exp(i * plane)``. A mean phase-gradient estimate (immune to wrapping) starts
    ``iterations`` rounds of weighted least squares on the wrapped residual, weights
    ``|recon| * |truth|``.
    """
    z = np.asarray(truth, dtype=np.complex128) * np.conj(np.asarray(recon, dtype=np.complex128))
    m = np.asarray(mask, dtype=bool)
    xx, yy = _centred_coords(m)
    both_x = m[:, 1:] & m[:, :-1]
    both_y = m[1:, :] & m[:-1, :]
    sx = np.sum((z[:, 1:] * np.conj(z[:, :-1]))[both_x])
    sy = np.sum((z[1:, :] * np.conj(z[:-1, :]))[both_y])
    gx = float(np.angle(sx)) if abs(sx) > 0 else 0.0
    gy = float(np.angle(sy)) if abs(sy) > 0 else 0.0
    s0 = np.sum((z * np.exp(-1j * (gx * xx + gy * yy)))[m])
    c = float(np.angle(s0)) if abs(s0) > 0 else 0.0
    wts = np.abs(z[m])
    if wts.sum() <= 0:
        return c, gx, gy
    x, y, zm = xx[m], yy[m], z[m]
    sw = np.sqrt(wts)
    design = np.stack([np.ones(wts.size), x, y], axis=1) * sw[:, None]
    for _ in range(iterations):
        resid = np.angle(zm * np.exp(-1j * (c + gx * x + gy * y)))
        delta, *_ = np.linalg.lstsq(design, resid * sw, rcond=None)
        c, gx, gy = c + float(delta[0]), gx + float(delta[1]), gy + float(delta[2])
        if np.max(np.abs(delta)) < 1e-12:
            break
    return float(np.angle(np.exp(1j * c))), gx, gy


def amplitude_scale(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Least-squares ``a`` minimising ``sum_mask (a |recon| - |truth|)^2``."""
    ar, at = np.abs(recon)[mask], np.abs(truth)[mask]
    den = float(np.sum(ar * ar))
    return float(np.sum(ar * at) / den) if den > 0 else 1.0


# ---------------------------------------------------------------------------------------------
# frame and region


def _common_frame(recon_shape, truth_shape, offset_int):
    """Slices (truth_rows, truth_cols, recon_rows, recon_cols) of the pixels both cover."""
    (hr, wr), (ht, wt) = recon_shape, truth_shape
    ox, oy = int(offset_int[0]), int(offset_int[1])
    y0, y1 = max(0, -oy), min(ht, hr - oy)
    x0, x1 = max(0, -ox), min(wt, wr - ox)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1), slice(y0 + oy, y1 + oy), slice(x0 + ox, x1 + ox))


def _as_object(array, name: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise PtychoPINNError(f"{name}: expected a 2-D (H, W) object, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise PtychoPINNError(f"{name}: expected numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise PtychoPINNError(f"{name}: {int((~np.isfinite(a)).sum())} NaN/inf values")
    return a.astype(np.complex128)


def align_to_truth(
    recon_object: np.ndarray,
    ground_truth: np.ndarray,
    *,
    offset_px=None,
    region_mask: np.ndarray | None = None,
    illumination: np.ndarray | None = None,
    positions_px=None,
    radius_px: float | None = None,
    probe: np.ndarray | None = None,
    illumination_fraction: float = ILLUMINATION_FRACTION,
    shrink_px: int = SHRINK_PX,
    remove=AMBIGUITIES,
    upsample: int = 20,
    max_shift_px: float | None = None,
) -> AlignedPair:
    """Put ``recon_object`` on the ground-truth frame and remove the ambiguities in ``remove``.

    Args:
        recon_object: (Hr, Wr) complex reconstruction canvas.
        ground_truth: (Ht, Wt) complex ground-truth object.
        offset_px: (x, y); reconstruction canvas pixel = ground-truth pixel + offset. None = 0.
        region_mask: optional (Ht, Wt) bool region in the ground-truth frame (used as given).
        illumination: optional (Hr, Wr) placed probe intensity on the reconstruction canvas.
        positions_px: optional (M, 2) scan positions (x, y) in ground-truth pixels.
        radius_px: disc radius around positions; default from ``probe`` (area above
            ``illumination_fraction`` of the peak intensity) or 8 px without one.
        probe: optional (N, N) or (K, N, N) probe, only to size ``radius_px``.
        illumination_fraction: region = illumination > fraction * max (default 0.1).
        shrink_px: erosion of the illumination region (and of the fallback whole frame).
        remove: subset of ("translation", "phase_offset", "phase_ramp", "scale").
        upsample: sub-pixel registration grid (1/upsample px before the parabolic refinement).
        max_shift_px: largest translation searched per axis (None: any).

    Raises PtychoPINNError when the arrays share no pixels or the region is too small.
    """
    from ptychopinn.physics.shifts import shift_image  # torch, on first use

    unknown = set(remove) - set(AMBIGUITIES)
    if unknown:
        raise PtychoPINNError(
            f"remove: unknown ambiguities {sorted(unknown)}; expected a subset of "
            f"{list(AMBIGUITIES)}"
        )
    rec = _as_object(recon_object, "reconstruction object")
    gt = _as_object(ground_truth, "ground truth object")
    offset = (
        np.zeros(2) if offset_px is None else np.asarray(offset_px, dtype=np.float64).reshape(-1)
    )
    if offset.shape != (2,) or not np.isfinite(offset).all():
        raise PtychoPINNError(f"offset_px: expected two finite numbers (x, y), got {offset_px!r}")
    o_int = np.round(offset)
    frac = offset - o_int
    if np.any(frac != 0):
        rec = shift_image(rec, -frac)  # sample the canvas at gt pixel + offset
    frame = _common_frame(rec.shape, gt.shape, o_int)
    if frame is None:
        raise PtychoPINNError(
            f"reconstruction {rec.shape} at offset_px {tuple(offset)} does not overlap "
            f"the ground truth {gt.shape}; cannot align"
        )
    ty, tx, ry, rx = frame
    rec, gt = rec[ry, rx], gt[ty, tx]
    origin = (tx.start, ty.start)

    if region_mask is not None:
        m = np.asarray(region_mask, dtype=bool)
        if m.shape != np.shape(ground_truth):
            raise PtychoPINNError(
                f"region_mask: shape {m.shape} differs from the ground truth "
                f"{np.shape(ground_truth)}"
            )
        mask, source = m[ty, tx], "mask"
    elif illumination is not None:
        ill = np.asarray(illumination, dtype=np.float64)
        if ill.shape != np.shape(recon_object):
            raise PtychoPINNError(
                f"illumination: shape {ill.shape} differs from the reconstruction "
                f"object {np.shape(recon_object)}"
            )
        ill = ill[ry, rx]
        peak = float(ill.max()) if ill.size else 0.0
        if not peak > 0:
            raise PtychoPINNError(
                "illumination: zero where reconstruction and ground truth overlap"
            )
        mask, source = erode(ill > illumination_fraction * peak, shrink_px), "illumination"
    elif positions_px is not None and len(positions_px):
        if radius_px is None:
            radius_px = probe_radius_px(probe, illumination_fraction) if probe is not None else 8.0
        mask = disc_mask(gt.shape, positions_px, radius_px, origin_px=origin)
        source = "positions"
    else:
        mask, source = erode(np.ones(gt.shape, dtype=bool), shrink_px), "frame"
    rows, cols = mask_bbox(mask) if mask.any() else (slice(0, 0), slice(0, 0))
    if rows.stop - rows.start < MIN_REGION_SIDE_PX or cols.stop - cols.start < MIN_REGION_SIDE_PX:
        raise PtychoPINNError(
            f"evaluation region ({source}): bounding box "
            f"{rows.stop - rows.start}x{cols.stop - cols.start} px "
            f"is smaller than {MIN_REGION_SIDE_PX}x{MIN_REGION_SIDE_PX}; cannot compute metrics "
            "(check offset_px, the illumination fraction or the shrink)"
        )

    window = gaussian_filter(mask.astype(np.float64), 2.0, mode="constant") * mask
    xx, yy = _centred_coords(mask)
    shift = np.zeros(2)
    g0x = g0y = 0.0
    if "phase_ramp" in remove:
        _, g0x, g0y = fit_phase_plane(rec, gt, mask, iterations=0)
    ramped = rec * np.exp(1j * (g0x * xx + g0y * yy))
    work = ramped
    if "translation" in remove:
        # the window stays on the truth's frame while the content moves, which biases one
        # estimate towards zero shift; re-registering the shifted result removes the bias
        for _ in range(REGISTRATION_PASSES):
            step = register_translation(work, gt, window, upsample, max_shift_px)
            shift = shift + step
            work = shift_image(ramped, -shift)
            if np.max(np.abs(step)) < 1e-3:
                break
    # the coarse ramp travelled with the shift, which left a constant g0 . shift behind
    c0 = g0x * shift[0] + g0y * shift[1]
    c1 = g1x = g1y = 0.0
    if "phase_ramp" in remove:
        c1, g1x, g1y = fit_phase_plane(work, gt, mask)
    elif "phase_offset" in remove:
        s0 = np.sum((gt * np.conj(work))[mask])
        c1 = float(np.angle(s0)) if abs(s0) > 0 else 0.0
    if "phase_offset" not in remove:
        c1, c0 = -c0, 0.0  # keep the object's own constant phase
    work = work * np.exp(1j * (c1 + g1x * xx + g1y * yy))
    if "phase_offset" not in remove:
        c1 = 0.0
    scale = amplitude_scale(work, gt, mask) if "scale" in remove else 1.0
    work = work * scale
    params = {
        "shift_x_px": float(shift[0]),
        "shift_y_px": float(shift[1]),
        "phase_offset_rad": float(np.angle(np.exp(1j * (c0 + c1)))),
        "phase_ramp_x_rad_per_px": float(g0x + g1x),
        "phase_ramp_y_rad_per_px": float(g0y + g1y),
        "amplitude_scale": float(scale),
        "offset_px": [float(offset[0]), float(offset[1])],
        "region_source": source,
        "region_pixels": int(mask.sum()),
        "region_bbox_px": [
            int(cols.start + origin[0]),
            int(rows.start + origin[1]),
            int(cols.stop + origin[0]),
            int(rows.stop + origin[1]),
        ],
        "removed": [r for r in AMBIGUITIES if r in remove],
    }
    return AlignedPair(recon=work, truth=gt, mask=mask, origin_px=origin, params=params)
