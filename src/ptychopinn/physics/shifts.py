"""Sub-pixel patch extraction and placement: one shift convention for the whole package.

Convention (PHYSICS.md section 1): object pixel ``[row, col]`` has coordinate ``(x=col, y=row)``.
A patch of size N extracted at position ``(x, y)`` has its pixel ``(N//2, N//2)`` at ``(x, y)``, so
patch pixel ``[i, j]`` samples the object at ``(x - N//2 + j, y - N//2 + i)``. Sub-pixel parts are
applied by a Fourier shift of a slightly padded window (exact for band-limited content).

``place_patches`` is the exact adjoint of ``extract_patches`` (gather <-> scatter-add, crop <->
zero-pad, shift by -f <-> shift by +f), so training (overlap constraint), stitching and simulation
share one operator pair. Integer positions make extract(place(p)) == p exactly.
"""

from __future__ import annotations

import math

import torch

#: Zero padding (pixels per side) of the window that carries the sub-pixel Fourier shift.
SHIFT_PAD = 2


def fourier_shift(x: torch.Tensor, shift_yx: torch.Tensor) -> torch.Tensor:
    """Shift the content of ``x`` (..., H, W) by ``shift_yx`` (..., 2) pixels, circularly.

    ``out[i, j] = x[i - sy, j - sx]`` (band-limited interpolation). ``shift_yx`` broadcasts
    against the leading dimensions of ``x``. The operator is unitary; shifting by ``-s`` is its
    adjoint.
    """
    h, w = x.shape[-2:]
    real_dtype = torch.float64 if x.dtype in (torch.complex128, torch.float64) else torch.float32
    ky = torch.fft.fftfreq(h, device=x.device, dtype=real_dtype)
    kx = torch.fft.fftfreq(w, device=x.device, dtype=real_dtype)
    sy = shift_yx[..., 0].to(real_dtype)[..., None, None]
    sx = shift_yx[..., 1].to(real_dtype)[..., None, None]
    phase = -2.0 * math.pi * (sy * ky[:, None] + sx * kx[None, :])
    ramp = torch.polar(torch.ones_like(phase), phase)
    return torch.fft.ifft2(torch.fft.fft2(x) * ramp)


def _split(positions_xy: torch.Tensor, n: int):
    """Integer window corner (row, col) and fractional (y, x) part for each position."""
    floor = torch.floor(positions_xy)
    frac = positions_xy - floor
    col0 = floor[..., 0].long() - n // 2 - SHIFT_PAD
    row0 = floor[..., 1].long() - n // 2 - SHIFT_PAD
    frac_yx = torch.stack([frac[..., 1], frac[..., 0]], dim=-1)
    return row0, col0, frac_yx


def _window_index(canvas: torch.Tensor, row0, col0, size: int):
    batch, height, width = canvas.shape
    if bool((row0 < 0).any() or (col0 < 0).any() or (row0 + size > height).any()
            or (col0 + size > width).any()):
        raise ValueError(
            f"patch windows fall outside the {height}x{width} canvas: positions must lie at "
            f"least N//2+{SHIFT_PAD} pixels inside it (see canvas_geometry)"
        )
    ar = torch.arange(size, device=canvas.device)
    rows = (row0[..., None] + ar)[..., :, None]  # (B, M, L, 1)
    cols = (col0[..., None] + ar)[..., None, :]  # (B, M, 1, L)
    b = torch.arange(batch, device=canvas.device).view(batch, 1, 1, 1)
    return b, rows, cols


def _batched(canvas, positions_xy):
    squeeze = canvas.dim() == 2
    if squeeze:
        canvas, positions_xy = canvas[None], positions_xy[None]
    return canvas, positions_xy, squeeze


def extract_patches(canvas: torch.Tensor, positions_xy: torch.Tensor, n: int) -> torch.Tensor:
    """Extract N x N patches centred at sub-pixel positions.

    canvas: (H, W) or (B, H, W) complex; positions_xy: (M, 2) or (B, M, 2) as (x, y) in canvas
    pixels. Returns (M, N, N) or (B, M, N, N).
    """
    canvas, positions_xy, squeeze = _batched(canvas, positions_xy)
    size = n + 2 * SHIFT_PAD
    row0, col0, frac_yx = _split(positions_xy, n)
    b, rows, cols = _window_index(canvas, row0, col0, size)
    windows = canvas[b, rows, cols]
    if not torch.is_complex(windows):
        windows = windows.to(torch.complex64)
    windows = fourier_shift(windows, -frac_yx)
    out = windows[..., SHIFT_PAD:SHIFT_PAD + n, SHIFT_PAD:SHIFT_PAD + n]
    return out[0] if squeeze else out


def place_patches(patches: torch.Tensor, positions_xy: torch.Tensor,
                  canvas_shape: tuple[int, int]) -> torch.Tensor:
    """Sum N x N patches into a zero canvas at sub-pixel positions (adjoint of extract_patches).

    patches: (M, N, N) or (B, M, N, N); positions_xy matching (M, 2) or (B, M, 2).
    Returns the (H, W) or (B, H, W) complex canvas.
    """
    squeeze = patches.dim() == 3
    if squeeze:
        patches, positions_xy = patches[None], positions_xy[None]
    if not torch.is_complex(patches):
        patches = patches.to(torch.complex64)
    batch, _, n, _ = patches.shape
    size = n + 2 * SHIFT_PAD
    canvas = torch.zeros((batch, *canvas_shape), dtype=patches.dtype, device=patches.device)
    row0, col0, frac_yx = _split(positions_xy, n)
    b, rows, cols = _window_index(canvas, row0, col0, size)
    padded = torch.nn.functional.pad(patches, (SHIFT_PAD,) * 4)
    windows = fourier_shift(padded, frac_yx)
    idx = (b.expand(windows.shape), rows.expand(windows.shape), cols.expand(windows.shape))
    canvas = canvas.index_put(idx, windows, accumulate=True)
    return canvas[0] if squeeze else canvas


def canvas_geometry(positions_xy, n: int, object_shape: tuple[int, int] | None = None,
                    margin: int = 0):
    """Canvas shape and origin for stitching patches at ``positions_xy`` (M, 2) array-like.

    Returns ``(shape_hw, offset_xy)``: canvas pixel = object pixel + offset. If the positions fit
    inside ``object_shape`` with the required border, the object's own frame is used (offset 0),
    so reconstructions and ground truth share pixels.
    """
    import numpy as np

    pos = np.asarray(positions_xy, dtype=np.float64)
    border = n // 2 + SHIFT_PAD + margin
    lo = np.floor(pos.min(axis=0))
    hi = np.floor(pos.max(axis=0))
    need = hi + (n - n // 2) + SHIFT_PAD + margin  # one past the last pixel touched
    if object_shape is not None:
        h, w = object_shape
        if lo.min() >= border and need[0] <= w and need[1] <= h:
            return (int(h), int(w)), np.zeros(2)
    offset = border - lo
    width = int(need[0] + offset[0])
    height = int(need[1] + offset[1])
    return (height, width), offset
