"""From ExecutionConfig to a Lightning Trainer: monitor resolution, callbacks, loggers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from ptychopinn.config import ExecutionConfig
from ptychopinn.errors import PtychoPINNError
from ptychopinn.log import get_logger

log = get_logger("training")


def resolve_monitor(requested: str, train_loss_name: str, val_loss_name: str,
                    logged_names: list[str], has_validation: bool) -> str:
    """The metric that checkpointing, early stopping and plateau scheduling watch.

    ``val_loss`` means the model's validation metric (``val_loss_name``); without validation data
    it falls back to the training metric (logged). Any other name must be a metric the model logs.
    """
    if requested == "val_loss":
        if has_validation:
            return val_loss_name
        log.info("no validation data: monitoring the training metric %s instead of %s",
                 train_loss_name, val_loss_name)
        return train_loss_name
    available = [n for n in logged_names if has_validation or not n.startswith("val")]
    if requested not in available:
        raise PtychoPINNError(f"checkpoint_monitor: {requested!r} is not a metric this model logs; "
                              f"expected 'val_loss' or one of {available}")
    return requested


def build_logger(execution: ExecutionConfig, output_dir: Path):
    kind = execution.logger
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger
        return CSVLogger(save_dir=str(output_dir), name="lightning_logs")
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise PtychoPINNError("logger 'tensorboard' needs TensorBoard: pip install 'ptychopinn[tensorboard]'") from None
        from lightning.pytorch.loggers import TensorBoardLogger
        return TensorBoardLogger(save_dir=str(output_dir), name="lightning_logs")
    if kind == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise PtychoPINNError("logger 'mlflow' needs MLflow: pip install 'ptychopinn[mlflow]'") from None
        from lightning.pytorch.loggers import MLFlowLogger
        uri = execution.mlflow_tracking_uri or (output_dir / "mlruns").resolve().as_uri()
        return MLFlowLogger(experiment_name=execution.experiment_name, tracking_uri=uri)
    raise PtychoPINNError(f"logger: unknown value {kind!r}")


def build_callbacks(execution: ExecutionConfig, monitor: str, output_dir: Path, has_logger: bool) -> list:
    callbacks = []
    if execution.enable_checkpointing:
        callbacks.append(ModelCheckpoint(
            dirpath=str(output_dir / "checkpoints"),
            filename="epoch={epoch:02d}-" + monitor + "={" + monitor + ":.4f}",
            auto_insert_metric_name=False, monitor=monitor, mode=execution.checkpoint_mode,
            save_top_k=execution.checkpoint_save_top_k, save_last=True))
    if execution.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor, mode=execution.checkpoint_mode,
                                       patience=execution.early_stop_patience))
    if has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return callbacks


def build_trainer(execution: ExecutionConfig, monitor: str, output_dir: Path, max_epochs: int,
                  **overrides) -> L.Trainer:
    logger = build_logger(execution, output_dir)
    kwargs = dict(
        accelerator=execution.accelerator, devices=execution.devices, strategy=execution.strategy,
        num_nodes=execution.num_nodes, precision=execution.precision,
        deterministic=execution.deterministic, max_epochs=max_epochs,
        accumulate_grad_batches=execution.accumulate_grad_batches,
        gradient_clip_val=execution.gradient_clip_val,
        gradient_clip_algorithm=execution.gradient_clip_algorithm if execution.gradient_clip_val else None,
        enable_checkpointing=execution.enable_checkpointing,
        logger=logger, callbacks=build_callbacks(execution, monitor, output_dir, bool(logger)),
        default_root_dir=str(output_dir), enable_progress_bar=not execution.quiet,
        enable_model_summary=not execution.quiet, log_every_n_steps=1,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
