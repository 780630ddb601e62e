"""The network pass on several devices and in mixed precision (issue 13): ``infer --devices 2``
on two CPU processes (gloo) under both DDP launchers gives the single-process reconstruction;
the processes get a memory-mapped scan by reference; bf16 inference stays close to float32;
``--probe-from`` gives a scan another probe."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from ptychopinn.cli.main import main
from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.training.fit import fit

FAST = ExecutionConfig(quiet=True, logger="none", enable_checkpointing=False, early_stopping=False)


@pytest.fixture(scope="module")
def model_and_scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi")
    train = simulate_scan(SimulationConfig(patch_size=16, n_positions=36, photons=1e5, seed=3))
    test = simulate_scan(SimulationConfig(patch_size=16, n_positions=49, photons=1e5, seed=4))
    write_npz(test, d / "test.npz")
    fit(
        [train],
        None,
        model_config=ModelConfig(gridsize=2, n_filters_scale=1, physics_iterations=2),
        data_config=DataConfig(neighbors=4),
        training_config=TrainingConfig(max_epochs=1, batch_size=8),
        execution_config=FAST,
        output_dir=d / "model",
    )
    one = d / "one"
    assert main(_infer(d, one)) == 0
    return d, _load(one)


def _infer(d, out, *extra):
    return [
        "infer",
        "--model",
        str(d / "model"),
        "--data",
        str(d / "test.npz"),
        "--output-dir",
        str(out),
        "--accelerator",
        "cpu",
        "--inference-batch-size",
        "4",
        "--quiet",
        *extra,
    ]


def _load(out):
    with np.load(out / "reconstruction.npz") as z:
        return z["object"], json.loads(str(z["metadata"]))


def test_infer_on_two_spawned_processes_equals_one_process(model_and_scan, tmp_path):
    d, (single, meta1) = model_and_scan
    assert main(_infer(d, tmp_path, "--devices", "2", "--strategy", "ddp_spawn")) == 0
    obj, meta = _load(tmp_path)
    # both processes predicted a share, every pattern once; the same patches stitch the same
    per_process = meta["patterns_per_process"]
    assert len(per_process) == 2 and min(per_process) > 0 and sum(per_process) == 49
    assert meta1["patterns_per_process"] == [49]
    np.testing.assert_allclose(obj, single, atol=1e-5)
    assert not any(n.startswith("ptychopinn-spill-") for n in os.listdir(tmp_path))


def test_infer_under_the_ddp_launcher_reruns_the_command_in_a_second_process(
    model_and_scan, tmp_path
):
    """``--strategy ddp``: Lightning starts the second process by running the same command line
    again; it reads the scan file itself, predicts its share into the shared patch file and
    leaves the outputs to rank 0."""
    d, (single, _) = model_and_scan
    script = os.path.join(os.path.dirname(sys.executable), "ptychopinn")
    args = _infer(d, tmp_path / "out", "--devices", "2", "--strategy", "ddp")
    done = subprocess.run([script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    obj, meta = _load(tmp_path / "out")
    assert len(meta["patterns_per_process"]) == 2 and min(meta["patterns_per_process"]) > 0
    np.testing.assert_allclose(obj, single, atol=1e-5)
    # rank 0 alone printed the outputs
    assert done.stdout.count("reconstruction.npz") == 1


def test_infer_on_several_devices_refuses_other_strategies(model_and_scan, tmp_path, capsys):
    d, _ = model_and_scan
    assert main(_infer(d, tmp_path, "--devices", "2", "--strategy", "ddp_fork")) == 2
    err = capsys.readouterr().err.strip()
    assert "--strategy ddp_fork" in err and "ddp or ddp_spawn" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "reconstruction.npz").exists()


def test_a_memory_mapped_scan_travels_to_the_processes_by_reference(
    model_and_scan, tmp_path, monkeypatch
):
    """What ddp_spawn pickles for each process: the mapped counts' file, offset and shape (a
    few hundred bytes), not the counts; unpickled, the items are the same."""
    import ptychopinn.data.npz as npz
    from ptychopinn.io.scratch import MappedFile, portable
    from ptychopinn.training.predict import CoveringGroupItems

    d, _ = model_and_scan
    with np.load(d / "test.npz") as f:  # the same members, stored uncompressed
        np.savez(tmp_path / "stored.npz", **{k: f[k] for k in f.files})
    monkeypatch.setattr(npz, "MMAP_BYTES", 1)  # every stored member is mapped
    scan = read_npz(tmp_path / "stored.npz")
    assert isinstance(portable(scan.diffraction), MappedFile)
    assert portable(scan.diffraction[1:]) is not None  # a part of a map is sent as it is
    assert not isinstance(portable(scan.diffraction[1:]), MappedFile)
    idx = np.arange(49).reshape(-1, 1)
    items = CoveringGroupItems(scan.diffraction, idx, np.zeros((49, 1, 2)), np.ones((49, 1), bool))
    blob = pickle.dumps(items)
    assert len(blob) < 0.1 * scan.diffraction.nbytes
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back[7]["counts"].numpy(), items[7]["counts"].numpy())
    # an array in memory is sent as it is
    in_memory = CoveringGroupItems(np.array(scan.diffraction), idx, items.offsets, items.take)
    assert len(pickle.dumps(in_memory)) > scan.diffraction.nbytes


def test_infer_and_reconstruct_use_the_probe_of_another_file(model_and_scan, tmp_path):
    """``--probe-from``: the probe of a reconstruction (here one written by infer, whose probe
    is the scan's) or a scan file replaces the scan's own; a probe of another size is a
    one-line error naming the file."""
    d, (single, _) = model_and_scan
    other = simulate_scan(
        SimulationConfig(patch_size=16, n_positions=9, photons=1e5, seed=9, probe_kind="gaussian")
    )
    write_npz(other, tmp_path / "other.npz")
    out = tmp_path / "with_other"
    assert main(_infer(d, out, "--probe-from", str(tmp_path / "other.npz"))) == 0
    with np.load(out / "reconstruction.npz") as z:
        np.testing.assert_allclose(z["probe"].reshape(other.probe.shape), other.probe)
        assert json.loads(str(z["metadata"]))["probe_from"] == str(tmp_path / "other.npz")
    obj, _ = _load(out)
    assert np.abs(obj - single).max() > 1e-3  # another probe, another estimate and object
    out2 = tmp_path / "refined"
    argv = ["reconstruct", "--data", str(d / "test.npz"), "--output-dir", str(out2)]
    argv += ["--probe-from", str(tmp_path / "other.npz"), "--refine-epochs", "4", "--quiet"]
    assert main(argv) == 0
    with np.load(out2 / "reconstruction.npz") as z:
        meta = json.loads(str(z["metadata"]))
        # the probe from elsewhere is a guess: refinement retrieves it (auto), from that start
        assert meta["refine_probe"] is True and meta["probe_change"] > 0
        assert meta["probe_from"] == str(tmp_path / "other.npz")

    big = simulate_scan(SimulationConfig(patch_size=32, n_positions=9, photons=1e5, seed=9))
    write_npz(big, tmp_path / "big.npz")
    assert main(_infer(d, tmp_path / "bad", "--probe-from", str(tmp_path / "big.npz"))) == 2


def test_training_tensors_of_a_mapped_scan_pickle_as_their_file(
    model_and_scan, tmp_path, monkeypatch
):
    """What ddp_spawn sends each training process: a mapped scan's counts by reference (the
    rest of the tensors as they are); unpickled, the counts are the same and writable only in
    the process's own pages."""
    import ptychopinn.data.npz as npz
    from ptychopinn.training.data import scan_tensors

    d, _ = model_and_scan
    with np.load(d / "test.npz") as f:
        np.savez(tmp_path / "stored.npz", **{k: f[k] for k in f.files})
    monkeypatch.setattr(npz, "MMAP_BYTES", 1)
    scan = read_npz(tmp_path / "stored.npz")
    tensors = scan_tensors(scan)
    blob = pickle.dumps(tensors)
    assert len(blob) < 0.1 * scan.diffraction.nbytes
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.counts.numpy(), tensors.counts.numpy())
    back.counts[0, 0, 0] += 1  # copy-on-write: the file keeps its counts
    assert read_npz(tmp_path / "stored.npz").diffraction[0, 0, 0] == scan.diffraction[0, 0, 0]
    in_memory = scan_tensors(read_npz(d / "test.npz"))  # compressed: read into memory
    assert len(pickle.dumps(in_memory)) > scan.diffraction.nbytes


def test_bf16_inference_runs_the_network_in_bfloat16_and_stays_close(model_and_scan, tmp_path):
    """``--inference-precision bf16-mixed``: the U-Net under autocast (its result differs from
    float32's, so autocast was applied) within bfloat16's rounding of float32's object; the
    estimate and stitching stay float32 (a complex64 object)."""
    d, (single, _) = model_and_scan
    assert main(_infer(d, tmp_path, "--inference-precision", "bf16-mixed")) == 0
    obj, meta = _load(tmp_path)
    assert obj.dtype == np.complex64
    diff = np.abs(obj - single)
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005
    assert meta["precision"] == "bf16-mixed"
