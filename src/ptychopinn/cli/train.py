"""``ptychopinn train``: train the physics-informed network on scans (no labels needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import add_quiet_flag, add_units_flag, positive_float, positive_int
from ptychopinn.cli.execution_args import add_execution_arguments, execution_config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on scans",
                       description="Train the PtychoPINN network through the physics of the "
                                   "experiment; writes OUTPUT_DIR/model.ptpinn, Lightning "
                                   "checkpoints in OUTPUT_DIR/checkpoints and logs in "
                                   "OUTPUT_DIR/lightning_logs.")
    p.add_argument("--train-data", nargs="+", type=Path, required=True, metavar="F",
                   help="training scan(s), PtychoPINN NPZ")
    p.add_argument("--test-data", type=Path, default=None, metavar="F",
                   help="validation scan (default: a held-out fraction of training groups)")
    p.add_argument("--output-dir", type=Path, required=True, help="output directory")
    p.add_argument("--gridsize", type=positive_int, default=1,
                   help="groups of gridsize^2 neighbouring patterns (default 1)")
    p.add_argument("--neighbors", type=positive_int, default=7,
                   help="K nearest neighbours a group is drawn from, >= gridsize^2 (default 7)")
    p.add_argument("--n-groups", type=positive_int, default=None,
                   help="number of training groups (default: one per position)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="groups per batch (default 16)")
    p.add_argument("--max-epochs", type=positive_int, default=30, help="maximum epochs (default 30)")
    p.add_argument("--loss", choices=["poisson", "mae"], default="poisson",
                   help="poisson: Poisson NLL on counts; mae: amplitude MAE (default poisson)")
    p.add_argument("--nphotons", type=positive_float, default=None,
                   help="initialise the gain so a unit object gives this many photons per pattern "
                        "(default: from the data)")
    p.add_argument("--generator", default="cnn", help="generator network name (default cnn)")
    p.add_argument("--n-filters-scale", type=positive_int, default=2,
                   help="network width: 16 x scale filters at the first level (default 2)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="held-out fraction of groups for validation without --test-data; 0 allowed (default 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model bundle")
    add_units_flag(p)
    add_quiet_flag(p)
    add_execution_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.config import DataConfig, ModelConfig, TrainingConfig
    from ptychopinn.data import load_scan
    from ptychopinn.log import configure_cli_logging, get_logger
    from ptychopinn.training.fit import fit

    configure_cli_logging(args.quiet)
    model_config = ModelConfig(gridsize=args.gridsize, generator=args.generator,
                               n_filters_scale=args.n_filters_scale, loss=args.loss)
    data_config = DataConfig(neighbors=args.neighbors, n_groups=args.n_groups,
                             val_fraction=args.val_fraction, diffraction_units=args.diffraction_units)
    training_config = TrainingConfig(max_epochs=args.max_epochs, batch_size=args.batch_size,
                                     nphotons=args.nphotons)
    execution_config = execution_config_from_args(args)
    from ptychopinn.models.registry import generator_names
    if args.generator not in generator_names():
        raise ValueError(f"--generator: unknown name {args.generator!r}; expected one of {generator_names()}")
    train = [load_scan(f, args.diffraction_units) for f in args.train_data]
    test = load_scan(args.test_data, args.diffraction_units) if args.test_data else None
    result = fit(train, test, model_config=model_config, data_config=data_config,
                 training_config=training_config, execution_config=execution_config,
                 output_dir=args.output_dir, overwrite=args.overwrite)
    log = get_logger("cli")
    log.info("trained %d groups in %.1f s; %s", result.train_groups, result.seconds,
             ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    print(result.bundle_path)
    return 0
