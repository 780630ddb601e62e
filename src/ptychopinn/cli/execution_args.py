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
    INFERENCE_PRECISIONS,
    LOGGER_NAMES,
    LOSS_NAMES,
    OPTIMIZER_NAMES,
    OVERLAP_CONSTRAINTS,
    POSITION_SEARCH_MODES,
    PRECISION_NAMES,
    PROBE_REFINEMENT,
    REFINE_OPTIMIZERS,
    REFINE_SCHEDULES,
    SCHEDULER_ALIASES,
    SCHEDULER_NAMES,
    STRATEGY_NAMES,
    field_docs,
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
    "model.loss": list(LOSS_NAMES),
    "model.overlap_constraint": list(OVERLAP_CONSTRAINTS),
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
    "refine.position_search_mode": list(POSITION_SEARCH_MODES),
    "infer.inference_precision": list(INFERENCE_PRECISIONS),
}

#: each flag's help: the ``#:`` comment above its field in ptychopinn/config.py
HELP = field_docs()

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
