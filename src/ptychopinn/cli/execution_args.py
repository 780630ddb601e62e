"""CLI flags of ExecutionConfig (runtime-only knobs) and their conversion to the dataclass."""

from __future__ import annotations

import argparse

from ptychopinn.cli.common import nonneg_int, positive_float
from ptychopinn.config import ExecutionConfig, LOGGER_NAMES


def _devices(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid devices value {text!r}: expected an int or 'auto'") from None


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("execution (runtime only; not part of the model)")
    g.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"],
                   help="Lightning accelerator (default auto)")
    g.add_argument("--devices", type=_devices, default="auto", help="number of devices or 'auto' (default auto)")
    g.add_argument("--seed", type=int, default=0,
                   help="one seed for grouping, the validation split, weight init and batch order (default 0)")
    g.add_argument("--num-workers", type=nonneg_int, default=0, help="DataLoader worker processes (default 0)")
    g.add_argument("--learning-rate", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    g.add_argument("--logger", choices=list(LOGGER_NAMES), default="csv", help="training logger (default csv)")


def execution_config_from_args(args: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(accelerator=args.accelerator, devices=args.devices, seed=args.seed,
                           num_workers=args.num_workers, learning_rate=args.learning_rate,
                           logger=args.logger, quiet=args.quiet)
