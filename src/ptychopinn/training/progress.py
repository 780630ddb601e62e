"""A Lightning callback for programs that drive training (the Ptychodus integration): reports
each epoch's losses and stops training when asked."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L

from ptychopinn.log import get_logger

log = get_logger("training")


class EpochReporter(L.Callback):
    """After every training epoch, logs and calls ``report(epoch, train_loss, val_loss)`` (epoch
    from 1, losses None when not logged); sets ``trainer.should_stop`` once ``stop_requested()``
    is true, checked after every batch and every epoch. ``logger``: where the epoch line goes
    (default the training logger)."""

    def __init__(self, report: Callable, stop_requested: Callable[[], bool], logger=None):
        self.report = report
        self.stop_requested = stop_requested
        self.epoch_log = logger or log

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stop_requested():
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics

        def value(name):
            v = metrics.get(name)
            return float(v) if v is not None else None

        epoch = trainer.current_epoch + 1
        train, val = value(pl_module.train_loss_name), value(pl_module.val_loss_name)
        self.epoch_log.info(
            "epoch %d/%d  %s %s  %s %s",
            epoch,
            trainer.max_epochs,
            pl_module.train_loss_name,
            f"{train:.6g}" if train is not None else "-",
            pl_module.val_loss_name,
            f"{val:.6g}" if val is not None else "-",
        )
        self.report(epoch, train, val)
        if self.stop_requested():
            trainer.should_stop = True
