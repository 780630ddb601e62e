"""Physics core: FFT convention, shifts (numpy oracle, adjointness, round trips), overlap
constraint, forward model gain, losses and float64 gradchecks."""

import math

import numpy as np
import pytest
import torch

from ptychopinn.physics import (
    amplitude_mae,
    canvas_geometry,
    diffraction_intensity,
    expected_counts,
    extract_patches,
    far_field,
    init_gain,
    overlap_constrain,
    place_patches,
    poisson_nll,
    probe_weight,
)
from ptychopinn.physics.probe import (
    apply_soft_mask,
    incoherent_modes,
    make_probe,
    scale_probe,
)
from ptychopinn.physics.shifts import SHIFT_PAD

C128 = torch.complex128


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(
        torch.randn(*shape, generator=g, dtype=torch.float64),
        torch.randn(*shape, generator=g, dtype=torch.float64),
    )


def smooth_canvas(h, w, sigma=2.0, seed=0):
    """Smooth complex test object (Gaussian-filtered noise around 1), numpy complex128."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    g = np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    f = np.fft.ifft2(
        np.fft.fft2(rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) * g
    )
    return 1.0 + 0.5 * f / np.abs(f).std()


def _ramp(length, shift):
    """exp(2 pi i k shift) per frequency; for even lengths the Nyquist bin gets the real factor
    cos(pi shift) (the documented rule of ptychopinn.physics.shifts.fourier_shift)."""
    k = np.fft.fftfreq(length)
    ramp = np.exp(2j * np.pi * k * shift)
    if length % 2 == 0:
        ramp[length // 2] = np.cos(np.pi * shift)
    return ramp


def numpy_window(obj, x, y, n, pad=2):
    """Independent oracle (the maths of shared/tools/check_conventions.py ``window``, plus the
    real Nyquist factor): the n x n window whose pixel (n//2, n//2) sits at (x, y), sub-pixel part
    by a Fourier shift of a window padded by ``pad`` pixels."""
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    y0, x0 = iy - n // 2, ix - n // 2
    w = obj[y0 - pad : y0 + n + pad, x0 - pad : x0 + n + pad]
    ramp = _ramp(w.shape[0], fy)[:, None] * _ramp(w.shape[1], fx)[None, :]
    w = np.fft.ifft2(np.fft.fft2(w) * ramp)
    return w[pad : pad + n, pad : pad + n]


# ----------------------------------------------------------------------------- far field


@pytest.mark.parametrize("n", [8, 7, 16])
def test_far_field_matches_numpy_ortho_fftshift(n):
    x = crandn(3, n, n, seed=n)
    got = far_field(x).numpy()
    ref = np.fft.fftshift(np.fft.fft2(x.numpy(), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # the unbatched 2-D case against the literal expression of PHYSICS.md
    np.testing.assert_allclose(
        far_field(x[0]).numpy(),
        np.fft.fftshift(np.fft.fft2(x[0].numpy(), norm="ortho")),
        atol=1e-12,
    )


def test_far_field_zero_frequency_at_centre():
    n = 16
    flat = torch.ones(n, n, dtype=C128)
    intensity = far_field(flat).abs().square()
    assert torch.argmax(intensity).item() == (n // 2) * n + n // 2
    assert intensity[n // 2, n // 2].item() == pytest.approx(n * n)  # all energy at DC


def test_parseval():
    psi = crandn(4, 2, 32, 32, seed=1)
    lhs = far_field(psi).abs().square().sum(dim=(-2, -1))
    rhs = psi.abs().square().sum(dim=(-2, -1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


def test_incoherent_modes_add_intensities_not_amplitudes():
    n = 16
    probe = torch.as_tensor(incoherent_modes(make_probe("gaussian", n, 8.0), 3)).to(C128)
    obj = crandn(5, n, n, seed=2)
    total = diffraction_intensity(obj, probe)
    singles = sum(diffraction_intensity(obj, probe[k]) for k in range(3))
    torch.testing.assert_close(total, singles, rtol=1e-12, atol=1e-12)
    coherent = far_field(obj * probe.sum(0)).abs().square()
    assert (total - coherent).abs().max() > 1e-3 * total.max()
    # a 2-D probe is one mode
    torch.testing.assert_close(
        diffraction_intensity(obj, probe[0]), far_field(obj * probe[0]).abs().square()
    )


# ----------------------------------------------------------------------------- shifts


def test_extract_integer_positions_is_exact_slicing():
    n = 8
    canvas = crandn(40, 36, seed=3)
    pos = torch.tensor([[10.0, 12.0], [20.0, 30.0], [29.0, 9.0]], dtype=torch.float64)  # (x, y)
    patches = extract_patches(canvas, pos, n)
    for (x, y), p in zip(pos.long().tolist(), patches, strict=False):
        ref = canvas[y - n // 2 : y - n // 2 + n, x - n // 2 : x - n // 2 + n]
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-13)
        # the documented convention: patch pixel (N//2, N//2) is the object pixel at (x, y)
        assert abs(p[n // 2, n // 2] - canvas[y, x]) < 1e-13


def test_extract_subpixel_matches_numpy_oracle():
    n = 16
    obj = smooth_canvas(64, 60, seed=4)
    rng = np.random.default_rng(4)
    pos = np.stack([rng.uniform(12, 47, 20), rng.uniform(12, 51, 20)], axis=1)
    pos[0] = (30.5, 30.5)
    pos[1] = (25.0, 33.0)
    got = extract_patches(torch.as_tensor(obj), torch.as_tensor(pos), n).numpy()
    ref = np.stack([numpy_window(obj, x, y, n, pad=SHIFT_PAD) for x, y in pos])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_extract_batched_equals_unbatched():
    n = 8
    canvas = crandn(2, 30, 30, seed=5)
    pos = (
        torch.rand(2, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 10
        + 10
    )
    batched = extract_patches(canvas, pos, n)
    for b in range(2):
        torch.testing.assert_close(batched[b], extract_patches(canvas[b], pos[b], n))


def test_extract_outside_canvas_raises():
    with pytest.raises(ValueError, match="outside"):
        extract_patches(torch.zeros(20, 20, dtype=C128), torch.tensor([[3.0, 10.0]]), 8)
    with pytest.raises(ValueError, match="kernel"):
        extract_patches(
            torch.zeros(20, 20, dtype=C128), torch.tensor([[10.0, 10.0]]), 8, kernel="cubic"
        )


def test_bilinear_extract_matches_numpy_interpolation():
    n = 8
    canvas = crandn(30, 30, seed=27)
    x, y = 14.3, 12.8
    got = extract_patches(
        canvas, torch.tensor([[x, y]], dtype=torch.float64), n, kernel="bilinear"
    )[0]
    c = canvas.numpy()
    rows = np.arange(n) + y - n // 2
    cols = np.arange(n) + x - n // 2
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fy, fx = (rows - r0)[:, None], (cols - c0)[None, :]
    ref = (
        (1 - fy) * (1 - fx) * c[np.ix_(r0, c0)]
        + (1 - fy) * fx * c[np.ix_(r0, c0 + 1)]
        + fy * (1 - fx) * c[np.ix_(r0 + 1, c0)]
        + fy * fx * c[np.ix_(r0 + 1, c0 + 1)]
    )
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-13)


@pytest.mark.parametrize("kernel", ["fourier", "bilinear"])
@pytest.mark.parametrize("batched", [False, True])
def test_place_is_adjoint_of_extract(batched, kernel):
    n, shape = 8, (30, 34)
    lead = (2,) if batched else ()
    c = crandn(*lead, *shape, seed=6)
    q = crandn(*lead, 5, n, n, seed=7)
    g = torch.Generator().manual_seed(8)
    pos = torch.stack(
        [
            torch.rand(*lead, 5, generator=g, dtype=torch.float64) * 16 + 8,
            torch.rand(*lead, 5, generator=g, dtype=torch.float64) * 12 + 8,
        ],
        dim=-1,
    )
    lhs = torch.vdot(extract_patches(c, pos, n, kernel=kernel).flatten(), q.flatten())
    rhs = torch.vdot(c.flatten(), place_patches(q, pos, shape, kernel=kernel).flatten())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("kernel", ["fourier", "bilinear"])
@pytest.mark.parametrize("dtype,atol", [(torch.complex64, 1e-6), (C128, 1e-13)])
def test_place_then_extract_integer_round_trip_exact(dtype, atol, kernel):
    n = 8
    patches = crandn(4, n, n, seed=9).to(dtype)
    pos = torch.tensor([[8.0, 8.0], [22.0, 8.0], [8.0, 22.0], [22.0, 22.0]])  # windows disjoint
    canvas = place_patches(patches, pos, (31, 31), kernel=kernel)
    assert canvas.dtype == dtype
    torch.testing.assert_close(
        extract_patches(canvas, pos, n, kernel=kernel), patches, rtol=0, atol=atol
    )
    # and the canvas holds each patch at its documented place (pixel N//2 at (x, y))
    torch.testing.assert_close(canvas[18:26, 4:12], patches[2], rtol=0, atol=atol)


def test_place_then_extract_subpixel_round_trip():
    """Same sub-pixel positions, non-overlapping windows, probe-like content (smooth, falling off
    towards the patch border). The Fourier shift is unitary except for the real cos(pi f) factor
    on the Nyquist bin, so the round trip is accurate but not exact: measured max error 2.0e-4 of
    the peak (float64); tolerance 1e-3. (Pixel-noise patches, with much Nyquist energy, come back
    with errors of ~0.3 of the peak.)"""
    n = 16
    y, x = np.mgrid[0:n, 0:n] - n // 2
    envelope = np.exp(-(x**2 + y**2) / (2 * 2.5**2))
    patch = torch.as_tensor(smooth_canvas(n, n, seed=3) * envelope)
    patches = torch.stack([patch, patch.conj(), patch * 1j, patch.flip(0)])
    pos = torch.tensor(
        [[12.3, 12.7], [40.5, 12.1], [12.9, 40.25], [40.01, 40.99]], dtype=torch.float64
    )
    back = extract_patches(place_patches(patches, pos, (60, 60)), pos, n)
    assert (back - patches).abs().max() < 1e-3 * patches.abs().max()


def test_subpixel_shift_of_a_compact_feature_is_accurate():
    """A Gaussian (sigma 1.5 px) placed at a sub-pixel position lands where the convention says,
    and re-extracting at another position shifts it by the difference. Measured max error
    7.5e-6 of the peak (float64); tolerance 1e-4."""
    n, s = 16, 1.5

    def gauss(cx, cy, shape):
        y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
        return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))

    patch = torch.as_tensor(gauss(n // 2, n // 2, (n, n)) + 0j)
    canvas = place_patches(patch[None], torch.tensor([[20.3, 17.8]], dtype=torch.float64), (40, 40))
    np.testing.assert_allclose(canvas.numpy(), gauss(20.3, 17.8, (40, 40)), atol=1e-4)
    again = extract_patches(canvas, torch.tensor([[21.0, 17.0]], dtype=torch.float64), n)[0]
    np.testing.assert_allclose(again.numpy(), gauss(n // 2 - 0.7, n // 2 + 0.8, (n, n)), atol=1e-4)


def test_subpixel_extract_of_extended_object_interior_accuracy():
    """Sub-pixel extraction of a smooth *extended* object against the continuous function.

    The Fourier shift acts on a window padded by only SHIFT_PAD pixels, so the window edges ring
    (Gibbs): measured max error at the patch centre pixel 0.028 and 0.08 over the central
    N/2 x N/2 (field amplitude ~1.8, N=16). The tolerances hold that accuracy; a wrong shift sign
    or a half-pixel convention error gives errors of 0.3-0.6."""
    n, h = 16, 64

    def f(x, y):
        return (
            np.exp(1j * (0.37 * x + 0.21 * y))
            + 0.5 * np.cos(0.8 * x - 0.3 * y + 0.5)
            + 0.3 * np.sin(0.15 * y)
        )

    y, x = np.mgrid[0:h, 0:h].astype(float)
    obj = torch.as_tensor(f(x, y))
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    for fx, fy in [(0.5, 0.5), (0.25, 0.1), (0.9, 0.7)]:
        px, py = 32 + fx, 32 + fy
        got = extract_patches(obj, torch.tensor([[px, py]], dtype=torch.float64), n)[0].numpy()
        err = np.abs(got - f(px - n // 2 + xx, py - n // 2 + yy))
        assert err[n // 2, n // 2] < 0.04
        assert err[n // 4 : -n // 4, n // 4 : -n // 4].max() < 0.1


def test_canvas_geometry_windows_fit_and_are_tight():
    n = 16
    rng = np.random.default_rng(11)
    pos = rng.uniform(-30.0, 45.0, (25, 2))
    shape, offset = canvas_geometry(pos, n)
    shifted = torch.as_tensor(pos + offset)
    extract_patches(torch.zeros(shape, dtype=C128), shifted, n)  # must not raise
    place_patches(torch.zeros(25, n, n, dtype=C128), shifted, shape)
    for smaller in ((shape[0] - 1, shape[1]), (shape[0], shape[1] - 1)):
        with pytest.raises(ValueError):
            extract_patches(torch.zeros(smaller, dtype=C128), shifted, n)
    # margin adds room on every side
    shape_m, offset_m = canvas_geometry(pos, n, margin=3)
    assert shape_m == (shape[0] + 6, shape[1] + 6)
    np.testing.assert_array_equal(offset_m, offset + 3)


def test_canvas_geometry_uses_object_frame_when_positions_fit():
    n = 16
    pos = np.array([[20.5, 30.2], [60.0, 40.7]])
    shape, offset = canvas_geometry(pos, n, object_shape=(80, 90))
    assert shape == (80, 90)
    np.testing.assert_array_equal(offset, [0, 0])
    # too close to the border: a new canvas with an offset is returned instead
    shape2, offset2 = canvas_geometry([[3.0, 30.0]], n, object_shape=(80, 90))
    assert offset2[0] > 0
    extract_patches(
        torch.zeros(shape2, dtype=C128), torch.as_tensor(np.array([[3.0, 30.0]]) + offset2), n
    )


# ----------------------------------------------------------------------------- overlap constraint


def _weight(n):
    probe = torch.as_tensor(apply_soft_mask(make_probe("pinhole", n, n / 2))).to(C128)
    return probe_weight(probe).to(torch.float64)


def test_overlap_constrain_single_patch_groups_unchanged():
    p = crandn(3, 1, 16, 16, seed=12)
    out = overlap_constrain(p, torch.zeros(3, 1, 2, dtype=torch.float64), _weight(16))
    torch.testing.assert_close(out, p)


@pytest.mark.parametrize(
    "offsets,centre,tol",
    [
        # integer offsets: measured 9.0e-3 of the peak where lit (the 1e-3 * max regulariser of the
        # average pulls towards a flat object where the weights are small)
        ([[-3.0, -2.0], [3.0, -2.0], [-3.0, 2.0], [3.0, 2.0]], [32.0, 31.0], 2e-2),
        # sub-pixel offsets: bilinear re-interpolation blurs; measured 5.7e-2 of the peak where lit
        ([[-2.3, -1.9], [2.1, -2.4], [-1.7, 2.2], [1.9, 2.1]], [32.4, 31.7], 0.1),
    ],
)
def test_overlap_constrain_keeps_consistent_patches(offsets, centre, tol):
    """Patches cut from one smooth object at the group offsets are left (nearly) unchanged where
    the probe is lit (weight > 0.1 of the peak)."""
    n = 16
    obj = torch.as_tensor(smooth_canvas(64, 64, sigma=3.0, seed=15))
    w = _weight(n)
    offsets = torch.tensor([offsets], dtype=torch.float64)
    patches = extract_patches(obj, offsets[0] + torch.tensor(centre, dtype=torch.float64), n)[None]
    out = overlap_constrain(patches, offsets, w)
    err = (out - patches).abs() / patches.abs().max()
    assert err[..., w > 0.1].max() < tol


def test_overlap_constrain_is_stable_for_subpixel_offsets():
    """The average is a convex combination (non-negative bilinear weights, flat fallback where no
    patch has weight), so it can never exceed its inputs: with |p| <= 1, |out| <= 1. (The first
    Fourier-kernel version amplified random patches up to 1e5-fold here.)"""
    n = 16
    w = _weight(n)
    offsets = torch.tensor(
        [[[-2.3, -1.9], [2.1, -2.4], [-1.7, 2.2], [1.9, 2.1]]], dtype=torch.float64
    )
    g = torch.Generator().manual_seed(26)
    rand = torch.polar(
        0.5 + 0.5 * torch.rand(8, 4, n, n, dtype=torch.float64, generator=g),
        torch.randn(8, 4, n, n, dtype=torch.float64, generator=g),
    )
    out = overlap_constrain(rand, offsets.expand(8, 4, 2), w)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-9


def test_overlap_constrain_on_a_simulated_scan_preserves_diffraction(tiny_scan):
    """Real grouping offsets of a simulated scan: constraining the true patches changes their
    far-field intensity little. Measured relative L1 change: median 0.8%, max 3.5%."""
    from ptychopinn.data.grouping import group_positions

    n = tiny_scan.patch_size
    groups = group_positions(tiny_scan.positions_px, gridsize=2, neighbors=6, seed=0)
    probe = torch.as_tensor(tiny_scan.probe).to(C128)
    obj = torch.as_tensor(tiny_scan.object_truth).to(C128)
    pos = torch.as_tensor(tiny_scan.positions_px)[torch.as_tensor(groups.indices)]
    patches = extract_patches(obj, pos.reshape(-1, 2), n).reshape(len(groups), 4, n, n)
    out = overlap_constrain(
        patches, torch.as_tensor(groups.offsets_px).double(), probe_weight(probe).double()
    )
    before = diffraction_intensity(patches, probe)
    change = (diffraction_intensity(out, probe) - before).abs().sum((-2, -1)) / before.sum((-2, -1))
    assert change.median() < 0.02
    assert change.max() < 0.08


def test_overlap_constrain_makes_inconsistent_patches_consistent():
    n = 16
    w = _weight(n)
    offsets = torch.tensor(
        [[-2.0, -3.0], [2.0, -3.0], [-2.0, 3.0], [2.0, 3.0]], dtype=torch.float64
    )
    offsets = offsets.expand(3, 4, 2)
    patches = crandn(3, 4, n, n, seed=14)
    out = overlap_constrain(patches, offsets, w)
    assert (out - patches).abs().max() > 0.5  # random patches really were changed
    # consistency: every pair agrees on the object pixels they share (offsets are integers)
    for a in range(4):
        for c in range(4):
            dx, dy = (offsets[0, c] - offsets[0, a]).long().tolist()
            ra = slice(max(dy, 0), n + min(dy, 0))
            ca = slice(max(dx, 0), n + min(dx, 0))
            rc = slice(max(-dy, 0), n + min(-dy, 0))
            cc = slice(max(-dx, 0), n + min(-dx, 0))
            torch.testing.assert_close(out[:, a, ra, ca], out[:, c, rc, cc], rtol=0, atol=1e-9)
    # and consistent patches are (nearly) a fixed point where lit: measured 0.04 of the peak
    # (the regularised average pulls the unlit border towards 1 on every application)
    again = overlap_constrain(out, offsets, w)
    assert (again - out)[..., w > 0.1].abs().max() < 0.1 * out.abs().max()


# ----------------------------------------------------------------------------- forward model


@pytest.mark.parametrize("modes", [1, 3])
def test_init_gain_makes_unit_object_predict_mean_counts(modes):
    n = 32
    probe = make_probe("pinhole", n, 16)
    probe = incoherent_modes(probe, modes) if modes > 1 else probe
    probe = scale_probe(probe, 7.0)  # arbitrary absolute scale: the gain must absorb it
    gain = init_gain(1234.5, probe)
    counts = expected_counts(
        torch.ones(2, 4, n, n, dtype=torch.complex64), torch.as_tensor(probe), gain
    )
    assert counts.shape == (2, 4, n, n)
    np.testing.assert_allclose(counts.sum(dim=(-2, -1)).numpy(), 1234.5, rtol=1e-5)


def test_init_gain_on_simulated_scan(tiny_scan):
    probe = torch.as_tensor(tiny_scan.probe)
    n = tiny_scan.patch_size
    unit = expected_counts(
        torch.ones(1, 1, n, n, dtype=torch.complex64),
        probe,
        init_gain(tiny_scan.mean_counts, probe),
    )
    assert float(unit.sum()) == pytest.approx(tiny_scan.mean_counts, rel=1e-5)


def test_init_gain_rejects_zero_probe():
    with pytest.raises(ValueError, match="zero energy"):
        init_gain(100.0, np.zeros((8, 8), np.complex64))


def test_centred_and_fast_path_intensities_are_one_model():
    """``centred=False`` (refinement's fast path) is the ifftshift of the centred intensity, and
    the intensity is ``sum_k |F(O P_k)|^2`` computed independently with numpy."""
    gen = torch.Generator().manual_seed(4)
    obj = torch.randn(3, 16, 16, dtype=torch.complex128, generator=gen)
    probe = torch.randn(2, 16, 16, dtype=torch.complex128, generator=gen)
    centred = diffraction_intensity(obj, probe)
    fast = diffraction_intensity(obj, probe, centred=False)
    torch.testing.assert_close(fast, torch.fft.ifftshift(centred, dim=(-2, -1)))
    o, p = obj.numpy()[:, None], probe.numpy()[None]
    oracle = (np.abs(np.fft.fftshift(np.fft.fft2(o * p, norm="ortho"), axes=(-2, -1))) ** 2).sum(1)
    np.testing.assert_allclose(centred.numpy(), oracle, rtol=1e-10, atol=1e-12)


def _module(trainable: bool, n: int = 16):
    from ptychopinn.config import ExecutionConfig, ModelConfig, TrainingConfig
    from ptychopinn.training.module import PtychoPINN

    probe = torch.as_tensor(make_probe("gaussian", n, 4))[None, None]
    mc = ModelConfig(n=n, gridsize=1, physics_iterations=0, trainable_gain=trainable)
    return PtychoPINN(mc, TrainingConfig(), ExecutionConfig(), probe, [1.0], eps=1e-6)


def test_training_gain_is_positive_trainable_and_reaches_the_optimiser():
    n = 16
    model = _module(True, n)
    assert model.log_gain.requires_grad
    assert any(p is model.log_gain for p in model.parameters())
    obj = torch.polar(torch.ones(2, 1, n, n), torch.randn(2, 1, n, n))
    scan = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        measured = 2.5 * model.predicted_counts(obj, scan)
    opt = torch.optim.LBFGS([model.log_gain], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = poisson_nll(measured, model.predicted_counts(obj, scan))
        value.backward()
        return value

    opt.step(closure)
    assert float(model.log_gain.exp()) == pytest.approx(2.5, rel=0.01)
    with torch.no_grad():
        model.log_gain.fill_(-30.0)  # any real log-gain is a positive gain
    assert bool((model.predicted_counts(obj, scan) >= 0).all())


def test_training_gain_can_be_fixed():
    assert not _module(False).log_gain.requires_grad


# ----------------------------------------------------------------------------- losses


def _expected_counts(seed=16, n=16, photons=1e3):
    probe = torch.as_tensor(scale_probe(make_probe("pinhole", n, n / 2), photons)).to(C128)
    obj = torch.polar(
        0.7
        + 0.3
        * torch.rand(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)),
        torch.randn(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)),
    )
    return diffraction_intensity(obj, probe), obj, probe


@pytest.mark.parametrize("loss", [poisson_nll, amplitude_mae])
def test_losses_finite_at_zero_counts_and_zero_prediction(loss):
    zeros = torch.zeros(2, 8, 8, dtype=torch.float64)
    counts = torch.poisson(torch.full((2, 8, 8), 3.0, dtype=torch.float64))
    for measured, predicted in [(zeros, zeros), (counts, zeros), (zeros, counts)]:
        predicted = predicted.clone().requires_grad_(True)
        value = loss(measured, predicted)
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(predicted.grad).all()


def test_poisson_nll_minimal_at_the_truth():
    truth, _, _ = _expected_counts()
    at_truth = poisson_nll(truth, truth)
    g = torch.Generator().manual_seed(17)
    for scale in (0.01, 0.05, 0.2):
        for _ in range(5):
            perturbed = truth * (
                1 + scale * torch.randn(truth.shape, generator=g, dtype=torch.float64)
            ).clamp_min(0)
            assert poisson_nll(truth, perturbed) > at_truth
    for gain in (0.9, 0.99, 1.01, 1.1):
        assert poisson_nll(truth, gain * truth) > at_truth
    # the gradient vanishes at the truth, up to eps: d/dlambda = (1 - I / (lambda + eps)) / size
    pred = truth.clone().requires_grad_(True)
    poisson_nll(truth, pred).backward()
    assert (pred.grad * truth.numel()).abs().max() < 1e-3


def test_amplitude_mae_minimal_at_the_truth():
    truth, _, _ = _expected_counts()
    at_truth = amplitude_mae(truth, truth)
    assert at_truth < 1e-3
    assert amplitude_mae(truth, 1.1 * truth) > at_truth
    assert amplitude_mae(truth, truth + 1.0) > at_truth


@pytest.mark.parametrize("loss", [poisson_nll, amplitude_mae])
def test_bad_pixel_mask_excludes_pixels(loss):
    truth, _, _ = _expected_counts()
    measured = torch.poisson(truth, generator=torch.Generator().manual_seed(18))
    predicted = truth * 1.05
    bad = torch.zeros(16, 16, dtype=torch.bool)
    bad[3, 4] = bad[8, 8] = bad[0, :] = True
    base = loss(measured, predicted, bad_pixels=bad)
    hot_m, hot_p = measured.clone(), predicted.clone()
    hot_m[:, 8, 8] = 1e12  # a hot pixel: must not change the loss, not even through eps
    hot_p[:, 3, 4] = 0.0
    hot_m[:, 0, :] = 0.0
    torch.testing.assert_close(loss(hot_m, hot_p, bad_pixels=bad), base, rtol=1e-12, atol=0)
    # a good pixel does change it
    changed = measured.clone()
    changed[:, 5, 5] += 50
    assert abs(float(loss(changed, predicted, bad_pixels=bad) - base)) > 1e-6
    # the masked loss is the mean over the good pixels only
    good = ~bad
    ref = loss(measured[:, good], predicted[:, good], eps=1e-6 * measured[:, good].mean())
    torch.testing.assert_close(base, ref, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- gradcheck


def _small_setup(n=6, seed=19):
    g = torch.Generator().manual_seed(seed)
    probe = torch.complex(
        torch.randn(2, n, n, generator=g, dtype=torch.float64),
        torch.randn(2, n, n, generator=g, dtype=torch.float64),
    )
    obj = torch.complex(
        1 + 0.1 * torch.randn(2, n, n, generator=g, dtype=torch.float64),
        0.1 * torch.randn(2, n, n, generator=g, dtype=torch.float64),
    )
    with torch.no_grad():
        measured = torch.poisson(3.0 * diffraction_intensity(obj, probe), generator=g)
    return obj, probe, measured


@pytest.mark.parametrize("loss", [poisson_nll, amplitude_mae])
def test_gradcheck_losses_through_diffraction_intensity(loss):
    obj, probe, measured = _small_setup()
    gain = torch.tensor(3.0, dtype=torch.float64)

    def f(o, p, g):
        return loss(measured, g * diffraction_intensity(o, p))

    assert torch.autograd.gradcheck(
        f, (obj.requires_grad_(), probe.requires_grad_(), gain.requires_grad_()), fast_mode=True
    )


@pytest.mark.parametrize("kernel", ["fourier", "bilinear"])
def test_gradcheck_extract_and_place_patches(kernel):
    canvas = crandn(14, 14, seed=20).requires_grad_()
    patches = crandn(2, 6, 6, seed=21).requires_grad_()
    pos = torch.tensor([[6.3, 7.6], [7.9, 6.2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c: extract_patches(c, pos, 6, kernel=kernel), (canvas,), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda p: place_patches(p, pos, (14, 14), kernel=kernel), (patches,), fast_mode=True
    )


def test_gradcheck_loss_through_extract_patches():
    _, probe, _ = _small_setup()
    canvas = (1 + 0.1 * crandn(14, 14, seed=22)).requires_grad_()
    pos = torch.tensor([[6.3, 7.6], [7.9, 6.2]], dtype=torch.float64)
    with torch.no_grad():
        measured = torch.poisson(
            diffraction_intensity(extract_patches(canvas, pos, 6), probe),
            generator=torch.Generator().manual_seed(23),
        )

    def f(c):
        return poisson_nll(measured, diffraction_intensity(extract_patches(c, pos, 6), probe))

    assert torch.autograd.gradcheck(f, (canvas,), fast_mode=True)


def test_gradcheck_overlap_constrain():
    n = 6
    patches = crandn(1, 4, n, n, seed=24).requires_grad_()
    offsets = torch.tensor(
        [[[-1.2, -0.9], [1.1, -1.3], [-0.7, 1.2], [0.8, 1.0]]], dtype=torch.float64
    )
    w = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(25)) + 0.1
    assert torch.autograd.gradcheck(
        lambda p: overlap_constrain(p, offsets, w), (patches,), fast_mode=True
    )


def test_poisson_nll_is_mean_of_documented_formula():
    measured = torch.tensor([[0.0, 2.0], [5.0, 1.0]], dtype=torch.float64)
    predicted = torch.tensor([[0.5, 2.5], [4.0, 0.0]], dtype=torch.float64)
    eps = 1e-3
    ref = (predicted - measured * torch.log(predicted + eps)).mean()
    torch.testing.assert_close(poisson_nll(measured, predicted, eps=eps), ref)
    ref_mae = (torch.sqrt(predicted + eps) - torch.sqrt(measured)).abs().mean()
    torch.testing.assert_close(amplitude_mae(measured, predicted, eps=eps), ref_mae)
    assert math.isfinite(float(poisson_nll(measured, predicted)))


def test_projection_estimate_moves_toward_the_truth_and_constrains_on_its_interval(tiny_scan):
    """The physics estimate (the network's input) of groups of a simulated scan is closer to the
    true patches than the flat start; ``constrain_every=K`` is the unconstrained estimate with
    one overlap constraint at the end."""
    from ptychopinn.data.grouping import group_positions
    from ptychopinn.physics.forward import projection_estimate

    n = tiny_scan.patch_size
    groups = group_positions(tiny_scan.positions_px, 2, 7, n_groups=12, seed=0)
    counts = torch.as_tensor(tiny_scan.diffraction[groups.indices])
    offsets = torch.as_tensor(groups.offsets_px, dtype=torch.float32)
    probe = torch.as_tensor(tiny_scan.probe)
    w = probe_weight(probe)
    gain = init_gain(tiny_scan.mean_counts, tiny_scan.probe)
    truth = extract_patches(
        torch.as_tensor(tiny_scan.object_truth),
        torch.as_tensor(tiny_scan.positions_px[groups.indices.reshape(-1)]),
        n,
    ).reshape(counts.shape)
    est = projection_estimate(counts, probe, gain, 10, offsets, w)

    def err(p):  # probe-weighted error after each patch's free global phase
        c = (w * truth * p.conj()).sum(dim=(-2, -1), keepdim=True)
        aligned = p * torch.polar(torch.ones_like(c.real), torch.angle(c))
        return float((w * (aligned - truth).abs().square()).sum())

    assert err(est) < 0.5 * err(torch.ones_like(est))
    once = projection_estimate(counts, probe, gain, 10, offsets, w, constrain_every=10)
    free = projection_estimate(counts, probe, gain, 10)  # no constraint at all
    torch.testing.assert_close(once, overlap_constrain(free, offsets, w))
    assert not torch.allclose(once, est)
