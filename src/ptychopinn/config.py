"""Configuration dataclasses, frozen and validated at construction.

``ModelConfig`` and ``DataConfig`` define what is learned and are stored in the model bundle.
``TrainingConfig`` holds the training-length/batch knobs; ``ExecutionConfig`` (see
``ptychopinn.execution``) holds runtime-only knobs that never change what a bundle is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


def _bad(field: str, value, expected: str):
    raise ValueError(f"{field}: invalid value {value!r}; expected {expected}")


LOSS_NAMES = ("poisson", "mae")


@dataclass(frozen=True)
class ModelConfig:
    """What the network is. ``n`` is taken from the data."""

    n: int = 64
    gridsize: int = 1
    generator: str = "cnn"
    n_filters_scale: int = 2
    skip_connections: bool = False
    amp_max: float = 1.5
    support: float | None = None
    loss: str = "poisson"
    trainable_gain: bool = True
    physics_iterations: int = 0

    def __post_init__(self):
        if self.n < 8 or self.n % 2:
            _bad("n", self.n, "an even patch size >= 8")
        if self.gridsize < 1:
            _bad("gridsize", self.gridsize, "an integer >= 1")
        if self.n_filters_scale < 1:
            _bad("n_filters_scale", self.n_filters_scale, "an integer >= 1")
        if self.loss not in LOSS_NAMES:
            _bad("loss", self.loss, f"one of {list(LOSS_NAMES)}")
        if not self.amp_max > 0:
            _bad("amp_max", self.amp_max, "> 0")
        if self.physics_iterations < 0:
            _bad("physics_iterations", self.physics_iterations, "an integer >= 0")
        if self.support is not None and not 0 < self.support <= 1.5:
            _bad("support", self.support, "a fraction of N in (0, 1.5], or None")

    @property
    def channels(self) -> int:
        return self.gridsize * self.gridsize

    def generator_kwargs(self) -> dict:
        return dict(n=self.n, channels=self.channels, n_filters_scale=self.n_filters_scale,
                    skip=self.skip_connections, amp_max=self.amp_max, support=self.support,
                    estimate_input=self.physics_iterations > 0)


@dataclass(frozen=True)
class DataConfig:
    """How scans become training groups."""

    neighbors: int = 7
    n_groups: int | None = None
    val_fraction: float = 0.1
    diffraction_units: str = "auto"

    def __post_init__(self):
        if self.neighbors < 1:
            _bad("neighbors", self.neighbors, "an integer >= 1")
        if self.n_groups is not None and self.n_groups < 1:
            _bad("n_groups", self.n_groups, "an integer >= 1 or None (one group per position)")
        if not 0 <= self.val_fraction < 1:
            _bad("val_fraction", self.val_fraction, "a fraction in [0, 1)")
        if self.diffraction_units not in ("auto", "counts", "amplitude"):
            _bad("diffraction_units", self.diffraction_units, "one of ['auto', 'counts', 'amplitude']")


@dataclass(frozen=True)
class TrainingConfig:
    """How long and in what batches to train. ``nphotons``, if set, initialises the gain so a
    unit-amplitude object predicts that many photons per pattern (default: from the data)."""

    max_epochs: int = 30
    batch_size: int = 16
    nphotons: float | None = None
    supervised_weight: float = 0.0

    def __post_init__(self):
        if self.max_epochs < 1:
            _bad("max_epochs", self.max_epochs, "an integer >= 1")
        if self.batch_size < 1:
            _bad("batch_size", self.batch_size, "an integer >= 1")
        if self.nphotons is not None and not self.nphotons > 0:
            _bad("nphotons", self.nphotons, "> 0 or None")
        if self.supervised_weight < 0:
            _bad("supervised_weight", self.supervised_weight, ">= 0")


def to_dict(config) -> dict:
    return asdict(config)


def from_dict(cls, data: dict):
    """Build a config dataclass from a dict, rejecting unknown keys with a clear message."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected some of {sorted(names)}")
    return cls(**data)


SCHEDULER_NAMES = ("Default", "Exponential", "MultiStage", "Adaptive", "WarmupCosine")
SCHEDULER_ALIASES = {"ReduceLROnPlateau": "Adaptive"}
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "none")


@dataclass(frozen=True)
class ExecutionConfig:
    """Runtime-only knobs: how training runs, never what is learned (not part of a bundle's
    identity; the resolved values are recorded with each run for audit)."""

    # Trainer
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = False
    seed: int = 0
    # DataLoader
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    # Optimisation
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "Default"
    lr_gamma: float = 0.95
    lr_milestones: tuple[int, ...] = ()
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 0.0
    warmup_epochs: int = 0
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    # Checkpointing and early stopping
    enable_checkpointing: bool = True
    checkpoint_save_top_k: int = 1
    checkpoint_monitor: str = "val_loss"
    checkpoint_mode: str = "min"
    early_stopping: bool = True
    early_stop_patience: int = 5
    resume_from: str | None = None
    # Logging and output
    logger: str = "csv"
    mlflow_tracking_uri: str | None = None
    experiment_name: str = "ptychopinn"
    quiet: bool = False
    # Inference
    inference_batch_size: int | None = None

    def __post_init__(self):
        if self.scheduler in SCHEDULER_ALIASES:
            object.__setattr__(self, "scheduler", SCHEDULER_ALIASES[self.scheduler])
        if self.scheduler not in SCHEDULER_NAMES:
            _bad("scheduler", self.scheduler,
                 f"one of {list(SCHEDULER_NAMES)} (alias: ReduceLROnPlateau = Adaptive)")
        if self.optimizer not in OPTIMIZER_NAMES:
            _bad("optimizer", self.optimizer, f"one of {list(OPTIMIZER_NAMES)}")
        if not self.learning_rate > 0:
            _bad("learning_rate", self.learning_rate, "> 0")
        if self.accumulate_grad_batches < 1:
            _bad("accumulate_grad_batches", self.accumulate_grad_batches, "an integer >= 1")
        if self.num_workers < 0:
            _bad("num_workers", self.num_workers, "an integer >= 0")
        if self.logger not in LOGGER_NAMES:
            _bad("logger", self.logger, f"one of {list(LOGGER_NAMES)}")
