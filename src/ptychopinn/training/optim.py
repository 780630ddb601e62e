"""Optimisers and LR schedulers by name (one registry, used by CLI, config file and Python API).

Optimisers (``optimizer``): ``adam``, ``adamw`` (decoupled ``weight_decay``), ``sgd`` (with
``momentum``, default 0.9; 0 gives plain SGD).

Schedulers (``scheduler``), all stepped once per epoch by Lightning's automatic optimisation, so
epoch ``e`` (0-based) trains with the learning rate below; ``lr0`` is ``learning_rate``:

- ``Default``: constant ``lr0``.
- ``Exponential``: ``lr0 * lr_gamma ** e``.
- ``MultiStage``: ``lr0 * lr_gamma ** (number of lr_milestones <= e)``; e.g. milestones ``[10, 20]``
  and gamma 0.1 give ``lr0`` for epochs 0-9, ``lr0/10`` for 10-19, ``lr0/100`` from 20 on.
- ``Adaptive`` (alias ``ReduceLROnPlateau``): ``lr *= plateau_factor`` once the monitored metric
  (the resolved checkpoint monitor, in ``checkpoint_mode``) has not improved by more than
  1e-4 x |best| for more than ``plateau_patience`` epochs; never below ``min_lr``.
- ``WarmupCosine``: ``lr0 * (e + 1) / (warmup_epochs + 1)`` for ``e < warmup_epochs`` (linear
  warm-up), then a half cosine from ``lr0`` at epoch ``warmup_epochs`` down to ``min_lr`` at epoch
  ``max_epochs`` (the epoch after the last one trained).

The module logs the learning rate of each epoch as the metric ``lr``.
"""

from __future__ import annotations

import math

import torch

from ptychopinn.config import SCHEDULER_ALIASES, SCHEDULER_NAMES, ExecutionConfig
from ptychopinn.errors import ConfigError
from ptychopinn.registry import Registry

#: name -> builder(params, execution) returning a torch optimiser.
OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.add(
    "adam",
    lambda params, e: torch.optim.Adam(params, lr=e.learning_rate, weight_decay=e.weight_decay),
)
OPTIMIZERS.add(
    "adamw",
    lambda params, e: torch.optim.AdamW(params, lr=e.learning_rate, weight_decay=e.weight_decay),
)
OPTIMIZERS.add(
    "sgd",
    lambda params, e: torch.optim.SGD(
        params, lr=e.learning_rate, momentum=e.momentum, weight_decay=e.weight_decay
    ),
)

#: name -> builder(optimizer, execution, max_epochs) returning a torch scheduler or None.
SCHEDULERS = Registry("scheduler")
register_scheduler = SCHEDULERS.register


def warmup_cosine_factor(warmup_epochs: int, max_epochs: int, base_lr: float, min_lr: float):
    """The LambdaLR factor of ``WarmupCosine`` for epoch ``e`` (see the module docstring)."""
    floor = min_lr / base_lr

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        span = max(max_epochs - warmup_epochs, 1)
        t = min(epoch - warmup_epochs, span) / span
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


@register_scheduler("Default")
def _default(optimizer, e: ExecutionConfig, max_epochs: int):
    return None


@register_scheduler("Exponential")
def _exponential(optimizer, e: ExecutionConfig, max_epochs: int):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=e.lr_gamma)


@register_scheduler("MultiStage")
def _multistage(optimizer, e: ExecutionConfig, max_epochs: int):
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(e.lr_milestones), gamma=e.lr_gamma
    )


class PlateauScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau whose relative threshold is taken of ``|best|``.

    torch tests ``a < best * (1 - threshold)``: for a negative ``best`` that bound lies above
    ``best``, so an unchanged loss counts as an improvement and the LR never drops. Our Poisson
    NLL omits the constant ``lgamma(I + 1)`` and is usually negative, so this matters here.
    """

    def _is_better(self, a, best):  # torch >= 2.2 name
        if not math.isfinite(best):
            return a < best if self.mode == "min" else a > best
        margin = self.threshold * abs(best) if self.threshold_mode == "rel" else self.threshold
        return a < best - margin if self.mode == "min" else a > best + margin

    is_better = _is_better  # older torch name


@register_scheduler("Adaptive")
def _adaptive(optimizer, e: ExecutionConfig, max_epochs: int):
    return PlateauScheduler(
        optimizer,
        mode=e.checkpoint_mode,
        factor=e.plateau_factor,
        patience=e.plateau_patience,
        min_lr=e.min_lr,
    )


@register_scheduler("WarmupCosine")
def _warmup_cosine(optimizer, e: ExecutionConfig, max_epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_factor(e.warmup_epochs, max_epochs, e.learning_rate, e.min_lr)
    )


def canonical_scheduler_name(name: str) -> str:
    """``ReduceLROnPlateau`` -> ``Adaptive``; an unknown name raises ValueError listing the
    names."""
    name = SCHEDULER_ALIASES.get(name, name)
    if name not in SCHEDULERS:
        raise ConfigError(
            f"scheduler: invalid value {name!r}; expected one of {list(SCHEDULER_NAMES)} "
            "(alias: ReduceLROnPlateau = Adaptive)"
        )
    return name


def build_optimizer(params, execution: ExecutionConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[execution.optimizer](params, execution)


def build_scheduler(name: str, optimizer, execution: ExecutionConfig, max_epochs: int):
    return SCHEDULERS[canonical_scheduler_name(name)](optimizer, execution, max_epochs)


def configure_optimization(params, execution: ExecutionConfig, max_epochs: int, monitor: str):
    """The ``configure_optimizers`` return value for Lightning.

    ``monitor`` is the resolved metric name (``ptychopinn.training.trainer.resolve_monitor``):
    the plateau scheduler watches the same metric as checkpointing and early stopping.
    """
    optimizer = build_optimizer(params, execution)
    scheduler = build_scheduler(execution.scheduler, optimizer, execution, max_epochs)
    if scheduler is None:
        return optimizer
    config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
        config["strict"] = True
    return {"optimizer": optimizer, "lr_scheduler": config}
