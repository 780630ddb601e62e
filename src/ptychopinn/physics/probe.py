"""Probe generators: realistic illuminations for simulation and tests (numpy, complex64).

Every generator returns an (N, N) complex array centred on pixel (N//2, N//2) with unit total
intensity (sum |P|^2 = 1); scale it to photons with ``scale_probe``. ``diameter`` is in pixels.
"""

from __future__ import annotations

import numpy as np

from ptychopinn.errors import ConfigError
from ptychopinn.registry import Registry

#: name -> probe(n, diameter, **kwargs) -> (N, N) complex64 of unit energy.
PROBES = Registry("probe")
register_probe = PROBES.register

#: Most incoherent modes ``incoherent_modes`` can build (one per low-order factor).
MAX_MODES = 6


def _grid(n: int):
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    return x - n // 2, y - n // 2


def _normalise(p: np.ndarray) -> np.ndarray:
    return (p / np.sqrt(np.sum(np.abs(p) ** 2))).astype(np.complex64)


def soft_disk(n: int, radius: float, edge: float = 1.5) -> np.ndarray:
    x, y = _grid(n)
    r = np.hypot(x, y)
    return 0.5 * (1.0 - np.tanh((r - radius) / max(edge, 1e-6)))


def fresnel_propagate(field: np.ndarray, fresnel_px2: float) -> np.ndarray:
    """Paraxial free-space propagation; ``fresnel_px2`` = wavelength * distance / pixel^2."""
    n = field.shape[0]
    f = np.fft.fftfreq(n)
    fx, fy = np.meshgrid(f, f)
    h = np.exp(-1j * np.pi * fresnel_px2 * (fx**2 + fy**2))
    return np.fft.ifft2(np.fft.fft2(field) * h)


@register_probe("pinhole")
def pinhole_probe(n: int, diameter: float | None = None, fresnel_number: float = 4.0) -> np.ndarray:
    """A pinhole of ``diameter`` pixels Fresnel-propagated to Fresnel number ``fresnel_number``.

    Computed on a 2N grid to avoid wrap-around, then cropped: a flat-topped spot with rings and a
    curved phase, like a pinhole-defined beam at the sample.
    """
    diameter = diameter or n / 2
    big = 2 * n
    radius = diameter / 2
    aperture = soft_disk(big, radius, edge=0.5).astype(np.complex128)
    prop = fresnel_propagate(aperture, radius**2 / fresnel_number)
    c0 = big // 2 - n // 2
    return _normalise(prop[c0 : c0 + n, c0 : c0 + n])


@register_probe("gaussian")
def gaussian_probe(n: int, diameter: float | None = None, curvature: float = 0.0) -> np.ndarray:
    """Gaussian beam whose intensity falls to 1/e^2 at ``diameter``/2; optional phase curvature."""
    diameter = diameter or n / 2
    x, y = _grid(n)
    w = diameter / 2
    r2 = x**2 + y**2
    return _normalise(np.exp(-r2 / w**2) * np.exp(1j * curvature * r2 / w**2))


@register_probe("disk")
def defocused_disk_probe(n: int, diameter: float | None = None, defocus: float = 2.0) -> np.ndarray:
    """A defocused focused beam: soft disk amplitude with a quadratic (defocus) phase of
    ``defocus`` radians at the rim, plus the speckle-free ring structure of a blurred edge."""
    diameter = diameter or n / 2
    x, y = _grid(n)
    radius = diameter / 2
    amp = soft_disk(n, radius, edge=1.0)
    phase = defocus * (x**2 + y**2) / radius**2
    return _normalise(amp * np.exp(1j * phase))


def make_probe(kind: str, n: int, diameter: float | None = None, **kwargs) -> np.ndarray:
    return PROBES[kind](n, diameter, **kwargs)


def apply_soft_mask(
    probe: np.ndarray, radius: float | None = None, edge: float = 2.0
) -> np.ndarray:
    """Suppress probe tails outside ``radius`` (default 0.45 N) with a smooth edge."""
    n = probe.shape[-1]
    mask = soft_disk(n, radius or 0.45 * n, edge)
    return (probe * mask).astype(np.complex64)


def incoherent_modes(probe: np.ndarray, n_modes: int, power_ratio: float = 0.3) -> np.ndarray:
    """Stack of ``n_modes`` mutually orthogonal modes (K, N, N) built from ``probe``.

    Higher modes are the main mode times low-order Hermite-like factors (x, y, xy, x^2-y^2 ...),
    orthogonalised by Gram-Schmidt; mode k carries ``power_ratio**k`` of the main mode's power.
    The total intensity equals that of ``probe``.
    """
    if n_modes < 1:
        raise ConfigError(f"n_modes: {n_modes} must be >= 1")
    n = probe.shape[-1]
    x, y = _grid(n)
    scale = max(np.sqrt(np.sum(np.abs(probe) ** 2 * (x**2 + y**2)) / np.sum(np.abs(probe) ** 2)), 1)
    xs, ys = x / scale, y / scale
    factors = [np.ones_like(xs), xs, ys, xs * ys, xs**2 - ys**2, xs**2 + ys**2 - 1]
    assert len(factors) == MAX_MODES
    if n_modes > len(factors):
        raise ConfigError(f"n_modes: {n_modes} exceeds the supported {len(factors)}")
    basis = []
    for f in factors[:n_modes]:
        m = probe.astype(np.complex128) * f
        for b in basis:
            m = m - np.vdot(b, m) * b
        basis.append(m / np.linalg.norm(m))
    total = np.sum(np.abs(probe) ** 2)
    powers = np.array([power_ratio**k for k in range(n_modes)])
    powers = powers / powers.sum() * total
    modes = [b * np.sqrt(p) for b, p in zip(basis, powers, strict=False)]
    return np.stack(modes).astype(np.complex64)


def scale_probe(probe: np.ndarray, photons: float) -> np.ndarray:
    """Scale so that the total intensity sum_k sum |P_k|^2 equals ``photons``."""
    return (probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))).astype(np.complex64)
