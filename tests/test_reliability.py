"""Reliability promises (docs/reliability.md): error policy, safe bundles, one run per output
directory, training faults, interrupts (Ctrl-C and SIGKILL, through the real CLI in a
subprocess), no side effects of library calls, durable atomic writes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ptychopinn.cli.main import main
from ptychopinn.config_factory import build_run_config
from ptychopinn.data.npz import write_npz
from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.errors import OutputLockedError, TrainingDivergedError
from ptychopinn.io.bundle import BUNDLE_NAME, load_bundle
from ptychopinn.io.lock import LOCK_NAME, output_lock
from ptychopinn.training.fit import fit

TINY = dict(
    n_filters_scale=1,
    max_epochs=2,
    batch_size=4,
    n_groups=8,
    val_fraction=0.25,
    quiet=True,
    logger="none",
)
TRAIN_FLAGS = [
    "--n-filters-scale",
    "1",
    "--max-epochs",
    "1",
    "--batch-size",
    "4",
    "--n-groups",
    "8",
    "--logger",
    "none",
    "--quiet",
]


def cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_scan):
    out = tmp_path_factory.mktemp("rel") / "model"
    fit([tiny_scan], run_config=build_run_config(TINY), output_dir=out)
    return out


# --- error policy -------------------------------------------------------------------------------
def test_an_internal_valueerror_is_a_bug_not_bad_input(monkeypatch, tmp_path, capsys):
    import ptychopinn.data.simulate as simulate

    def broken(config, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(simulate, "simulate_scan", broken)
    code = main(["simulate", "--output", str(tmp_path / "s.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "an internal inconsistency" in err
    assert "internal error (a bug in ptychopinn" in err


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "nope.npz"
    plain = cli("reconstruct", "--data", missing, "--output-dir", tmp_path / "o")
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"ptychopinn reconstruct: error: {missing}: file: no such file"
    ]
    debug = cli(
        "reconstruct",
        "--data",
        missing,
        "--output-dir",
        tmp_path / "o",
        env={"PTYCHOPINN_DEBUG": "1"},
    )
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def _bundle_with_weights(src: Path, dst: Path, weights: bytes) -> Path:
    """Copy of the bundle with ``weights.pt`` replaced and the manifest checksums updated."""
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    members["weights.pt"] = weights
    manifest = json.loads(members["manifest.json"])
    manifest["files"]["weights.pt"] = hashlib.sha256(weights).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


class _Payload:
    """Unpickling this would run code (here: harmless, it writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_pickle_bundle_is_refused_in_one_line(model_dir, tmp_path, tiny_scan_file):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, buf)  # torch's zip format, pickled payload inside
    bad = _bundle_with_weights(model_dir / BUNDLE_NAME, tmp_path / "evil.ptpinn", buf.getvalue())
    out = cli("infer", "--model", bad, "--data", tiny_scan_file, "--output-dir", tmp_path / "o")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "weights.pt: not a safe ptychopinn bundle" in lines[0]
    assert "weights_only=False" not in out.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()
    # a plain pickle (not torch's format) and a non-dict payload are refused the same way
    raw = _bundle_with_weights(
        model_dir / BUNDLE_NAME, tmp_path / "raw.ptpinn", pickle.dumps(_Payload(marker))
    )
    tensor = io.BytesIO()
    torch.save(torch.zeros(3), tensor)
    not_dict = _bundle_with_weights(
        model_dir / BUNDLE_NAME, tmp_path / "t.ptpinn", tensor.getvalue()
    )
    from ptychopinn.errors import BundleError

    for path in (raw, not_dict):
        with pytest.raises(BundleError, match="not a safe ptychopinn bundle"):
            load_bundle(path)
    assert not marker.exists()


# --- one run per output directory ---------------------------------------------------------------
def test_a_second_run_into_a_busy_output_dir_is_refused_at_once(tmp_path, tiny_scan_file, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ptychopinn.io.lock import output_lock\n"
            f"with output_lock({str(out)!r}):\n print('held', flush=True)\n"
            " time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        code = main(
            ["train", "--train-data", str(tiny_scan_file), "--output-dir", str(out), *TRAIN_FLAGS]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert f"in use by another ptychopinn run (pid {holder.pid}" in err[0]
        assert time.perf_counter() - t0 < 30
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock is stale and the next run takes it over
    assert (out / LOCK_NAME).exists()
    assert (
        main(["train", "--train-data", str(tiny_scan_file), "--output-dir", str(out), *TRAIN_FLAGS])
        == 0
    )
    assert (out / BUNDLE_NAME).exists() and not (out / LOCK_NAME).exists()


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with output_lock(tmp_path / "d"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path / "d"):
                pass
    with output_lock(tmp_path / "d"):  # released
        pass


# --- training faults ----------------------------------------------------------------------------
class PoisonWeights(L.Callback):
    """Fault injection: a weight becomes NaN at the start of epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.generator.parameters()).view(-1)[0] = float("nan")


def test_non_finite_training_stops_with_no_bundle_and_keeps_earlier_checkpoints(
    tmp_path, tiny_scan
):
    out = tmp_path / "run"
    rc = build_run_config({**TINY, "max_epochs": 3, "early_stopping": False})
    with pytest.raises(
        TrainingDivergedError, match=r"training diverged: non-finite loss .* epoch 1"
    ):
        fit([tiny_scan], run_config=rc, output_dir=out, callbacks=[PoisonWeights(1)])
    assert not (out / BUNDLE_NAME).exists()
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # written at the end of epoch 0, before the fault
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    assert not (out / LOCK_NAME).exists()


def test_detect_anomaly_reaches_the_trainer(tmp_path, tiny_scan):
    result = fit(
        [tiny_scan], run_config=build_run_config({**TINY, "max_epochs": 1, "detect_anomaly": True})
    )
    assert result.trainer._detect_anomaly is True  # noqa: SLF001


# --- interrupts through the real CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_scan(tmp_path_factory):
    """A scan whose epochs take ~1 s on one thread, so a signal lands inside a run."""
    path = tmp_path_factory.mktemp("slow") / "scan.npz"
    write_npz(
        simulate_scan(SimulationConfig(patch_size=32, n_positions=144, photons=1e5, seed=5)), path
    )
    return path


def _train_args(scan, out, epochs):
    return [
        "train",
        "--train-data",
        scan,
        "--output-dir",
        out,
        "--n-filters-scale",
        "1",
        "--max-epochs",
        epochs,
        "--batch-size",
        "4",
        "--n-groups",
        "144",
        "--physics-iterations",
        "2",
        "--val-fraction",
        "0.25",
        "--no-early-stopping",
        "--seed",
        "3",
        "--quiet",
    ]


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "ptychopinn.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for(path: Path, proc, timeout=240):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # the checkpoint is complete; the next epoch is under way


def _final_val_loss(out: Path) -> float:
    versions = sorted((out / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    with open(versions[-1] / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("poisson_val_loss")]
    return float(rows[-1]["poisson_val_loss"])


def test_ctrl_c_exits_130_without_a_bundle_and_keeps_last_ckpt(tmp_path, slow_scan):
    out = tmp_path / "run"
    proc = _start(_train_args(slow_scan, out, 50))
    last = out / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("ptychopinn train: interrupted (training interrupted at epoch")
    )
    assert "--resume-from last" in stderr and "Traceback" not in stderr
    assert not (out / BUNDLE_NAME).exists() and last.exists() and stdout == ""
    assert not (out / LOCK_NAME).exists()


def test_killed_training_resumes_to_the_same_result(tmp_path, slow_scan):
    reference = tmp_path / "reference"
    done = cli(*_train_args(slow_scan, reference, 3))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    proc = _start(_train_args(slow_scan, out, 3))
    _wait_for(out / "checkpoints" / "last.ckpt", proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / BUNDLE_NAME).exists()
    resumed = cli(*_train_args(slow_scan, out, 3), "--resume-from", "last")
    assert resumed.returncode == 0, resumed.stderr
    load_bundle(out)  # complete and valid
    assert _final_val_loss(out) == pytest.approx(_final_val_loss(reference), rel=0.01)


# --- no side effects of library calls -----------------------------------------------------------
def test_fit_without_output_dir_writes_nothing_and_leaves_global_state(
    tmp_path, tiny_scan, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    env = dict(os.environ)
    loggers = ("lightning.pytorch", "lightning.fabric", "ptychopinn")
    levels = {n: logging.getLogger(n).level for n in loggers}
    filters = list(warnings.filters)
    rc = build_run_config({**TINY, "logger": "csv", "quiet": True})  # csv: still nothing written
    result = fit([tiny_scan], run_config=rc)
    assert result.bundle_path is None and result.bundle.state_dict
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state, strict=True))
    assert dict(os.environ) == env
    assert {n: logging.getLogger(n).level for n in loggers} == levels
    assert list(warnings.filters) == filters


def test_the_seed_alone_decides_the_weights(tiny_scan):
    rc = build_run_config({**TINY, "max_epochs": 1, "seed": 11})
    torch.manual_seed(1)
    a = fit([tiny_scan], run_config=rc).bundle.state_dict
    torch.manual_seed(2)  # another global state: same run
    b = fit([tiny_scan], run_config=rc).bundle.state_dict
    c = fit(
        [tiny_scan], run_config=build_run_config({**TINY, "max_epochs": 1, "seed": 12})
    ).bundle.state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- durable, atomic writes ---------------------------------------------------------------------
def test_outputs_are_fsynced_before_the_rename(tmp_path, monkeypatch, tiny_scan):
    import ptychopinn.io.atomic as atomic

    events = []
    for name in ("fsync_file", "fsync_dir", "rename_new"):
        real = getattr(atomic, name)
        monkeypatch.setattr(
            atomic,
            name,
            lambda *a, _n=name, _f=real: (events.append((_n, Path(a[-1]).name)), _f(*a))[1],
        )
    write_npz(tiny_scan, tmp_path / "scan.npz")
    assert [e[0] for e in events] == ["fsync_file", "rename_new", "fsync_dir"]
    assert events[1][1] == "scan.npz" and events[2][1] == tmp_path.name
    assert (tmp_path / "scan.npz").stat().st_size > 0


def test_concurrent_writers_never_clobber_each_other(tmp_path):
    import ptychopinn.io.atomic as atomic
    from ptychopinn.errors import PtychoPINNError

    target = tmp_path / "out"
    with pytest.raises(PtychoPINNError, match="written by another run meanwhile"):
        with atomic.atomic_dir(target) as first:
            (first / "v").write_text("first")
            with atomic.atomic_dir(target) as second:  # started later, finishes first
                (second / "v").write_text("second")
    assert (target / "v").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(PtychoPINNError, match="written by another run meanwhile"):
        with atomic.atomic_path(tmp_path / "f.txt") as a:
            a.write_text("a")
            with atomic.atomic_path(tmp_path / "f.txt") as b:
                b.write_text("b")
    assert (tmp_path / "f.txt").read_text() == "b"


def test_overwriting_a_directory_never_leaves_neither(tmp_path, monkeypatch):
    import ptychopinn.io.atomic as atomic

    target = tmp_path / "out"
    with atomic.atomic_dir(target) as d:
        (d / "v").write_text("old")
    seen = []
    real_exchange = atomic.exchange

    def watched(a, b):
        ok = real_exchange(a, b)
        seen.append((ok, (Path(b) / "v").read_text()))
        return ok

    monkeypatch.setattr(atomic, "exchange", watched)
    with atomic.atomic_dir(target, overwrite=True) as d:
        (d / "v").write_text("new")
        assert (target / "v").read_text() == "old"  # the old output stays until the swap
    assert seen == [(True, "new")]  # one atomic exchange: old -> new with no gap
    assert (target / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
