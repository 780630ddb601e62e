"""Optimisers and LR schedulers by name (one registry, used by CLI, config file and Python API).

Every scheduler is stepped once per epoch by Lightning (automatic optimisation):
- ``Default``: constant learning rate.
- ``Exponential``: ``lr = lr0 * lr_gamma ** epoch``.
- ``MultiStage``: ``lr`` multiplied by ``lr_gamma`` at each epoch in ``lr_milestones``.
- ``Adaptive`` (alias ``ReduceLROnPlateau``): ``lr *= plateau_factor`` after ``plateau_patience``
  epochs without improvement of the monitored metric, not below ``min_lr``.
- ``WarmupCosine``: linear warm-up from ``lr0 / (warmup_epochs + 1)`` to ``lr0`` over
  ``warmup_epochs``, then cosine decay to ``min_lr`` at ``max_epochs``.
"""

from __future__ import annotations

import math

import torch

from ptychopinn.config import ExecutionConfig

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay,
                                                            momentum=0.9),
}


def _warmup_cosine(warmup: int, total: int, base_lr: float, min_lr: float):
    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        span = max(total - warmup, 1)
        t = min(epoch - warmup, span) / span
        floor = min_lr / base_lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def build_scheduler(name: str, optimizer, execution: ExecutionConfig, max_epochs: int):
    e = execution
    if name == "Default":
        return None
    if name == "Exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=e.lr_gamma)
    if name == "MultiStage":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(e.lr_milestones),
                                                    gamma=e.lr_gamma)
    if name == "Adaptive":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=e.checkpoint_mode,
                                                          factor=e.plateau_factor,
                                                          patience=e.plateau_patience, min_lr=e.min_lr)
    if name == "WarmupCosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_cosine(e.warmup_epochs, max_epochs, e.learning_rate, e.min_lr))
    raise ValueError(f"scheduler: unknown name {name!r}")


def configure_optimization(params, execution: ExecutionConfig, max_epochs: int, monitor: str):
    """The ``configure_optimizers`` return value for Lightning."""
    optimizer = OPTIMIZERS[execution.optimizer](params, lr=execution.learning_rate,
                                                weight_decay=execution.weight_decay)
    scheduler = build_scheduler(execution.scheduler, optimizer, execution, max_epochs)
    if scheduler is None:
        return optimizer
    config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": optimizer, "lr_scheduler": config}
