"""The Ptychodus reconstructor library (ptychopinn.integrations.ptychodus), the launcher and
``infer --product/--diffraction/--product-output``, against the real ptychodus 1.7 API.

CI installs ptychodus --no-deps (its API and file modules); the application core
(ptychodus.model) needs the full install, so the launcher's end-to-end batch runs are marked
``ptychodus_full`` (run on demand: ``pytest -m ptychodus_full tests/test_ptychodus_adapter.py``
in an environment with ``pip install 'ptychodus>=1.7,<1.8'``).
"""

import importlib.util
import logging
import os
import subprocess
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ptychodus") is None, reason="ptychodus is not installed"
)

N = 16
GRID_KW = dict(pixel_width_m=1e-8, pixel_height_m=1e-8, center_x_m=3e-6, center_y_m=-1.5e-6)
ATTRS = {"name": "adapter", "detector_object_distance_m": 2.0, "photon_energy_eV": 8000.0}
FAST = {
    "MaxEpochs": 1,
    "NFiltersScale": 1,
    "BatchSize": 8,
    "EarlyStopping": False,
    "Accelerator": "cpu",
    "Seed": 0,
}


def _threads():
    return [t for t in threading.enumerate() if t.name.startswith("ptychopinn-")]


@pytest.fixture(scope="module")
def scan():
    """36 patterns of 16 x 16 with two bad pixels, on a grid centred off the origin."""
    from ptychopinn.data.simulate import SimulationConfig, simulate_scan

    s = simulate_scan(
        SimulationConfig(
            patch_size=N,
            n_positions=36,
            object_kind="lines",
            probe_kind="pinhole",
            photons=1e5,
            seed=5,
        )
    )
    bad = np.zeros((N, N), bool)
    bad[2, 3] = bad[11, 6] = True
    d = s.diffraction.copy()
    d[:, bad] = 0
    return replace(s, diffraction=d, bad_pixels=bad)


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory, scan):
    """Ptychodus's batch layout: product.h5 + diffraction.h5 (written by our part-1 writers)."""
    from ptychopinn.data.ptychodus_h5 import (
        ObjectGrid,
        write_diffraction,
        write_product,
    )

    d = tmp_path_factory.mktemp("batch")
    grid = ObjectGrid(scan.object_truth.shape, **GRID_KW)
    write_product(
        d / "product.h5",
        object_=scan.object_truth,
        grid=grid,
        probe=scan.probe,
        positions_px=scan.positions_px,
        scan_index=np.arange(100, 100 + scan.n_patterns),
        attrs=ATTRS,
    )
    write_diffraction(
        d / "diffraction.h5",
        scan.diffraction,
        np.arange(100, 100 + scan.n_patterns),
        scan.bad_pixels,
        detector_pixel_size_m=75e-6,
        dtype=np.uint16,
    )
    return d


def _reconstruct_input(folder: Path):
    """A ReconstructInput built by Ptychodus's own loaders and prepare_reconstruct_input."""
    from ptychodus.api.io import load_diffraction_data, load_product
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    return prepare_reconstruct_input(
        load_diffraction_data(folder / "diffraction.h5"), load_product(folder / "product.h5")
    )


def _reconstruct_input_scan(reconstruct_input):
    from ptychopinn.integrations.ptychodus import scan_from_reconstruct_input

    return scan_from_reconstruct_input(reconstruct_input)


@pytest.fixture(scope="module")
def reconstruct_input(batch_dir):
    return _reconstruct_input(batch_dir)


def make_library(**settings):
    from ptychodus.api.settings import SettingsRegistry

    from ptychopinn.integrations.ptychodus import PtychoPINNLibrary

    registry = SettingsRegistry()
    library = PtychoPINNLibrary(registry)
    group = registry["PtychoPINNLightning"]
    for name, value in {**FAST, **settings}.items():
        group.parameters()[name].set_value(value)
    return library


@pytest.fixture(scope="module")
def trained(batch_dir, tmp_path_factory):
    """A PINN reconstructor trained by train() on the batch layout (1 epoch) and its outputs."""
    library = make_library()
    out = tmp_path_factory.mktemp("trained")
    outputs = list(library.pinn.train(batch_dir, out))
    return library, outputs, out


def assert_on_input_grid(product, reconstruct_input):
    src = reconstruct_input.product
    obj = product.object_
    assert obj.get_array().shape == (1, *src.object_.get_array().shape[-2:])
    assert obj.get_geometry() == src.object_.get_geometry()  # shape, pixel size and centre
    assert np.isfinite(obj.get_array()).all()
    assert product.probe_positions is src.probe_positions and product.probes is src.probes
    assert product.metadata == src.metadata


# --------------------------------------------------------------------------------- library


def test_library_name_keys_settings_and_logger(tmp_path):
    from ptychodus.api.reconstruct import ReconstructorLibrary, TrainableReconstructor

    from ptychopinn.errors import PtychoPINNError

    library = make_library()
    assert isinstance(library, ReconstructorLibrary) and library.name == "PtychoPINNLightning"
    assert [r.name for r in library] == ["PINN", "Supervised"]
    assert all(isinstance(r, TrainableReconstructor) for r in library)
    # Ptychodus's algorithm key: f"{library}_{reconstructor}" casefolded, split on the first "_"
    keys = {f"{library.name.casefold()}_{r.name.casefold()}" for r in library}
    assert keys == {"ptychopinnlightning_pinn", "ptychopinnlightning_supervised"}
    assert {k.split("_", 1)[0] for k in keys} == {"ptychopinnlightning"}
    assert not keys & {"ptychopinn_pinn", "ptychopinn-torch_pinn", "ptychopinn-torch_supervised"}
    assert library.get_logger() is logging.getLogger("ptychopinn")
    assert library.pinn.get_model_file_extension() == ".ptpinn"
    assert "*.ptpinn" in library.pinn.get_model_file_filter()
    assert "*.npz" in library.pinn.get_training_data_file_filter()
    assert not library.pinn.is_model_loaded()

    # settings.ini values (how batch mode configures us) reach the run configuration
    from ptychodus.api.settings import SettingsRegistry

    from ptychopinn.integrations.ptychodus import PtychoPINNLibrary

    registry = SettingsRegistry()
    library = PtychoPINNLibrary(registry)
    ini = tmp_path / "settings.ini"
    ini.write_text(
        "[PtychoPINNLightning]\nGridsize = 2\nLoss = MAE\nMaxEpochs = 3\nBatchSize = 4\n"
        "LearningRate = 0.005\nValFraction = 0.2\nSupervisedWeight = 0.5\nSeed = 7\n"
        "PhysicsIterations = 2\nNFiltersScale = 3\n"
    )
    registry.open_settings(ini)
    rc = library.settings.run_config(supervised=True)
    assert (
        rc.model.gridsize,
        rc.model.loss,
        rc.model.physics_iterations,
        rc.model.n_filters_scale,
    ) == (2, "mae", 2, 3)
    assert (rc.training.max_epochs, rc.training.batch_size, rc.training.supervised_weight) == (
        3,
        4,
        0.5,
    )
    assert (rc.execution.learning_rate, rc.execution.seed, rc.data.val_fraction) == (0.005, 7, 0.2)
    assert rc.sources["training.max_epochs"] == "Ptychodus settings"
    assert (rc.execution.devices, rc.execution.logger, rc.execution.enable_checkpointing) == (
        1,
        "none",
        False,
    )
    assert library.settings.run_config(supervised=False).training.supervised_weight == 0.0
    assert library.pinn.get_progress_goal() == 3 + 1  # epochs + the stitched object

    # a config file supplies options that are not settings; the settings take precedence
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "execution:\n  scheduler: Exponential\n  lr_gamma: 0.5\ntraining:\n  max_epochs: 9\n"
    )
    library.settings.config_file.set_value(str(cfg))
    rc = library.settings.run_config(supervised=False)
    assert (rc.execution.scheduler, rc.execution.lr_gamma, rc.training.max_epochs) == (
        "Exponential",
        0.5,
        3,
    )

    library.settings.loss.set_value("l2")
    with pytest.raises(PtychoPINNError, match=r"^PtychoPINNLightning\.Loss: invalid value 'l2'"):
        library.settings.run_config(supervised=False)
    library.settings.loss.set_value("poisson")
    library.settings.config_file.set_value(str(tmp_path / "missing.yaml"))
    with pytest.raises(PtychoPINNError, match="ConfigFile.*missing.yaml"):
        library.settings.run_config(supervised=False)


def test_scan_from_reconstruct_input_equals_our_reader(reconstruct_input, batch_dir, scan):
    from ptychopinn.data.ptychodus_h5 import ObjectGrid, read_ptychodus
    from ptychopinn.integrations.ptychodus import scan_from_reconstruct_input

    ours = scan_from_reconstruct_input(reconstruct_input)
    ref = read_ptychodus(batch_dir / "product.h5", batch_dir / "diffraction.h5")
    np.testing.assert_array_equal(ours.diffraction, ref.diffraction)
    np.testing.assert_array_equal(ours.bad_pixels, scan.bad_pixels)
    np.testing.assert_allclose(ours.positions_px, scan.positions_px, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours.probe, scan.probe)
    np.testing.assert_array_equal(ours.object_truth, scan.object_truth)
    np.testing.assert_array_equal(ours.scan_index, np.arange(100, 100 + scan.n_patterns))
    assert ours.geometry.object_grid == ObjectGrid(scan.object_truth.shape, **GRID_KW)
    attrs = ours.metadata["ptychodus_product_attrs"]
    assert (attrs["name"], attrs["photon_energy_eV"], attrs["detector_object_distance_m"]) == (
        "adapter",
        8000.0,
        2.0,
    )


# ------------------------------------------------------------------------------ reconstruct


def test_self_supervised_reconstruct_yields_products_on_the_input_grid(reconstruct_input):
    from ptychodus.api.reconstruct import ReconstructOutput

    library = make_library(MaxEpochs=2, RefineEpochs=2)
    r = library.pinn
    assert r.get_progress_goal() == 2 + 1 + 2
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library.get_logger().addHandler(handler)  # what Ptychodus's ProcessingCore does
    level = library.get_logger().level
    library.set_log_level("INFO")
    try:
        outputs, goals = [], []
        for out in r.reconstruct(reconstruct_input):
            outputs.append(out)
            goals.append(r.get_progress_goal())
    finally:
        library.get_logger().removeHandler(handler)
        library.get_logger().setLevel(level)
    assert all(isinstance(o, ReconstructOutput) for o in outputs)
    progress = [o.progress for o in outputs]
    assert progress == [1, 2, 3, 4, 5] and set(goals) == {5}
    initial = reconstruct_input.product.object_.get_array()
    for o in outputs:
        assert_on_input_grid(o.product, reconstruct_input)
    # while training the product carries the input object; then the network's
    np.testing.assert_array_equal(outputs[0].product.object_.get_array(), initial)
    final = outputs[-1].product.object_.get_array()[0]
    assert not np.allclose(final, initial[0])
    network = outputs[2].product.object_.get_array()[0]
    assert not np.allclose(final, network)  # refined
    # losses: training epochs 1-2, then refinement epochs 3-4
    assert [lv.epoch for lv in outputs[-1].product.losses] == [1, 2, 3, 4]
    assert [len(o.product.losses) for o in outputs] == [1, 2, 2, 3, 4]
    assert all(np.isfinite(lv.value) for lv in outputs[-1].product.losses)
    messages = [rec.getMessage() for rec in records]
    assert any("epoch 2/2" in m for m in messages) and any("refine epoch" in m for m in messages)
    assert not _threads()


def test_closing_the_generator_early_stops_training_and_cleans_up(
    reconstruct_input, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # Lightning's default root: nothing may be written there
    library = make_library(MaxEpochs=500)
    gen = library.pinn.reconstruct(reconstruct_input)
    first = next(gen)
    assert first.progress == 1 and library.pinn.get_progress_goal() == 501
    assert _threads()  # training goes on in its thread
    t0 = time.perf_counter()
    gen.close()
    assert time.perf_counter() - t0 < 20  # stopped within a batch, not after 500 epochs
    assert not _threads()
    assert library.pinn.get_progress_goal() == 501 and not library.pinn.is_model_loaded()
    assert list(tmp_path.iterdir()) == []


def test_errors_in_training_reach_the_caller_without_leaks(reconstruct_input):
    library = make_library(Gridsize=8)  # 64 patches per group, 7 neighbours: rejected by grouping
    with pytest.raises(ValueError, match="gridsize"):
        list(library.pinn.reconstruct(reconstruct_input))
    assert not _threads()


def test_supervised_needs_a_model_and_a_real_ground_truth(reconstruct_input, batch_dir, tmp_path):
    from ptychopinn.data.ptychodus_h5 import write_product
    from ptychopinn.errors import DataError, PtychoPINNError

    library = make_library()
    with pytest.raises(PtychoPINNError, match="no model loaded"):
        next(library.supervised.reconstruct(reconstruct_input))
    # a uniform object is an initial guess, not a label
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "diffraction.h5").write_bytes((batch_dir / "diffraction.h5").read_bytes())
    from ptychopinn.data.ptychodus_h5 import read_ptychodus

    s = read_ptychodus(batch_dir / "product.h5", batch_dir / "diffraction.h5")
    write_product(
        flat / "product.h5",
        object_=np.ones(s.object_truth.shape, np.complex64),
        grid=s.geometry.object_grid,
        probe=s.probe,
        positions_px=s.positions_px,
        scan_index=s.scan_index,
        attrs=ATTRS,
    )
    with pytest.raises(DataError, match="uniform"):
        next(library.supervised.train(flat, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_supervised_train_uses_the_product_object(batch_dir, reconstruct_input, trained, tmp_path):
    import torch

    library = make_library(SupervisedWeight=2.0)
    outputs = list(library.supervised.train(batch_dir, tmp_path))
    assert [o.progress for o in outputs] == [1, 2]
    bundle = library.supervised.bundle
    scan = _reconstruct_input_scan(reconstruct_input)
    per_pixel = scan.mean_counts / N**2  # the weight is relative to the dose
    assert bundle.training_config.supervised_weight == pytest.approx(2.0 * per_pixel, rel=1e-6)
    # same data, settings and seed as the PINN model of `trained`: the supervised term changed it
    pinn = trained[0].pinn.bundle.state_dict
    assert any(not torch.equal(pinn[k], bundle.state_dict[k]) for k in pinn)
    assert (tmp_path / "model.ptpinn").is_file()
    out = list(library.supervised.reconstruct(reconstruct_input))
    assert [o.progress for o in out] == [1]
    assert_on_input_grid(out[0].product, reconstruct_input)


# ------------------------------------------------------------------------- train and models


def test_train_on_batch_layout_yields_losses_and_writes_the_model(trained, reconstruct_input):
    from ptychodus.api.reconstruct import TrainOutput

    from ptychopinn.config_factory import read_audit

    library, outputs, out = trained
    assert all(isinstance(o, TrainOutput) for o in outputs)
    assert [o.progress for o in outputs] == [1, 2]  # epoch 1, then the saved model (goal)
    last = outputs[-1]
    assert [lv.epoch for lv in last.training_loss] == [1] and [
        lv.epoch for lv in last.validation_loss
    ] == [1]
    assert np.isfinite(last.training_loss[0].value) and np.isfinite(last.validation_loss[0].value)
    assert (out / "model.ptpinn").is_file()
    audit = read_audit(out / "config.resolved.yaml")
    assert audit["sources"]["training.max_epochs"] == "Ptychodus settings"
    assert audit["training"]["max_epochs"] == 1 and audit["model"]["n"] == N
    assert library.pinn.is_model_loaded() and not library.supervised.is_model_loaded()
    assert library.pinn.bundle.model_config.n == N


def test_loaded_model_reconstructs_in_one_pass(trained, reconstruct_input):
    from ptychopinn.data.ptychodus_h5 import canvas_to_grid
    from ptychopinn.integrations.ptychodus import scan_from_reconstruct_input
    from ptychopinn.reconstruction.network import reconstruct

    library, _, _ = trained
    r = library.pinn
    assert r.get_progress_goal() == 1
    outputs = list(r.reconstruct(reconstruct_input))
    assert [o.progress for o in outputs] == [1]
    assert_on_input_grid(outputs[0].product, reconstruct_input)
    assert outputs[0].product.losses == []
    # exactly the library's single-pass reconstruction, placed on the input grid
    scan = scan_from_reconstruct_input(reconstruct_input)
    recon = reconstruct(r.bundle, scan, batch_size=r.bundle.training_config.batch_size, seed=0)
    expected = canvas_to_grid(recon.object, recon.offset_px, scan.object_truth.shape)
    np.testing.assert_allclose(
        outputs[0].product.object_.get_array()[0], expected, rtol=0, atol=1e-6
    )


def test_save_and_load_model_round_trip(trained, reconstruct_input, tmp_path):
    import torch

    library, _, _ = trained
    library.pinn.save_model(tmp_path / "copy")  # extension appended
    assert (tmp_path / "copy.ptpinn").is_file()
    other = make_library()
    other.pinn.load_model_from_file(tmp_path / "copy.ptpinn")
    assert other.pinn.is_model_loaded()
    a, b = library.pinn.bundle.state_dict, other.pinn.bundle.state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    got = list(other.pinn.reconstruct(reconstruct_input))[-1].product.object_.get_array()
    want = list(library.pinn.reconstruct(reconstruct_input))[-1].product.object_.get_array()
    np.testing.assert_array_equal(got, want)
    from ptychopinn.errors import PtychoPINNError

    with pytest.raises(PtychoPINNError, match="no model to save"):
        make_library().pinn.save_model(tmp_path / "none")


def test_export_training_data_round_trips_and_trains(reconstruct_input, scan, tmp_path):
    from ptychopinn.data.npz import read_npz
    from ptychopinn.data.ptychodus_h5 import ObjectGrid

    library = make_library()
    data = tmp_path / "data"
    data.mkdir()
    library.pinn.export_training_data(data / "scan.npz", reconstruct_input)
    back = read_npz(data / "scan.npz")
    np.testing.assert_array_equal(back.diffraction, scan.diffraction)
    np.testing.assert_allclose(back.positions_px, scan.positions_px, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(back.probe, scan.probe)
    np.testing.assert_array_equal(back.object_truth, scan.object_truth)
    np.testing.assert_array_equal(back.bad_pixels, scan.bad_pixels)
    np.testing.assert_array_equal(back.scan_index, np.arange(100, 136))
    assert back.geometry.object_grid == ObjectGrid(scan.object_truth.shape, **GRID_KW)
    assert back.metadata["diffraction_units_read"] == "counts"

    # a folder of NPZ files, written to the same folder (the GUI passes one path twice)
    outputs = list(library.pinn.train(data, data))
    assert outputs[-1].progress == 2 and len(outputs[-1].training_loss) == 1
    assert (data / "model.ptpinn").is_file() and library.pinn.is_model_loaded()
    # the NPZ file itself; an existing model is replaced (with a warning)
    mtime = (data / "model.ptpinn").stat().st_mtime_ns
    outputs = list(make_library().pinn.train(data / "scan.npz", data))
    assert outputs[-1].progress == 2 and (data / "model.ptpinn").stat().st_mtime_ns != mtime


def test_train_input_errors(tmp_path):
    from ptychopinn.errors import DataError

    library = make_library()
    with pytest.raises(DataError, match="no training data"):
        next(library.pinn.train(tmp_path, tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"expected a PtychoPINN \.npz"):
        next(library.pinn.train(tmp_path / "notes.txt", tmp_path))
    with pytest.raises(DataError, match="no such file"):
        next(library.pinn.train(tmp_path / "missing", tmp_path))


# --------------------------------------------------------------------------------- launcher


def test_processing_core_wrapper_adds_our_library_once():
    from ptychodus.api.settings import SettingsRegistry

    from ptychopinn.integrations.ptychodus import (
        PtychoPINNLibrary,
        patch_ptychodus,
        wrap_processing_core,
    )

    calls = []

    def processing_core(task_manager, settings_registry, product_api, algorithm_libraries):
        calls.append((task_manager, settings_registry, product_api, list(algorithm_libraries)))
        return "core"

    # a stand-in for ptychodus.model.core (which needs the full install; the ptychodus_full test
    # below runs the real one)
    module = types.SimpleNamespace(ProcessingCore=processing_core)
    registry, existing = SettingsRegistry(), types.SimpleNamespace(name="pty-chi")
    with patch_ptychodus(module):
        assert module.ProcessingCore is not processing_core
        assert module.ProcessingCore("tm", registry, "api", [existing]) == "core"
    assert module.ProcessingCore is processing_core  # restored
    tm, reg, api, libraries = calls[0]
    assert (tm, reg, api) == ("tm", registry, "api") and libraries[0] is existing
    assert len(libraries) == 2 and isinstance(libraries[1], PtychoPINNLibrary)
    assert "PtychoPINNLightning" in list(registry)  # its settings live in Ptychodus's registry
    wrap_processing_core(processing_core)("tm", registry, "api", libraries)
    assert len(calls[1][3]) == 2  # not added twice


def test_launcher_command(monkeypatch, capsys):
    from ptychopinn.cli.main import main

    proc = subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli.main", "ptychodus", "--", "--version"],
        capture_output=True,
        text=True,
    )
    if importlib.util.find_spec("httpx") is not None:  # full install: Ptychodus's own --version
        assert proc.returncode == 0 and "1.7" in proc.stdout + proc.stderr
    else:  # API-only install: one line naming the missing module and the extra
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1
        assert "'httpx'" in lines[0] and "ptychopinn[ptychodus]" in lines[0]

    real, hidden = importlib.util.find_spec, set()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    hidden.add("PyQt5")  # the GUI (no -b) needs it: a hint, not Ptychodus's silent exit code
    assert main(["ptychodus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PyQt5" in err[0] and "ptychodus[gui]" in err[0]
    hidden.add("ptychodus")
    assert main(["ptychodus", "--", "-b", "reconstruct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not installed" in err[0] and "ptychopinn[ptychodus]" in err[0]


def test_finalize_batch_output_copies_the_last_step(tmp_path):
    from ptychopinn.integrations.ptychodus import finalize_batch_output

    old = tmp_path / "product.000009.h5"
    old.write_bytes(b"old run")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = time.time()
    for step in (1, 3, 2):
        (tmp_path / f"product.{step:06d}.h5").write_bytes(f"step {step}".encode())
    assert finalize_batch_output(tmp_path, since) == tmp_path / "product.h5"
    assert (tmp_path / "product.h5").read_bytes() == b"step 3"  # not the stale 000009
    assert finalize_batch_output(tmp_path, since) is None  # this run's product.h5 is kept
    assert finalize_batch_output(tmp_path / "nothing", since) is None


# ------------------------------------------------------------------------------------ infer


def test_infer_ptychodus_input_writes_product_on_the_input_grid(trained, batch_dir, scan, tmp_path):
    from ptychodus.api.io import load_product

    from ptychopinn.cli.main import main
    from ptychopinn.data.ptychodus_h5 import read_ptychodus

    _, _, model_dir = trained
    out = tmp_path / "o"
    args = [
        "infer",
        "--model",
        str(model_dir),
        "--product",
        str(batch_dir / "product.h5"),
        "--diffraction",
        str(batch_dir / "diffraction.h5"),
        "--output-dir",
        str(out),
        "--product-output",
        "--refine-epochs",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    assert (out / "reconstruction.npz").is_file() and (out / "product.h5").is_file()
    back = read_ptychodus(out / "product.h5", batch_dir / "diffraction.h5")
    ref = read_ptychodus(batch_dir / "product.h5", batch_dir / "diffraction.h5")
    assert back.geometry.object_grid == ref.geometry.object_grid is not None
    np.testing.assert_array_equal(back.scan_index, ref.scan_index)
    np.testing.assert_allclose(back.positions_px, ref.positions_px, rtol=0, atol=1e-9)
    assert np.isfinite(back.object_truth).all() and not np.allclose(
        back.object_truth, ref.object_truth
    )
    theirs = load_product(out / "product.h5")  # and Ptychodus reads it on the same grid
    assert (
        theirs.object_.get_geometry()
        == load_product(batch_dir / "product.h5").object_.get_geometry()
    )
    assert theirs.metadata.name == "adapter" and len(theirs.losses) == 1
    # refuses to overwrite; --data together with --product is an error
    assert main(args) == 2
    assert (
        main(
            [
                "infer",
                "--model",
                str(model_dir),
                "--data",
                str(tmp_path / "x.npz"),
                "--product",
                str(batch_dir / "product.h5"),
                "--output-dir",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )


def test_infer_npz_input_product_output_uses_the_scan_grid(trained, scan, tmp_path):
    from ptychopinn.cli.main import main
    from ptychopinn.data.npz import write_npz
    from ptychopinn.data.ptychodus_h5 import (
        read_ptychodus,
        scan_object_grid,
        write_diffraction_for_scan,
    )

    _, _, model_dir = trained
    from ptychopinn.data.geometry import ScanGeometry

    npz_scan = replace(scan, geometry=ScanGeometry(pixel_size_m=(2e-8, 2e-8)))
    write_npz(npz_scan, tmp_path / "scan.npz")
    out = tmp_path / "o"
    assert (
        main(
            [
                "infer",
                "--model",
                str(model_dir),
                "--data",
                str(tmp_path / "scan.npz"),
                "--output-dir",
                str(out),
                "--product-output",
                "--quiet",
            ]
        )
        == 0
    )
    write_diffraction_for_scan(tmp_path / "d.h5", npz_scan)
    back = read_ptychodus(out / "product.h5", tmp_path / "d.h5")
    grid = scan_object_grid(npz_scan)
    assert back.geometry.object_grid == grid
    assert grid.pixel_width_m == 2e-8 and back.object_truth.shape == scan.object_truth.shape
    np.testing.assert_allclose(back.positions_px, scan.positions_px, rtol=0, atol=1e-9)


# --------------------------------------------------------------- full application (on demand)


def _launch(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli.main", "ptychodus", "--", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.ptychodus_full
def test_ptychodus_batch_train_and_reconstruct_through_the_launcher(batch_dir, tmp_path):
    """The real Ptychodus application core (full install) runs our library in batch mode."""
    from ptychodus.api.io import load_product

    given = load_product(batch_dir / "product.h5").object_.get_geometry()
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("product.h5", "diffraction.h5"):
        (inp / name).write_bytes((batch_dir / name).read_bytes())
    (inp / "settings.ini").write_text(
        "[Processing]\nAlgorithm = ptychopinnlightning_pinn\n\n[PtychoPINNLightning]\n"
        "MaxEpochs = 2\nNFiltersScale = 1\nBatchSize = 8\nRefineEpochs = 1\nAccelerator = cpu\n"
    )

    # self-supervised reconstruction (no model in IN): one product per step, the last = goal
    out = tmp_path / "out"
    proc = _launch("-b", "reconstruct", "-i", str(inp), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = sorted(p.name for p in out.glob("product.0*.h5"))
    assert steps == [f"product.{i:06d}.h5" for i in range(1, 5)], (steps, proc.stderr[-2000:])
    assert (out / "product.h5").is_file()
    final = load_product(out / "product.h5")
    assert final.object_.get_geometry() == given and np.isfinite(final.object_.get_array()).all()
    assert len(final.losses) == 3  # 2 training epochs + 1 refinement epoch

    # train writes OUT/model.ptpinn; with it in IN, reconstruct is a single network pass
    trained = tmp_path / "trained"
    proc = _launch("-b", "train", "-i", str(inp), "-o", str(trained))
    assert proc.returncode == 0 and (trained / "model.ptpinn").is_file(), proc.stderr[-2000:]
    (inp / "model.ptpinn").write_bytes((trained / "model.ptpinn").read_bytes())
    (inp / "settings.ini").write_text("[Processing]\nAlgorithm = ptychopinnlightning_pinn\n")
    out2 = tmp_path / "out2"
    proc = _launch("-b", "reconstruct", "-i", str(inp), "-o", str(out2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out2.glob("product.0*.h5")) == ["product.000001.h5"]
    single = load_product(out2 / "product.h5")
    assert single.object_.get_geometry() == given and np.isfinite(single.object_.get_array()).all()


def test_one_recipe_ptychodus_demo_reconstruct_and_benchmarks_read_the_config_defaults():
    """The training recipe is the config dataclasses' defaults; the Ptychodus settings, the demo,
    ``reconstruct --network`` and the quality benchmark read it instead of copying it."""
    import ast
    from pathlib import Path

    from ptychodus.api.settings import SettingsRegistry

    from ptychopinn.cli.reconstruct import NETWORK_DEFAULTS
    from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
    from ptychopinn.integrations.ptychodus import PtychoPINNLibrary, PtychoPINNSettings
    from ptychopinn.workflows import DemoSettings

    registry = SettingsRegistry()
    PtychoPINNLibrary(registry)
    values = {n: p.get_value() for n, p in registry["PtychoPINNLightning"].parameters().items()}
    recipe = {
        "model": ModelConfig(),
        "data": DataConfig(),
        "training": TrainingConfig(),
        "execution": ExecutionConfig(),
    }
    for name, key in PtychoPINNSettings.KEYS.items():
        section, field_ = key.split(".")
        assert values[name] == getattr(recipe[section], field_), name
    demo = DemoSettings()
    for name in ("gridsize", "physics_iterations", "n_filters_scale"):
        assert getattr(demo, name) == getattr(recipe["model"], name)
    assert demo.batch_size == TrainingConfig().batch_size
    # reconstruct --network changes only the length of training (and runs on one device)
    assert set(NETWORK_DEFAULTS) == {"training.max_epochs", "execution.devices"}
    # the benchmark's network flags default to the dataclasses, not to literals
    tree = ast.parse((Path(__file__).parents[1] / "benchmarks" / "quality.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flag = node.args[0].value
            if flag in ("--gridsize", "--physics-iterations", "--n-filters-scale"):
                default = next(k.value for k in node.keywords if k.arg == "default")
                assert not isinstance(default, ast.Constant), f"quality.py {flag}: a literal"
