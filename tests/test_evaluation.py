"""Evaluation: ambiguity removal, metrics against independent oracles, plots,
``ptychopinn evaluate``."""

import json
import math

import numpy as np
import pytest

from ptychopinn.cli.main import main
from ptychopinn.errors import PtychoPINNError
from ptychopinn.evaluation.align import (
    align_to_truth,
    disc_mask,
    erode,
    gaussian_filter,
    register_translation,
)
from ptychopinn.evaluation.metrics import (
    METRIC_KEYS,
    complex_nrmse,
    evaluate_reconstruction,
    frc,
    half_bit_threshold,
    psnr,
    ssim,
)
from ptychopinn.evaluation.plots import (
    save_comparison_png,
    save_complex_png,
    save_frc_png,
)
from ptychopinn.physics.shifts import shift_image as fourier_shift

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def truth(tiny_scan):
    return tiny_scan.object_truth.astype(np.complex128)


def _noise(shape, level, seed):
    rng = np.random.default_rng(seed)
    return level * (rng.normal(size=shape) + 1j * rng.normal(size=shape))


def _ambiguous(truth, shift=(0.37, -0.81), scale=1.7, offset=0.9, ramp=(0.05, -0.03)):
    yy, xx = np.mgrid[0 : truth.shape[0], 0 : truth.shape[1]]
    return scale * fourier_shift(truth, shift) * np.exp(1j * (offset + ramp[0] * xx + ramp[1] * yy))


# --- numpy helpers ------------------------------------------------------------------------------


def test_fourier_shift_integer_is_roll_and_subpixel_round_trip():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(20, 24)) + 1j * rng.normal(size=(20, 24))
    np.testing.assert_allclose(
        fourier_shift(img, (3, -2)), np.roll(img, (-2, 3), axis=(0, 1)), atol=1e-12
    )
    back = fourier_shift(fourier_shift(img, (0.3, 0.7)), (-0.3, -0.7))
    # only the even-length Nyquist bins lose energy under a fractional shift
    low = np.fft.fft2(back - img)
    low[10, :] = 0
    low[:, 12] = 0
    assert np.abs(low).max() < 1e-9


def test_erode_matches_brute_force():
    rng = np.random.default_rng(0)
    m = rng.random((15, 17)) > 0.2
    expect = np.zeros_like(m)
    padded = np.pad(m, 2, constant_values=False)
    for i in range(15):
        for j in range(17):
            expect[i, j] = padded[i : i + 5, j : j + 5].all()
    np.testing.assert_array_equal(erode(m, 2), expect)


def test_gaussian_filter_matches_scipy_convention():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    img = rng.normal(size=(19, 23))
    np.testing.assert_allclose(
        gaussian_filter(img, 1.5),
        ndimage.gaussian_filter(img, 1.5, truncate=3.5, mode="reflect"),
        atol=1e-12,
    )


@pytest.mark.parametrize("shift", [(0.37, -0.81), (-2.3, 1.1), (0.5, 0.5)])
def test_register_translation_subpixel(truth, tiny_scan, shift):
    moved = fourier_shift(truth, shift)
    m = disc_mask(truth.shape, tiny_scan.positions_px, 10)
    w = gaussian_filter(m.astype(float), 2.0, mode="constant") * m
    est = np.zeros(2)
    for _ in range(4):
        est += register_translation(fourier_shift(moved, -est), truth, w)
    np.testing.assert_allclose(est, shift, atol=0.01)


# --- alignment ----------------------------------------------------------------------------------


def test_alignment_recovers_phase_offset_ramp_scale_and_shift(truth, tiny_scan):
    rec = _ambiguous(truth)
    pair = align_to_truth(rec, truth, positions_px=tiny_scan.positions_px, probe=tiny_scan.probe)
    p = pair.params
    assert p["region_source"] == "positions"
    np.testing.assert_allclose([p["shift_x_px"], p["shift_y_px"]], [0.37, -0.81], atol=0.02)
    np.testing.assert_allclose(
        [p["phase_ramp_x_rad_per_px"], p["phase_ramp_y_rad_per_px"]], [-0.05, 0.03], atol=2e-3
    )
    assert p["amplitude_scale"] == pytest.approx(1 / 1.7, rel=2e-3)
    assert complex_nrmse(pair.recon, pair.truth, pair.mask) < 5e-3

    aligned = evaluate_reconstruction(
        rec, truth, positions_px=tiny_scan.positions_px, probe=tiny_scan.probe
    )
    raw = evaluate_reconstruction(
        rec, truth, positions_px=tiny_scan.positions_px, probe=tiny_scan.probe, remove=()
    )
    assert aligned["phase_ssim"] > 0.99 and aligned["amplitude_ssim"] > 0.99
    assert aligned["complex_nrmse"] < 5e-3 and aligned["phase_psnr"] > 45
    assert raw["phase_ssim"] < 0.5 and raw["complex_nrmse"] > 0.5 and raw["phase_psnr"] < 15
    assert not aligned["frc_crossed_threshold"] and raw["frc_crossed_threshold"]


def test_alignment_uses_offset_and_illumination_region(truth):
    # the reconstruction canvas is larger; canvas pixel = truth pixel + (5.25, 3.0)
    h, w = truth.shape
    canvas = np.ones((h + 10, w + 8), dtype=np.complex128)
    canvas[3 : 3 + h, 5 : 5 + w] = truth
    canvas = fourier_shift(canvas, (0.25, 0.0))
    illum = np.zeros(canvas.shape, np.float32)
    illum[20:50, 25:60] = 1.0
    pair = align_to_truth(canvas, truth, offset_px=(5.25, 3.0), illumination=illum, shrink_px=2)
    p = pair.params
    assert p["region_source"] == "illumination"
    assert p["region_pixels"] == (30 - 4) * (35 - 4)
    # canvas rows 22..47 / cols 27..57 are truth rows 19..44 / cols 21.75..51.75
    # -> bbox in truth pixels
    assert p["region_bbox_px"] == [22, 19, 53, 45]
    assert abs(p["shift_x_px"]) < 0.02 and abs(p["shift_y_px"]) < 0.02
    assert complex_nrmse(pair.recon, pair.truth, pair.mask) < 5e-3


def test_alignment_errors(truth):
    with pytest.raises(PtychoPINNError, match="does not overlap"):
        align_to_truth(truth, truth, offset_px=(500, 0))
    with pytest.raises(PtychoPINNError, match="smaller than"):
        align_to_truth(
            truth,
            truth,
            region_mask=np.pad(
                np.ones((5, 5), bool), ((0, truth.shape[0] - 5), (0, truth.shape[1] - 5))
            ),
        )
    with pytest.raises(PtychoPINNError, match="illumination: shape"):
        align_to_truth(truth, truth, illumination=np.ones((3, 3)))
    with pytest.raises(PtychoPINNError, match="2-D"):
        align_to_truth(truth[None], truth)
    with pytest.raises(PtychoPINNError, match="unknown ambiguities"):
        align_to_truth(truth, truth, remove=("rotation",))


# --- metrics: oracles -----------------------------------------------------------------------------


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(7)
    a = gaussian_filter(rng.normal(size=(40, 52)), 1.0)
    b = a + 0.3 * rng.normal(size=a.shape)
    rng_ = float(a.max() - a.min())
    ref = metrics.structural_similarity(
        b, a, data_range=rng_, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(b, a, data_range=rng_) == pytest.approx(ref, abs=1e-10)
    # masked: the map at pixels whose window lies inside the image equals scikit-image's full map
    _, smap = metrics.structural_similarity(
        b,
        a,
        data_range=rng_,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    mask = np.zeros(a.shape, bool)
    mask[12:30, 9:41] = rng.random((18, 32)) > 0.3
    assert ssim(b, a, data_range=rng_, mask=mask) == pytest.approx(smap[mask].mean(), abs=1e-10)
    assert ssim(a, a, data_range=rng_) == pytest.approx(1.0, abs=1e-12)


def test_psnr_hand_formula_and_nrmse():
    rng = np.random.default_rng(2)
    t = rng.random((16, 16))
    r = t + 0.05 * rng.normal(size=t.shape)
    mse = np.mean((r - t) ** 2)
    assert psnr(r, t) == pytest.approx(10 * np.log10((t.max() - t.min()) ** 2 / mse), rel=1e-12)
    assert psnr(r, t, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert psnr(t, t) == math.inf
    tc = t * np.exp(1j * t)
    assert complex_nrmse(3j * tc, tc) == pytest.approx(0.0, abs=1e-12)  # complex scalar is free
    noisy = tc + 0.1 * rng.normal(size=t.shape)
    c = np.vdot(noisy, tc) / np.vdot(noisy, noisy)
    expect = np.linalg.norm(c * noisy - tc) / np.linalg.norm(tc)
    assert complex_nrmse(noisy, tc) == pytest.approx(expect, rel=1e-12)


def test_half_bit_threshold_values():
    t = half_bit_threshold(np.array([1, 100, 1e12]))
    assert t[0] == pytest.approx(1.0, abs=1e-4)
    assert t[1] == pytest.approx((0.2071 + 0.19102) / (1.2071 + 0.09102), rel=1e-12)
    assert t[2] == pytest.approx(0.2071 / 1.2071, rel=1e-5)


def test_frc_self_is_one_and_independent_noise_is_near_zero():
    rng = np.random.default_rng(4)
    img = rng.normal(size=(96, 96)) + 1j * rng.normal(size=(96, 96))
    mask = np.zeros(img.shape, bool)
    mask[4:92, 6:90] = True
    same = frc(img, img, mask)
    np.testing.assert_allclose(same.frc[1:], 1.0, atol=1e-12)
    assert not same.crossed and same.resolution_px == 2.0
    other = frc(img, rng.normal(size=img.shape) + 1j * rng.normal(size=img.shape), mask)
    # per ring ~ N(0, 1/sqrt(pixels)): small, unbiased, below the 1/2-bit threshold
    assert np.abs(other.frc[5:]).mean() < 0.1 and abs(other.frc[1:].mean()) < 0.03
    assert np.mean(other.frc[1:] < other.threshold[1:]) > 0.9
    assert other.crossed and other.resolution_cycles_per_px < 0.05


def test_frc_resolution_tracks_blur(truth, tiny_scan):
    mask = disc_mask(truth.shape, tiny_scan.positions_px, 8)
    res = []
    # a blur alone scales each ring and leaves the FRC near 1; with noise, a wider blur loses the
    # high frequencies under the noise earlier
    for sigma in (0.5, 1.0, 2.0):
        blurred = gaussian_filter(truth.real, sigma) + 1j * gaussian_filter(truth.imag, sigma)
        res.append(frc(blurred + _noise(truth.shape, 0.03, 0), truth, mask).resolution_px)
    assert 2.0 < res[0] < res[1] < res[2] < 8.0


# --- metrics: behaviour ---------------------------------------------------------------------------


def test_perfect_reconstruction(truth, tiny_scan):
    out = evaluate_reconstruction(truth, truth, positions_px=tiny_scan.positions_px, radius_px=8)
    assert out["amplitude_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert out["phase_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert out["complex_nrmse"] < 1e-6
    assert out["phase_psnr"] is None or out["phase_psnr"] > 100
    assert set(METRIC_KEYS) <= set(out) and set(METRIC_KEYS) == set(out["baseline_flat"])
    json.dumps(out, allow_nan=False)


def test_noise_makes_every_metric_worse_and_flat_baseline_is_worse_than_good(truth, tiny_scan):
    runs = [
        evaluate_reconstruction(
            truth + _noise(truth.shape, level, 5),
            truth,
            positions_px=tiny_scan.positions_px,
            probe=tiny_scan.probe,
        )
        for level in (0.01, 0.05, 0.2)
    ]
    for better, worse in zip(runs, runs[1:], strict=False):
        for key in ("amplitude_psnr", "amplitude_ssim", "phase_psnr", "phase_ssim"):
            assert better[key] > worse[key], key
        assert better["complex_nrmse"] < worse["complex_nrmse"]
        assert better["frc_resolution_px"] <= worse["frc_resolution_px"]
    good, base = runs[0], runs[0]["baseline_flat"]
    assert (
        good["phase_ssim"] > base["phase_ssim"] and good["amplitude_ssim"] > base["amplitude_ssim"]
    )
    assert good["phase_psnr"] > base["phase_psnr"] + 10
    assert good["complex_nrmse"] < base["complex_nrmse"] / 5
    assert good["frc_resolution_px"] < base["frc_resolution_px"]
    # the baseline does not depend on the reconstruction
    assert runs[2]["baseline_flat"] == base


def test_pure_phase_object_and_constant_truth_stay_defined(truth, tiny_scan):
    # amplitude range is zero up to complex64 round-off: PSNR/SSIM fall back to the peak value
    phase_only = np.exp(1j * np.angle(truth)).astype(np.complex64)
    out = evaluate_reconstruction(
        phase_only * 0.5 + _noise(truth.shape, 0.01, 2),
        phase_only,
        positions_px=tiny_scan.positions_px,
        radius_px=8,
    )
    assert out["amplitude_data_range"] == pytest.approx(1.0)
    assert out["phase_ssim"] > 0.8 and 0 < out["amplitude_ssim"] <= 1
    base_psnr = out["baseline_flat"]["amplitude_psnr"]  # an exact match up to round-off
    assert base_psnr is None or base_psnr > 100
    json.dumps(out, allow_nan=False)


def test_pixel_size_gives_resolution_in_metres(truth, tiny_scan):
    rec = truth + _noise(truth.shape, 0.1, 1)
    out = evaluate_reconstruction(
        rec, truth, positions_px=tiny_scan.positions_px, pixel_size_m=1e-8
    )
    assert out["frc_resolution_m"] == pytest.approx(out["frc_resolution_px"] * 1e-8)


# --- plots ----------------------------------------------------------------------------------------


def test_plots_write_png_atomically_and_refuse_overwrite(tmp_path, truth):
    mask = np.zeros(truth.shape, bool)
    mask[10:60, 10:60] = True
    p = save_complex_png(truth, tmp_path / "obj.png", title="truth", mask=mask)
    q = save_comparison_png(truth * 0.9, truth, tmp_path / "cmp.png", mask=mask)
    f = np.linspace(0, 0.5, 20)
    r = save_frc_png(
        f,
        np.cos(f * 3),
        half_bit_threshold(np.full(20, 50)),
        tmp_path / "frc.png",
        resolution_cycles_per_px=0.3,
    )
    for path in (p, q, r):
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(PtychoPINNError, match="already exists"):
        save_complex_png(truth, p)
    save_frc_png(f, f, f, r, overwrite=True)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cmp.png", "frc.png", "obj.png"]


# --- CLI ------------------------------------------------------------------------------------------


@pytest.fixture()
def recon_file(tmp_path, tiny_scan):
    """A reconstruction on a larger canvas (offset (4, 6)), shifted, ramped, scaled and noisy,
    carrying positions but no illumination (the region comes from the positions)."""
    gt = tiny_scan.object_truth.astype(np.complex128)
    h, w = gt.shape
    canvas = np.ones((h + 12, w + 8), np.complex128)
    canvas[6 : 6 + h, 4 : 4 + w] = _ambiguous(gt, shift=(0.3, 0.2)) + _noise(gt.shape, 0.02, 9)
    path = tmp_path / "run" / "reconstruction.npz"
    path.parent.mkdir()
    np.savez_compressed(
        path,
        object=canvas.astype(np.complex64),
        offset_px=np.array([4.0, 6.0]),
        positions_px=tiny_scan.positions_px,
        probe=tiny_scan.probe,
        metadata=np.array(json.dumps({"method": "test", "pixel_size_m": 2e-8})),
    )
    return path


def test_cli_evaluate_end_to_end(recon_file, tiny_scan_file, capsys):
    rc = main(
        [
            "evaluate",
            "--reconstruction",
            str(recon_file),
            "--ground-truth",
            str(tiny_scan_file),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    run_dir = recon_file.parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS + (
        "frc_curve",
        "baseline_flat",
        "shift_x_px",
        "phase_ramp_x_rad_per_px",
        "amplitude_scale",
        "region_source",
    ):
        assert key in metrics, key
    assert metrics["region_source"] == "positions"
    assert metrics["phase_ssim"] > 0.9 > metrics["baseline_flat"]["phase_ssim"]
    assert metrics["shift_x_px"] == pytest.approx(0.3, abs=0.05)
    assert metrics["frc_resolution_m"] == pytest.approx(metrics["frc_resolution_px"] * 2e-8)
    curve = metrics["frc_curve"]
    assert (
        len(curve["frequency_cycles_per_px"])
        == len(curve["frc"])
        == len(curve["threshold_half_bit"])
        > 10
    )
    for name in ("frc.png", "comparison.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC
    assert "phase SSIM" in out and "flat baseline" in out

    # a second run refuses to replace the outputs (and writes nothing); --overwrite allows it
    before = (run_dir / "frc.png").stat().st_mtime_ns
    assert (
        main(
            ["evaluate", "--reconstruction", str(recon_file), "--ground-truth", str(tiny_scan_file)]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "frc.png").stat().st_mtime_ns == before
    other = recon_file.parent.parent / "elsewhere"
    other.mkdir()
    (other / "comparison.png").write_bytes(b"old")
    args = [
        "evaluate",
        "--reconstruction",
        str(recon_file),
        "--ground-truth",
        str(tiny_scan_file),
        "--output-dir",
        str(other),
        "--quiet",
    ]
    assert main(args) == 2 and "comparison.png" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["comparison.png"]
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in other.iterdir()) == ["comparison.png", "frc.png", "metrics.json"]
    assert (other / "comparison.png").read_bytes()[:8] == PNG_MAGIC


def _bad_inputs(tmp_path, recon_file, tiny_scan_file):
    no_truth = tmp_path / "no_truth.npz"
    np.savez(no_truth, diff3d=np.zeros((2, 4, 4)))
    no_object = tmp_path / "no_object.npz"
    np.savez(no_object, probe=np.ones((1, 4, 4), np.complex64))
    far = tmp_path / "far.npz"
    with np.load(recon_file) as z:
        np.savez(
            far, **{k: z[k] for k in z.files if k != "offset_px"}, offset_px=np.array([900.0, 0.0])
        )
    not_npz = tmp_path / "junk.npz"
    not_npz.write_text("not an archive")
    return [
        (tmp_path / "missing.npz", tiny_scan_file, "no such file"),
        (recon_file, tmp_path / "missing.npz", "no such file"),
        (recon_file, no_truth, "objectGuess"),
        (no_object, tiny_scan_file, "object: missing"),
        (far, tiny_scan_file, "does not overlap"),
        (not_npz, tiny_scan_file, "not a readable NPZ"),
    ]


def test_cli_evaluate_bad_inputs_one_line_exit_2(tmp_path, recon_file, tiny_scan_file, capsys):
    for recon, gt, expected in _bad_inputs(tmp_path, recon_file, tiny_scan_file):
        rc = main(
            [
                "evaluate",
                "--reconstruction",
                str(recon),
                "--ground-truth",
                str(gt),
                "--output-dir",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, (recon, gt)
        assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err, (
            err
        )
    assert not (tmp_path / "out").exists()
