"""CLI flags for every config field and their conversion through the one config factory.

Each dataclass field ``name`` has the flag ``--name-with-hyphens`` (booleans: ``--name`` /
``--no-name``; checkpointing: ``--enable-checkpointing`` / ``--disable-checkpointing``). Flags
carry no argparse defaults, so the namespace holds exactly the flags given on the command line;
``run_config_from_args`` passes those to ``build_run_config`` as the highest-precedence source,
above ``--config FILE`` and the dataclass defaults (shown in the help).
"""

from __future__ import annotations

import argparse
import typing
import warnings
from dataclasses import fields

from ptychopinn.config import (
    ACCELERATOR_NAMES,
    CHECKPOINT_MODES,
    GRADIENT_CLIP_ALGORITHMS,
    INFERENCE_BATCH_SIZE,
    LOGGER_NAMES,
    OPTIMIZER_NAMES,
    POSITION_SEARCH_INTERVAL,
    PRECISION_NAMES,
    PROBE_REFINEMENT,
    REFINE_OPTIMIZERS,
    REFINE_SCHEDULES,
    SCHEDULER_ALIASES,
    SCHEDULER_NAMES,
    STRATEGY_NAMES,
)
from ptychopinn.config_factory import (
    SECTIONS,
    SOURCE_CLI,
    RunConfig,
    build_run_config,
    coerce_value,
    flag_name,
)

#: namespace attribute prefix of config flags (``cfg:execution.learning_rate``)
DEST_PREFIX = "cfg:"
#: the sections whose flags ``train`` takes (all but refinement)
TRAIN_SECTIONS = ("model", "data", "training", "execution", "infer")

CHOICES = {
    "model.loss": ["poisson", "mae"],
    "data.diffraction_units": ["auto", "counts", "amplitude"],
    "execution.accelerator": list(ACCELERATOR_NAMES),
    "execution.strategy": list(STRATEGY_NAMES),
    "execution.precision": list(PRECISION_NAMES),
    "execution.optimizer": list(OPTIMIZER_NAMES),
    "execution.scheduler": list(SCHEDULER_NAMES) + list(SCHEDULER_ALIASES),
    "execution.gradient_clip_algorithm": list(GRADIENT_CLIP_ALGORITHMS),
    "execution.checkpoint_mode": list(CHECKPOINT_MODES),
    "execution.logger": list(LOGGER_NAMES),
    "refine.refine_optimizer": list(REFINE_OPTIMIZERS),
    "refine.refine_schedule": list(REFINE_SCHEDULES),
    "refine.refine_probe": list(PROBE_REFINEMENT),
    "refine.probe_optimizer": list(REFINE_OPTIMIZERS),
}

HELP = {
    # model
    "model.gridsize": "groups of gridsize^2 neighbouring patterns",
    "model.generator": "generator network name",
    "model.n_filters_scale": "network width: 16 x scale filters at the first level",
    "model.skip_connections": "U-Net skip connections in the generator",
    "model.amp_max": "upper bound of the predicted object amplitude",
    "model.support": "patch support as a fraction of N",
    "model.loss": "poisson: Poisson NLL on counts; mae: amplitude MAE",
    "model.trainable_gain": "train the intensity gain (else keep its data-derived value)",
    "model.physics_iterations": "physics projection iterations giving the generator a first "
    "estimate",
    # data
    "data.neighbors": "K nearest neighbours a group is drawn from, >= gridsize^2",
    "data.n_groups": "number of training groups",
    "data.val_fraction": "held-out fraction of patterns (a contiguous block, grouped apart from "
    "the training patterns) for validation without --test-data; 0 allowed",
    "data.diffraction_units": "units of the diffraction arrays in NPZ inputs; auto honours the "
    "file's 'diffraction_units' entry, else detects",
    # training
    "training.max_epochs": "maximum epochs",
    "training.batch_size": "groups per batch (per device)",
    "training.nphotons": "initialise the gain so a unit object gives this many photons per pattern",
    "training.supervised_weight": "weight of the supervised patch loss when ground truth exists",
    # execution: trainer
    "execution.accelerator": "Lightning accelerator; auto picks cuda, then mps, then cpu "
    "(tpu is not supported)",
    "execution.devices": "number of devices (processes per node) or 'auto'",
    "execution.strategy": "Lightning strategy; DDP variants for several devices (ddp_spawn or "
    "ddp on CPU use the gloo backend)",
    "execution.num_nodes": "number of machines",
    "execution.precision": "numeric precision (16-mixed falls back to bf16-mixed on CPU)",
    "execution.deterministic": "use deterministic algorithms only (slower on GPU)",
    "execution.detect_anomaly": "torch anomaly detection: name the operation that produced a "
    "NaN/inf gradient (much slower; for debugging a diverging run)",
    "execution.seed": "one seed for grouping, the validation split, weight init and batch order",
    # execution: data loader
    "execution.num_workers": "DataLoader worker processes (0: load in the main process)",
    "execution.pin_memory": "page-locked host memory for faster GPU transfers",
    "execution.persistent_workers": "keep workers alive between epochs (needs --num-workers > 0)",
    "execution.prefetch_factor": "batches prefetched per worker (needs --num-workers > 0)",
    # execution: optimisation
    "execution.learning_rate": "initial learning rate (> 0)",
    "execution.optimizer": "optimizer",
    "execution.momentum": "SGD momentum in [0, 1) (sgd only; 0: plain SGD)",
    "execution.weight_decay": "weight decay (>= 0; decoupled for adamw)",
    "execution.scheduler": "learning-rate schedule, stepped once per epoch: Default constant; "
    "Exponential lr*gamma^epoch; MultiStage x gamma at each milestone; "
    "Adaptive (alias ReduceLROnPlateau) x plateau-factor when the monitored "
    "metric stalls; WarmupCosine linear warm-up then cosine to min-lr",
    "execution.lr_gamma": "decay factor in (0, 1] of Exponential and MultiStage",
    "execution.lr_milestones": "MultiStage epochs at which the LR is multiplied by lr-gamma "
    "(e.g. --lr-milestones 10 20)",
    "execution.plateau_factor": "Adaptive: LR factor in (0, 1) applied on a plateau",
    "execution.plateau_patience": "Adaptive: epochs without improvement before reducing",
    "execution.min_lr": "lower LR bound of Adaptive and the end value of WarmupCosine",
    "execution.warmup_epochs": "WarmupCosine: linear warm-up epochs (< max-epochs)",
    "execution.accumulate_grad_batches": "accumulate gradients over K batches per optimiser step; "
    "effective batch = batch x K x devices x nodes",
    "execution.gradient_clip_val": "clip gradients at this value",
    "execution.gradient_clip_algorithm": "clip the gradient norm or each value",
    # execution: checkpoints and early stopping
    "execution.enable_checkpointing": "write Lightning checkpoints to OUTPUT_DIR/checkpoints "
    "(best by the monitor, plus last.ckpt)",
    "execution.checkpoint_save_top_k": "best checkpoints kept: -1 all, 0 none (last.ckpt only), k",
    "execution.checkpoint_monitor": "metric for checkpoints, early stopping and Adaptive; val_loss "
    "means the model's validation loss (e.g. poisson_val_loss), or "
    "its training loss when there is no validation data",
    "execution.checkpoint_mode": "whether the monitored metric should be minimised or maximised",
    "execution.early_stopping": "stop when the monitored metric has not improved for "
    "--early-stop-patience epochs (--no-early-stopping disables it)",
    "execution.early_stop_patience": "early-stopping patience in epochs (>= 1)",
    "execution.resume_from": "resume training from a Lightning checkpoint PATH, or 'last' for "
    "OUTPUT_DIR/checkpoints/last.ckpt",
    # execution: logging
    "execution.logger": "training logger: csv/tensorboard under OUTPUT_DIR/lightning_logs, mlflow "
    "to --mlflow-tracking-uri, none",
    "execution.mlflow_tracking_uri": "MLflow tracking URI",
    "execution.experiment_name": "MLflow experiment name",
    "execution.quiet": "only warnings and errors: no progress bars, model summary or info lines",
    # refine: gradient refinement on the scan's own likelihood
    "refine.refine_epochs": "refinement epochs on the scan's own Poisson likelihood (stopping "
    "earlier once the plateau rule has decayed the step, see --stop-when-converged)",
    "refine.refine_batch_size": "patterns per refinement step",
    "refine.refine_optimizer": "refinement optimiser: pgd (gradient preconditioned by the "
    "probe illumination) or adam",
    "refine.refine_lr": "refinement step: PGD step or Adam learning rate",
    "refine.refine_schedule": "plateau: halve the step when the loss stalls; constant: never",
    "refine.refine_patience": "epochs of the plateau test",
    "refine.refine_prior_sigma": "keep refinement near its start (the network output): Gaussian "
    "prior of this per-pixel width (e.g. 0.01; recommended at low dose)",
    "refine.refine_time_limit_s": "stop refinement after the first epoch that ends past this "
    "many seconds",
    "refine.stop_when_converged": "stop once the plateau rule has cut the step below 1/50",
    "refine.refine_probe": "retrieve the probe jointly during refinement: auto = unless the "
    "scan's probe is known to be the true one (scans made by ptychopinn simulate, or metadata "
    "probe_known); the refined probe is written with the reconstruction",
    "refine.probe_start_epoch": "refinement epoch (from 0) at which probe retrieval starts",
    "refine.probe_optimizer": "probe optimiser: pgd (preconditioned by the object intensity, "
    "like ePIE) or adam",
    "refine.probe_lr": "probe step",
    "refine.fix_gauge": "pin the phase-ramp and translation ambiguities of joint object/probe "
    "retrieval after every epoch",
    "refine.correct_positions": "correct each pattern's scan position during refinement (affine "
    "first, then per pattern; the corrected positions are written with the reconstruction)",
    "refine.position_start_epoch": "refinement epoch (from 0) at which position correction starts",
    "refine.position_step_px": "position change per pattern per epoch, pixels (at most twice "
    "this per axis)",
    "refine.position_affine_epochs": "epochs of the affine-only phase of position correction",
    "refine.position_search_px": "errors up to this many pixels per axis are first found by a "
    "coarse search of each pattern's likelihood (for errors of several pixels, beyond the "
    "gradient's reach); 0 = no search",
    "refine.position_search_rounds": "rounds of the coarse search, each after "
    f"{POSITION_SEARCH_INTERVAL} epochs of object refinement; the gradient correction starts "
    "--position-start-epoch epochs after the last",
    # infer: the network pass and stitching
    "infer.inference_batch_size": "groups per inference batch, recorded with the model",
    "infer.phase_sync_iterations": "stitching: rounds rotating every patch's free phase to the "
    "stitched estimate after the ring pass",
}

#: default shown in the help where the dataclass default is None
DEFAULT_TEXT = {
    "model.support": "the whole patch",
    "data.n_groups": "one per position",
    "training.nphotons": "from the data",
    "execution.prefetch_factor": "PyTorch's",
    "execution.gradient_clip_val": "no clipping",
    "execution.resume_from": "start fresh",
    "execution.mlflow_tracking_uri": "the file store OUTPUT_DIR/mlruns",
    "refine.refine_optimizer": "pgd from a flat start, adam from a given object",
    "refine.refine_lr": "by optimiser and start",
    "refine.refine_patience": "20 from a flat start, 3 from a given object",
    "refine.refine_prior_sigma": "none: maximum likelihood",
    "refine.refine_time_limit_s": "no limit",
    "refine.probe_lr": "by optimiser",
    "infer.inference_batch_size": f"the model's recorded value, else {INFERENCE_BATCH_SIZE}",
}

GROUP_TITLES = {
    "model": "model (what the network is; stored in the bundle)",
    "data": "data (how scans become training groups)",
    "training": "training (length and batch size)",
    "execution": "execution (how training runs; runtime only, not part of the model)",
    "refine": "refine (gradient refinement on the scan's own likelihood)",
    "infer": "infer (the network pass and stitching)",
}

#: extra spellings accepted without a warning (PtychoPINN's underscore names), hidden from help
ALIASES = {
    "training.max_epochs": ["--max_epochs"],
    "training.batch_size": ["--batch_size"],
    "data.n_groups": ["--n_images"],
}


def _type(key: str):
    def parse(text: str):
        try:
            return coerce_value(key, text, label="")
        except ValueError as exc:  # "label: invalid value ...": argparse names the flag itself
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    parse.__name__ = key.split(".", 1)[1]
    return parse


def _default_text(cls, key: str) -> str:
    name = key.split(".", 1)[1]
    default = DEFAULT_TEXT.get(key, getattr(cls(), name))
    if isinstance(default, tuple):
        default = " ".join(map(str, default)) or "none"
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f" (default: {default})"


def _deprecated(message: str) -> None:
    # Shown even where DeprecationWarning is filtered by default: a CLI user has no other way
    # to see it.
    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecationWarning)
        warnings.warn_explicit(message, DeprecationWarning, filename="ptychopinn", lineno=0)


class _DeprecatedDevice(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        _deprecated("--device is deprecated; use --accelerator")
        setattr(namespace, DEST_PREFIX + "execution.accelerator", values)


class _DeprecatedDisableMlflow(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _deprecated("--disable_mlflow is deprecated; use --logger none --quiet")
        setattr(namespace, DEST_PREFIX + "execution.logger", "none")
        setattr(namespace, DEST_PREFIX + "execution.quiet", True)


def _existing(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public accessor


def add_config_arguments(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] = TRAIN_SECTIONS,
    exclude: tuple[str, ...] = ("model.n",),
    only: tuple[str, ...] | None = None,
) -> None:
    """Add ``--config`` and one flag per field of ``sections`` (minus ``exclude``; with ``only``,
    just the keys and whole sections it names), the underscore aliases and, with all of
    ``execution``, the deprecated spellings ``--device`` and ``--disable_mlflow``."""
    if "--config" not in _existing(parser):
        parser.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML config file with the same keys as the flags (underscores; "
            "sections model/data/training/execution/refine/infer or flat). Precedence: "
            "command-line flag > config file > default. A run's "
            "OUTPUT_DIR/config.resolved.yaml can be reused here",
        )
    for section in sections:
        cls = SECTIONS[section]
        group = parser.add_argument_group(GROUP_TITLES[section])
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            key = f"{section}.{f.name}"
            if key in exclude or (only is not None and key not in only and section not in only):
                continue
            flag = flag_name(key)
            if flag in _existing(parser):
                continue
            dest = DEST_PREFIX + key
            text = HELP.get(key, f"{cls.__name__}.{f.name}") + _default_text(cls, key)
            if key == "execution.enable_checkpointing":
                group.add_argument(
                    "--enable-checkpointing",
                    dest=dest,
                    action="store_const",
                    const=True,
                    default=argparse.SUPPRESS,
                    help=text,
                )
                group.add_argument(
                    "--disable-checkpointing",
                    dest=dest,
                    action="store_const",
                    const=False,
                    default=argparse.SUPPRESS,
                    help="no Lightning checkpoints (resume impossible)",
                )
            elif hints[f.name] is bool:
                group.add_argument(
                    flag,
                    dest=dest,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=text,
                )
            elif key == "execution.lr_milestones":
                group.add_argument(
                    flag,
                    dest=dest,
                    nargs="+",
                    metavar="EPOCH",
                    type=str,
                    default=argparse.SUPPRESS,
                    help=text,
                )
            else:
                # choices are validated by the dataclass, not argparse, so that a bad value gets
                # the same message from the CLI, a config file and Python
                metavar = "{" + ",".join(CHOICES[key]) + "}" if key in CHOICES else f.name.upper()
                group.add_argument(
                    flag,
                    dest=dest,
                    default=argparse.SUPPRESS,
                    help=text,
                    type=_type(key),
                    metavar=metavar,
                )
            for alias in ALIASES.get(key, []):
                if alias not in _existing(parser):
                    parser.add_argument(
                        alias,
                        dest=dest,
                        type=_type(key),
                        default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS,
                    )
    if "execution" in sections and only is None:
        parser.add_argument(
            "--device", action=_DeprecatedDevice, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        parser.add_argument(
            "--disable_mlflow",
            action=_DeprecatedDisableMlflow,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def explicit_overrides(args: argparse.Namespace) -> dict:
    """``{"section.field": value}`` of the config flags given on the command line."""
    out = {}
    for dest, value in vars(args).items():
        if not dest.startswith(DEST_PREFIX):
            continue
        key = dest[len(DEST_PREFIX) :]
        if key == "execution.lr_milestones":
            value = " ".join(value)
        out[key] = value
    return out


def run_config_from_args(
    args: argparse.Namespace, command_defaults: dict | None = None
) -> RunConfig:
    """The RunConfig of a command line: flags given > ``--config`` file > the subcommand's own
    defaults (``command_defaults``) > the dataclass defaults."""
    return build_run_config(
        explicit_overrides(args),
        config_file=getattr(args, "config", None),
        override_source=SOURCE_CLI,
        command_defaults=command_defaults,
    )
