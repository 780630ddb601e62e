"""Real (tiny) training runs proving every execution knob reaches Lightning and does what the
documentation says: loggers, schedulers (via the logged lr), gradient accumulation, clipping,
checkpoints and monitors, resume, DDP on 2 CPU processes, quiet output, precision, and the chain
train -> save -> load -> infer."""

from __future__ import annotations

import csv
import logging
import re
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ptychopinn.cli.main import main
from ptychopinn.config_factory import (
    AUDIT_NAME,
    SOURCE_CLI,
    build_run_config,
    read_audit,
)
from ptychopinn.errors import PtychoPINNError
from ptychopinn.training.fit import fit

TINY = dict(
    n_filters_scale=1, max_epochs=1, batch_size=4, n_groups=8, val_fraction=0.25, quiet=True
)


def tiny(**overrides):
    """8 groups of the 49-position 32x32 scan: 6 train (one batch of 4), 2 validation."""
    return build_run_config({**TINY, **overrides})


def metrics_rows(out: Path, version: int = 0) -> list[dict]:
    with open(out / "lightning_logs" / f"version_{version}" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def per_epoch(rows, name) -> list[float]:
    values = {}
    for row in rows:
        if row.get(name):
            values[int(row["epoch"])] = float(row[name])
    return [values[e] for e in sorted(values)]


def params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in module.parameters()])


class Capture(L.Callback):
    """Parameters at the start of training and the deterministic flag during it."""

    def on_train_start(self, trainer, pl_module):
        self.start = params(pl_module)
        self.deterministic = torch.are_deterministic_algorithms_enabled()


@pytest.fixture
def ptycho_records():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ptychopinn")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(autouse=True)
def fresh_cli_logging():
    """configure_cli_logging keeps one handler bound to the sys.stderr of the test that created
    it; drop it so each CLI run here writes to its own test's captured stderr."""

    def drop():
        logger = logging.getLogger("ptychopinn")
        for handler in [h for h in logger.handlers if getattr(h, "_ptychopinn_cli", False)]:
            logger.removeHandler(handler)

    drop()
    yield
    drop()


# --- one CSV run shared by several checks ---------------------------------------------------------
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory, tiny_scan):
    out = tmp_path_factory.mktemp("csv") / "run"
    result = fit(
        [tiny_scan],
        run_config=tiny(max_epochs=2, checkpoint_save_top_k=-1, learning_rate=5e-4),
        output_dir=out,
    )
    return out, result


def test_csv_logger_writes_rows_and_resolved_hparams(csv_run):
    out, result = csv_run
    rows = metrics_rows(out)
    assert per_epoch(rows, "epoch") == [0, 1]
    for name in ("poisson_train_loss", "poisson_val_loss", "lr"):
        assert len(per_epoch(rows, name)) == 2, name
    assert per_epoch(rows, "lr") == pytest.approx([5e-4, 5e-4])
    hparams = yaml.safe_load((out / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["execution"]["learning_rate"] == 5e-4
    assert hparams["runtime"]["monitor"] == "poisson_val_loss"
    assert hparams["model"]["n"] == 32


def test_monitor_uses_val_loss_name_in_a_real_run(csv_run):
    out, result = csv_run
    assert result.monitor == "poisson_val_loss"
    checkpoint = [c for c in result.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    stopping = [c for c in result.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(checkpoint) == 1 and len(stopping) == 1
    assert checkpoint[0].monitor == stopping[0].monitor == "poisson_val_loss"
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[-1] == "last.ckpt"
    assert [n.split("-")[0] for n in names[:-1]] == ["epoch=00", "epoch=01"]  # save_top_k -1
    for name in names[:-1]:
        assert name.count("poisson_val_loss") == 1 and name.endswith(".ckpt")
        value = float(name.split("poisson_val_loss=")[1][: -len(".ckpt")])
        assert np.isfinite(value)


def test_audit_file_of_a_run(csv_run):
    out, result = csv_run
    audit = read_audit(out / AUDIT_NAME)
    assert result.audit_path == out / AUDIT_NAME
    assert audit["execution"]["learning_rate"] == 5e-4
    assert audit["sources"]["execution.learning_rate"] == "python"
    assert audit["sources"]["model.n"] == "data" and audit["model"]["n"] == 32
    assert audit["runtime"]["accelerator"] in ("cpu", "cuda", "mps")
    assert audit["runtime"]["effective_batch_size"] == 4
    assert audit["runtime"]["monitor"] == "poisson_val_loss"
    assert result.bundle.execution["learning_rate"] == 5e-4


def test_tensorboard_logger_writes_an_event_file(tmp_path, tiny_scan):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    fit(
        [tiny_scan],
        run_config=tiny(logger="tensorboard", enable_checkpointing=False),
        output_dir=out,
    )
    events = list((out / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"poisson_train_loss", "poisson_val_loss", "lr"} <= tags
    assert np.isfinite(acc.Scalars("poisson_val_loss")[0].value)


def test_mlflow_logger_records_params_and_metrics_in_a_local_store(tmp_path, tiny_scan):
    import mlflow

    out = tmp_path / "run"
    result = fit(
        [tiny_scan],
        run_config=tiny(
            logger="mlflow",
            experiment_name="tiny-exp",
            scheduler="Exponential",
            lr_gamma=0.5,
            max_epochs=2,
            enable_checkpointing=False,
        ),
        output_dir=out,
    )
    uri = result.runtime["mlflow_tracking_uri"]
    assert uri == (out / "mlruns").resolve().as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-exp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["execution/scheduler"] == "Exponential"
    assert float(run.data.params["execution/lr_gamma"]) == 0.5
    assert run.data.params["runtime/monitor"] == "poisson_val_loss"
    assert {"poisson_train_loss", "poisson_val_loss", "lr"} <= set(run.data.metrics)
    history = [
        m.value
        for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)
    ]
    assert history == pytest.approx([1e-3, 5e-4])


@pytest.mark.parametrize(
    "kind,extra", [("mlflow", "ptychopinn[mlflow]"), ("tensorboard", "ptychopinn[tensorboard]")]
)
def test_missing_logger_package_names_the_extra(kind, extra, tmp_path, tiny_scan, monkeypatch):
    monkeypatch.setitem(sys.modules, kind, None)  # makes `import kind` raise ImportError
    out = tmp_path / "run"
    with pytest.raises(
        PtychoPINNError, match=rf"logger '{kind}' needs .*pip install '{re.escape(extra)}'"
    ):
        fit([tiny_scan], run_config=tiny(logger=kind), output_dir=out)
    assert not out.exists()


# --- schedulers change the logged learning rate as documented -------------------------------------
SCHEDULES = [
    (dict(scheduler="Default"), [1, 1, 1]),
    (dict(scheduler="Exponential", lr_gamma=0.5), [1, 0.5, 0.25]),
    (dict(scheduler="MultiStage", lr_milestones=[1, 2], lr_gamma=0.1), [1, 0.1, 0.01]),
    # lr 1e-6: the validation loss stays flat (a plateau from the second epoch on), while the
    # halving stays above torch's eps (1e-8) below which ReduceLROnPlateau ignores a decay
    (dict(scheduler="ReduceLROnPlateau", plateau_patience=0, plateau_factor=0.5), [1, 1, 0.5]),
    (dict(scheduler="WarmupCosine", warmup_epochs=1, min_lr=0.0), [0.5, 1, 0.5]),
]


@pytest.mark.parametrize("knobs,factors", SCHEDULES, ids=[k["scheduler"] for k, _ in SCHEDULES])
def test_scheduler_changes_logged_lr(knobs, factors, tmp_path, tiny_scan):
    lr0 = 1e-6 if knobs["scheduler"] == "ReduceLROnPlateau" else 1e-3
    out = tmp_path / "run"
    fit(
        [tiny_scan],
        run_config=tiny(max_epochs=3, learning_rate=lr0, enable_checkpointing=False, **knobs),
        output_dir=out,
    )
    assert per_epoch(metrics_rows(out), "lr") == pytest.approx([lr0 * f for f in factors], rel=1e-5)


# --- gradient accumulation and clipping -----------------------------------------------------------
def sgd_run(tiny_scan, batch_size, accumulate, **extra):
    capture = Capture()
    rc = build_run_config(
        {
            **TINY,
            "batch_size": batch_size,
            "accumulate_grad_batches": accumulate,
            "optimizer": "sgd",
            "momentum": 0.0,
            "learning_rate": 1e-4,
            "val_fraction": 0.0,
            "logger": "none",
            "enable_checkpointing": False,
            **extra,
        }
    )
    result = fit([tiny_scan], run_config=rc, callbacks=[capture])
    return capture.start, params(result.module), result


def test_gradient_accumulation_equals_a_larger_batch(tiny_scan):
    """Batch 2 x 2 accumulation steps == batch 4: same samples per step, same updates."""
    start_a, end_a, run_a = sgd_run(tiny_scan, 2, 2)
    start_b, end_b, run_b = sgd_run(tiny_scan, 4, 1)
    start_c, end_c, _ = sgd_run(tiny_scan, 2, 1)
    assert run_a.trainer.accumulate_grad_batches == 2
    assert run_a.trainer.global_step == run_b.trainer.global_step == 2  # 8 groups: 2 steps
    assert torch.equal(start_a, start_b)
    step_a, step_b, step_c = end_a - start_a, end_b - start_b, end_c - start_c
    assert step_a.norm() > 0
    assert (step_a - step_b).norm() / step_b.norm() < 1e-4
    assert (step_c - step_b).norm() / step_b.norm() > 0.1  # the comparison can tell runs apart
    assert run_a.runtime["effective_batch_size"] == run_b.runtime["effective_batch_size"] == 4


def test_accumulation_drops_a_trailing_partial_group(tiny_scan):
    _, _, result = sgd_run(tiny_scan, 2, 2, n_groups=10)  # 5 batches: 2 full steps, 1 left over
    assert result.runtime["limit_train_batches"] == 4
    assert result.trainer.global_step == 2
    with pytest.raises(
        PtychoPINNError,
        match="accumulate_grad_batches: invalid value 8; expected at most the 4 training batch",
    ):
        sgd_run(tiny_scan, 2, 8)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_the_update(algorithm, tiny_scan):
    clip = 1e-3
    start, end, result = sgd_run(
        tiny_scan,
        8,
        1,
        learning_rate=1.0,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )
    assert result.trainer.global_step == 1
    step = end - start
    if algorithm == "norm":
        assert float(step.norm()) == pytest.approx(clip, rel=1e-3)
    else:
        assert float(step.abs().max()) == pytest.approx(clip, rel=1e-3)


# --- monitors, checkpoints, early stopping --------------------------------------------------------
def test_fallback_to_training_metric_without_validation(tmp_path, tiny_scan, ptycho_records):
    out = tmp_path / "run"
    result = fit(
        [tiny_scan], run_config=tiny(val_fraction=0.0, quiet=False, logger="none"), output_dir=out
    )
    assert result.monitor == "poisson_train_loss"
    monitors = {
        c.monitor
        for c in result.trainer.callbacks
        if isinstance(c, (ModelCheckpoint, EarlyStopping))
    }
    assert monitors == {"poisson_train_loss"}
    assert any(
        "no validation data" in r.getMessage() and "poisson_train_loss" in r.getMessage()
        for r in ptycho_records
    )
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[0].startswith("epoch=00-poisson_train_loss=") and names[1] == "last.ckpt"


def test_unknown_monitor_fails_before_training(tmp_path, tiny_scan):
    out = tmp_path / "run"
    with pytest.raises(PtychoPINNError) as info:
        fit([tiny_scan], run_config=tiny(checkpoint_monitor="val_los"), output_dir=out)
    assert "'val_los'" in str(info.value) and "'poisson_val_loss'" in str(info.value)
    assert not (out / "checkpoints").exists() and not (out / AUDIT_NAME).exists()


def test_early_stopping_stops_on_the_monitored_metric(tmp_path, tiny_scan):
    # "max" on a falling loss: no epoch improves on the first, so patience 1 stops after 2 epochs
    result = fit(
        [tiny_scan],
        run_config=tiny(
            max_epochs=6,
            checkpoint_mode="max",
            early_stop_patience=1,
            logger="none",
            enable_checkpointing=False,
        ),
        output_dir=tmp_path / "r",
    )
    stopper = next(c for c in result.trainer.callbacks if isinstance(c, EarlyStopping))
    assert stopper.monitor == "poisson_val_loss" and stopper.patience == 1
    assert result.trainer.current_epoch == 2 and stopper.stopped_epoch == 1
    result = fit(
        [tiny_scan],
        run_config=tiny(early_stopping=False, logger="none", enable_checkpointing=False),
        output_dir=tmp_path / "s",
    )
    assert not any(isinstance(c, EarlyStopping) for c in result.trainer.callbacks)


def test_save_top_k_zero_keeps_only_last(tmp_path, tiny_scan):
    out = tmp_path / "run"
    fit(
        [tiny_scan],
        run_config=tiny(max_epochs=2, checkpoint_save_top_k=0, logger="none"),
        output_dir=out,
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]


def test_resume_continues_from_the_saved_epoch(tmp_path, tiny_scan):
    out = tmp_path / "run"
    first = fit([tiny_scan], run_config=tiny(max_epochs=2), output_dir=out)
    assert first.trainer.current_epoch == 2
    steps = first.trainer.global_step
    second = fit(
        [tiny_scan],
        run_config=tiny(max_epochs=3, resume_from="last"),
        output_dir=out,
        overwrite=True,
    )
    assert second.runtime["resume_checkpoint"] == str(out / "checkpoints" / "last.ckpt")
    assert second.trainer.current_epoch == 3
    assert second.trainer.global_step == steps + steps // 2  # one more epoch, not three
    assert per_epoch(metrics_rows(out, version=1), "poisson_train_loss").__len__() == 1
    assert [
        int(r["epoch"]) for r in metrics_rows(out, version=1) if r.get("poisson_train_loss")
    ] == [2]
    assert read_audit(out / AUDIT_NAME)["execution"]["resume_from"] == "last"


# --- processes, precision, data loading -----------------------------------------------------------
def test_ddp_two_cpu_processes_save_one_bundle(tmp_path, tiny_scan):
    out = tmp_path / "run"
    result = fit(
        [tiny_scan],
        run_config=tiny(accelerator="cpu", devices=2, strategy="ddp_spawn", n_groups=16),
        output_dir=out,
    )
    assert result.runtime["devices"] == 2 and result.runtime["strategy"] == "DDPStrategy"
    assert result.runtime["effective_batch_size"] == 8
    assert result.bundle_path == out / "model.ptpinn"
    assert sorted(p.name for p in out.glob("*.ptpinn")) == ["model.ptpinn"]
    assert len(list((out / "lightning_logs").iterdir())) == 1
    assert np.isfinite(result.metrics["poisson_val_loss"])
    from ptychopinn.io.bundle import load_bundle

    assert load_bundle(out).execution["strategy"] == "ddp_spawn"


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_precision_runs_and_bundle_stays_float32(precision, tmp_path, tiny_scan):
    result = fit(
        [tiny_scan],
        run_config=tiny(precision=precision, logger="none", enable_checkpointing=False),
        output_dir=tmp_path / "r",
    )
    assert result.runtime["precision"] == precision
    assert np.isfinite(result.metrics["poisson_train_loss"])
    assert all(
        v.dtype == torch.float32 for v in result.bundle.state_dict.values() if v.is_floating_point()
    )


def test_deterministic_is_applied_during_the_run_and_restored(tiny_scan):
    assert not torch.are_deterministic_algorithms_enabled()
    capture = Capture()
    fit(
        [tiny_scan],
        run_config=tiny(deterministic=True, logger="none", enable_checkpointing=False),
        callbacks=[capture],
    )
    assert capture.deterministic is True
    assert not torch.are_deterministic_algorithms_enabled()


def test_dataloader_knobs_reach_the_loader(tiny_scan):
    result = fit(
        [tiny_scan],
        run_config=tiny(
            num_workers=1,
            persistent_workers=True,
            prefetch_factor=3,
            pin_memory=False,
            logger="none",
            enable_checkpointing=False,
        ),
    )
    loader = result.trainer.train_dataloader
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (1, True, 3)


# --- CLI runs: logging, quiet ---------------------------------------------------------------------
def test_cli_run_logs_effective_batch_and_changed_knobs(tmp_path, tiny_scan_file, capfd, caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--train-data",
            str(tiny_scan_file),
            "--output-dir",
            str(out),
            "--n-filters-scale",
            "1",
            "--max-epochs",
            "1",
            "--batch-size",
            "2",
            "--n-groups",
            "10",
            "--accumulate-grad-batches",
            "2",
            "--logger",
            "none",
        ]
    )
    captured = capfd.readouterr()
    assert code == 0
    assert captured.out.strip().splitlines()[-1] == str(out / "model.ptpinn")
    assert "effective batch size 4 = batch 2 x accumulation 2 x devices 1 x nodes 1" in captured.err
    assert "execution.accumulate_grad_batches=2 (CLI)" in captured.err
    # Lightning's info line, hidden by --quiet below. Lightning logs to its own stderr handler, or
    # through the root logger (pytest's log capture) when the root had handlers at its import.
    assert "GPU available" in captured.err + caplog.text
    audit = read_audit(out / AUDIT_NAME)
    assert audit["sources"]["execution.accumulate_grad_batches"] == SOURCE_CLI
    assert audit["sources"]["execution.scheduler"] == "default"


def test_cli_quiet_prints_only_the_bundle_path(tmp_path, tiny_scan_file, capfd, caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--train-data",
            str(tiny_scan_file),
            "--output-dir",
            str(out),
            "--n-filters-scale",
            "1",
            "--max-epochs",
            "1",
            "--batch-size",
            "4",
            "--n-groups",
            "8",
            "--quiet",
        ]
    )
    captured = capfd.readouterr()
    assert code == 0
    assert captured.out.strip() == str(out / "model.ptpinn")
    # warnings still show (the end-of-training check may say a 1-epoch network is worse than its
    # input), nothing else does
    assert all("WORSE than" in line for line in captured.err.splitlines()), captured.err
    for noise in ("GPU available", "litlogger", "training on", "Epoch", "Sanity", "Params"):
        assert noise not in captured.out + caplog.text, noise
    assert (out / AUDIT_NAME).exists()


def test_cli_config_file_run_and_reuse_of_the_audit(tmp_path, tiny_scan_file):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model:\n  n_filters_scale: 1\ntraining:\n  max_epochs: 1\n  batch_size: 4\n"
        "data:\n  n_groups: 8\nexecution:\n  logger: none\n  scheduler: Exponential\n"
        "  quiet: true\n"
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--train-data",
                str(tiny_scan_file),
                "--output-dir",
                str(out),
                "--seed",
                "4",
            ]
        )
        == 0
    )
    audit = read_audit(out / AUDIT_NAME)
    assert audit["execution"]["scheduler"] == "Exponential" and audit["execution"]["seed"] == 4
    assert audit["sources"]["execution.scheduler"] == "config file"
    assert audit["sources"]["execution.seed"] == "CLI"
    again = build_run_config(config_file=out / AUDIT_NAME)
    assert again.execution.seed == 4 and again.execution.scheduler == "Exponential"


# --- the chain train -> save -> load -> infer with non-default knobs ------------------------------
def test_train_save_load_infer_with_non_default_knobs(tmp_path, tiny_scan):
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.reconstruction.network import reconstruct

    out = tmp_path / "run"
    rc = tiny(
        max_epochs=2,
        batch_size=2,
        n_groups=10,
        val_fraction=0.2,
        accumulate_grad_batches=2,
        optimizer="adamw",
        weight_decay=1e-3,
        scheduler="Exponential",
        lr_gamma=0.7,
        gradient_clip_val=1.0,
        inference_batch_size=5,
        seed=3,
        checkpoint_save_top_k=2,
        logger="csv",
    )
    result = fit([tiny_scan], run_config=rc, output_dir=out)
    bundle = load_bundle(out)
    assert bundle.execution["accumulate_grad_batches"] == 2
    assert bundle.execution["inference_batch_size"] == 5
    assert bundle.execution["refine"]["refine_batch_size"] == 64  # the run's refine settings
    assert bundle.model_config == result.bundle.model_config
    batch = bundle.execution["inference_batch_size"]
    loaded = reconstruct(bundle, tiny_scan, batch_size=batch)
    in_memory = reconstruct(result.bundle, tiny_scan, batch_size=batch)
    assert loaded.object.dtype == np.complex64 and np.isfinite(loaded.object).all()
    np.testing.assert_array_equal(loaded.object, in_memory.object)
    other_batch = reconstruct(bundle, tiny_scan, batch_size=16)
    np.testing.assert_allclose(other_batch.object, loaded.object, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "flags", [("--train-product", "--train-diffraction"), ("--product", "--diffraction")]
)
def test_cli_trains_on_a_ptychodus_product_pair(tmp_path, tiny_scan, tiny_scan_file, flags):
    from ptychopinn.data.ptychodus_h5 import (
        write_diffraction_for_scan,
        write_product_for_scan,
    )

    product = write_product_for_scan(tmp_path / "product.h5", tiny_scan)
    diffraction = write_diffraction_for_scan(tmp_path / "diffraction.h5", tiny_scan)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                flags[0],
                str(product),
                flags[1],
                str(diffraction),
                "--test-data",
                str(tiny_scan_file),
                "--output-dir",
                str(out),
                "--quiet",
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
                "--disable-checkpointing",
            ]
        )
        == 0
    )
    audit = read_audit(out / AUDIT_NAME)
    assert audit["runtime"]["train_groups"] == 8 and audit["runtime"]["val_groups"] == 49
    assert audit["runtime"]["monitor"] == "poisson_val_loss"
