"""Configuration dataclasses, frozen and validated at construction.

``ModelConfig`` and ``DataConfig`` define what is learned and are stored in the model bundle.
``TrainingConfig`` holds the training-length/batch knobs; ``ExecutionConfig`` holds runtime-only
knobs that never change what a bundle is; ``RefineConfig`` and ``InferConfig`` hold the
reconstruction commands' settings. ``ptychopinn.config_factory.build_run_config`` builds them all
from defaults, a config file and explicit overrides (the CLI and the Python API share it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ptychopinn.errors import ConfigError


def _bad(field: str, value, expected: str):
    raise ConfigError(f"{field}: invalid value {value!r}; expected {expected}")


LOSS_NAMES = ("poisson", "mae")
#: what the overlap constraint of a group averages (ModelConfig.overlap_constraint)
OVERLAP_CONSTRAINTS = ("correction", "patches")


@dataclass(frozen=True)
class ModelConfig:
    """What the network is. ``n`` is taken from the data.

    Defaults are the measured recipe (docs/performance.md, "What mattered"): groups of 2 x 2
    patterns, a physics estimate from 20 projection iterations as input (the network learns a
    correction of it), skip connections (the estimate is in real space, aligned with the
    output), width scale 1. ``physics_iterations=0`` gives the plain amplitudes-only network.
    """

    #: pattern size N (always the data's)
    n: int = 64
    #: groups of gridsize^2 neighbouring patterns
    gridsize: int = 2
    #: generator network name
    generator: str = "cnn"
    #: network width: 16 x scale filters at the first level
    n_filters_scale: int = 1
    #: U-Net skip connections in the generator
    skip_connections: bool = True
    #: upper bound of the predicted object amplitude
    amp_max: float = 2.0
    #: patch support as a fraction of N
    support: float | None = None
    #: poisson: Poisson NLL on counts; mae: amplitude MAE
    loss: str = "poisson"
    #: train the intensity gain (else keep its data-derived value)
    trainable_gain: bool = True
    #: physics projection iterations giving the generator a first estimate
    physics_iterations: int = 20
    #: with an estimate input and gridsize > 1, what the group's overlap constraint averages:
    #: correction (the network's change of the already consistent estimate) or patches (the
    #: network's output patches; bundles made before this setting existed)
    overlap_constraint: str = "correction"

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
        if self.overlap_constraint not in OVERLAP_CONSTRAINTS:
            _bad(
                "overlap_constraint", self.overlap_constraint, f"one of {list(OVERLAP_CONSTRAINTS)}"
            )
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

    #: K nearest neighbours a group is drawn from, >= gridsize^2
    neighbors: int = 7
    #: number of training groups
    n_groups: int | None = None
    #: held-out fraction of patterns (a contiguous block, grouped apart from the training patterns)
    #: for validation without --test-data; 0 allowed
    val_fraction: float = 0.1
    #: units of the diffraction arrays in NPZ inputs; auto honours the file's 'diffraction_units'
    #: entry, else detects
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

    #: maximum epochs
    max_epochs: int = 30
    #: groups per batch (per device)
    batch_size: int = 16
    #: initialise the gain so a unit object gives this many photons per pattern
    nphotons: float | None = None
    #: weight of the supervised patch loss when ground truth exists
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


def field_docs() -> dict[str, str]:
    """``{"section.field": doc}``: the ``#:`` comment above each field of the config dataclasses
    (the one place a field is documented; the CLI help and the generated CLI reference show it).
    Read from this module's source with ``ast``/line scanning, so it needs no import of torch."""
    import ast
    from pathlib import Path

    source = Path(__file__).read_text()
    lines = source.splitlines()
    sections = {cls.__name__: name for name, cls in _SECTION_CLASSES.items()}
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                doc, row = [], item.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    doc.insert(0, lines[row].strip()[2:].strip())
                    row -= 1
                out[f"{sections[node.name]}.{item.target.id}"] = " ".join(doc)
    return out


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
    precedence, e.g. the CLI flag, the run's infer config, the bundle's recorded value), else
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
#: refinement followed by a grid search of every position (within the radius, halved each round;
#: the object then restarts from its start); then the gradient correction with
#: POSITION_RESCUE_CYCLES rescue cycles of POSITION_RESCUE_INTERVAL epochs (the patterns the
#: object does not explain are left out of it for half a cycle, then searched again) and one
#: restart of the object from the found positions. Measured on an independently simulated
#: 500-pattern N = 64 scan (benchmarks/positions.py; docs/performance.md).
POSITION_SEARCH_ROUNDS = 2
POSITION_SEARCH_INTERVAL = 20
POSITION_RESCUE_CYCLES = 6
POSITION_RESCUE_INTERVAL = 30
#: How the search phase places the patterns (``position_search_mode``): "global" searches every
#: pattern against one object built from all of them (measured best for independent errors per
#: pattern); "grow" searches the POSITION_GROW_SEED patterns nearest the scan's centre against
#: their own object, then adds the rest from the centre outwards in at most
#: POSITION_GROW_STAGES blocks (of at least POSITION_GROW_BLOCK patterns), each searched around
#: the correction of its placed neighbours against the object of the patterns already placed,
#: which then gets POSITION_GROW_EPOCHS epochs: for smooth errors (stage drift, scale, rotation,
#: shear), which an object built from all patterns at once absorbs as a distortion.
POSITION_SEARCH_MODES = ("global", "grow")
POSITION_GROW_SEED = 60
POSITION_GROW_BLOCK = 40
POSITION_GROW_STAGES = 12
POSITION_GROW_EPOCHS = 5
ACCELERATOR_NAMES = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISION_NAMES = ("32-true", "16-mixed", "bf16-mixed", "64-true")
#: precisions of the network's single pass (``InferConfig.inference_precision``)
INFERENCE_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
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
    #: Lightning accelerator; auto picks cuda, then mps, then cpu (tpu is not supported)
    accelerator: str = "auto"
    #: number of devices (processes per node) or 'auto'
    devices: int | str = "auto"
    #: Lightning strategy; DDP variants for several devices (ddp_spawn or ddp on CPU use the gloo
    #: backend)
    strategy: str = "auto"
    #: number of machines
    num_nodes: int = 1
    #: numeric precision (16-mixed falls back to bf16-mixed on CPU)
    precision: str = "32-true"
    #: use deterministic algorithms only (slower on GPU)
    deterministic: bool = False
    #: torch anomaly detection: name the operation that produced a NaN/inf gradient (much slower;
    #: for debugging a diverging run)
    detect_anomaly: bool = False
    #: one seed for grouping, the validation split, weight init and batch order
    seed: int = 0
    # DataLoader
    #: DataLoader worker processes (0: load in the main process)
    num_workers: int = 0
    #: page-locked host memory for faster GPU transfers
    pin_memory: bool = False
    #: keep workers alive between epochs (needs --num-workers > 0)
    persistent_workers: bool = False
    #: batches prefetched per worker (needs --num-workers > 0)
    prefetch_factor: int | None = None
    # Optimisation
    #: initial learning rate (> 0)
    learning_rate: float = 1e-3
    #: training optimizer: adam, adamw (decoupled weight decay) or sgd
    optimizer: str = "adam"
    #: SGD momentum in [0, 1) (sgd only; 0: plain SGD)
    momentum: float = 0.9
    #: weight decay (>= 0; decoupled for adamw)
    weight_decay: float = 0.0
    #: learning-rate schedule, stepped once per epoch: Default constant; Exponential lr*gamma^epoch;
    #: MultiStage x gamma at each milestone; Adaptive (alias ReduceLROnPlateau) x plateau-factor
    #: when the monitored metric stalls; WarmupCosine linear warm-up then cosine to min-lr
    scheduler: str = "Default"
    #: decay factor in (0, 1] of Exponential and MultiStage
    lr_gamma: float = 0.95
    #: MultiStage epochs at which the LR is multiplied by lr-gamma (e.g. --lr-milestones 10 20)
    lr_milestones: tuple[int, ...] = ()
    #: Adaptive: LR factor in (0, 1) applied on a plateau
    plateau_factor: float = 0.5
    #: Adaptive: epochs without improvement before reducing
    plateau_patience: int = 2
    #: lower LR bound of Adaptive and the end value of WarmupCosine
    min_lr: float = 0.0
    #: WarmupCosine: linear warm-up epochs (< max-epochs)
    warmup_epochs: int = 0
    #: accumulate gradients over K batches per optimiser step; effective batch = batch x K x devices
    #: x nodes
    accumulate_grad_batches: int = 1
    #: clip gradients at this value
    gradient_clip_val: float | None = None
    #: clip the gradient norm or each value
    gradient_clip_algorithm: str = "norm"
    # Checkpointing and early stopping
    #: write Lightning checkpoints to OUTPUT_DIR/checkpoints (best by the monitor, plus last.ckpt)
    enable_checkpointing: bool = True
    #: best checkpoints kept: -1 all, 0 none (last.ckpt only), k
    checkpoint_save_top_k: int = 1
    #: metric for checkpoints, early stopping and Adaptive; val_loss means the model's validation
    #: loss (e.g. poisson_val_loss), or its training loss when there is no validation data
    checkpoint_monitor: str = "val_loss"
    #: whether the monitored metric should be minimised or maximised
    checkpoint_mode: str = "min"
    #: stop when the monitored metric has not improved for --early-stop-patience epochs
    #: (--no-early-stopping disables it)
    early_stopping: bool = True
    #: early-stopping patience in epochs (>= 1)
    early_stop_patience: int = 5
    #: resume training from a Lightning checkpoint PATH, or 'last' for
    #: OUTPUT_DIR/checkpoints/last.ckpt
    resume_from: str | None = None
    # Logging and output
    #: training logger: csv/tensorboard under OUTPUT_DIR/lightning_logs, mlflow to
    #: --mlflow-tracking-uri, none
    logger: str = "csv"
    #: MLflow tracking URI
    mlflow_tracking_uri: str | None = None
    #: MLflow experiment name
    experiment_name: str = "ptychopinn"
    #: only warnings and errors: no progress bars, model summary or info lines
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

    #: refinement epochs on the scan's own Poisson likelihood (stopping earlier once the plateau
    #: rule has decayed the step, see --stop-when-converged)
    refine_epochs: int = 0
    #: patterns per refinement step
    refine_batch_size: int = 64
    #: refinement optimiser: pgd (gradient preconditioned by the probe illumination) or adam
    refine_optimizer: str | None = None
    #: refinement step: PGD step or Adam learning rate
    refine_lr: float | None = None
    #: plateau: halve the step when the loss stalls; constant: never
    refine_schedule: str = "plateau"
    #: epochs of the plateau test
    refine_patience: int | None = None
    #: keep refinement near its start (the network output): Gaussian prior of this per-pixel width
    #: (e.g. 0.01; recommended at low dose)
    refine_prior_sigma: float | None = None
    #: stop refinement after the first epoch that ends past this many seconds
    refine_time_limit_s: float | None = None
    #: stop once the plateau rule has cut the step below 1/50
    stop_when_converged: bool = True
    #: retrieve the probe jointly during refinement: auto = unless the scan's probe is known to be
    #: the true one (scans made by ptychopinn simulate, or metadata probe_known); the refined probe
    #: is written with the reconstruction
    refine_probe: str = "auto"
    #: refinement epoch (from 0) at which probe retrieval starts
    probe_start_epoch: int = 2
    #: probe optimiser: pgd (preconditioned by the object intensity, like ePIE) or adam
    probe_optimizer: str = "pgd"
    #: probe step: PGD step or Adam learning rate for a probe of peak amplitude 1
    probe_lr: float | None = None
    #: pin the phase-ramp and translation ambiguities of joint object/probe retrieval after every
    #: epoch
    fix_gauge: bool = True
    #: correct each pattern's scan position during refinement (affine first, then per pattern; the
    #: corrected positions are written with the reconstruction)
    correct_positions: bool = False
    #: refinement epoch (from 0) at which position correction starts
    position_start_epoch: int = POSITION_START_EPOCH
    #: position change per pattern per epoch, pixels (at most twice this per axis)
    position_step_px: float = POSITION_STEP_PX
    #: epochs of the affine-only phase of position correction
    position_affine_epochs: int = POSITION_AFFINE_EPOCHS
    #: errors up to this many pixels per axis are first found in a phase of its own before the
    #: refinement epochs (coarse searches of each pattern's likelihood, lost patterns searched
    #: again, then the object restarts; for errors of several pixels, beyond the gradient's
    #: reach); 0 = no search
    position_search_px: float = 0.0
    #: rounds of the coarse search, each after 20 epochs of object refinement, the radius halved
    #: each round; the gradient correction starts --position-start-epoch epochs after the last
    position_search_rounds: int = POSITION_SEARCH_ROUNDS
    #: how the search phase places the patterns: global (every pattern against one object of
    #: all: independent errors per pattern) or grow (from the scan's centre outwards, each block
    #: against the object of those already placed: smooth errors such as drift, scale, rotation)
    position_search_mode: str = "global"
    #: refinement epoch (from 0) at which the object starts changing; before it only the probe
    #: and the positions do (e.g. positions against the network's object first: with
    #: --position-start-epoch 0)
    object_start_epoch: int = 0

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
        _check_choice("position_search_mode", self.position_search_mode, POSITION_SEARCH_MODES)
        _check_int("object_start_epoch", self.object_start_epoch, 0)

    def refine_kwargs(self) -> dict:
        """``reconstruction.gradient.refine`` keyword arguments: every field under its name
        without the ``refine_`` prefix, but ``refine_epochs`` and ``refine_probe`` (the caller
        passes them, resolving the probe choice against the scan)."""
        return {
            f.name.removeprefix("refine_"): getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("refine_epochs", "refine_probe")
        }


@dataclass(frozen=True)
class InferConfig:
    """The network's single pass and the stitching (``reconstruction.network``); recorded with
    a trained model (its ``execution.json``) and used when it reconstructs."""

    #: groups per inference batch, recorded with the model
    inference_batch_size: int | None = None
    #: stitching: rounds rotating every patch's free phase to the stitched estimate after the ring
    #: pass
    phase_sync_iterations: int = PHASE_SYNC_ITERATIONS
    #: numeric precision of the network in the single pass: 32-true, or bf16-mixed / 16-mixed
    #: (the U-Net under autocast; the physics estimate, its FFTs and the stitching stay float32;
    #: 16-mixed is bf16-mixed off CUDA)
    inference_precision: str = "32-true"

    def __post_init__(self):
        _check_int("inference_batch_size", self.inference_batch_size, 1, allow_none=True)
        _check_int("phase_sync_iterations", self.phase_sync_iterations, 0)
        _check_choice("inference_precision", self.inference_precision, INFERENCE_PRECISIONS)


#: section name -> dataclass (``config_factory.SECTIONS`` is this mapping)
_SECTION_CLASSES = {
    "model": ModelConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "execution": ExecutionConfig,
    "refine": RefineConfig,
    "infer": InferConfig,
}
