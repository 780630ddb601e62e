"""Readers for other tools' files (tike NPZ on the vendored measured crop, CXI) and the
reference-free measures (data residual, half-scan FRC).

The crop in tests/data is measured X-ray data (tike 0.26.0's Siemens star, BSD-3, see
tests/data/README.md): the conventions are checked by physics, not by comparing with numbers we
wrote ourselves: the documented reading explains the counts far better than the alternatives.
"""

import bz2
import io
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychopinn.cli.main import main
from ptychopinn.data import load_scan
from ptychopinn.data.readers import READERS, detect_format, register_reader
from ptychopinn.errors import DataError
from ptychopinn.evaluation.reference_free import (
    data_residual,
    half_scan_frc,
    split_halves,
)
from ptychopinn.reconstruction.gradient import refine

CROP = Path(__file__).parent / "data" / "siemens-star-crop.npz.bz2"


@pytest.fixture(scope="module", autouse=True)
def _two_threads(torch_threads):
    """128 x 128 FFT batches use both cores; restore the suite's one thread afterwards."""
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def crop():
    return load_scan(CROP)


@pytest.fixture(scope="module")
def raw():
    with bz2.open(CROP, "rb") as fh:
        with np.load(io.BytesIO(fh.read()), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _residual(scan, epochs=15, refine_probe=False):
    r = refine(
        scan, epochs=epochs, refine_probe=refine_probe, quiet=True, stop_when_converged=False
    )
    return data_residual(r.object, r.offset_px, r.probe, scan), r


def test_tike_crop_is_detected_and_read_with_documented_conventions(crop, raw):
    assert detect_format(CROP) == "tike"
    assert crop.diffraction.shape == (64, 128, 128)
    assert crop.metadata["source_format"] == "tike" and crop.metadata["probe_known"] is False
    # counts moved from the corner to the centre: the central beam (inside the zone plate's
    # central stop) sits at the array centre after the shift, at the corner before it
    mean = crop.diffraction.mean(0)
    assert mean[60:68, 60:68].sum() > 100 * mean[:8, :8].sum()
    np.testing.assert_array_equal(crop.diffraction, np.fft.fftshift(raw["data"][0], axes=(-2, -1)))
    # window corner (row, col) -> probe centre (x, y)
    scan = raw["scan"][0].astype(np.float64)
    np.testing.assert_allclose(crop.positions_px, scan[:, ::-1] + 64)
    np.testing.assert_array_equal(crop.probe[0], raw["probe"].reshape(128, 128))


def test_documented_conventions_explain_the_measured_counts_best(crop):
    """The physics judge: with the probe retrieved jointly (the zone-plate guess alone leaves every
    reading far from the data), the documented reading fits the measured counts better than
    swapped position axes (equivalent to transposed patterns) and far better than unshifted
    patterns. Measured, 15 epochs: deviance per pixel 2.6 vs 3.6 (swapped) vs 41 (unshifted)."""
    right, _ = _residual(crop, refine_probe=True)
    swapped, _ = _residual(
        replace(crop, positions_px=crop.positions_px[:, ::-1].copy()), refine_probe=True
    )
    unshifted, _ = _residual(
        replace(crop, diffraction=np.fft.ifftshift(crop.diffraction, axes=(-2, -1)).copy()),
        refine_probe=True,
    )
    dev = right["poisson_deviance_per_pixel"]
    assert dev * 1.25 < swapped["poisson_deviance_per_pixel"], (dev, swapped)
    assert dev * 5 < unshifted["poisson_deviance_per_pixel"], (dev, unshifted)
    assert right["r_factor"] < swapped["r_factor"] < unshifted["r_factor"]


def test_probe_retrieval_explains_measured_data_better_than_the_guess(crop):
    """Real data, a zone-plate guess: joint probe refinement must lower the data residual
    (measured on this crop: deviance 13 -> 2.3 per pixel, R-factor 0.40 -> 0.21 in 40 epochs)."""
    fixed, _ = _residual(crop, epochs=25)
    joint, result = _residual(crop, epochs=25, refine_probe=True)
    assert joint["poisson_deviance_per_pixel"] < 0.5 * fixed["poisson_deviance_per_pixel"]
    assert joint["r_factor"] < 0.8 * fixed["r_factor"]
    assert not np.allclose(result.probe, crop.probe)


def test_data_residual_is_lowest_for_the_truth(tiny_scan):
    """On a simulated scan the true object scores a deviance near the Poisson floor and a
    flat object a much larger one."""
    truth = data_residual(tiny_scan.object_truth, np.zeros(2), tiny_scan.probe, tiny_scan)
    flat = data_residual(
        np.ones_like(tiny_scan.object_truth), np.zeros(2), tiny_scan.probe, tiny_scan
    )
    assert truth["poisson_deviance_per_pixel"] < 1.5  # ~1 or below at these counts
    assert flat["poisson_deviance_per_pixel"] > 3 * truth["poisson_deviance_per_pixel"]
    assert truth["r_factor"] < flat["r_factor"]
    assert truth["per_pattern_deviance"].shape == (tiny_scan.n_patterns,)


def test_half_scan_frc_of_a_good_reconstruction_beats_a_bad_one():
    from ptychopinn.data.simulate import SimulationConfig, simulate_scan

    scan = simulate_scan(
        SimulationConfig(patch_size=32, n_positions=100, object_kind="lines", photons=1e6, seed=3)
    )
    even, odd = split_halves(scan)
    assert even.n_patterns + odd.n_patterns == scan.n_patterns
    assert even.metadata["patterns"] == "even"

    def halves(epochs):
        return [
            refine(h, epochs=epochs, batch_size=16, quiet=True, stop_when_converged=False)
            for h in (even, odd)
        ]

    good = half_scan_frc(*halves(40))
    bad = half_scan_frc(*halves(1))
    assert good["frc_resolution_px"] < bad["frc_resolution_px"], (good, bad)
    assert abs(good["alignment"]["shift_x_px"]) < 1 and abs(good["alignment"]["shift_y_px"]) < 1


def test_cli_half_scan_frc_and_reference_free_evaluate(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main(
            [
                "reconstruct",
                "--data",
                str(CROP),
                "--output-dir",
                str(out),
                "--refine-only",
                "--refine-epochs",
                "4",
                "--refine-probe",
                "off",
                "--half-scan-frc",
                "--quiet",
            ]
        )
        == 0
    )
    import json

    frc = json.loads((out / "half_scan_frc.json").read_text())
    assert frc["frc_resolution_px"] > 2 and (out / "half_scan_frc.png").stat().st_size > 1000
    # the halves by hand give the same number as --half-scan-frc
    for which in ("even", "odd"):
        assert (
            main(
                [
                    "reconstruct",
                    "--data",
                    str(CROP),
                    "--output-dir",
                    str(tmp_path / which),
                    "--refine-only",
                    "--refine-epochs",
                    "4",
                    "--refine-probe",
                    "off",
                    "--patterns",
                    which,
                    "--quiet",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--reconstruction",
                str(tmp_path / "even" / "reconstruction.npz"),
                "--reference",
                str(tmp_path / "odd" / "reconstruction.npz"),
                "--data",
                str(CROP),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "R-factor" in text and "FRC vs reference" in text
    metrics = json.loads((tmp_path / "even" / "metrics.json").read_text())
    assert metrics["reference_frc"]["frc_resolution_px"] == pytest.approx(frc["frc_resolution_px"])
    assert metrics["data_residual"]["n_patterns"] == 32  # the even half, chosen from metadata
    assert (tmp_path / "even" / "residual.png").exists()


def test_evaluate_needs_something_to_compare_with(tmp_path, capsys):
    rc = main(["evaluate", "--reconstruction", str(tmp_path / "missing.npz")])
    assert rc == 2
    assert "nothing to evaluate against" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# CXI


def _write_cxi(
    path, scan, pixel_m=1e-8, *, probe_path="entry_1/instrument_1/source_1/illumination", mask=None
):
    with h5py.File(path, "w") as fh:
        fh["entry_1/data_1/data"] = scan.diffraction.astype(np.uint32)
        xyz = np.zeros((scan.n_patterns, 3))
        xyz[:, :2] = scan.positions_px * pixel_m
        fh["entry_1/sample_1/geometry_1/translation"] = xyz
        if probe_path:
            fh[probe_path] = scan.probe[0]
        fh["entry_1/image_1/image_size"] = np.array([pixel_m * scan.patch_size] * 2)
        if mask is not None:
            fh["entry_1/instrument_1/detector_1/mask"] = mask


def test_cxi_reader_round_trip_and_ptychodus_agrees(tmp_path, tiny_scan):
    path = tmp_path / "scan.cxi"
    mask = np.zeros((32, 32), np.uint32)
    mask[3, 4] = 1  # invalid
    mask[5, 6] = 2  # another flag: not a bad pixel
    _write_cxi(path, tiny_scan, mask=mask)
    assert detect_format(path) == "cxi"
    scan = load_scan(path)
    np.testing.assert_allclose(scan.positions_px, tiny_scan.positions_px, atol=1e-9)
    assert scan.bad_pixels[3, 4] and scan.bad_pixels.sum() == 1
    np.testing.assert_array_equal(scan.diffraction[:, 5, 6], tiny_scan.diffraction[:, 5, 6])
    assert scan.diffraction[:, 3, 4].max() == 0
    assert scan.geometry.pixel_size_m == pytest.approx((1e-8, 1e-8))
    # the real Ptychodus CXI reader reads the same patterns and positions from this file
    from ptychodus.plugins.cxi_file import CXIDiffractionFileReader, CXIProductFileIO

    dataset = CXIDiffractionFileReader().read(path)
    np.testing.assert_array_equal(
        np.asarray(dataset[0].get_patterns())[0], tiny_scan.diffraction[0]
    )
    with h5py.File(path, "a") as fh:  # Ptychodus' product reader wants its own metadata
        fh["entry_1/image_2/data"] = np.ones((1, 8, 8), np.complex64)
    try:
        product = CXIProductFileIO().read(path)
    except Exception as exc:  # noqa: BLE001 - record what the installed Ptychodus needs
        pytest.fail(f"Ptychodus could not read the CXI file: {exc!r}")
    xs = np.asarray(product.probe_positions.get_coordinates_x_m())
    np.testing.assert_allclose(xs / 1e-8, scan.positions_px[:, 0], atol=1e-6)


def test_large_cxi_patterns_are_read_in_slices_like_a_full_read(tmp_path, tiny_scan, monkeypatch):
    """Above the mapping threshold a CXI integer dataset is converted in slices into a scratch
    file (no scan-sized read), with the same counts, bad pixels zeroed."""
    from ptychopinn.data import ptychodus_h5

    path = tmp_path / "scan.cxi"
    mask = np.zeros((32, 32), np.uint32)
    mask[16, 16] = 1
    _write_cxi(path, tiny_scan, mask=mask)
    full = load_scan(path)
    monkeypatch.setattr(ptychodus_h5, "MAP_BYTES", 0)
    monkeypatch.setattr(ptychodus_h5, "SLICE_BYTES", 4 * 32 * 32 * 4)
    sliced = load_scan(path)
    base = sliced.diffraction
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    assert isinstance(base, np.memmap)
    np.testing.assert_array_equal(sliced.diffraction, full.diffraction)
    assert sliced.diffraction[:, 16, 16].max() == 0 < tiny_scan.diffraction[:, 16, 16].max()


def test_cxi_errors_name_the_dataset(tmp_path, tiny_scan):
    path = tmp_path / "noprobe.cxi"
    _write_cxi(path, tiny_scan, probe_path=None)
    with pytest.raises(DataError, match="source_1/illumination.*probe guess|probe guess"):
        load_scan(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as fh:
        fh["x"] = np.zeros(3)
    with pytest.raises(DataError, match="/entry_1.*not a CXI file"):
        load_scan(other)


def test_tike_errors_and_format_override(tmp_path, tiny_scan_file):
    bad = tmp_path / "bad.npz"
    np.savez(
        bad, data=np.zeros((1, 4, 8, 8)), scan=np.zeros((1, 3, 2)), probe=np.ones((8, 8), complex)
    )
    with pytest.raises(DataError, match="scan: expected 4 positions"):
        load_scan(bad)
    with pytest.raises(DataError, match="'data'"):
        load_scan(tiny_scan_file, format="tike")  # a PtychoPINN NPZ read as tike
    assert load_scan(tiny_scan_file, format="npz").n_patterns == 49
    broken = tmp_path / "broken.npz.bz2"
    broken.write_bytes(b"BZh91AY&SY" + b"\0" * 20)
    with pytest.raises(DataError, match="bzip2"):
        load_scan(broken)


def test_reader_registry_refuses_duplicates_and_unknown_names(tiny_scan_file):
    with pytest.raises(ValueError, match="registered twice"):
        register_reader("npz", lambda p, h: False, "again")(lambda p, u: None)
    assert set(READERS) >= {"npz", "tike", "cxi"}
    from ptychopinn.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown value 'xyz'"):
        load_scan(tiny_scan_file, format="xyz")


def test_simulate_with_the_probe_and_positions_of_a_measured_scan(tmp_path, crop):
    """The experiment's own probe and scan in training data: simulate --probe-from/--positions-from
    with the measured crop (its probe guess, its positions) and with a reconstruction file."""
    out = tmp_path / "sim.npz"
    assert (
        main(
            [
                "simulate",
                "--output",
                str(out),
                "--patch-size",
                "128",
                "--probe-from",
                str(CROP),
                "--positions-from",
                str(CROP),
                "--object",
                "natural",
                "--photons",
                "1e5",
                "--quiet",
            ]
        )
        == 0
    )
    sim = load_scan(out)
    assert sim.n_patterns == crop.n_patterns
    shift = sim.positions_px - crop.positions_px
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-9)  # same scan
    c = np.vdot(sim.probe.ravel(), crop.probe.ravel()) / np.vdot(
        sim.probe.ravel(), sim.probe.ravel()
    )
    np.testing.assert_allclose(c * sim.probe, crop.probe, atol=1e-5 * np.abs(crop.probe).max())
    assert np.sum(np.abs(sim.probe) ** 2) == pytest.approx(1e5, rel=1e-4)
    assert (
        sim.metadata["probe_from"] == str(CROP) and sim.metadata["simulation"]["n_positions"] == 64
    )
    # from a reconstruction: its (retrieved) probe and (corrected) positions
    rec = tmp_path / "rec"
    assert (
        main(
            [
                "reconstruct",
                "--data",
                str(CROP),
                "--output-dir",
                str(rec),
                "--refine-epochs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    out2 = tmp_path / "sim2.npz"
    assert (
        main(
            [
                "simulate",
                "--output",
                str(out2),
                "--patch-size",
                "128",
                "--probe-from",
                str(rec / "reconstruction.npz"),
                "--positions-from",
                str(rec / "reconstruction.npz"),
                "--quiet",
            ]
        )
        == 0
    )
    assert load_scan(out2).n_patterns == 64
    code = main(
        ["simulate", "--output", str(tmp_path / "x.npz"), "--probe-from", str(CROP), "--quiet"]
    )
    assert code == 2  # a 128 x 128 probe for the default --patch-size 64
