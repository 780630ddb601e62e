"""Simulate realistic scans with known ground truth, through the training forward model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ptychopinn import __version__
from ptychopinn.data.objects import make_object
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import ConfigError
from ptychopinn.physics.forward import diffraction_intensity
from ptychopinn.physics.probe import (
    MAX_MODES,
    PROBES,
    apply_soft_mask,
    incoherent_modes,
    make_probe,
    scale_probe,
)
from ptychopinn.physics.shifts import SHIFT_PAD, extract_patches
from ptychopinn.registry import Registry


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of one simulated scan. Lengths in object pixels.

    ``step`` (pixels between neighbouring positions) defaults to
    ``probe_diameter * (1 - overlap)``; ``object_size`` defaults to the scan extent plus N and a
    small border. ``photons`` is the number of photons per pattern for a unit-amplitude object;
    ``noise=False`` gives noiseless expected counts.
    """

    patch_size: int = 64
    n_positions: int = 1024
    object_kind: str = "lines"
    object_size: int | None = None
    amplitude_contrast: float = 0.5
    phase_range: float = math.pi / 2
    probe_kind: str = "pinhole"
    probe_diameter: float | None = None
    probe_modes: int = 1
    probe_soft_mask: bool = True
    scan_kind: str = "raster"
    step: float | None = None
    overlap: float = 0.65
    jitter: float = 0.1
    photons: float = 1e6
    noise: bool = True
    test_split: bool = False
    seed: int = 0

    def __post_init__(self):
        def bad(field, value, expected):
            raise ConfigError(f"{field}: invalid value {value!r}; expected {expected}")

        if self.patch_size < 8 or self.patch_size % 2:
            bad("patch_size", self.patch_size, "an even integer >= 8")
        if self.n_positions < 1:
            bad("n_positions", self.n_positions, "an integer >= 1")
        if self.probe_kind not in PROBES:
            bad("probe_kind", self.probe_kind, f"one of {sorted(PROBES)}")
        if self.scan_kind not in SCAN_PATTERNS:
            bad("scan_kind", self.scan_kind, f"one of {SCAN_PATTERNS.names()}")
        if not 0 <= self.overlap < 1:
            bad("overlap", self.overlap, "a fraction in [0, 1)")
        if self.step is not None and not 0 < self.step < math.inf:
            bad("step", self.step, "a finite number > 0 pixels")
        if not 0 < self.photons < math.inf:
            bad("photons", self.photons, "a finite number > 0")
        if not 0 <= self.jitter <= 0.5:
            bad("jitter", self.jitter, "a fraction of the step in [0, 0.5]")
        if not 1 <= self.probe_modes <= MAX_MODES:
            bad("probe_modes", self.probe_modes, f"an integer in [1, {MAX_MODES}]")
        if self.object_size is not None and self.object_size < 1:
            bad("object_size", self.object_size, "an integer >= 1 pixels, or None for automatic")
        if not 0 <= self.amplitude_contrast < 1:
            bad("amplitude_contrast", self.amplitude_contrast, "a fraction in [0, 1)")
        if not math.isfinite(self.phase_range):
            bad("phase_range", self.phase_range, "a finite number of radians")
        if self.probe_diameter is not None and not 0 < self.probe_diameter <= self.patch_size:
            bad("probe_diameter", self.probe_diameter, f"in (0, {self.patch_size}] pixels")

    @property
    def diameter(self) -> float:
        return self.probe_diameter or self.patch_size / 2

    @property
    def step_px(self) -> float:
        return self.step if self.step is not None else self.diameter * (1 - self.overlap)


#: name -> pattern(n, step, rng, jitter) -> (n, 2) positions (x, y), neighbour spacing ~ step.
SCAN_PATTERNS = Registry("scan pattern")


@SCAN_PATTERNS.register("raster")
def raster_scan(n: int, step: float, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """A square grid, row by row, each position jittered by up to ``jitter`` steps."""
    side = int(math.ceil(math.sqrt(n)))
    iy, ix = np.divmod(np.arange(n), side)
    pos = np.stack([ix, iy], axis=1).astype(np.float64) * step
    return pos + rng.uniform(-jitter, jitter, pos.shape) * step


@SCAN_PATTERNS.register("fermat")
def fermat_scan(n: int, step: float, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """A Fermat spiral (golden-angle increments): even density without grid periodicity."""
    k = np.arange(n)
    r = step * np.sqrt(k) / math.sqrt(math.pi) * 1.05
    theta = k * math.pi * (3 - math.sqrt(5))
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


@SCAN_PATTERNS.register("random")
def random_scan(n: int, step: float, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """Uniformly random positions on a square of side ``step * sqrt(n)``."""
    side = step * math.sqrt(n)
    return rng.uniform(0, side, (n, 2))


def scan_positions(
    kind: str, n: int, step: float, rng: np.random.Generator, jitter: float = 0.0
) -> np.ndarray:
    """(n, 2) positions (x, y) with the minimum at (0, 0); neighbour spacing about ``step``."""
    pos = SCAN_PATTERNS[kind](n, step, rng, jitter)
    return pos - pos.min(axis=0)


def simulate_scan(
    config: SimulationConfig = SimulationConfig(),
    *,
    probe: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> ScanData:
    """Simulate one scan: object, probe, positions, counts (Poisson noise unless disabled).

    ``probe``: (N, N) or (K, N, N) complex, an experiment's own probe (e.g. retrieved from a
    measured scan) instead of the analytic ``config.probe_kind``; it is scaled to
    ``config.photons`` and must be ``config.patch_size`` wide. ``positions``: (M, 2) (x, y) pixel
    positions of a real scan instead of ``config.scan_kind`` (their shape is kept, shifted onto
    the object; ``config.n_positions`` is then M).
    """
    rng = np.random.default_rng(config.seed)
    n = config.patch_size
    probe_given = probe is not None
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) < 1 or not np.isfinite(pos).all():
            raise ConfigError(
                f"positions: expected finite (M, 2) positions (x, y), got shape {pos.shape}"
            )
        pos = pos - pos.min(axis=0)
        config = replace(config, n_positions=len(pos))
    else:
        pos = scan_positions(
            config.scan_kind, config.n_positions, config.step_px, rng, config.jitter
        )
    border = n // 2 + SHIFT_PAD + 2
    extent = np.ceil(pos.max(axis=0)).astype(int)
    needed = int(max(extent) + 2 * border + 1)
    size = config.object_size or needed
    if size < needed:
        raise ConfigError(
            f"object_size: {size} is too small for this scan; it needs >= {needed} pixels "
            f"(reduce n_positions or step, or raise object_size)"
        )
    # centre the scan on the object
    pos = pos + (size - extent) / 2.0
    obj = make_object(
        config.object_kind,
        (size, size),
        rng,
        config.amplitude_contrast,
        config.phase_range,
        test_split=config.test_split,
    )
    if probe is not None:
        given = np.asarray(probe)
        given = given[None] if given.ndim == 2 else given
        if given.ndim != 3 or given.shape[-2:] != (n, n) or not np.iscomplexobj(given):
            raise ConfigError(
                f"probe: expected a complex (N, N) or (K, N, N) probe with N = patch_size "
                f"= {n}, got {given.dtype} of shape {given.shape}"
            )
        if not np.isfinite(given).all() or not np.any(np.abs(given) > 0):
            raise ConfigError("probe: expected finite values, not all zero")
        probe = scale_probe(given.astype(np.complex128), config.photons)
    else:
        probe = make_probe(config.probe_kind, n, config.diameter)
        if config.probe_soft_mask:
            probe = apply_soft_mask(probe)
        probe = (
            incoherent_modes(probe, config.probe_modes) if config.probe_modes > 1 else probe[None]
        )
        probe = scale_probe(probe, config.photons)

    obj_t = torch.as_tensor(obj)
    probe_t = torch.as_tensor(probe)
    pos_t = torch.as_tensor(pos)
    expected = np.empty((len(pos), n, n), dtype=np.float64)
    with torch.no_grad():
        for s in range(0, len(pos), 256):
            patches = extract_patches(obj_t.to(torch.complex128), pos_t[s : s + 256], n)
            expected[s : s + 256] = diffraction_intensity(
                patches, probe_t.to(torch.complex128)
            ).numpy()
    expected = np.clip(expected, 0, None)
    counts = (
        rng.poisson(expected).astype(np.float32) if config.noise else expected.astype(np.float32)
    )
    metadata = {
        "generator": f"ptychopinn {__version__} simulate",
        "simulation": asdict(config),
        "photons_per_pattern": config.photons,
        "step_px": config.step_px,
        "probe_diameter_px": config.diameter,
        "mean_counts_per_pattern": float(counts.sum(axis=(1, 2)).mean()),
        "probe_source": "given" if probe_given else config.probe_kind,
        "positions_source": "given" if positions is not None else config.scan_kind,
    }
    return ScanData(
        diffraction=counts,
        positions_px=pos,
        probe=probe,
        object_truth=obj,
        metadata=metadata,
        source=f"simulation(seed={config.seed})",
    )
