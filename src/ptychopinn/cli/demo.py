"""``ptychopinn demo``: the whole workflow on embedded defaults, no input files.

Simulates training scans (natural-image objects) and a held-out test scan with a different
object, trains the network, reconstructs the held-out scan in one pass, refines it on its own
likelihood, evaluates both against the ground truth and prints a metrics table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (
    add_device_flags,
    add_quiet_flag,
    nonneg_int,
    positive_float,
    positive_int,
    torch_device,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate, train, reconstruct and evaluate on embedded defaults",
        description="End-to-end demonstration on simulated data (a few minutes on a "
        "laptop CPU). Writes scans, the model, reconstructions, metrics "
        "and pictures to OUTPUT_DIR.",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("ptychopinn-demo"),
        help="output directory (default ptychopinn-demo)",
    )
    p.add_argument("--patch-size", type=positive_int, default=32, help="N (default 32)")
    p.add_argument(
        "--n-positions",
        type=positive_int,
        default=400,
        help="positions per training scan (default 400)",
    )
    p.add_argument(
        "--n-train-scans", type=positive_int, default=2, help="training scans (default 2)"
    )
    p.add_argument(
        "--test-positions",
        type=positive_int,
        default=196,
        help="positions of the held-out test scan (default 196)",
    )
    p.add_argument(
        "--photons", type=positive_float, default=1e6, help="photons per pattern (default 1e6)"
    )
    p.add_argument("--max-epochs", type=positive_int, default=5, help="training epochs (default 5)")
    p.add_argument(
        "--refine-epochs",
        type=nonneg_int,
        default=20,
        help="physics refinement epochs after the network (default 20; 0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo output")
    add_quiet_flag(p)
    add_device_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.log import configure_cli_logging
    from ptychopinn.workflows import DemoSettings, run_demo

    configure_cli_logging(args.quiet)
    settings = DemoSettings(
        patch_size=args.patch_size,
        n_positions=args.n_positions,
        n_train_scans=args.n_train_scans,
        test_positions=args.test_positions,
        photons=args.photons,
        max_epochs=args.max_epochs,
        refine_epochs=args.refine_epochs,
        seed=args.seed,
        quiet=args.quiet,
        device=torch_device(args),
    )
    result = run_demo(args.output_dir, settings, overwrite=args.overwrite)
    print(result.table())
    print("pictures:")
    for path in result.pictures:
        print(f"  {path}")
    return 0
