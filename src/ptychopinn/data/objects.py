"""Ground-truth object generators for simulation.

Each pattern generator returns a real (H, W) map in [0, 1]; ``make_object`` turns an amplitude map
and a phase map into a complex transmission function
``(1 - amplitude_contrast * a) * exp(1j * phase_range * (b - 0.5))`` (bright features absorb).

Object specs (``--object``): ``lines``, ``grf``, ``blobs``, ``natural`` (two different scikit-image
test images for amplitude and phase, picked by the seed), ``skimage:NAME[,NAME2]`` and
``file:PATH[,PATH2]`` (any image file matplotlib can read; the second one gives the phase).
"""

from __future__ import annotations

import numpy as np

from ptychopinn.errors import PtychoPINNError
from ptychopinn.registry import Registry

#: scikit-image test images bundled with the package (no download needed).
NATURAL_TRAIN = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "brick",
    "gravel",
    "coins",
    "retina",
)
NATURAL_TEST = ("camera", "moon")


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    h, w = field.shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    g = np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    return np.real(np.fft.ifft2(np.fft.fft2(field) * g))


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.min()
    return a / a.max() if a.max() > 0 else a


def lines_pattern(shape, rng, n_lines: int | None = None, blur: float = 1.0) -> np.ndarray:
    """Random straight line segments of random brightness, slightly blurred."""
    h, w = shape
    n_lines = n_lines or max(8, int(h * w / 1200))
    img = np.zeros(shape)
    for _ in range(n_lines):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.05, 0.5) * max(h, w)
        t = np.linspace(-length / 2, length / 2, int(2 * length) + 2)
        xs = np.clip(np.round(x0 + t * np.cos(angle)).astype(int), 0, w - 1)
        ys = np.clip(np.round(y0 + t * np.sin(angle)).astype(int), 0, h - 1)
        img[ys, xs] += rng.uniform(0.3, 1.0)
    return _unit(_smooth(img, blur))


def grf_pattern(shape, rng, correlation: float = 6.0) -> np.ndarray:
    """Gaussian random field with correlation length ``correlation`` pixels."""
    return _unit(_smooth(rng.standard_normal(shape), correlation))


def blobs_pattern(shape, rng, n_blobs: int | None = None) -> np.ndarray:
    """Overlapping Gaussian blobs of random size and brightness."""
    h, w = shape
    n_blobs = n_blobs or max(10, int(h * w / 600))
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros(shape)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(2, 10)
        img += rng.uniform(0.2, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    return _unit(img)


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    return img


def _fit(img: np.ndarray, shape, rng) -> np.ndarray:
    """Resize ``img`` so that it just covers ``shape`` (the whole picture stays recognisable at
    small object sizes), then take a random crop along the longer side."""
    import torch

    h, w = shape
    ih, iw = img.shape
    scale = max(h / ih, w / iw)
    size = (max(h, int(np.ceil(ih * scale))), max(w, int(np.ceil(iw * scale))))
    if size != (ih, iw):
        t = torch.as_tensor(img)[None, None]
        t = torch.nn.functional.interpolate(
            t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )
        img = t[0, 0].numpy()
        ih, iw = img.shape
    r0 = int(rng.integers(0, ih - h + 1))
    c0 = int(rng.integers(0, iw - w + 1))
    return _unit(img[r0 : r0 + h, c0 : c0 + w])


def skimage_image(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError:
        raise PtychoPINNError(
            "natural test images need scikit-image: pip install 'ptychopinn[images]'"
        ) from None
    fn = getattr(skimage.data, name, None)
    if fn is None or not callable(fn):
        raise PtychoPINNError(f"object: unknown scikit-image test image {name!r}")
    return _gray(fn())


def file_image(path: str) -> np.ndarray:
    import matplotlib.image as mpimg

    try:
        return _gray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise PtychoPINNError(f"{path}: object image: cannot read ({exc})") from None


#: name -> pattern(shape, rng) -> (H, W) map in [0, 1] (the procedural object sources).
PATTERNS = Registry("object pattern")
PATTERNS.add("lines", lines_pattern)
PATTERNS.add("grf", grf_pattern)
PATTERNS.add("blobs", blobs_pattern)
OBJECT_KINDS = ("lines", "grf", "blobs", "natural", "skimage:NAME[,NAME2]", "file:PATH[,PATH2]")


def object_maps(spec: str, shape, rng: np.random.Generator, test_split: bool = False):
    """Amplitude and phase maps in [0, 1] for an object spec."""
    if spec in PATTERNS:
        return PATTERNS[spec](shape, rng), PATTERNS[spec](shape, rng)
    if spec == "natural":
        pool = NATURAL_TEST if test_split else NATURAL_TRAIN
        a_name, p_name = rng.choice(pool, size=2, replace=False)
        return (
            _fit(skimage_image(a_name), shape, rng),
            _unit(_smooth(_fit(skimage_image(p_name), shape, rng), 1.0)),
        )
    for prefix, loader in (("skimage:", skimage_image), ("file:", file_image)):
        if spec.startswith(prefix):
            names = spec[len(prefix) :].split(",")
            if not names[0] or len(names) > 2:
                raise PtychoPINNError(f"object: {spec!r}: expected {prefix}A or {prefix}A,B")
            amp = _fit(loader(names[0]), shape, rng)
            phase = _fit(loader(names[-1]), shape, rng) if len(names) == 2 else amp
            return amp, phase
    raise PtychoPINNError(f"object: unknown kind {spec!r}; expected one of {list(OBJECT_KINDS)}")


def make_object(
    spec: str,
    shape,
    rng: np.random.Generator,
    amplitude_contrast: float = 0.5,
    phase_range: float = np.pi / 2,
    test_split: bool = False,
) -> np.ndarray:
    """Complex (H, W) transmission function; amplitude in [1 - contrast, 1]."""
    if not 0 <= amplitude_contrast < 1:
        raise PtychoPINNError(f"amplitude_contrast: {amplitude_contrast} must be in [0, 1)")
    a, b = object_maps(spec, shape, rng, test_split=test_split)
    amp = 1.0 - amplitude_contrast * a
    return (amp * np.exp(1j * phase_range * (b - 0.5))).astype(np.complex64)
