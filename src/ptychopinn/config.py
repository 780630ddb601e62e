"""Configuration dataclasses, frozen and validated at construction.

``ModelConfig`` and ``DataConfig`` define what is learned and are stored in the model bundle.
``TrainingConfig`` holds the training-length/batch knobs; ``ExecutionConfig`` holds runtime-only
knobs that never change what a bundle is. ``ptychopinn.config_factory.build_run_config`` builds all
four from defaults, a config file and explicit overrides (the CLI and the Python API share it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ptychopinn.errors import ConfigError


def _bad(field: str, value, expected: str):
    raise ConfigError(f"{field}: invalid value {value!r}; expected {expected}")


LOSS_NAMES = ("poisson", "mae")


@dataclass(frozen=True)
class ModelConfig:
    """What the network is. ``n`` is taken from the data.

    Defaults are the measured recipe (docs/performance.md, "What mattered"): groups of 2 x 2
    patterns, a physics estimate from 20 projection iterations as input (the network learns a
    correction of it), skip connections (the estimate is in real space, aligned with the
    output), width scale 1. ``physics_iterations=0`` gives the plain amplitudes-only network.
    """

    n: int = 64
    gridsize: int = 2
    generator: str = "cnn"
    n_filters_scale: int = 1
    skip_connections: bool = True
    amp_max: float = 2.0
    support: float | None = None
    loss: str = "poisson"
    trainable_gain: bool = True
    physics_iterations: int = 20

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
        return dict(
            n=self.n,
            channels=self.channels,
            n_filters_scale=self.n_filters_scale,
            skip=self.skip_connections,
            amp_max=self.amp_max,
            support=self.support,
            estimate_input=self.physics_iterations > 0,
        )


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
            _bad(
                "diffraction_units",
                self.diffraction_units,
                "one of ['auto', 'counts', 'amplitude']",
            )


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
        raise ConfigError(
            f"{cls.__name__}: unknown keys {unknown}; expected some of {sorted(names)}"
        )
    return cls(**data)


# --- ExecutionConfig ------------------------------------------------------------------------
# One set of names for CLI, config file and Python API. Scheduler semantics: training/optim.py;
# building configs with precedence and an audit trail: config_factory.py.
#: ``--refine-probe`` / ``refine_probe`` choices: ``auto`` retrieves the probe unless the scan
#: says its probe is the true one (``ptychopinn.workflows.probe_is_known``).
PROBE_REFINEMENT = ("auto", "on", "off")
SCHEDULER_NAMES = ("Default", "Exponential", "MultiStage", "Adaptive", "WarmupCosine")
SCHEDULER_ALIASES = {"ReduceLROnPlateau": "Adaptive"}
OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "none")
#: Groups per inference batch when none is given or recorded (measured on this 2-core CPU,
#: N = 32, gridsize 2: 16 -> 9.8 s, 32 -> 7.2 s, 64 -> 6.4 s, 128 -> 7.6 s for 2,000 patterns).
INFERENCE_BATCH_SIZE = 64


def inference_batch_size(*choices: int | None) -> int:
    """Groups per inference batch: the first of ``choices`` that is set (callers pass, in order of
    precedence, e.g. the CLI flag, the run's execution config, the bundle's recorded value), else
    ``INFERENCE_BATCH_SIZE``. The one place this is resolved."""
    for value in choices:
        if value:
            return int(value)
    return INFERENCE_BATCH_SIZE


#: Position correction in refinement (``correct_positions``): first epoch (counting from 0; the
#: object needs a few epochs before its gradient says where a pattern belongs), step per epoch in
#: pixels, and epochs of the affine-only phase before each pattern moves freely.
POSITION_START_EPOCH = 10
POSITION_STEP_PX = 0.25
POSITION_AFFINE_EPOCHS = 10
#: Coarse position search (``position_search_px`` > 0, for errors of several pixels, beyond the
#: gradient's reach): this many rounds, each of POSITION_SEARCH_INTERVAL epochs of object
#: refinement followed by a grid search of every position within the radius (the object then
#: restarts from its start). Measured on an independently simulated 500-pattern N = 64 scan
#: (benchmarks/positions.py): 5 px rms random errors corrected to 0.19 px, where the gradient
#: alone ends at 2.2 px; 10 px rms only to 6.6 px.
POSITION_SEARCH_ROUNDS = 3
POSITION_SEARCH_INTERVAL = 20
ACCELERATOR_NAMES = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISION_NAMES = ("32-true", "16-mixed", "bf16-mixed", "64-true")
#: DDP variants only: the other Lightning strategies (deepspeed, fsdp, xla) are untested with the
#: complex-valued physics and are rejected rather than half supported.
STRATEGY_NAMES = (
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
)
GRADIENT_CLIP_ALGORITHMS = ("norm", "value")
CHECKPOINT_MODES = ("min", "max")
#: ``resume_from`` value meaning ``OUTPUT_DIR/checkpoints/last.ckpt``.
RESUME_LAST = "last"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(
    field: str,
    value,
    minimum: int | None = None,
    allow_none: bool = False,
    expected: str | None = None,
) -> None:
    if value is None and allow_none:
        return
    if not _is_int(value) or (minimum is not None and value < minimum):
        text = expected or (f"an integer >= {minimum}" if minimum is not None else "an integer")
        _bad(field, value, text + (" or None" if allow_none else ""))


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        _bad(field, value, f"one of {list(choices)}")


def _check_bool(field: str, value) -> None:
    if not isinstance(value, bool):
        _bad(field, value, "true or false")


@dataclass(frozen=True)
class ExecutionConfig:
    """Runtime-only knobs: how training runs, never what is learned (not part of a bundle's
    identity; the resolved values are recorded with each run for audit).

    Validated at construction: a bad value raises ValueError naming the field, the value and the
    allowed values. Cross-field rules that need the other configs (e.g. ``warmup_epochs`` versus
    ``max_epochs``) are checked by ``ptychopinn.config_factory.check_run``.
    """

    # Trainer
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    deterministic: bool = False
    detect_anomaly: bool = False
    seed: int = 0
    # DataLoader
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    # Optimisation
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
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

    def __post_init__(self):
        # Trainer
        if self.accelerator == "tpu":
            _bad(
                "accelerator",
                "tpu",
                f"one of {list(ACCELERATOR_NAMES)}; TPUs are not supported "
                "(the complex-valued FFT physics has no XLA path here)",
            )
        _check_choice("accelerator", self.accelerator, ACCELERATOR_NAMES)
        devices = self.devices
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
            object.__setattr__(self, "devices", devices)
        if devices != "auto" and not (_is_int(devices) and devices >= 1):
            _bad("devices", devices, "an integer >= 1 or 'auto'")
        _check_choice("strategy", self.strategy, STRATEGY_NAMES)
        _check_int("num_nodes", self.num_nodes, 1)
        _check_choice("precision", self.precision, PRECISION_NAMES)
        _check_bool("deterministic", self.deterministic)
        _check_bool("detect_anomaly", self.detect_anomaly)
        if not _is_int(self.seed) or not 0 <= self.seed <= 2**32 - 1:
            _bad("seed", self.seed, "an integer in [0, 2**32 - 1]")
        # DataLoader
        _check_int("num_workers", self.num_workers, 0)
        _check_bool("pin_memory", self.pin_memory)
        _check_bool("persistent_workers", self.persistent_workers)
        if self.persistent_workers and self.num_workers == 0:
            _bad(
                "persistent_workers",
                True,
                "false when num_workers is 0 (no worker to keep alive); set num_workers > 0",
            )
        _check_int("prefetch_factor", self.prefetch_factor, 1, allow_none=True)
        if self.prefetch_factor is not None and self.num_workers == 0:
            _bad(
                "prefetch_factor",
                self.prefetch_factor,
                "None when num_workers is 0 (only worker processes prefetch); set num_workers > 0",
            )
        # Optimisation
        if not _is_number(self.learning_rate) or not self.learning_rate > 0:
            _bad("learning_rate", self.learning_rate, "a number > 0")
        _check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            _bad("momentum", self.momentum, "a number in [0, 1) (used by the sgd optimizer)")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            _bad("weight_decay", self.weight_decay, "a number >= 0")
        if self.scheduler in SCHEDULER_ALIASES:
            object.__setattr__(self, "scheduler", SCHEDULER_ALIASES[self.scheduler])
        if self.scheduler not in SCHEDULER_NAMES:
            _bad(
                "scheduler",
                self.scheduler,
                f"one of {list(SCHEDULER_NAMES)} (alias: ReduceLROnPlateau = Adaptive)",
            )
        if not _is_number(self.lr_gamma) or not 0 < self.lr_gamma <= 1:
            _bad("lr_gamma", self.lr_gamma, "a decay factor in (0, 1]")
        milestones = self.lr_milestones
        if isinstance(milestones, list):
            milestones = tuple(milestones)
            object.__setattr__(self, "lr_milestones", milestones)
        if (
            not isinstance(milestones, tuple)
            or not all(_is_int(m) and m >= 1 for m in milestones)
            or list(milestones) != sorted(set(milestones))
        ):
            _bad("lr_milestones", self.lr_milestones, "strictly increasing epoch numbers >= 1")
        if self.scheduler == "MultiStage" and not milestones:
            _bad(
                "lr_milestones",
                milestones,
                "at least one epoch for scheduler MultiStage (e.g. lr_milestones: [10, 20])",
            )
        if not _is_number(self.plateau_factor) or not 0 < self.plateau_factor < 1:
            _bad("plateau_factor", self.plateau_factor, "a factor in (0, 1)")
        _check_int("plateau_patience", self.plateau_patience, 0)
        if not _is_number(self.min_lr) or self.min_lr < 0:
            _bad("min_lr", self.min_lr, "a number >= 0")
        if self.scheduler in ("Adaptive", "WarmupCosine") and self.min_lr >= self.learning_rate:
            _bad(
                "min_lr",
                self.min_lr,
                f"a number below learning_rate ({self.learning_rate}) "
                f"for scheduler {self.scheduler}",
            )
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_int("accumulate_grad_batches", self.accumulate_grad_batches, 1)
        if self.gradient_clip_val is not None and (
            not _is_number(self.gradient_clip_val) or not self.gradient_clip_val > 0
        ):
            _bad("gradient_clip_val", self.gradient_clip_val, "a number > 0 or None (no clipping)")
        _check_choice(
            "gradient_clip_algorithm", self.gradient_clip_algorithm, GRADIENT_CLIP_ALGORITHMS
        )
        # Checkpointing and early stopping
        _check_bool("enable_checkpointing", self.enable_checkpointing)
        _check_int(
            "checkpoint_save_top_k",
            self.checkpoint_save_top_k,
            -1,
            expected="-1 (keep all), 0 (only last.ckpt) or an integer k >= 1",
        )
        if not isinstance(self.checkpoint_monitor, str) or not self.checkpoint_monitor.strip():
            _bad(
                "checkpoint_monitor",
                self.checkpoint_monitor,
                "'val_loss' or the name of a metric the model logs",
            )
        _check_choice("checkpoint_mode", self.checkpoint_mode, CHECKPOINT_MODES)
        _check_bool("early_stopping", self.early_stopping)
        _check_int(
            "early_stop_patience",
            self.early_stop_patience,
            1,
            expected="an integer >= 1 (disable early stopping with early_stopping: false)",
        )
        if self.resume_from is not None and (
            not isinstance(self.resume_from, str) or not self.resume_from.strip()
        ):
            _bad("resume_from", self.resume_from, f"a checkpoint path, {RESUME_LAST!r} or None")
        # Logging and output
        _check_choice("logger", self.logger, LOGGER_NAMES)
        if self.mlflow_tracking_uri is not None and (
            not isinstance(self.mlflow_tracking_uri, str) or not self.mlflow_tracking_uri.strip()
        ):
            _bad("mlflow_tracking_uri", self.mlflow_tracking_uri, "a URI string or None")
        if not isinstance(self.experiment_name, str) or not self.experiment_name.strip():
            _bad("experiment_name", self.experiment_name, "a non-empty name")
        _check_bool("quiet", self.quiet)


def _check_number(field: str, value, minimum: float, allow_none: bool = False, strict=False):
    if value is None and allow_none:
        return
    if not _is_number(value) or value < minimum or (strict and value == minimum):
        text = f"a number {'>' if strict else '>='} {minimum:g}"
        _bad(field, value, text + (" or None" if allow_none else ""))


# --- RefineConfig and InferConfig -------------------------------------------------------------
#: Refinement optimisers (``reconstruction.gradient``): Adam on the real/imaginary parts, or the
#: gradient preconditioned by the minibatch's probe illumination.
REFINE_OPTIMIZERS = ("adam", "pgd")
#: "plateau": halve the object step when the epoch loss stops improving; "constant": never.
REFINE_SCHEDULES = ("plateau", "constant")
#: Rounds that rotate every patch to the current stitched estimate after the ring pass of
#: stitching (``reconstruction.stitching.stitch``).
PHASE_SYNC_ITERATIONS = 10


@dataclass(frozen=True)
class RefineConfig:
    """Gradient refinement on a scan's own Poisson likelihood (``reconstruction.gradient``):
    ``reconstruct`` (its default engine), ``infer --refine-epochs`` and the demo. The fields
    are ``refine()``'s arguments (``refine_kwargs``); ``reconstruct`` defaults
    ``refine_epochs`` to 300 from a flat start. See ``reconstruction.gradient.refine`` for what
    each does and the measurements behind the defaults."""

    #: passes over the scan (0: no refinement)
    refine_epochs: int = 0
    #: patterns per step
    refine_batch_size: int = 64
    #: adam or pgd; None: pgd from a flat start, adam from a given object
    refine_optimizer: str | None = None
    #: Adam lr or PGD step; None: by optimiser and start
    refine_lr: float | None = None
    refine_schedule: str = "plateau"
    #: plateau window in epochs; None: 20 from a flat start, 3 from a given object
    refine_patience: int | None = None
    #: Gaussian prior of this per-pixel width around the start (MAP); None: maximum likelihood
    refine_prior_sigma: float | None = None
    #: stop after the first epoch that ends past this many seconds; None: no limit
    refine_time_limit_s: float | None = None
    #: stop once the plateau schedule has cut the step below 1/50 of its start
    stop_when_converged: bool = True
    #: retrieve the probe: auto (unless the scan's probe is known true), on, off
    refine_probe: str = "auto"
    probe_start_epoch: int = 2
    probe_optimizer: str = "pgd"
    probe_lr: float | None = None
    #: pin the phase-ramp and translation ambiguities of joint object/probe retrieval
    fix_gauge: bool = True
    correct_positions: bool = False
    position_start_epoch: int = POSITION_START_EPOCH
    position_step_px: float = POSITION_STEP_PX
    position_affine_epochs: int = POSITION_AFFINE_EPOCHS
    #: coarse search radius (pixels per axis) before the gradient correction; 0: none
    position_search_px: float = 0.0
    position_search_rounds: int = POSITION_SEARCH_ROUNDS

    def __post_init__(self):
        _check_int("refine_epochs", self.refine_epochs, 0)
        _check_int("refine_batch_size", self.refine_batch_size, 1)
        if self.refine_optimizer is not None:
            _check_choice("refine_optimizer", self.refine_optimizer, REFINE_OPTIMIZERS)
        _check_number("refine_lr", self.refine_lr, 0.0, allow_none=True, strict=True)
        _check_choice("refine_schedule", self.refine_schedule, REFINE_SCHEDULES)
        _check_int("refine_patience", self.refine_patience, 1, allow_none=True)
        _check_number("refine_prior_sigma", self.refine_prior_sigma, 0.0, True, strict=True)
        _check_number("refine_time_limit_s", self.refine_time_limit_s, 0.0, True, strict=True)
        _check_bool("stop_when_converged", self.stop_when_converged)
        _check_choice("refine_probe", self.refine_probe, PROBE_REFINEMENT)
        _check_int("probe_start_epoch", self.probe_start_epoch, 0)
        _check_choice("probe_optimizer", self.probe_optimizer, REFINE_OPTIMIZERS)
        _check_number("probe_lr", self.probe_lr, 0.0, allow_none=True, strict=True)
        _check_bool("fix_gauge", self.fix_gauge)
        _check_bool("correct_positions", self.correct_positions)
        _check_int("position_start_epoch", self.position_start_epoch, 0)
        _check_number("position_step_px", self.position_step_px, 0.0, strict=True)
        _check_int("position_affine_epochs", self.position_affine_epochs, 0)
        _check_number("position_search_px", self.position_search_px, 0.0)
        _check_int("position_search_rounds", self.position_search_rounds, 1)

    def refine_kwargs(self) -> dict:
        """``reconstruction.gradient.refine`` keyword arguments (all but ``epochs`` and
        ``refine_probe``, which the caller resolves against the scan)."""
        return {
            "batch_size": self.refine_batch_size,
            "optimizer": self.refine_optimizer,
            "lr": self.refine_lr,
            "schedule": self.refine_schedule,
            "patience": self.refine_patience,
            "prior_sigma": self.refine_prior_sigma,
            "time_limit_s": self.refine_time_limit_s,
            "stop_when_converged": self.stop_when_converged,
            "probe_start_epoch": self.probe_start_epoch,
            "probe_optimizer": self.probe_optimizer,
            "probe_lr": self.probe_lr,
            "fix_gauge": self.fix_gauge,
            "correct_positions": self.correct_positions,
            "position_start_epoch": self.position_start_epoch,
            "position_step_px": self.position_step_px,
            "position_affine_epochs": self.position_affine_epochs,
            "position_search_px": self.position_search_px,
            "position_search_rounds": self.position_search_rounds,
        }


@dataclass(frozen=True)
class InferConfig:
    """The network's single pass and the stitching (``reconstruction.network``); recorded with
    a trained model (its ``execution.json``) and used when it reconstructs."""

    #: groups per inference batch; None: the value recorded with the model, else 64
    inference_batch_size: int | None = None
    #: rounds rotating every patch to the stitched estimate after the ring pass
    phase_sync_iterations: int = PHASE_SYNC_ITERATIONS

    def __post_init__(self):
        _check_int("inference_batch_size", self.inference_batch_size, 1, allow_none=True)
        _check_int("phase_sync_iterations", self.phase_sync_iterations, 0)
