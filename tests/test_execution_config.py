"""ExecutionConfig validation, the config factory (precedence, sources, config file, audit) and
the CLI flags: no training here (see test_execution_runs.py for real runs)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import fields, replace

import pytest
import torch

from ptychopinn.cli.execution_args import run_config_from_args
from ptychopinn.cli.main import build_parser, main
from ptychopinn.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.config_factory import (
    SOURCE_CLI,
    SOURCE_DEFAULT,
    SOURCE_FILE,
    SOURCE_PYTHON,
    all_keys,
    audit_text,
    build_run_config,
    check_run,
    flag_name,
    load_config_file,
    read_audit,
    run_config_from_objects,
)
from ptychopinn.training.optim import build_scheduler, configure_optimization
from ptychopinn.training.trainer import (
    build_trainer,
    checkpoint_filename,
    resolve_accelerator,
    resolve_monitor,
    resolve_resume,
)

BASE = ["train", "--train-data", "missing.npz", "--output-dir", "unused-out"]


def parse(*argv):
    return build_parser().parse_args(BASE + list(argv))


def cli_config(*argv):
    return run_config_from_args(parse(*argv))


def run_cli(argv, capfd):
    """(exit code, stderr lines) of an in-process CLI call that fails before training."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


# --- ExecutionConfig validation -----------------------------------------------------------------
INVALID = [
    ("accelerator", "tpu"),
    ("accelerator", "hpu"),
    ("devices", 0),
    ("devices", -1),
    ("devices", "two"),
    ("devices", 1.5),
    ("strategy", "deepspeed"),
    ("num_nodes", 0),
    ("precision", "16"),
    ("precision", "8-true"),
    ("deterministic", "yes"),
    ("detect_anomaly", 1),
    ("seed", -1),
    ("seed", 2**32),
    ("num_workers", -1),
    ("pin_memory", 1),
    ("persistent_workers", True),
    ("prefetch_factor", 2),
    ("prefetch_factor", 0),
    ("learning_rate", 0.0),
    ("learning_rate", -1e-3),
    ("learning_rate", math.nan),
    ("learning_rate", math.inf),
    ("optimizer", "rmsprop"),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("weight_decay", -1.0),
    ("scheduler", "Cosine"),
    ("lr_gamma", 0.0),
    ("lr_gamma", 1.5),
    ("lr_milestones", (0,)),
    ("lr_milestones", (5, 3)),
    ("lr_milestones", (2, 2)),
    ("plateau_factor", 0.0),
    ("plateau_factor", 1.0),
    ("plateau_patience", -1),
    ("min_lr", -1.0),
    ("warmup_epochs", -1),
    ("accumulate_grad_batches", 0),
    ("gradient_clip_val", 0.0),
    ("gradient_clip_val", -1.0),
    ("gradient_clip_algorithm", "l2"),
    ("enable_checkpointing", "no"),
    ("checkpoint_save_top_k", -2),
    ("checkpoint_monitor", ""),
    ("checkpoint_mode", "avg"),
    ("early_stopping", None),
    ("early_stop_patience", 0),
    ("resume_from", ""),
    ("logger", "wandb"),
    ("mlflow_tracking_uri", ""),
    ("experiment_name", ""),
    ("quiet", "x"),
]


@pytest.mark.parametrize("name,value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_value_rejected(name, value):
    with pytest.raises(ValueError) as info:
        ExecutionConfig(**{name: value})
    message = str(info.value)
    assert message.startswith(f"{name}: invalid value"), message
    assert repr(value) in message or str(value) in message
    assert "expected" in message


def test_every_field_has_an_invalid_case():
    untested = {f.name for f in fields(ExecutionConfig)} - {n for n, _ in INVALID}
    assert untested == set(), f"add invalid values for {untested}"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(scheduler="MultiStage"), "lr_milestones"),
        (dict(scheduler="Adaptive", min_lr=1e-3), "min_lr"),
        (dict(scheduler="WarmupCosine", learning_rate=1e-4, min_lr=2e-4), "min_lr"),
        (dict(num_workers=0, prefetch_factor=4), "prefetch_factor"),
    ],
)
def test_cross_field_rules(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: invalid value"):
        ExecutionConfig(**kwargs)


def test_tpu_message_is_explicit():
    with pytest.raises(ValueError, match="TPUs are not supported"):
        ExecutionConfig(accelerator="tpu")


def test_valid_values_accepted_and_normalised():
    e = ExecutionConfig(
        devices="2",
        scheduler="ReduceLROnPlateau",
        lr_milestones=[2, 5],
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=4,
        checkpoint_save_top_k=-1,
        gradient_clip_val=1.0,
    )
    assert e.devices == 2 and e.scheduler == "Adaptive" and e.lr_milestones == (2, 5)
    assert ExecutionConfig(checkpoint_save_top_k=0).checkpoint_save_top_k == 0
    assert ExecutionConfig(scheduler="MultiStage", lr_milestones=(3,)).lr_milestones == (3,)


def test_defaults():
    e = ExecutionConfig()
    assert (
        e.accelerator,
        e.devices,
        e.precision,
        e.scheduler,
        e.accumulate_grad_batches,
        e.checkpoint_monitor,
        e.logger,
    ) == ("auto", "auto", "32-true", "Default", 1, "val_loss", "csv")


# --- CLI: every flag round-trips ---------------------------------------------------------------
ROUNDTRIP = {
    "accelerator": (["--accelerator", "cpu"], "cpu"),
    "devices": (["--devices", "2"], 2),
    "strategy": (["--strategy", "ddp_spawn"], "ddp_spawn"),
    "num_nodes": (["--num-nodes", "2"], 2),
    "precision": (["--precision", "bf16-mixed"], "bf16-mixed"),
    "deterministic": (["--deterministic"], True),
    "detect_anomaly": (["--detect-anomaly"], True),
    "seed": (["--seed", "7"], 7),
    "num_workers": (["--num-workers", "2"], 2),
    "pin_memory": (["--pin-memory"], True),
    "persistent_workers": (["--num-workers", "1", "--persistent-workers"], True),
    "prefetch_factor": (["--num-workers", "1", "--prefetch-factor", "4"], 4),
    "learning_rate": (["--learning-rate", "5e-4"], 5e-4),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "momentum": (["--momentum", "0"], 0.0),
    "weight_decay": (["--weight-decay", "0.01"], 0.01),
    "scheduler": (["--scheduler", "Exponential"], "Exponential"),
    "lr_gamma": (["--lr-gamma", "0.5"], 0.5),
    "lr_milestones": (["--lr-milestones", "3", "6"], (3, 6)),
    "plateau_factor": (["--plateau-factor", "0.25"], 0.25),
    "plateau_patience": (["--plateau-patience", "4"], 4),
    "min_lr": (["--min-lr", "1e-6"], 1e-6),
    "warmup_epochs": (["--warmup-epochs", "3"], 3),
    "accumulate_grad_batches": (["--accumulate-grad-batches", "4"], 4),
    "gradient_clip_val": (["--gradient-clip-val", "0.5"], 0.5),
    "gradient_clip_algorithm": (["--gradient-clip-algorithm", "value"], "value"),
    "enable_checkpointing": (["--disable-checkpointing"], False),
    "checkpoint_save_top_k": (["--checkpoint-save-top-k", "-1"], -1),
    "checkpoint_monitor": (["--checkpoint-monitor", "val_patch_nrmse"], "val_patch_nrmse"),
    "checkpoint_mode": (["--checkpoint-mode", "max"], "max"),
    "early_stopping": (["--no-early-stopping"], False),
    "early_stop_patience": (["--early-stop-patience", "9"], 9),
    "resume_from": (["--resume-from", "last"], "last"),
    "logger": (["--logger", "tensorboard"], "tensorboard"),
    "mlflow_tracking_uri": (["--mlflow-tracking-uri", "file:///tmp/x"], "file:///tmp/x"),
    "experiment_name": (["--experiment-name", "beamtime"], "beamtime"),
    "quiet": (["--quiet"], True),
}


def test_every_execution_field_has_a_flag_and_a_roundtrip_case():
    names = {f.name for f in fields(ExecutionConfig)}
    assert set(ROUNDTRIP) == names
    options = build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions
    for name in names:
        flag = flag_name(f"execution.{name}")
        if name == "enable_checkpointing":
            assert {"--enable-checkpointing", "--disable-checkpointing"} <= set(options)
        else:
            assert flag in options, flag


@pytest.mark.parametrize("name", sorted(ROUNDTRIP))
def test_flag_roundtrip(name):
    argv, expected = ROUNDTRIP[name]
    rc = cli_config(*argv)
    assert getattr(rc.execution, name) == expected
    assert rc.sources[f"execution.{name}"] == SOURCE_CLI
    others = {k for k, v in rc.sources.items() if v == SOURCE_CLI}
    assert all(k.startswith("execution.") for k in others)


def test_scheduler_flag_roundtrip():
    for name in ["Default", "Exponential", "Adaptive", "WarmupCosine"]:
        assert cli_config("--scheduler", name).execution.scheduler == name
    assert cli_config("--scheduler", "ReduceLROnPlateau").execution.scheduler == "Adaptive"
    rc = cli_config("--scheduler", "MultiStage", "--lr-milestones", "2,4")
    assert (rc.execution.scheduler, rc.execution.lr_milestones) == ("MultiStage", (2, 4))


def test_accumulate_grad_batches_roundtrip():
    assert cli_config().execution.accumulate_grad_batches == 1
    rc = cli_config("--accumulate-grad-batches", "8")
    assert rc.execution.accumulate_grad_batches == 8
    assert rc.sources["execution.accumulate_grad_batches"] == SOURCE_CLI


def test_model_data_training_flags_roundtrip():
    rc = cli_config(
        "--gridsize",
        "2",
        "--neighbors",
        "6",
        "--n-groups",
        "40",
        "--batch-size",
        "4",
        "--max-epochs",
        "3",
        "--loss",
        "mae",
        "--nphotons",
        "1e6",
        "--n-filters-scale",
        "1",
        "--val-fraction",
        "0",
        "--diffraction-units",
        "counts",
    )
    assert (rc.model.gridsize, rc.model.loss, rc.model.n_filters_scale) == (2, "mae", 1)
    assert (
        rc.data.neighbors,
        rc.data.n_groups,
        rc.data.val_fraction,
        rc.data.diffraction_units,
    ) == (6, 40, 0.0, "counts")
    assert (rc.training.batch_size, rc.training.max_epochs, rc.training.nphotons) == (4, 3, 1e6)


def test_defaults_without_flags_are_the_dataclass_defaults():
    rc = cli_config()
    assert rc.execution == ExecutionConfig() and rc.training == TrainingConfig()
    assert set(rc.sources.values()) == {SOURCE_DEFAULT}


def test_ptychopinn_underscore_aliases():
    args = build_parser().parse_args(
        [
            "train",
            "--train_data_file",
            "a.npz",
            "b.npz",
            "--test_data_file",
            "t.npz",
            "--output_dir",
            "o",
            "--max_epochs",
            "3",
            "--n_images",
            "12",
            "--batch_size",
            "4",
            "--gridsize",
            "2",
        ]
    )
    assert [str(p) for p in args.train_data] == ["a.npz", "b.npz"]
    assert str(args.test_data) == "t.npz" and str(args.output_dir) == "o"
    rc = run_config_from_args(args)
    assert (
        rc.training.max_epochs,
        rc.data.n_groups,
        rc.training.batch_size,
        rc.model.gridsize,
    ) == (3, 12, 4, 2)


def test_deprecated_device_warns_and_maps_to_accelerator():
    with pytest.warns(DeprecationWarning, match="--device is deprecated; use --accelerator"):
        rc = cli_config("--device", "cpu")
    assert rc.execution.accelerator == "cpu" and rc.sources["execution.accelerator"] == SOURCE_CLI


def test_deprecated_disable_mlflow_warns_and_maps_to_logger_none_quiet():
    with pytest.warns(DeprecationWarning, match="use --logger none --quiet"):
        rc = cli_config("--disable_mlflow")
    assert rc.execution.logger == "none" and rc.execution.quiet is True


CLI_INVALID = [
    (["--accelerator", "tpu"], "--accelerator: invalid value 'tpu'"),
    (["--devices", "two"], "--devices: invalid value 'two'"),
    (["--devices", "0"], "--devices: invalid value 0"),
    (["--strategy", "horovod"], "--strategy: invalid value 'horovod'"),
    (["--num-nodes", "0"], "--num-nodes: invalid value 0"),
    (["--precision", "16"], "--precision: invalid value '16'"),
    (["--seed", "-3"], "--seed: invalid value -3"),
    (["--num-workers", "-1"], "--num-workers: invalid value -1"),
    (["--persistent-workers"], "--persistent-workers: invalid value True"),
    (["--prefetch-factor", "2"], "--prefetch-factor: invalid value 2"),
    (["--learning-rate", "0"], "--learning-rate: invalid value 0.0"),
    (
        ["--learning-rate", "abc"],
        "argument --learning-rate: invalid value 'abc'; expected a number",
    ),
    (["--optimizer", "lbfgs"], "--optimizer: invalid value 'lbfgs'"),
    (["--momentum", "1"], "--momentum: invalid value 1.0"),
    (["--weight-decay", "-1"], "--weight-decay: invalid value -1.0"),
    (["--scheduler", "Cosine"], "--scheduler: invalid value 'Cosine'"),
    (["--lr-gamma", "2"], "--lr-gamma: invalid value 2.0"),
    (["--lr-milestones", "4", "2"], "--lr-milestones: invalid value (4, 2)"),
    (["--lr-milestones", "x"], "--lr-milestones: invalid value 'x'"),
    (
        ["--scheduler", "MultiStage"],
        "execution.lr_milestones: invalid value (); expected at least one",
    ),
    (["--plateau-factor", "1.5"], "--plateau-factor: invalid value 1.5"),
    (["--plateau-patience", "-1"], "--plateau-patience: invalid value -1"),
    (["--min-lr", "-1"], "--min-lr: invalid value -1.0"),
    (["--warmup-epochs", "-2"], "--warmup-epochs: invalid value -2"),
    (["--accumulate-grad-batches", "0"], "--accumulate-grad-batches: invalid value 0"),
    (["--gradient-clip-val", "0"], "--gradient-clip-val: invalid value 0.0"),
    (["--gradient-clip-algorithm", "l1"], "--gradient-clip-algorithm: invalid value 'l1'"),
    (["--checkpoint-save-top-k", "-5"], "--checkpoint-save-top-k: invalid value -5"),
    (["--checkpoint-mode", "avg"], "--checkpoint-mode: invalid value 'avg'"),
    (["--early-stop-patience", "0"], "--early-stop-patience: invalid value 0"),
    (["--logger", "wandb"], "--logger: invalid value 'wandb'"),
    (["--experiment-name", ""], "--experiment-name: invalid value ''"),
    (["--inference-batch-size", "0"], "--inference-batch-size: invalid value 0"),
    (["--batch-size", "0"], "--batch-size: invalid value 0"),
    (["--max-epochs", "0"], "--max-epochs: invalid value 0"),
    (["--gridsize", "0"], "--gridsize: invalid value 0"),
    (["--val-fraction", "1"], "--val-fraction: invalid value 1.0"),
    (["--loss", "l2"], "--loss: invalid value 'l2'"),
    (["--device", "tpu"], "--accelerator: invalid value 'tpu'"),
    (
        ["--scheduler", "WarmupCosine", "--warmup-epochs", "30"],
        "--warmup-epochs: invalid value 30; expected fewer than max_epochs (30)",
    ),
    (["--resume-from", "last"], "resume_from: 'last': no checkpoint at"),
]


@pytest.mark.parametrize("argv,fragment", CLI_INVALID, ids=[" ".join(a) for a, _ in CLI_INVALID])
def test_cli_invalid_value_exits_2_with_one_line(argv, fragment, capfd, tmp_path):
    out = tmp_path / "out"
    expect_warning = (
        pytest.warns(DeprecationWarning) if "--device" in argv else contextlib.nullcontext()
    )
    with expect_warning:
        code, lines = run_cli(
            ["train", "--train-data", str(tmp_path / "missing.npz"), "--output-dir", str(out)]
            + argv,
            capfd,
        )
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("ptychopinn train: error: ")
    assert fragment in lines[0]
    assert "expected" in lines[0] or "no checkpoint" in lines[0]


def test_cli_names_the_flag_and_allowed_values(capfd, tmp_path):
    code, lines = run_cli(
        BASE[:2]
        + [str(tmp_path / "x.npz"), "--output-dir", str(tmp_path / "o"), "--optimizer", "lbfgs"],
        capfd,
    )
    assert code == 2
    assert lines == [
        "ptychopinn train: error: --optimizer: invalid value 'lbfgs'; expected one of "
        "['adam', 'adamw', 'sgd']"
    ]


# --- factory: precedence, sources, config files ------------------------------------------------
def write(path, text):
    path.write_text(text)
    return path


def test_precedence_cli_over_file_over_default(tmp_path):
    cfg = write(
        tmp_path / "run.yaml",
        "execution:\n  scheduler: Exponential\n  learning_rate: 5.0e-4\n"
        "training:\n  max_epochs: 7\n",
    )
    rc = cli_config("--config", str(cfg), "--learning-rate", "1e-4")
    assert (
        rc.execution.learning_rate == 1e-4 and rc.sources["execution.learning_rate"] == SOURCE_CLI
    )
    assert (
        rc.execution.scheduler == "Exponential" and rc.sources["execution.scheduler"] == SOURCE_FILE
    )
    assert rc.training.max_epochs == 7 and rc.sources["training.max_epochs"] == SOURCE_FILE
    assert rc.execution.optimizer == "adam" and rc.sources["execution.optimizer"] == SOURCE_DEFAULT
    assert rc.config_file == cfg


def test_scheduler_override_applied(tmp_path):
    """A CLI/python override beats the config file all the way into the optimizer."""
    cfg = write(tmp_path / "run.yaml", "scheduler: Exponential\nlr_gamma: 0.5\n")
    rc = build_run_config({"scheduler": "MultiStage", "lr_milestones": [2]}, config_file=cfg)
    assert (
        rc.execution.scheduler == "MultiStage"
        and rc.sources["execution.scheduler"] == SOURCE_PYTHON
    )
    assert rc.execution.lr_gamma == 0.5 and rc.sources["execution.lr_gamma"] == SOURCE_FILE
    out = configure_optimization([torch.nn.Parameter(torch.zeros(2))], rc.execution, 10, "m")
    scheduler = out["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
    rc_cli = cli_config("--config", str(cfg), "--scheduler", "ReduceLROnPlateau")
    out = configure_optimization(
        [torch.nn.Parameter(torch.zeros(2))], rc_cli.execution, 10, "poisson_val_loss"
    )
    assert isinstance(out["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert out["lr_scheduler"]["monitor"] == "poisson_val_loss"


def test_accum_steps_override_applied(tmp_path):
    cfg = write(tmp_path / "run.yaml", "execution:\n  accumulate_grad_batches: 2\n")
    assert build_run_config(config_file=cfg).execution.accumulate_grad_batches == 2
    rc = cli_config("--config", str(cfg), "--accumulate-grad-batches", "4")
    assert rc.execution.accumulate_grad_batches == 4
    trainer = build_trainer(
        replace(rc.execution, logger="none", enable_checkpointing=False),
        "poisson_val_loss",
        tmp_path,
        1,
    )
    assert trainer.accumulate_grad_batches == 4


def test_trainer_receives_accumulation(tmp_path):
    e = ExecutionConfig(
        accumulate_grad_batches=3,
        gradient_clip_val=0.5,
        gradient_clip_algorithm="value",
        logger="none",
        accelerator="cpu",
        precision="bf16-mixed",
        deterministic=True,
        quiet=True,
    )
    try:
        trainer = build_trainer(e, "poisson_val_loss", tmp_path, 4)
        assert torch.are_deterministic_algorithms_enabled()
    finally:  # Lightning sets the process-wide flag when the Trainer is built (fit restores it)
        torch.use_deterministic_algorithms(False)
    assert trainer.accumulate_grad_batches == 3
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert trainer.max_epochs == 4 and trainer.precision == "bf16-mixed"
    assert trainer.logger is None and not trainer.progress_bar_callback


def test_config_file_flat_sections_hyphens_and_yaml_floats(tmp_path):
    cfg = write(
        tmp_path / "run.yaml",
        "learning-rate: 5e-4\nmodel:\n  gridsize: 2\n"
        "execution.lr_milestones: [3, 5]\nscheduler: MultiStage\n"
        "devices: 1\n",
    )
    values = load_config_file(cfg)
    assert values == {
        "execution.learning_rate": 5e-4,
        "model.gridsize": 2,
        "execution.lr_milestones": (3, 5),
        "execution.scheduler": "MultiStage",
        "execution.devices": 1,
    }


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("learning_rat: 1e-3\n", "unknown key 'learning_rat'; expected a field"),
        ("execution:\n  sheduler: Adaptive\n", "unknown key 'execution.sheduler'"),
        (
            "learning_rate: fast\n",
            "execution.learning_rate: invalid value 'fast'; expected a number",
        ),
        (
            "execution:\n  plateau_factor: 2\n",
            "execution.plateau_factor: invalid value 2.0; expected",
        ),
        ("- a\n- b\n", "expected a mapping"),
        ("execution: 3\n", "section 'execution' must be a mapping"),
        ("a: [\n", "not a readable YAML config file"),
        ("seed: 1\nexecution:\n  seed: 2\n", "given twice"),
    ],
)
def test_config_file_errors_name_file_and_key(tmp_path, text, fragment):
    cfg = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError) as info:
        build_run_config(config_file=cfg)
    assert str(cfg) in str(info.value) and fragment in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_unknown_key_suggests_the_right_one(tmp_path):
    cfg = write(tmp_path / "bad.yaml", "learning_rat: 1e-3\n")
    with pytest.raises(ValueError, match=r"did you mean \['learning_rate'\]"):
        build_run_config(config_file=cfg)


def test_python_overrides_accept_sections_and_flat_keys():
    rc = build_run_config(
        {"execution": {"optimizer": "sgd"}, "momentum": 0.0, "training.batch_size": 4}
    )
    assert (rc.execution.optimizer, rc.execution.momentum, rc.training.batch_size) == (
        "sgd",
        0.0,
        4,
    )
    assert rc.sources["execution.momentum"] == SOURCE_PYTHON
    with pytest.raises(ValueError, match="unknown key 'lr'"):
        build_run_config({"lr": 1e-3})


def test_run_config_from_objects_records_python_sources():
    rc = run_config_from_objects(
        ModelConfig(gridsize=3),
        None,
        TrainingConfig(max_epochs=3),
        ExecutionConfig(scheduler="Exponential"),
    )
    assert rc.model.gridsize == 3 and rc.sources["model.gridsize"] == SOURCE_PYTHON
    assert rc.sources["training.max_epochs"] == SOURCE_PYTHON
    assert rc.sources["execution.seed"] == SOURCE_DEFAULT
    assert {k for k, _, _ in rc.non_defaults()} == {
        "model.gridsize",
        "training.max_epochs",
        "execution.scheduler",
    }


def test_check_run_cross_section_rules():
    rc = build_run_config({"scheduler": "WarmupCosine", "warmup_epochs": 5, "max_epochs": 5})
    with pytest.raises(
        ValueError, match="execution.warmup_epochs: invalid value 5; expected fewer"
    ):
        check_run(rc)
    rc = build_run_config(
        {
            "scheduler": "MultiStage",
            "lr_milestones": [3, 40],
            "max_epochs": 10,
            "plateau_patience": 1,
        }
    )
    warnings = check_run(rc)
    assert any("[40]" in w for w in warnings)
    assert any("plateau_patience is set but scheduler MultiStage" in w for w in warnings)


def test_audit_lists_every_value_with_its_source_and_reloads(tmp_path):
    cfg = write(tmp_path / "run.yaml", "execution:\n  scheduler: Adaptive\n")
    rc = cli_config("--config", str(cfg), "--seed", "5")
    text = audit_text(rc, {"monitor": "poisson_val_loss", "effective_batch_size": 16})
    path = write(tmp_path / "config.resolved.yaml", text)
    audit = read_audit(path)
    assert audit["execution"]["scheduler"] == "Adaptive" and audit["execution"]["seed"] == 5
    assert audit["sources"]["execution.scheduler"] == SOURCE_FILE
    assert audit["sources"]["execution.seed"] == SOURCE_CLI
    assert audit["sources"]["execution.optimizer"] == SOURCE_DEFAULT
    assert set(audit["sources"]) == set(all_keys())
    assert audit["runtime"] == {"monitor": "poisson_val_loss", "effective_batch_size": 16}
    assert "  seed: 5" in text and "# CLI" in text.split("  seed: 5")[1].splitlines()[0]
    again = build_run_config(config_file=path)
    assert (again.model, again.data, again.training, again.execution) == (
        rc.model,
        rc.data,
        rc.training,
        rc.execution,
    )


# --- trainer pieces ----------------------------------------------------------------------------
def test_monitor_uses_val_loss_name():
    names = ["poisson_train_loss", "poisson_val_loss", "val_patch_nrmse", "lr"]
    assert (
        resolve_monitor("val_loss", "poisson_train_loss", "poisson_val_loss", names, True)
        == "poisson_val_loss"
    )
    assert (
        resolve_monitor("val_loss", "mae_train_loss", "mae_val_loss", names, True) == "mae_val_loss"
    )
    assert (
        resolve_monitor("val_patch_nrmse", "poisson_train_loss", "poisson_val_loss", names, True)
        == "val_patch_nrmse"
    )


def test_monitor_falls_back_to_training_metric_without_validation():
    names = ["poisson_train_loss", "poisson_val_loss", "val_patch_nrmse", "lr"]
    assert (
        resolve_monitor("val_loss", "poisson_train_loss", "poisson_val_loss", names, False)
        == "poisson_train_loss"
    )
    with pytest.raises(ValueError, match=r"no validation data.*\['poisson_train_loss', 'lr'\]"):
        resolve_monitor("poisson_val_loss", "poisson_train_loss", "poisson_val_loss", names, False)


def test_unknown_monitor_lists_valid_names():
    names = ["poisson_train_loss", "poisson_val_loss", "lr"]
    with pytest.raises(ValueError) as info:
        resolve_monitor("train_loss", "poisson_train_loss", "poisson_val_loss", names, True)
    assert "'train_loss'" in str(info.value) and str(names) in str(info.value)


def test_checkpoint_filename_names_metric_once():
    name = checkpoint_filename("poisson_val_loss")
    assert name.format(epoch=2, poisson_val_loss=0.12341) == "epoch=02-poisson_val_loss=0.1234"


def test_accelerator_resolution():
    assert resolve_accelerator("cpu") == "cpu"
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else (
            "mps"
            if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
            else "cpu"
        )
    )
    assert resolve_accelerator("auto") == expected
    if torch.cuda.is_available():
        assert resolve_accelerator("cuda") == "cuda"
    else:
        with pytest.raises(ValueError, match="'cuda' requested but it is not available"):
            resolve_accelerator("cuda")


def test_resume_resolution(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(ValueError, match="no checkpoint at .*last.ckpt"):
        resolve_resume("last", tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert resolve_resume("last", tmp_path) == ckpt
    with pytest.raises(ValueError, match="checkpoint file not found"):
        resolve_resume(str(tmp_path / "nope.ckpt"), tmp_path)


# --- schedulers (the optimizer level; real training runs check the logged lr) ------------------
def lrs(execution, epochs, metric=None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=execution.learning_rate)
    scheduler = build_scheduler(execution.scheduler, opt, execution, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None:
            scheduler.step(metric) if metric is not None else scheduler.step()
    return out


def test_adaptive_reduces_on_a_negative_plateau_down_to_min_lr():
    """torch's relative threshold treats an unchanged negative loss as an improvement."""
    e = ExecutionConfig(
        scheduler="Adaptive", learning_rate=1.0, plateau_factor=0.5, plateau_patience=1, min_lr=0.2
    )
    assert lrs(e, 8, metric=-695.0) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.2])
    assert lrs(e, 4, metric=695.0) == pytest.approx([1, 1, 1, 0.5])


def test_warmup_cosine_shape():
    e = ExecutionConfig(scheduler="WarmupCosine", learning_rate=1.0, warmup_epochs=2, min_lr=0.1)
    got = lrs(e, 6)
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert got[3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a > b for a, b in zip(got[2:], got[3:], strict=False))


def test_batches_per_epoch_matches_the_training_loader(tiny_scan):
    from ptychopinn.training.data import PtychoDataModule
    from ptychopinn.training.trainer import batches_per_epoch

    for n_groups, batch in [(8, 4), (6, 4), (10, 2), (3, 4), (9, 2)]:
        dm = PtychoDataModule([tiny_scan], n_groups=n_groups, val_fraction=0.0, batch_size=batch)
        assert batches_per_epoch(n_groups, batch, 1) == len(dm.train_dataloader()), (
            n_groups,
            batch,
        )


# --- RefineConfig and InferConfig: the reconstruction commands' sections ------------------------
REFINE_INVALID = [
    ("refine_epochs", -1),
    ("refine_batch_size", 0),
    ("refine_optimizer", "sgd"),
    ("refine_lr", 0.0),
    ("refine_schedule", "cosine"),
    ("refine_patience", 0),
    ("refine_prior_sigma", -1.0),
    ("refine_time_limit_s", 0),
    ("stop_when_converged", "yes"),
    ("refine_probe", "maybe"),
    ("probe_start_epoch", -1),
    ("probe_optimizer", "lbfgs"),
    ("probe_lr", -1.0),
    ("fix_gauge", 1),
    ("correct_positions", None),
    ("position_start_epoch", -2),
    ("position_step_px", 0.0),
    ("position_affine_epochs", -1),
    ("position_search_px", -3.0),
    ("position_search_rounds", 0),
    ("position_search_mode", "spiral"),
    ("object_start_epoch", -1),
    ("inference_batch_size", 0),
    ("phase_sync_iterations", -1),
    ("inference_precision", "64-true"),
]


@pytest.mark.parametrize(
    "name,value", REFINE_INVALID, ids=[f"{n}={v!r}" for n, v in REFINE_INVALID]
)
def test_refine_and_infer_values_are_validated(name, value):
    from ptychopinn.config import InferConfig, RefineConfig

    cls = InferConfig if name in {f.name for f in fields(InferConfig)} else RefineConfig
    with pytest.raises(ValueError, match=rf"^{name}: invalid value"):
        cls(**{name: value})


def test_every_refine_and_infer_field_has_an_invalid_case():
    from ptychopinn.config import InferConfig, RefineConfig

    names = {f.name for f in fields(RefineConfig)} | {f.name for f in fields(InferConfig)}
    assert names == {n for n, _ in REFINE_INVALID}


def test_refine_kwargs_are_the_refine_functions_arguments():
    import inspect

    from ptychopinn.config import RefineConfig
    from ptychopinn.reconstruction.gradient import refine

    params = inspect.signature(refine).parameters
    kwargs = RefineConfig().refine_kwargs()
    for name, value in kwargs.items():
        assert name in params, name
        assert params[name].default == value, f"{name}: config {value!r} vs refine default"
    # every refine() knob is in the config (the rest is the scan, the start and the run)
    outside = {"scan", "initial_object", "offset_px", "seed", "progress", "quiet", "device", "stop"}
    assert set(params) - set(kwargs) - outside == {"epochs", "refine_probe"}


def _command(name):
    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", ["infer", "reconstruct"])
def test_reconstruction_commands_take_every_refine_and_infer_key_with_config_and_audit(
    command, tmp_path
):
    """Every RefineConfig/InferConfig field is a flag of ``infer`` and ``reconstruct``; a flag
    beats ``--config``, which beats the command's default."""
    from ptychopinn.config import InferConfig, RefineConfig

    options = _command(command)._option_string_actions
    for cls, section in ((RefineConfig, "refine"), (InferConfig, "infer")):
        for f in fields(cls):
            assert flag_name(f"{section}.{f.name}") in options, (command, f.name)
    assert "--config" in options and "--scheduler" not in options  # training's knobs stay out
    cfg = tmp_path / "run.yaml"
    cfg.write_text("refine:\n  refine_batch_size: 32\n  position_search_px: 4\n")
    base = [command, "--data", "x.npz", "--output-dir", str(tmp_path)]
    if command == "infer":
        base += ["--model", "m.ptpinn"]
    args = build_parser().parse_args(
        [*base, "--config", str(cfg), "--position-search-px", "6", "--phase-sync-iterations", "3"]
    )
    if command == "infer":
        rc = run_config_from_args(args)
    else:
        from ptychopinn.cli.reconstruct import run_config

        rc = run_config(args)
        assert rc.refine.refine_epochs == 300  # reconstruct's own default from a flat start
    assert rc.refine.refine_batch_size == 32 and rc.sources["refine.refine_batch_size"] == (
        "config file"
    )
    assert rc.refine.position_search_px == 6.0 and rc.sources["refine.position_search_px"] == "CLI"
    assert rc.infer.phase_sync_iterations == 3


def test_the_moved_inference_batch_size_key_still_reads():
    from ptychopinn.config_factory import resolve_key

    assert resolve_key("execution.inference_batch_size") == "infer.inference_batch_size"
    assert resolve_key("inference_batch_size") == "infer.inference_batch_size"


def test_every_config_field_has_its_one_doc_comment_and_the_cli_shows_it():
    """A field is documented once, by the ``#:`` comment above it in config.py; the flag's help
    is that text."""
    from ptychopinn.config import field_docs
    from ptychopinn.config_factory import SECTIONS

    docs = field_docs()
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert len(docs.get(f"{section}.{f.name}", "")) > 10, f"{section}.{f.name}: no #: doc"
    helps = {a.dest: a.help for a in _command("infer")._actions}
    assert helps["cfg:refine.position_search_px"].startswith(docs["refine.position_search_px"])
