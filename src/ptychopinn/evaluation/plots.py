"""PNG figures of reconstructions and metrics, written atomically.

matplotlib is imported inside the functions (``import ptychopinn`` stays fast) and used through
its object API (``matplotlib.figure.Figure``, rendered by Agg), so no pyplot state or global
backend is touched. Every function refuses to replace an existing file unless ``overwrite``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychopinn.io.atomic import atomic_path

DPI = 110
#: Images larger than this many pixels per side are shown strided (every k-th pixel): a panel is
#: a few hundred pixels wide at DPI, and rendering a 3,615-pixel canvas in full cost 1.1 GB.
MAX_DISPLAY_PX = 1200


def _limits(values: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Colour limits from the pixels that matter (the region when given), robust to outliers."""
    v = values[mask] if mask is not None and np.any(mask) else values.ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def _show(fig, ax, image, title, cmap, limits, mask=None, origin_px=(0, 0)):
    h, w = image.shape
    x0, y0 = origin_px
    extent = (
        x0 - 0.5,
        x0 + w - 0.5,
        y0 + h - 0.5,
        y0 - 0.5,
    )  # pixel centres at integer coordinates
    step = -(-max(h, w) // MAX_DISPLAY_PX)  # ceil: 1 for images up to MAX_DISPLAY_PX
    if step > 1:  # the axes keep the full image's pixel coordinates
        image = image[::step, ::step]
        mask = None if mask is None else mask[::step, ::step]
    im = ax.imshow(
        image, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest", extent=extent
    )
    if mask is not None and not np.all(mask):
        # grey veil over pixels outside the evaluated/scanned region
        veil = np.zeros(mask.shape + (4,))
        veil[~mask] = (0.5, 0.5, 0.5, 0.55)
        ax.imshow(veil, interpolation="nearest", extent=extent)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (px)", fontsize=8)
    ax.set_ylabel("y (px)", fontsize=8)
    ax.tick_params(labelsize=7)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=7)
    return cbar


def _save(fig, path, overwrite: bool) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        # the temporary name's suffix is not trusted to pick the format
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _check_2d(obj, name: str) -> np.ndarray:
    a = np.asarray(obj)
    if a.ndim != 2:
        from ptychopinn.errors import PtychoPINNError

        raise PtychoPINNError(f"{name}: expected a 2-D (H, W) array to plot, got shape {a.shape}")
    return a


def save_complex_png(
    obj: np.ndarray,
    path: str | Path,
    title: str = "",
    mask: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Amplitude and phase panels of a complex (H, W) object, each with a colour bar.

    ``mask`` (H, W) bool: colour limits come from these pixels and the rest is greyed out.
    """
    from matplotlib.figure import Figure

    a = _check_2d(obj, "object").astype(np.complex64, copy=False)
    m = None if mask is None else np.asarray(mask, dtype=bool)
    amp, phase = np.abs(a), np.angle(a)
    # fixed margins: constrained/tight layout costs about twice the rendering time
    fig = Figure(figsize=(9.0, 4.2))
    fig.subplots_adjust(
        left=0.07, right=0.95, bottom=0.12, top=0.86 if title else 0.92, wspace=0.35
    )
    ax1, ax2 = fig.subplots(1, 2)
    _show(fig, ax1, amp, "amplitude", "gray", _limits(amp, m), m)
    cbar = _show(fig, ax2, phase, "phase", "viridis", _limits(phase, m), m)
    cbar.set_label("rad", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, overwrite)


def save_comparison_png(
    recon: np.ndarray,
    gt: np.ndarray,
    path: str | Path,
    mask: np.ndarray | None = None,
    title: str = "",
    overwrite: bool = False,
    origin_px=(0, 0),
) -> Path:
    """2 x 2 figure: ground truth and reconstruction, amplitude (top) and phase (bottom).

    Both (H, W) complex on the same frame (e.g. an ``AlignedPair``); each row shares colour
    limits taken from the ground truth (inside ``mask`` when given) so differences are visible.
    ``origin_px`` (x, y): coordinates of pixel (0, 0) for the axis labels (e.g. ground-truth pixels
    of a crop).
    """
    from matplotlib.figure import Figure

    r = _check_2d(recon, "reconstruction").astype(np.complex128)
    t = _check_2d(gt, "ground truth").astype(np.complex128)
    if r.shape != t.shape:
        from ptychopinn.errors import PtychoPINNError

        raise PtychoPINNError(
            f"comparison: shapes differ, reconstruction {r.shape} vs truth {t.shape}"
        )
    m = None if mask is None else np.asarray(mask, dtype=bool)
    fig = Figure(figsize=(8.5, 7.6))
    fig.subplots_adjust(
        left=0.08, right=0.95, bottom=0.07, top=0.91 if title else 0.95, wspace=0.35, hspace=0.3
    )
    axes = fig.subplots(2, 2)
    amp_lim = _limits(np.abs(t), m)
    ph_t = np.angle(t)
    ph_r = ph_t + np.angle(r * np.conj(t))  # compare modulo 2 pi, as the metrics do
    ph_lim = _limits(ph_t, m)
    o = origin_px
    _show(fig, axes[0, 0], np.abs(t), "ground truth amplitude", "gray", amp_lim, m, o)
    _show(fig, axes[0, 1], np.abs(r), "reconstruction amplitude", "gray", amp_lim, m, o)
    _show(fig, axes[1, 0], ph_t, "ground truth phase (rad)", "viridis", ph_lim, m, o)
    _show(fig, axes[1, 1], ph_r, "reconstruction phase (rad)", "viridis", ph_lim, m, o)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, overwrite)


def save_frc_png(
    freq: np.ndarray,
    frc: np.ndarray,
    threshold: np.ndarray,
    path: str | Path,
    resolution_cycles_per_px: float | None = None,
    title: str = "Fourier ring correlation",
    overwrite: bool = False,
    label: str = "FRC (reconstruction vs truth)",
) -> Path:
    """FRC curve and the 1/2-bit threshold against spatial frequency (cycles/px), DC ring omitted;
    a vertical line marks ``resolution_cycles_per_px`` when given."""
    from matplotlib.figure import Figure

    f = np.asarray(freq, dtype=np.float64)
    c = np.asarray(frc, dtype=np.float64)
    t = np.asarray(threshold, dtype=np.float64)
    if not (f.shape == c.shape == t.shape) or f.ndim != 1:
        from ptychopinn.errors import PtychoPINNError

        raise PtychoPINNError(
            f"FRC plot: freq, frc and threshold must be 1-D of one length, got "
            f"{f.shape}, {c.shape}, {t.shape}"
        )
    fig = Figure(figsize=(6.0, 4.0))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
    ax = fig.subplots()
    ax.plot(f[1:], c[1:], label=label, color="C0")
    ax.plot(f[1:], t[1:], label="1/2-bit threshold", color="C3", linestyle="--")
    if resolution_cycles_per_px is not None and np.isfinite(resolution_cycles_per_px):
        ax.axvline(
            resolution_cycles_per_px,
            color="0.4",
            linestyle=":",
            label=f"resolution {resolution_cycles_per_px:.3f} cyc/px "
            f"({1.0 / resolution_cycles_per_px:.2f} px)",
        )
    ax.set_xlim(0, 0.5)
    ax.set_ylim(min(-0.1, float(np.nanmin(c[1:])) if c.size > 1 else -0.1), 1.05)
    ax.set_xlabel("spatial frequency (cycles/px)")
    ax.set_ylabel("FRC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path, overwrite)


def save_frc_metrics_png(
    metrics: dict,
    path: str | Path,
    title: str = "Fourier ring correlation",
    overwrite: bool = False,
    label: str = "FRC (reconstruction vs truth)",
) -> Path:
    """``save_frc_png`` of a metrics dict as ``evaluate`` and ``half_scan_frc`` write it
    (``frc_curve``, ``frc_resolution_cycles_per_px``, ``frc_crossed_threshold``): the resolution
    line is drawn only when the curve crossed the threshold."""
    curve = metrics["frc_curve"]
    crossed = metrics.get("frc_crossed_threshold")
    return save_frc_png(
        np.asarray(curve["frequency_cycles_per_px"]),
        np.asarray(curve["frc"]),
        np.asarray(curve["threshold_half_bit"]),
        path,
        resolution_cycles_per_px=(metrics.get("frc_resolution_cycles_per_px") if crossed else None),
        title=title,
        overwrite=overwrite,
        label=label,
    )


def save_residual_png(
    positions_px: np.ndarray,
    per_pattern: np.ndarray,
    path: str | Path,
    title: str = "data residual",
    overwrite: bool = False,
) -> Path:
    """Scan positions coloured by each pattern's Poisson deviance per pixel (where the model fails
    to explain the counts), y downwards like the object images."""
    from matplotlib.figure import Figure

    pos = np.asarray(positions_px, dtype=np.float64)
    val = np.asarray(per_pattern, dtype=np.float64)
    if pos.ndim != 2 or pos.shape != (val.size, 2):
        from ptychopinn.errors import PtychoPINNError

        raise PtychoPINNError(
            f"residual plot: {val.size} values for positions of shape {pos.shape}"
        )
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.subplots()
    hi = float(np.percentile(val, 99)) if val.size else 1.0
    sc = ax.scatter(
        pos[:, 0],
        pos[:, 1],
        c=val,
        s=max(4.0, 4000.0 / max(val.size, 1)),
        cmap="magma",
        vmin=float(val.min()),
        vmax=max(hi, float(val.min()) + 1e-12),
    )
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    fig.colorbar(sc, ax=ax, label="Poisson deviance per pixel")
    ax.set_title(title, fontsize=10)
    return _save(fig, path, overwrite)
