"""Scans made independently of ptychopinn's simulator (numpy only: its own probes, objects,
scan patterns, FFT and Poisson draw; nothing from ``ptychopinn.physics`` or ``ptychopinn.data``),
written as PtychoPINN NPZ files with integer (uint32) counts, so that reconstructions are judged
on data this package did not make.

    python benchmarks/scenarios.py --output-dir scenarios/ [--only zoneplate-textured]

Conventions written into the files (docs/data-formats.md): positions in object pixels, the
probe centre pixel (N//2, N//2) at (x, y); far field = fftshift(fft2(O*P, ortho)); counts.
The photon number is the expected total count of a pattern for a unit object.

The file's ``probeGuess`` is a *guess*, as a user would have: the same kind of probe modelled
with a 15% larger diameter (and defocus) and no offset (``probe_guess``); the probe that made
the data is stored as ``probeTrue``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int = 64
    positions: int = 451
    scan: str = "fermat"  # fermat | raster | random
    step_px: float = 5.0
    probe: str = "zoneplate"  # zoneplate | astigmatic | gaussian | modes
    probe_diameter_px: float = 28.0
    probe_offset_px: tuple = (0.0, 0.0)
    obj: str = "textured"  # textured | smooth | weak
    phase_pp_rad: float = 1.6
    photons: float = 1e6
    seed: int = 0


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("zoneplate-textured"),  # the first-contact scan: curved phase fronts
        Scenario(
            "astigmatic-smooth",
            probe="astigmatic",
            obj="smooth",
            phase_pp_rad=2.5,
            probe_offset_px=(4.0, -3.0),
            scan="raster",
            seed=1,
        ),
        Scenario("gaussian-weak", probe="gaussian", obj="weak", scan="random", seed=2),
        Scenario("modes-textured", probe="modes", photons=1e6, seed=3),
        Scenario("zoneplate-textured-1e4", photons=1e4, seed=4),
        Scenario("zoneplate-textured-1e3", photons=1e3, seed=5),
        Scenario(
            "large-probe-smooth",
            probe_diameter_px=44.0,
            obj="smooth",
            phase_pp_rad=2.5,
            scan="random",
            step_px=8.0,
            seed=6,
        ),  # probe large relative to N
        Scenario("zoneplate-textured-n128", n=128, probe_diameter_px=56.0, step_px=10.0, seed=7),
        # sparse overlap: step 0.86 x the probe's diameter (the network's case, issue 12)
        Scenario("zoneplate-textured-sparse", positions=256, step_px=24.0, seed=8),
    ]
}


# --- scan patterns --------------------------------------------------------------------------
def scan_xy(kind: str, m: int, step: float, rng) -> np.ndarray:
    if kind == "fermat":
        k = np.arange(m)
        r = step * 0.57 * np.sqrt(k)  # golden-angle spiral with mean spacing ~ step
        t = k * np.pi * (3 - np.sqrt(5))
        xy = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif kind == "raster":
        side = int(np.ceil(np.sqrt(m)))
        g = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:m]
        xy = g * step + rng.normal(0, 0.3, (m, 2))  # encoder jitter breaks raster periodicity
    else:
        side = np.sqrt(m) * step
        xy = rng.uniform(0, side, (m, 2))
    return xy - xy.min(0)


# --- probes ---------------------------------------------------------------------------------
def _grid(n):
    y, x = np.mgrid[:n, :n] - n // 2
    return x.astype(float), y.astype(float)


def _propagate(field, distance_px, wavelength_px=0.05):
    """Angular-spectrum (paraxial) propagation over ``distance_px`` (pixel units)."""
    n = field.shape[-1]
    f = np.fft.fftfreq(n)
    fx, fy = np.meshgrid(f, f)
    kernel = np.exp(-1j * np.pi * wavelength_px * distance_px * (fx**2 + fy**2))
    return np.fft.ifft2(np.fft.fft2(field) * kernel)


def make_probe(s: Scenario, rng) -> np.ndarray:
    n, d = s.n, s.probe_diameter_px
    x, y = _grid(n)
    x, y = x - s.probe_offset_px[0], y - s.probe_offset_px[1]
    r2 = x**2 + y**2
    if s.probe == "zoneplate":
        # out-of-focus zone plate: annular pupil (central stop) with a defocus phase, so the probe
        # is a ring-structured disk of the requested diameter with strongly curved phase fronts.
        # A defocus phase alpha k^2 shifts frequency k by n alpha k / pi pixels: the geometric
        # spot radius is n alpha k_max / pi.
        kx, ky = _grid(n)
        k = np.sqrt(kx**2 + ky**2)
        k_max, k_stop = 0.3 * n, 0.09 * n
        pupil = ((k < k_max) & (k > k_stop)).astype(complex)
        alpha = np.pi * (d / 2) / (n * k_max)
        pupil = pupil * np.exp(1j * alpha * k**2)
        probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
        probe = np.roll(
            probe, (int(round(s.probe_offset_px[1])), int(round(s.probe_offset_px[0]))), axis=(0, 1)
        )
    elif s.probe == "astigmatic":
        aperture = np.exp(-((r2 / (0.5 * d) ** 2) ** 3))
        probe = aperture * np.exp(1j * (0.012 * x**2 - 0.006 * y**2 + 0.004 * x * y))
    elif s.probe == "gaussian":
        probe = np.exp(-r2 / (2 * (d / 2.355) ** 2)).astype(complex)
    elif s.probe == "modes":
        base = np.exp(-((r2 / (0.5 * d) ** 2) ** 2)) * np.exp(1j * 0.01 * r2)
        modes = [base, base * (x / d) * 2, base * (y / d) * 2]
        weights = np.array([1.0, 0.5, 0.3])
        probe = np.stack([w * m for w, m in zip(weights, modes, strict=True)])
    else:
        raise SystemExit(f"unknown probe {s.probe!r}")
    probe = probe[None] if probe.ndim == 2 else probe  # (K, N, N)
    return probe * np.sqrt(s.photons / np.sum(np.abs(probe) ** 2))


# --- objects --------------------------------------------------------------------------------
def _normalise(img):
    img = np.asarray(img, float)
    return (img - img.min()) / max(img.max() - img.min(), 1e-12)


def _resize(img, shape):
    from scipy.ndimage import zoom

    return zoom(img, (shape[0] / img.shape[0], shape[1] / img.shape[1]), order=1)


def make_object(s: Scenario, shape, rng) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    from skimage import color, data

    if s.obj == "textured":
        ihc = color.rgb2hed(data.immunohistochemistry())[..., 0]  # hematoxylin: cells, texture
        phase = _normalise(_resize(ihc, shape))
        amp = 0.55 + 0.45 * _normalise(_resize(data.coins().astype(float), shape))
    elif s.obj == "smooth":
        field = gaussian_filter(rng.normal(size=shape), sigma=min(shape) / 10)
        phase = _normalise(field)
        amp = 0.8 + 0.2 * _normalise(gaussian_filter(rng.normal(size=shape), min(shape) / 15))
    elif s.obj == "weak":
        phase = _normalise(_resize(data.camera().astype(float), shape))
        amp = 0.95 + 0.05 * _normalise(_resize(data.moon().astype(float), shape))
    else:
        raise SystemExit(f"unknown object {s.obj!r}")
    return (amp * np.exp(1j * s.phase_pp_rad * (phase - 0.5))).astype(np.complex64)


# --- forward model (independent of ptychopinn.physics) --------------------------------------
def window(obj, x, y, n):
    """N x N window with pixel (n//2, n//2) at (x, y): integer crop + Fourier sub-pixel shift."""
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    pad = 4
    crop = obj[iy - n // 2 - pad : iy - n // 2 + n + pad, ix - n // 2 - pad : ix - n // 2 + n + pad]
    ky = np.fft.fftfreq(crop.shape[0])[:, None]
    kx = np.fft.fftfreq(crop.shape[1])[None, :]
    shifted = np.fft.ifft2(np.fft.fft2(crop) * np.exp(2j * np.pi * (ky * fy + kx * fx)))
    return shifted[pad : pad + n, pad : pad + n]


def simulate(s: Scenario):
    rng = np.random.default_rng(s.seed)
    xy = scan_xy(s.scan, s.positions, s.step_px, rng)
    margin = s.n // 2 + 8
    xy = xy + margin
    shape = (int(np.ceil(xy[:, 1].max())) + margin + 1, int(np.ceil(xy[:, 0].max())) + margin + 1)
    obj = make_object(s, shape, rng)
    probe = make_probe(s, rng)
    counts = np.empty((s.positions, s.n, s.n), np.uint32)
    for i, (x, y) in enumerate(xy):
        w = window(obj, x, y, s.n)
        inten = sum(np.abs(np.fft.fftshift(np.fft.fft2(w * p, norm="ortho"))) ** 2 for p in probe)
        counts[i] = rng.poisson(inten)
    return counts, xy, probe, obj


#: the guess models the probe with this factor on its diameter (and defocus), centred
GUESS_DIAMETER_FACTOR = 1.15


def probe_guess(s: Scenario) -> np.ndarray:
    """What a user would start from: the scenario's kind of probe, mis-modelled (module doc)."""
    from dataclasses import replace

    g = replace(
        s, probe_diameter_px=s.probe_diameter_px * GUESS_DIAMETER_FACTOR, probe_offset_px=(0.0, 0.0)
    )
    return make_probe(g, np.random.default_rng(s.seed + 1000))


def _stack(probe):
    return (probe[0] if probe.shape[0] == 1 else probe).astype(np.complex64)


def write(s: Scenario, path: Path) -> Path:
    counts, xy, probe, obj = simulate(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        diff3d=counts,
        xcoords=xy[:, 0],
        ycoords=xy[:, 1],
        probeGuess=_stack(probe_guess(s)),
        probeTrue=_stack(probe),
        objectGuess=obj,
        diffraction_units=np.array("counts"),
        metadata=np.array(
            json.dumps({"scenario": asdict(s), "simulator": "benchmarks/scenarios.py"})
        ),
    )
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, required=True)
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    a = ap.parse_args()
    for name in a.only or SCENARIOS:
        print(write(SCENARIOS[name], a.output_dir / f"{name}.npz"))


if __name__ == "__main__":
    main()
