"""From ExecutionConfig to a Lightning Trainer: accelerator and monitor resolution, callbacks,
loggers, resume checkpoints and quiet runs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ptychopinn.config import RESUME_LAST, ExecutionConfig
from ptychopinn.errors import PtychoPINNError, TrainingDivergedError
from ptychopinn.log import filter_expected_warnings, get_logger, quiet_levels
from ptychopinn.registry import Registry

log = get_logger("training")

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOG_DIR = "lightning_logs"
MLFLOW_DIR = "mlruns"


# --- devices ---------------------------------------------------------------------------------
def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_accelerators() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    return out


def resolve_accelerator(requested: str) -> str:
    """``auto`` -> ``cuda`` if a CUDA device exists, else ``mps`` if Apple's MPS exists, else
    ``cpu``; ``gpu`` -> ``cuda`` or ``mps``. A requested accelerator that does not exist is an
    error."""
    have = available_accelerators()
    if requested == "auto":
        return "cuda" if "cuda" in have else "mps" if "mps" in have else "cpu"
    if requested == "gpu":
        for name in ("cuda", "mps"):
            if name in have:
                return name
        raise PtychoPINNError(
            f"accelerator: 'gpu' requested but no GPU is available; available: {have}"
        )
    if requested not in have:
        raise PtychoPINNError(
            f"accelerator: {requested!r} requested but it is not available on this "
            f"machine; available: {have} (or 'auto')"
        )
    return requested


def resolve_devices(accelerator: str, devices: int | str) -> int:
    """The number of devices (processes per node) Lightning will use."""
    if devices != "auto":
        if accelerator == "cuda" and devices > torch.cuda.device_count():
            raise PtychoPINNError(
                f"devices: {devices} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are available"
            )
        return int(devices)
    if accelerator == "cuda":
        return torch.cuda.device_count()
    return 1


def launch_rank(devices_per_node: int) -> int:
    """This process's global rank as set by a launcher (0 when not launched by one).

    Lightning only fixes ranks when ``fit`` starts; files written before that (the audit) must
    come from rank 0 only.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env:
        node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
        return node * devices_per_node + int(env["LOCAL_RANK"])
    return 0


# --- monitor ---------------------------------------------------------------------------------
def resolve_monitor(
    requested: str,
    train_loss_name: str,
    val_loss_name: str,
    logged_names: list[str],
    has_validation: bool,
) -> str:
    """The metric that checkpointing, early stopping and plateau scheduling watch.

    ``val_loss`` means the model's validation metric (``val_loss_name``); without validation data
    it falls back to the training metric (logged at INFO). Any other name must be one of
    ``logged_names`` (validation metrics only when there is validation data), else an error
    listing the valid names.
    """
    if requested == "val_loss":
        if has_validation:
            return val_loss_name
        log.info(
            "no validation data: checkpointing, early stopping and plateau scheduling "
            "monitor the training metric %s instead of %s",
            train_loss_name,
            val_loss_name,
        )
        return train_loss_name
    available = [
        n for n in logged_names if has_validation or not n.startswith("val") and n != val_loss_name
    ]
    if requested not in available:
        where = "" if has_validation else " (no validation data in this run)"
        raise PtychoPINNError(
            f"checkpoint_monitor: invalid value {requested!r}; expected 'val_loss' or "
            f"a metric this model logs{where}: {available}"
        )
    return requested


# --- resume ----------------------------------------------------------------------------------
def resolve_resume(resume_from: str | None, output_dir: Path | None) -> Path | None:
    """``last`` -> ``OUTPUT_DIR/checkpoints/last.ckpt``; a path must exist."""
    if resume_from is None:
        return None
    if resume_from == RESUME_LAST:
        if output_dir is None:
            raise PtychoPINNError("resume_from: 'last' needs an output directory")
        path = output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not path.is_file():
            raise PtychoPINNError(
                f"resume_from: 'last': no checkpoint at {path} (was the run "
                "started with checkpointing enabled in this output directory?)"
            )
        return path
    path = Path(resume_from).expanduser()
    if not path.is_file():
        raise PtychoPINNError(f"resume_from: {resume_from}: checkpoint file not found")
    return path


# --- loggers ---------------------------------------------------------------------------------
def check_logger_available(kind: str) -> None:
    """A clear error naming the extra to install when a logger's package is missing."""
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(kind)
    if package is None:
        return
    try:
        __import__(package)
    except ImportError:
        raise PtychoPINNError(
            f"logger {kind!r} needs the {package} package: pip install 'ptychopinn[{kind}]'"
        ) from None


def default_mlflow_uri(output_dir: Path) -> str:
    """A local MLflow file store under the output directory (works with mlflow-skinny)."""
    return (output_dir / MLFLOW_DIR).resolve().as_uri()


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


#: name -> builder(execution, output_dir) -> a Lightning logger, or False for none.
LOGGERS = Registry("logger")


@LOGGERS.register("csv")
def _csv_logger(execution: ExecutionConfig, output_dir: Path):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(output_dir), name=LOG_DIR)


@LOGGERS.register("tensorboard")
def _tensorboard_logger(execution: ExecutionConfig, output_dir: Path):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(output_dir), name=LOG_DIR, default_hp_metric=False)


@LOGGERS.register("mlflow")
def _mlflow_logger(execution: ExecutionConfig, output_dir: Path):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = execution.mlflow_tracking_uri or default_mlflow_uri(output_dir)
    return MLFlowLogger(experiment_name=execution.experiment_name, tracking_uri=uri)


@LOGGERS.register("none")
def _no_logger(execution: ExecutionConfig, output_dir: Path):
    return False


def build_logger(execution: ExecutionConfig, output_dir: Path):
    """The Lightning logger of ``execution.logger`` (``False`` for ``none``).

    csv and tensorboard write under ``OUTPUT_DIR/lightning_logs/version_K``; mlflow writes to
    ``mlflow_tracking_uri`` (default: the file store ``OUTPUT_DIR/mlruns``).
    """
    check_logger_available(execution.logger)
    return LOGGERS[execution.logger](execution, output_dir)


@contextlib.contextmanager
def mlflow_environment(execution: ExecutionConfig, output_dir: Path | None):
    """``MLFLOW_ALLOW_FILE_STORE=true`` for the duration of a run that logs to an MLflow file
    store (MLflow >= 3.7 refuses its file store unless opted in; the file store is the one backend
    mlflow-skinny ships without a database driver). An explicit user setting wins; the
    environment is restored afterwards."""
    uri = execution.mlflow_tracking_uri or (default_mlflow_uri(output_dir) if output_dir else "")
    name = "MLFLOW_ALLOW_FILE_STORE"
    if execution.logger != "mlflow" or not _is_file_store(uri) or name in os.environ:
        yield
        return
    os.environ[name] = "true"
    try:
        yield
    finally:
        os.environ.pop(name, None)


# --- callbacks and trainer -------------------------------------------------------------------
def checkpoint_filename(monitor: str) -> str:
    """``epoch=02-poisson_val_loss=0.1234`` (metric name once, not doubled)."""
    return "epoch={epoch:02d}-" + monitor + "={" + monitor + ":.4f}"


class FiniteGuard(L.Callback):
    """Stops training with TrainingDivergedError when the loss of a step or the weights at the
    end of an epoch are not finite (before the epoch's checkpoint is written: checkpoints from
    before the fault stay valid, none after it is saved). All processes agree on the decision."""

    def __init__(self, checkpoint_dir: Path | None):
        self.checkpoint_dir = checkpoint_dir

    def _stop(self, trainer, what: str) -> None:
        where = (
            f"checkpoints from before the fault are in {self.checkpoint_dir}"
            if self.checkpoint_dir is not None and self.checkpoint_dir.exists()
            else "no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"training diverged: {what} at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}; no model bundle written ({where}); lower --learning-rate, "
            "set --gradient-clip-val, or rerun with --detect-anomaly to find the operation"
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(
                trainer,
                f"non-finite loss ({float(loss.detach()):g})"
                if bad
                else "non-finite loss on another process",
            )

    def on_train_epoch_end(self, trainer, pl_module):
        bad = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stop(
                trainer, f"non-finite weights ({', '.join(bad[:3]) or 'on another process'})"
            )


def build_callbacks(execution: ExecutionConfig, monitor: str, output_dir: Path | None) -> list:
    """FiniteGuard, ModelCheckpoint (top-k by ``monitor`` plus ``last.ckpt``; only with an output
    directory) and EarlyStopping, both on the same resolved ``monitor`` and mode."""
    checkpointing = execution.enable_checkpointing and output_dir is not None
    ckpt_dir = output_dir / CHECKPOINT_DIR if checkpointing else None
    callbacks: list = [FiniteGuard(ckpt_dir)]
    if checkpointing:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename=checkpoint_filename(monitor),
                auto_insert_metric_name=False,
                monitor=monitor,
                mode=execution.checkpoint_mode,
                save_top_k=execution.checkpoint_save_top_k,
                save_last=True,
            )
        )
    if execution.early_stopping:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode=execution.checkpoint_mode,
                patience=execution.early_stop_patience,
            )
        )
    return callbacks


def build_trainer(
    execution: ExecutionConfig,
    monitor: str,
    output_dir: Path | None,
    max_epochs: int,
    callbacks: list | None = None,
    **overrides,
) -> L.Trainer:
    """A Trainer wired from ``execution``. ``callbacks`` are added to ours; ``overrides`` are
    passed to ``L.Trainer`` last (tests and benchmarks: e.g. ``limit_train_batches``).
    Without ``output_dir`` nothing is written: no logger, no checkpoints.

    Note: with ``deterministic`` Lightning switches torch's process-wide deterministic-algorithms
    flag on when the Trainer is built; ``fit`` restores it afterwards (``run_context``)."""
    accelerator = resolve_accelerator(execution.accelerator)
    devices = resolve_devices(accelerator, execution.devices)
    logger = build_logger(execution, output_dir) if output_dir is not None else False
    clip = execution.gradient_clip_val
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        strategy=execution.strategy,
        num_nodes=execution.num_nodes,
        precision=execution.precision,
        deterministic=execution.deterministic,
        detect_anomaly=execution.detect_anomaly,
        max_epochs=max_epochs,
        accumulate_grad_batches=execution.accumulate_grad_batches,
        gradient_clip_val=clip,
        gradient_clip_algorithm=execution.gradient_clip_algorithm if clip is not None else None,
        enable_checkpointing=execution.enable_checkpointing and output_dir is not None,
        logger=logger,
        callbacks=build_callbacks(execution, monitor, output_dir)
        + [ProcessSetup(execution.quiet)]
        + list(callbacks or []),
        default_root_dir=str(output_dir) if output_dir is not None else None,
        enable_progress_bar=not execution.quiet,
        enable_model_summary=not execution.quiet,
        log_every_n_steps=1,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def batches_per_epoch(n_groups: int, batch_size: int, world_size: int) -> int:
    """Training batches each process sees per epoch. Mirrors ``PtychoDataModule.train_dataloader``:
    DistributedSampler pads to equal shares, and the loader drops a ragged last batch only when
    ``n_groups >= 2 * batch_size * world_size``."""
    per_process = math.ceil(n_groups / world_size)
    if n_groups >= 2 * batch_size * world_size:
        return per_process // batch_size
    return math.ceil(per_process / batch_size)


# --- quiet runs ------------------------------------------------------------------------------
# The quiet levels and the expected-warning filters are process-wide settings: only the CLI
# (``ptychopinn.log.configure_cli_logging``) and processes spawned for a run apply them.
class ProcessSetup(L.Callback):
    """Applies the quiet levels and warning filters inside every training process: processes
    started by ``ddp_spawn`` do not inherit the parent's logging levels or warning filters.

    The callback travels to a spawned process pickled with the Trainer; applying the settings
    when it is unpickled there comes before Lightning's distributed-initialisation messages.
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.parent_pid = os.getpid()

    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() != self.parent_pid:
            self._apply()

    def setup(self, trainer, pl_module, stage):
        if os.getpid() != self.parent_pid:  # the parent is the caller's (the CLI configures it)
            self._apply()

    def _apply(self):
        for name, level in quiet_levels(self.quiet).items():
            logging.getLogger(name).setLevel(level)
        filter_expected_warnings()


@contextlib.contextmanager
def run_context():
    """Restore torch's deterministic-algorithms flag after a run (``deterministic=True`` sets it
    process-wide when the Trainer is built). Logging and warnings are left to the caller."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
