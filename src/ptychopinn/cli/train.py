"""``ptychopinn train``: train the physics-informed network on scans (no labels needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import add_scan_input_flags
from ptychopinn.cli.execution_args import add_config_arguments, run_config_from_args
from ptychopinn.errors import ConfigError

EPILOG = """\
Configuration precedence: a flag given on the command line > the --config file > the default.
Every run writes OUTPUT_DIR/config.resolved.yaml with each value and its source.
Inputs: NPZ files (--train-data, --test-data) or Ptychodus product.h5 + diffraction.h5 pairs
(--train-product/--train-diffraction, --test-product/--test-diffraction).
Accepted PtychoPINN spellings: --train_data_file, --test_data_file, --output_dir, --max_epochs,
--n_images (= --n-groups), --batch_size, --gridsize. Deprecated (warn): --device (use
--accelerator), --disable_mlflow (use --logger none --quiet).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on scans",
        description="Train the PtychoPINN network through the physics of the "
        "experiment; writes OUTPUT_DIR/model.ptpinn, "
        "OUTPUT_DIR/config.resolved.yaml, Lightning checkpoints in "
        "OUTPUT_DIR/checkpoints and logs in OUTPUT_DIR/lightning_logs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--train-data",
        "--train_data_file",
        nargs="+",
        type=Path,
        default=None,
        metavar="F",
        help="training scan(s) as PtychoPINN NPZ files; or one Ptychodus "
        "scan with --train-product P --train-diffraction D",
    )
    p.add_argument(
        "--train-product",
        "--product",
        type=Path,
        metavar="P",
        default=None,
        help="training scan as Ptychodus files: product.h5, with --train-diffraction",
    )
    p.add_argument(
        "--train-diffraction",
        "--diffraction",
        type=Path,
        metavar="D",
        default=None,
        help="Ptychodus diffraction.h5 paired with --train-product",
    )
    add_scan_input_flags(
        p,
        name="test-data",
        what="validation scan (default: a held-out fraction of the training groups)",
    )
    p.add_argument(
        "--test_data_file",
        dest="test_data",
        type=Path,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--output-dir",
        "--output_dir",
        type=Path,
        default=None,
        required=True,
        help="output directory",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model bundle")
    add_config_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.cli.common import load_scan_from_args, scan_input_given
    from ptychopinn.config_factory import check_run
    from ptychopinn.log import configure_cli_logging, get_logger
    from ptychopinn.models.registry import generator_names
    from ptychopinn.training.fit import fit
    from ptychopinn.training.trainer import resolve_resume

    rc = run_config_from_args(args)
    configure_cli_logging(rc.execution.quiet)
    check_run(rc)  # cross-field errors before any data is read (fit logs the warnings)
    resolve_resume(rc.execution.resume_from, args.output_dir)
    if rc.model.generator not in generator_names():
        raise ConfigError(
            f"--generator: unknown name {rc.model.generator!r}; expected one of {generator_names()}"
        )
    units = rc.data.diffraction_units
    train = _training_scans(args, units)
    test = None
    if scan_input_given(args, "test-data"):
        test = load_scan_from_args(_with_units(args, units), "test-data")
    result = fit(train, test, run_config=rc, output_dir=args.output_dir, overwrite=args.overwrite)
    if result.bundle_path is None:  # a non-zero DDP rank
        return 0
    log = get_logger("cli")
    log.info(
        "trained %d groups in %.1f s; %s",
        result.train_groups,
        result.seconds,
        ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())),
    )
    print(result.bundle_path)
    return 0


def _with_units(args: argparse.Namespace, units: str) -> argparse.Namespace:
    # load_scan_from_args reads ``diffraction_units``; ours is resolved through the config factory
    return argparse.Namespace(**{**vars(args), "diffraction_units": units})


def _training_scans(args: argparse.Namespace, units: str) -> list:
    """NPZ files from --train-data, or one Ptychodus scan from
    --train-product/--train-diffraction."""
    from ptychopinn.cli.common import load_scan_from_args
    from ptychopinn.data import load_scan

    if args.train_product is not None or args.train_diffraction is not None:
        if args.train_data:
            raise ConfigError(
                "give either --train-data (NPZ) or --train-product with "
                "--train-diffraction (Ptychodus files), not both"
            )
        ns = _with_units(args, units)
        ns.train_data = None
        return [load_scan_from_args(ns, "train-data")]
    if not args.train_data:
        raise ConfigError(
            "no training data: give --train-data F [F ...] (NPZ) or --train-product P "
            "--train-diffraction D (Ptychodus files)"
        )
    return [load_scan(f, units) for f in args.train_data]
