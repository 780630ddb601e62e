"""End-to-end CLI chain and model-bundle contract on tiny simulated scans."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ptychopinn.cli.main import main
from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.errors import BundleError
from ptychopinn.io.bundle import BUNDLE_NAME, FORMAT_VERSION, load_bundle, save_bundle
from ptychopinn.reconstruction.network import predict_patches, reconstruct
from ptychopinn.reconstruction.result import load_reconstruction
from ptychopinn.training.fit import fit

FAST = ExecutionConfig(quiet=True, logger="none", enable_checkpointing=False, early_stopping=False)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    train = simulate_scan(SimulationConfig(patch_size=16, n_positions=36, photons=1e5, seed=3))
    test = simulate_scan(SimulationConfig(patch_size=16, n_positions=25, photons=1e5, seed=4))
    write_npz(train, d / "train.npz")
    write_npz(test, d / "test.npz")
    return d, train, test


@pytest.fixture(scope="module")
def trained(scans):
    d, train, _ = scans
    out = d / "model"
    result = fit(
        [train],
        None,
        model_config=ModelConfig(
            gridsize=2, n_filters_scale=1, physics_iterations=2, skip_connections=True
        ),
        data_config=DataConfig(neighbors=4),
        training_config=TrainingConfig(max_epochs=1, batch_size=8),
        execution_config=FAST,
        output_dir=out,
    )
    return out, result


def test_cli_chain_simulate_train_infer_evaluate(tmp_path, capsys):
    scan = tmp_path / "scan.npz"
    test = tmp_path / "test.npz"
    assert (
        main(
            [
                "simulate",
                "--output",
                str(scan),
                "--patch-size",
                "16",
                "--n-positions",
                "36",
                "--photons",
                "1e5",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "simulate",
                "--output",
                str(test),
                "--patch-size",
                "16",
                "--n-positions",
                "25",
                "--seed",
                "7",
                "--quiet",
            ]
        )
        == 0
    )
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--train-data",
                str(scan),
                "--output-dir",
                str(model),
                "--gridsize",
                "2",
                "--neighbors",
                "4",
                "--max-epochs",
                "1",
                "--batch-size",
                "8",
                "--n-filters-scale",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert (model / BUNDLE_NAME).is_file()
    assert list((model / "checkpoints").glob("*.ckpt")), "Lightning checkpoints expected"
    assert (model / "lightning_logs").is_dir()
    out = tmp_path / "recon"
    assert (
        main(
            [
                "infer",
                "--model",
                str(model),
                "--data",
                str(test),
                "--output-dir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    recon = load_reconstruction(out / "reconstruction.npz")
    truth = read_npz(test).object_truth
    assert recon.object.shape == truth.shape and np.isfinite(recon.object).all()
    assert (out / "amplitude_phase.png").stat().st_size > 1000
    from ptychopinn.config_factory import read_audit

    audit = read_audit(out / "config.resolved.yaml")  # infer's settings and their sources
    assert audit["refine"]["refine_epochs"] == 0 and audit["execution"]["devices"] == 1
    assert recon.metadata["config"]["infer"]["phase_sync_iterations"] == 10
    ev = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--reconstruction",
                str(out / "reconstruction.npz"),
                "--ground-truth",
                str(test),
                "--output-dir",
                str(ev),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads((ev / "metrics.json").read_text())
    assert 0 < metrics["complex_nrmse"] < 2


def test_bundle_roundtrip_bit_identical(trained, scans):
    out, result = trained
    _, _, test = scans
    bundle = load_bundle(out)
    a = predict_patches(result.bundle, test)
    b = predict_patches(bundle, test)
    assert torch.equal(a, b)
    r1 = reconstruct(out / BUNDLE_NAME, test)
    r2 = reconstruct(bundle, test)
    np.testing.assert_array_equal(r1.object, r2.object)
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    assert bundle.model_config == result.bundle.model_config


def test_bundle_weights_load_with_weights_only(trained):
    out, _ = trained
    with zipfile.ZipFile(out / BUNDLE_NAME) as zf:
        names = set(zf.namelist())
        assert {
            "manifest.json",
            "config.json",
            "weights.pt",
            "probe.npy",
            "normalisation.json",
        } <= names
        zf.extract("weights.pt", out / "x")
    state = torch.load(out / "x" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            zout.writestr(item, edit(item, zin.read(item)))


def test_bundle_wrong_format_version_is_clear_error(trained, tmp_path):
    out, _ = trained

    def edit(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            m["format_version"] = FORMAT_VERSION + 1
            return json.dumps(m)
        return data

    bad = tmp_path / "bad.ptpinn"
    _rewrite(out / BUNDLE_NAME, bad, edit)
    with pytest.raises(BundleError, match="format version"):
        load_bundle(bad)


def test_bundle_corrupt_member_detected(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "corrupt.ptpinn"
    _rewrite(out / BUNDLE_NAME, bad, lambda n, d: d[:-8] + b"\0" * 8 if n == "weights.pt" else d)
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(bad)


def test_bundle_mismatched_weights_rejected(trained, tmp_path):
    _, result = trained
    bundle = result.bundle
    state = dict(bundle.state_dict)
    state.pop(next(iter(state)))
    from dataclasses import replace

    path = save_bundle(replace(bundle, state_dict=state), tmp_path / "partial.ptpinn")
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(path)


def test_bundle_not_overwritten(trained):
    out, result = trained
    with pytest.raises(ValueError, match="already exists"):
        save_bundle(result.bundle, out / BUNDLE_NAME)


def _cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli.main", *args], capture_output=True, text=True
    )
    return proc.returncode, proc.stderr.strip().splitlines()


def test_infer_missing_model_dir_one_line_error(tmp_path, scans):
    d, _, _ = scans
    code, err = _cli(
        "infer",
        "--model",
        str(tmp_path / "nope"),
        "--data",
        str(d / "test.npz"),
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_infer_patch_size_mismatch(tmp_path, trained):
    out, _ = trained
    other = simulate_scan(SimulationConfig(patch_size=32, n_positions=9, photons=1e4, seed=1))
    write_npz(other, tmp_path / "n32.npz")
    code, err = _cli(
        "infer",
        "--model",
        str(out),
        "--data",
        str(tmp_path / "n32.npz"),
        "--output-dir",
        str(tmp_path / "o"),
        "--quiet",
    )
    assert code == 2 and len(err) == 1 and "N=16" in err[0]


def test_infer_empty_scan(tmp_path, trained):
    out, _ = trained
    np.savez(
        tmp_path / "empty.npz",
        diff3d=np.zeros((0, 16, 16)),
        xcoords=np.zeros(0),
        ycoords=np.zeros(0),
        probeGuess=np.ones((16, 16), np.complex64),
    )
    code, err = _cli(
        "infer",
        "--model",
        str(out),
        "--data",
        str(tmp_path / "empty.npz"),
        "--output-dir",
        str(tmp_path / "o"),
        "--quiet",
    )
    assert code == 2 and len(err) == 1 and "empty" in err[0]


def test_infer_refuses_to_overwrite(tmp_path, trained, scans):
    out, _ = trained
    d, _, _ = scans
    args = [
        "infer",
        "--model",
        str(out),
        "--data",
        str(d / "test.npz"),
        "--output-dir",
        str(tmp_path / "r"),
        "--quiet",
    ]
    assert main(args) == 0
    before = (tmp_path / "r" / "reconstruction.npz").read_bytes()
    code, err = _cli(*args)
    assert code == 2 and "already exists" in err[0]
    assert (tmp_path / "r" / "reconstruction.npz").read_bytes() == before


def test_training_is_reproducible_for_a_seed(scans):
    _, train, _ = scans
    kw = dict(
        model_config=ModelConfig(gridsize=1, n_filters_scale=1),
        training_config=TrainingConfig(max_epochs=1, batch_size=8),
        execution_config=FAST,
    )
    a = fit([train], None, **kw).bundle.state_dict
    b = fit([train], None, **kw).bundle.state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reconstruct_command_self_supervised(tmp_path, scans):
    d, _, _ = scans
    out = tmp_path / "rec"
    assert (
        main(
            [
                "reconstruct",
                "--data",
                str(d / "test.npz"),
                "--output-dir",
                str(out),
                "--network",
                "--max-epochs",
                "1",
                "--refine-epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    recon = load_reconstruction(out / "reconstruction.npz")
    assert np.isfinite(recon.object).all()
    assert recon.metadata["refine_epochs"] == 2
    assert (out / BUNDLE_NAME).is_file()


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--output-dir",
                str(out),
                "--patch-size",
                "16",
                "--n-positions",
                "36",
                "--n-train-scans",
                "1",
                "--test-positions",
                "25",
                "--max-epochs",
                "1",
                "--refine-epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "phase SSIM" in printed and "network + refinement" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["metrics"]) == {
        "flat object (baseline)",
        "network (single pass)",
        "network + refinement",
        "refinement from flat",
    }
    for name in ("comparison_network.png", "comparison_refined.png", "frc_refined.png"):
        assert (out / name).stat().st_size > 1000
    # no temporary directory left behind
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_training_ignores_bad_pixels(scans):
    from dataclasses import replace

    _, train, _ = scans
    bad = np.zeros((16, 16), bool)
    bad[3, 5] = bad[8, 8] = True
    hot = train.diffraction.copy()
    hot[:, 3, 5] = 1e7
    hot[:, 8, 8] = 0.0
    kw = dict(
        model_config=ModelConfig(gridsize=1, n_filters_scale=1),
        training_config=TrainingConfig(max_epochs=1, batch_size=8),
        execution_config=FAST,
    )
    clean = fit([replace(train, bad_pixels=bad)], None, **kw)
    garbage = fit([replace(train, diffraction=hot, bad_pixels=bad)], None, **kw)
    unmasked = fit([replace(train, diffraction=hot)], None, **kw)
    a, b = clean.metrics["poisson_train_loss"], garbage.metrics["poisson_train_loss"]
    assert a == pytest.approx(b, rel=1e-6)
    assert unmasked.metrics["poisson_train_loss"] != pytest.approx(a, rel=1e-3)


def test_reconstruct_refine_only_from_flat(tmp_path, scans):
    d, _, test = scans
    for flags, name in ((["--refine-only"], "flat"), ([], "default")):  # the default is the same
        out = tmp_path / name
        assert (
            main(
                [
                    "reconstruct",
                    "--data",
                    str(d / "test.npz"),
                    "--output-dir",
                    str(out),
                    *flags,
                    "--refine-epochs",
                    "3",
                    "--quiet",
                ]
            )
            == 0
        )
        recon = load_reconstruction(out / "reconstruction.npz")
        assert recon.metadata["refine_epochs"] == 3 and not (out / BUNDLE_NAME).exists()
        losses = recon.metadata["refine_losses"]
        assert losses[-1] < losses[0]
    a = load_reconstruction(tmp_path / "flat" / "reconstruction.npz").object
    np.testing.assert_array_equal(
        a, load_reconstruction(tmp_path / "default" / "reconstruction.npz").object
    )


def test_reconstruct_reads_a_config_file_and_writes_its_audit(tmp_path, scans, capsys):
    """reconstruct's settings come from the one factory: a flag beats --config, which beats the
    command's default; the run writes config.resolved.yaml (a valid --config) and records the
    refine/infer settings in the reconstruction; an existing audit is not overwritten."""
    from ptychopinn.config_factory import read_audit

    d, _, _ = scans
    cfg = tmp_path / "run.yaml"
    cfg.write_text("refine:\n  refine_epochs: 4\n  refine_batch_size: 8\nseed: 2\n")
    out = tmp_path / "rec"
    argv = ["reconstruct", "--data", str(d / "test.npz"), "--output-dir", str(out), "--quiet"]
    assert main([*argv, "--config", str(cfg), "--refine-epochs", "3"]) == 0
    capsys.readouterr()
    recon = load_reconstruction(out / "reconstruction.npz")
    assert recon.metadata["refine_epochs"] == 3  # the flag beats the file
    assert recon.metadata["config"]["refine"]["refine_batch_size"] == 8  # the file beats 64
    audit = read_audit(out / "config.resolved.yaml")
    assert (
        audit["refine"]["refine_epochs"] == 3 and audit["sources"]["refine.refine_epochs"] == "CLI"
    )
    assert audit["sources"]["refine.refine_batch_size"] == "config file"
    assert audit["execution"]["seed"] == 2 and audit["runtime"]["device"] == "cpu"
    # the audit repeats the run
    again = tmp_path / "again"
    argv2 = ["reconstruct", "--data", str(d / "test.npz"), "--output-dir", str(again), "--quiet"]
    assert main([*argv2, "--config", str(out / "config.resolved.yaml")]) == 0
    np.testing.assert_array_equal(
        load_reconstruction(again / "reconstruction.npz").object, recon.object
    )
    # an audit left in the output directory is an output like the others
    (again / "reconstruction.npz").unlink()
    (again / "amplitude_phase.png").unlink()
    capsys.readouterr()
    assert main(argv2) == 2
    assert "config.resolved.yaml" in capsys.readouterr().err
    assert not (again / "reconstruction.npz").exists()


def test_reconstruct_network_options_need_network(tmp_path, scans, capsys):
    d, _, _ = scans
    code = main(
        [
            "reconstruct",
            "--data",
            str(d / "test.npz"),
            "--output-dir",
            str(tmp_path / "o"),
            "--max-epochs",
            "3",
            "--gridsize",
            "1",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and "--gridsize, --max-epochs apply to the network path" in err[0]
    )
    assert (
        main(
            [
                "reconstruct",
                "--data",
                str(d / "test.npz"),
                "--output-dir",
                str(tmp_path / "o"),
                "--network",
                "--refine-only",
            ]
        )
        == 2
    )
    assert not (tmp_path / "o").exists()


def test_covering_groups_take_every_pattern_once_with_fewer_groups():
    from ptychopinn.data.grouping import group_positions
    from ptychopinn.reconstruction.network import covering_groups

    pos = np.random.default_rng(0).uniform(0, 100, (300, 2))
    groups = group_positions(pos, 2, 7, n_groups=300, seed=1)
    rows, take = covering_groups(groups.indices)
    taken = groups.indices[rows][take]
    assert sorted(taken.tolist()) == list(range(300))  # each pattern exactly once
    assert len(rows) < 0.6 * 300
    single = group_positions(pos, 1, 7, n_groups=300, seed=1)
    rows1, take1 = covering_groups(single.indices)
    assert len(rows1) == 300 and take1.all()


def test_reconstruct_refuses_unusable_devices(tmp_path, scans, capsys):
    d, _, _ = scans
    out = tmp_path / "o"
    code = main(
        [
            "reconstruct",
            "--data",
            str(d / "test.npz"),
            "--output-dir",
            str(out),
            "--devices",
            "2",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--devices 2: this command runs on one device" in err[0]
    if not torch.cuda.is_available():
        code = main(
            [
                "reconstruct",
                "--data",
                str(d / "test.npz"),
                "--output-dir",
                str(out),
                "--accelerator",
                "cuda",
                "--quiet",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "no CUDA device is available" in err[0]
    assert not out.exists()
    # the CPU is always usable
    assert (
        main(
            [
                "reconstruct",
                "--data",
                str(d / "test.npz"),
                "--output-dir",
                str(out),
                "--refine-epochs",
                "2",
                "--accelerator",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )


def test_a_bundle_from_before_overlap_constraint_averages_the_patches(trained, tmp_path):
    """Bundles written before ModelConfig.overlap_constraint existed keep the forward they were
    trained with (the constraint on the output patches); new ones record their setting."""
    import hashlib

    out, result = trained
    assert result.bundle.model_config.overlap_constraint == "correction"
    assert load_bundle(out / BUNDLE_NAME).model_config.overlap_constraint == "correction"
    members = {}

    def edit(name, data):
        if name == "config.json":
            c = json.loads(data)
            del c["model"]["overlap_constraint"]
            data = json.dumps(c).encode()
        members[name] = data
        return data

    old = tmp_path / "old.ptpinn"
    _rewrite(out / BUNDLE_NAME, tmp_path / "stale.ptpinn", edit)
    manifest = json.loads(members["manifest.json"])
    manifest["files"]["config.json"] = hashlib.sha256(members["config.json"]).hexdigest()
    _rewrite(
        tmp_path / "stale.ptpinn",
        old,
        lambda n, d: json.dumps(manifest).encode() if n == "manifest.json" else d,
    )
    assert load_bundle(old).model_config.overlap_constraint == "patches"


def test_the_estimate_engine_of_a_model_is_its_networks_input(trained):
    from ptychopinn.reconstruction.estimate import EstimateEngine

    _, result = trained
    b = result.bundle
    engine = EstimateEngine.for_model(b, quiet=True)
    assert (engine.iterations, engine.gridsize, engine.neighbors) == (
        b.model_config.physics_iterations,
        b.model_config.gridsize,
        b.data_config.neighbors,
    )
