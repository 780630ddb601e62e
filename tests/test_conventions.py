"""The project's own convention check: a simulated scan, written to NPZ and read back from the
file alone, is compared with an independent numpy forward model (nothing from
``ptychopinn.physics``) under the documented convention and its plausible alternatives.

Documented (docs/data-formats.md): a position (x = column, y = row, object pixels) is where
pixel (N//2, N//2) of the N x N probe window lands; the far field is
``fftshift(fft2(O_window * P, norm="ortho"))``; incoherent probe modes add intensities.
"""

import numpy as np
import pytest

from ptychopinn.data.npz import write_npz
from ptychopinn.data.simulate import SimulationConfig, simulate_scan


def window(obj, x, y, n, pad=3):
    """n x n window of ``obj`` whose pixel (n//2, n//2) sits at (x, y): integer crop with a
    margin, sub-pixel remainder by a Fourier phase ramp (numpy only). None if off the canvas."""
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    x0, y0 = ix - n // 2 - pad, iy - n // 2 - pad
    if x0 < 0 or y0 < 0 or x0 + n + 2 * pad > obj.shape[1] or y0 + n + 2 * pad > obj.shape[0]:
        return None
    crop = obj[y0 : y0 + n + 2 * pad, x0 : x0 + n + 2 * pad]
    ky = np.fft.fftfreq(crop.shape[0])[:, None]
    kx = np.fft.fftfreq(crop.shape[1])[None, :]
    shifted = np.fft.ifft2(np.fft.fft2(crop) * np.exp(2j * np.pi * (ky * fy + kx * fx)))
    return shifted[pad : pad + n, pad : pad + n]


def far_field_intensity(psi, centred=True):
    f = np.fft.fft2(psi, norm="ortho")
    return np.abs(np.fft.fftshift(f) if centred else f) ** 2


def amplitude_residual(measured, predicted):
    """sum (sqrt(I) - sqrt(I_pred))^2 / sum I: Poisson noise alone gives about N^2 / (4 sum I)
    (sqrt of a Poisson count has variance 1/4), a wrong convention far more."""
    return float(((np.sqrt(measured) - np.sqrt(predicted)) ** 2).sum() / measured.sum())


def convention_scores(npz_path, patterns=15):
    """Mean amplitude residual of measured vs predicted counts for each candidate convention."""
    z = np.load(npz_path, allow_pickle=False)
    counts = z["diff3d"].astype(np.float64)
    assert str(z["diffraction_units"]) == "counts"
    probe = z["probeGuess"]
    modes = probe if probe.ndim == 3 else probe[None]
    obj, xs, ys = z["objectGuess"], z["xcoords"], z["ycoords"]
    n = counts.shape[-1]
    sample = np.linspace(0, len(xs) - 1, min(patterns, len(xs))).astype(int)

    def predict(i, dx=0.0, dy=0.0, swap=False, centred=True, conj=False):
        x, y = (ys[i], xs[i]) if swap else (xs[i], ys[i])
        w = window(np.conj(obj) if conj else obj, x + dx, y + dy, n)
        if w is None:
            return None
        return sum(far_field_intensity(w * p, centred) for p in modes)

    candidates = {
        "documented": {},
        "position is the top-left corner": dict(dx=n // 2, dy=n // 2),
        "position is pixel (n-1)/2": dict(dx=-0.5, dy=-0.5),
        "x and y swapped": dict(swap=True),
        "zero frequency at the corner": dict(centred=False),
        "conjugate object": dict(conj=True),
        "coherent sum of modes": "coherent",
    }
    scores = {}
    for name, kw in candidates.items():
        values = []
        for i in sample:
            if kw == "coherent":
                w = window(obj, xs[i], ys[i], n)
                p = None if w is None else far_field_intensity(w * modes.sum(0))
            else:
                p = predict(i, **kw)
            if p is not None:
                values.append(amplitude_residual(counts[i], p))
        scores[name] = float(np.mean(values)) if values else float("nan")
    return scores, len(sample)


@pytest.mark.parametrize("kind,modes", [("raster", 1), ("fermat", 1), ("random", 1), ("raster", 3)])
def test_simulated_scans_follow_the_documented_convention(tmp_path, kind, modes):
    scan = simulate_scan(
        SimulationConfig(
            patch_size=32, n_positions=30, scan_kind=kind, probe_modes=modes, photons=1e6, seed=7
        )
    )
    path = write_npz(scan, tmp_path / f"{kind}.npz")
    scores, _ = convention_scores(path)
    documented = scores.pop("documented")
    noise_floor = scan.patch_size**2 / (4 * scan.mean_counts)
    assert documented < 2 * noise_floor, (documented, noise_floor)  # fits to the noise
    if modes == 1:
        scores.pop("coherent sum of modes")  # identical for one mode
    for name, score in scores.items():  # measured: every alternative >= 2.7x worse
        assert score > 2 * documented, (name, score, documented)


def test_the_oracle_detects_a_shifted_convention(tmp_path):
    """The check has teeth: positions recorded as top-left corners are caught."""
    scan = simulate_scan(SimulationConfig(patch_size=32, n_positions=30, photons=1e6, seed=8))
    from dataclasses import replace

    corner = replace(scan, positions_px=scan.positions_px - scan.patch_size // 2)
    path = write_npz(corner, tmp_path / "corner.npz")
    scores, _ = convention_scores(path)
    assert scores["documented"] > 10 * scan.patch_size**2 / (4 * scan.mean_counts)
    assert min(scores, key=scores.get) == "position is the top-left corner"
