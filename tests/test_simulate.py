"""Simulation: config, physics consistency, convention check, object/probe kinds, simulate CLI."""

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ptychopinn.cli.main import main
from ptychopinn.data.npz import read_npz
from ptychopinn.data.objects import make_object
from ptychopinn.data.simulate import SimulationConfig, scan_positions, simulate_scan
from ptychopinn.errors import PtychoPINNError
from ptychopinn.physics import diffraction_intensity, extract_patches
from ptychopinn.physics.probe import PROBES, make_probe
from ptychopinn.physics.shifts import SHIFT_PAD

SMALL = dict(patch_size=32, n_positions=25, photons=1e5)


@pytest.fixture
def cli_logging():
    """In-process CLI runs attach a stderr handler to the 'ptychopinn' logger: undo it after."""
    logger = logging.getLogger("ptychopinn")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def run_cli(args):
    return subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------- simulate_scan


def test_simulation_matches_its_config():
    config = SimulationConfig(
        patch_size=32,
        n_positions=30,
        object_size=90,
        probe_modes=2,
        photons=2e4,
        scan_kind="fermat",
        seed=3,
    )
    scan = simulate_scan(config)
    n = 32
    assert scan.diffraction.shape == (30, n, n) and scan.diffraction.dtype == np.float32
    assert scan.positions_px.shape == (30, 2)
    assert scan.probe.shape == (2, n, n) and scan.probe.dtype == np.complex64
    assert scan.object_truth.shape == (90, 90)
    # total probe intensity is the photon number (unit object -> photons per pattern)
    assert float(np.sum(np.abs(scan.probe) ** 2)) == pytest.approx(2e4, rel=1e-4)
    # every window (with its shift padding) lies inside the object
    border = n // 2 + SHIFT_PAD
    assert scan.positions_px.min() >= border
    assert scan.positions_px.max() <= 90 - (n - n // 2) - SHIFT_PAD - 1
    # Poisson counts are integers; metadata records the settings
    np.testing.assert_array_equal(scan.diffraction, np.round(scan.diffraction))
    assert scan.metadata["simulation"]["seed"] == 3
    assert scan.metadata["photons_per_pattern"] == 2e4
    assert scan.metadata["mean_counts_per_pattern"] == pytest.approx(scan.mean_counts)
    # amplitude within [1 - contrast, 1]: counts below the photon number, but not far below
    totals = scan.diffraction.sum(axis=(1, 2))
    assert totals.max() < 2e4 * 1.05 and totals.min() > 2e4 * 0.2


def test_noiseless_counts_equal_forward_model_on_truth():
    scan = simulate_scan(SimulationConfig(**SMALL, noise=False, seed=4))
    obj = torch.as_tensor(scan.object_truth).to(torch.complex128)
    patches = extract_patches(obj, torch.as_tensor(scan.positions_px), scan.patch_size)
    expected = diffraction_intensity(
        patches, torch.as_tensor(scan.probe).to(torch.complex128)
    ).numpy()
    np.testing.assert_allclose(scan.diffraction, expected, rtol=1e-5, atol=1e-3)


def test_photons_scale_with_a_unit_object():
    flat = dict(SMALL, amplitude_contrast=0.0, phase_range=0.0)
    scan = simulate_scan(SimulationConfig(**flat, noise=False))
    np.testing.assert_allclose(scan.diffraction.sum(axis=(1, 2)), 1e5, rtol=1e-4)
    noisy = simulate_scan(SimulationConfig(**flat, noise=True))
    assert noisy.mean_counts == pytest.approx(1e5, rel=0.01)  # Poisson noise keeps the mean


def test_seed_reproduces_and_differs():
    a = simulate_scan(SimulationConfig(**SMALL, seed=5))
    b = simulate_scan(SimulationConfig(**SMALL, seed=5))
    c = simulate_scan(SimulationConfig(**SMALL, seed=6))
    for field in ("diffraction", "positions_px", "probe", "object_truth"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.diffraction, c.diffraction)
    assert not np.array_equal(a.object_truth, c.object_truth)


@pytest.mark.parametrize("kind", ["raster", "fermat", "random"])
def test_scan_patterns_have_the_requested_step(kind):
    pos = scan_positions(kind, 100, 5.0, np.random.default_rng(0), jitter=0.1)
    assert pos.shape == (100, 2)
    np.testing.assert_allclose(pos.min(axis=0), 0, atol=1e-12)
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) + np.eye(100) * 1e9
    nearest = d.min(axis=1)
    if kind == "random":
        assert 1.0 < np.median(nearest) < 5.0  # uniform density at the step's spacing
    else:
        assert 4.0 < np.median(nearest) < 6.0


# ----------------------------------------------------------------------------- objects and probes


def _png(tmp_path, name, seed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.random.default_rng(seed).random((40, 50))
    path = tmp_path / name
    plt.imsave(path, img, cmap="gray")
    return path


@pytest.mark.parametrize(
    "spec",
    [
        "lines",
        "grf",
        "blobs",
        "natural",
        "natural-test",
        "skimage:camera,moon",
        "skimage:coins",
        "file",
        "file2",
    ],
)
def test_object_kinds(tmp_path, spec):
    test_split = spec == "natural-test"
    if spec == "natural-test":
        spec = "natural"
    elif spec == "file":
        spec = f"file:{_png(tmp_path, 'a.png', 0)}"
    elif spec == "file2":
        spec = f"file:{_png(tmp_path, 'a.png', 0)},{_png(tmp_path, 'b.png', 1)}"
    obj = make_object(
        spec,
        (48, 40),
        np.random.default_rng(0),
        amplitude_contrast=0.4,
        phase_range=1.0,
        test_split=test_split,
    )
    assert obj.shape == (48, 40) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.6 - 1e-5 and amp.max() <= 1 + 1e-5
    assert phase.min() >= -0.5 - 1e-5 and phase.max() <= 0.5 + 1e-5
    assert amp.std() > 0.01 and phase.std() > 0.01  # real structure, not a flat object
    again = make_object(
        spec,
        (48, 40),
        np.random.default_rng(0),
        amplitude_contrast=0.4,
        phase_range=1.0,
        test_split=test_split,
    )
    np.testing.assert_array_equal(obj, again)


def test_file_object_simulates(tmp_path):
    png = _png(tmp_path, "img.png", 2)
    scan = simulate_scan(SimulationConfig(**SMALL, object_kind=f"file:{png}"))
    assert scan.object_truth is not None and scan.diffraction.shape == (25, 32, 32)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("stripes", "unknown kind"),
        ("skimage:no_such_image", "no_such_image"),
        ("skimage:", "expected"),
        ("file:/nonexistent/img.png", "cannot read"),
    ],
)
def test_object_spec_errors(spec, match):
    with pytest.raises(PtychoPINNError, match=match):
        make_object(spec, (32, 32), np.random.default_rng(0))


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_probe_kinds(kind):
    n = 32
    probe = make_probe(kind, n, 14.0)
    assert probe.shape == (n, n) and probe.dtype == np.complex64
    intensity = np.abs(probe) ** 2
    assert intensity.sum() == pytest.approx(1.0, rel=1e-5)
    y, x = np.mgrid[0:n, 0:n]
    cy, cx = (intensity * y).sum(), (intensity * x).sum()
    assert abs(cx - n // 2) < 0.5 and abs(cy - n // 2) < 0.5  # centred on pixel (N//2, N//2)
    # most of the power within the nominal diameter, and a non-trivial phase
    r = np.hypot(x - n // 2, y - n // 2)
    assert intensity[r <= 14.0].sum() > 0.6
    scan = simulate_scan(SimulationConfig(**SMALL, probe_kind=kind, probe_diameter=14.0))
    assert scan.probe.shape == (1, n, n)


def test_unknown_probe_kind():
    with pytest.raises(ValueError, match="probe"):
        make_probe("laser", 16)


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "field,value",
    [
        ("patch_size", 31),
        ("patch_size", 4),
        ("n_positions", 0),
        ("probe_kind", "laser"),
        ("scan_kind", "spiral"),
        ("overlap", 1.0),
        ("overlap", -0.1),
        ("step", 0.0),
        ("step", -2.0),
        ("step", math.nan),
        ("step", math.inf),
        ("photons", 0.0),
        ("photons", math.nan),
        ("photons", math.inf),
        ("jitter", 0.6),
        ("probe_modes", 0),
        ("probe_modes", 7),
        ("probe_diameter", 0.0),
        ("probe_diameter", 40.0),
        ("object_size", 0),
        ("amplitude_contrast", 1.0),
        ("amplitude_contrast", -0.2),
        ("phase_range", math.nan),
        ("phase_range", math.inf),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError) as info:
        SimulationConfig(**{**SMALL, field: value})
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert "expected" in message and "\n" not in message


def test_object_size_too_small():
    with pytest.raises(ValueError, match="object_size: 40 is too small"):
        simulate_scan(SimulationConfig(**SMALL, object_size=40))


# ----------------------------------------------------------------------------- CLI


def test_cli_output_reads_back_identically(tmp_path, cli_logging, capsys):
    out = tmp_path / "scan.npz"
    rc = main(
        [
            "simulate",
            "--output",
            str(out),
            "--patch-size",
            "32",
            "--n-positions",
            "25",
            "--photons",
            "1e5",
            "--probe",
            "gaussian",
            "--scan",
            "fermat",
            "--seed",
            "11",
            "--object",
            "blobs",
            "--probe-modes",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr
    back = read_npz(out)
    ref = simulate_scan(
        SimulationConfig(
            patch_size=32,
            n_positions=25,
            photons=1e5,
            probe_kind="gaussian",
            scan_kind="fermat",
            seed=11,
            object_kind="blobs",
            probe_modes=2,
        )
    )
    for field in ("diffraction", "positions_px", "probe", "object_truth"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ref, field))
    assert back.metadata["simulation"] == ref.metadata["simulation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.npz"]  # no temp files left


def test_cli_n_scans_writes_one_file_per_scan(tmp_path, cli_logging, capsys):
    out = tmp_path / "sim.npz"
    rc = main(
        [
            "simulate",
            "--output",
            str(out),
            "--patch-size",
            "32",
            "--n-positions",
            "16",
            "--n-scans",
            "2",
            "--seed",
            "3",
            "--noiseless",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim_0.npz", "sim_1.npz"]
    a, b = read_npz(tmp_path / "sim_0.npz"), read_npz(tmp_path / "sim_1.npz")
    assert a.metadata["simulation"]["seed"] == 3 and b.metadata["simulation"]["seed"] == 4
    assert not np.array_equal(a.object_truth, b.object_truth)
    assert "wrote" in capsys.readouterr().err  # progress is logged without --quiet


ARGPARSE_RULES = {
    "bad choice": (["--scan", "spiral"], "--scan"),
    "bad probe": (["--probe", "laser"], "--probe"),
    "bad int": (["--patch-size", "abc"], "--patch-size"),
    "zero positions": (["--n-positions", "0"], "--n-positions"),
    "negative photons": (["--photons", "-5"], "--photons"),
    "nan photons": (["--photons", "nan"], "--photons"),
    "inf photons": (["--photons", "inf"], "--photons"),
    "zero step": (["--step", "0"], "--step"),
    "bad float": (["--overlap", "lots"], "--overlap"),
    "bad seed": (["--seed", "1.5"], "--seed"),
    "object size zero": (["--object-size", "0"], "--object-size"),
    "unknown option": (["--colour", "red"], "--colour"),
}


@pytest.mark.parametrize("case", sorted(ARGPARSE_RULES))
def test_cli_argument_errors_one_line_exit_2(tmp_path, case):
    extra, name = ARGPARSE_RULES[case]
    out = tmp_path / "x.npz"
    proc = run_cli(["simulate", "--output", str(out), *extra])
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    # unknown options are reported by the top-level parser ("ptychopinn: error: ...")
    assert lines[0].startswith("ptychopinn") and " error: " in lines[0] and name in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_cli_missing_output_is_one_line():
    proc = run_cli(["simulate"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "--output" in proc.stderr


RUN_RULES = {
    "odd patch size": (["--patch-size", "31"], "patch_size"),
    "overlap": (["--overlap", "1.2"], "overlap"),
    "jitter": (["--jitter", "0.9"], "jitter"),
    "probe diameter": (["--probe-diameter", "100"], "probe_diameter"),
    "probe modes": (["--probe-modes", "9"], "probe_modes"),
    "object size": (["--object-size", "20"], "object_size"),
    "object kind": (["--object", "stripes"], "stripes"),
    "object file": (["--object", "file:/nonexistent/x.png"], "/nonexistent/x.png"),
    "skimage name": (["--object", "skimage:nope"], "nope"),
    "amplitude contrast": (["--amplitude-contrast", "1.5"], "amplitude_contrast"),
    "phase range": (["--phase-range", "nan"], "phase_range"),
}


@pytest.mark.parametrize("case", sorted(RUN_RULES))
def test_cli_value_errors_one_line_exit_2(tmp_path, case, cli_logging, capsys):
    extra, name = RUN_RULES[case]
    out = tmp_path / "x.npz"
    rc = main(
        ["simulate", "--output", str(out), "--patch-size", "32", "--n-positions", "16", *extra]
    )
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ptychopinn simulate: error:") and name in lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # a failed simulate leaves nothing behind


def test_cli_value_error_in_a_real_process(tmp_path):
    out = tmp_path / "x.npz"
    proc = run_cli(
        [
            "simulate",
            "--output",
            str(out),
            "--patch-size",
            "32",
            "--n-positions",
            "16",
            "--object-size",
            "20",
        ]
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "object_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_existing_output(tmp_path, cli_logging, capsys):
    out = tmp_path / "x.npz"
    out.write_bytes(b"precious")
    args = [
        "simulate",
        "--output",
        str(out),
        "--patch-size",
        "32",
        "--n-positions",
        "16",
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    assert read_npz(out).n_patterns == 16


def test_cli_n_scans_checks_every_output_before_writing(tmp_path, cli_logging, capsys):
    (tmp_path / "s_1.npz").write_bytes(b"old")
    rc = main(
        [
            "simulate",
            "--output",
            str(tmp_path / "s.npz"),
            "--patch-size",
            "32",
            "--n-positions",
            "16",
            "--n-scans",
            "2",
        ]
    )
    assert rc == 2
    assert "s_1.npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_1.npz"]  # s_0 was not written
