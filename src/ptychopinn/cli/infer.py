"""``ptychopinn infer``: reconstruct a scan with a trained model in one pass and stitch it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import add_quiet_flag, add_units_flag, nonneg_int, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="reconstruct a scan with a trained model",
                       description="Single-pass reconstruction: groups the scan like training, runs "
                                   "the network, stitches all patches (probe-intensity-weighted) and "
                                   "writes OUTPUT_DIR/reconstruction.npz plus amplitude/phase PNGs.")
    p.add_argument("--model", type=Path, required=True,
                   help="model bundle file or training output directory holding model.ptpinn")
    p.add_argument("--data", type=Path, required=True, metavar="F", help="scan to reconstruct (NPZ)")
    p.add_argument("--output-dir", type=Path, required=True, help="output directory")
    p.add_argument("--inference-batch-size", type=positive_int, default=None,
                   help="groups per inference batch (default: the model's training batch size)")
    p.add_argument("--refine-epochs", type=nonneg_int, default=0,
                   help="physics refinement epochs on the scan's own likelihood after the network (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for grouping (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.data import load_scan
    from ptychopinn.inference import reconstruct
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.log import configure_cli_logging
    from ptychopinn.workflows import write_reconstruction_outputs

    configure_cli_logging(args.quiet)
    bundle = load_bundle(args.model)
    scan = load_scan(args.data, args.diffraction_units)
    batch = args.inference_batch_size or bundle.training_config.batch_size
    recon = reconstruct(bundle, scan, batch_size=batch, seed=args.seed, quiet=args.quiet)
    if args.refine_epochs:
        from ptychopinn.workflows import refine_reconstruction
        recon = refine_reconstruction(recon, scan, args.refine_epochs, quiet=args.quiet, seed=args.seed)
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    for p in paths:
        print(p)
    return 0
