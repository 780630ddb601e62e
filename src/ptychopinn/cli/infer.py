"""``ptychopinn infer``: reconstruct a scan with a trained model in one pass and stitch it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (
    add_device_flags,
    add_patterns_flag,
    add_position_flags,
    add_quiet_flag,
    add_refine_probe_flag,
    add_scan_input_flags,
    add_units_flag,
    nonneg_int,
    position_kwargs,
    positive_float,
    positive_int,
    torch_device,
)
from ptychopinn.config import INFERENCE_BATCH_SIZE, inference_batch_size

PRODUCT_FILE = "product.h5"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="reconstruct a scan with a trained model",
        description="Single-pass reconstruction: groups the scan like training, runs "
        "the network, stitches all patches (probe-intensity-weighted) and "
        "writes OUTPUT_DIR/reconstruction.npz plus amplitude/phase PNGs "
        "(and, with --product-output, a Ptychodus product.h5).",
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model bundle file or training output directory holding model.ptpinn",
    )
    add_scan_input_flags(p, "data", what="scan to reconstruct")
    p.add_argument("--output-dir", type=Path, required=True, help="output directory")
    p.add_argument(
        "--inference-batch-size",
        type=positive_int,
        default=None,
        help="groups per inference batch (default: the value recorded with the model, else "
        f"{INFERENCE_BATCH_SIZE})",
    )
    p.add_argument(
        "--refine-prior-sigma",
        type=positive_float,
        default=None,
        help="keep refinement near the network output: Gaussian prior of this per-pixel "
        "width (about the output's expected error, e.g. 0.01; recommended at low dose; "
        "default none)",
    )
    p.add_argument(
        "--refine-epochs",
        type=nonneg_int,
        default=0,
        help="physics refinement epochs on the scan's own likelihood after the network (default 0)",
    )
    add_refine_probe_flag(p, "; the refined probe is written with the reconstruction")
    add_position_flags(p)
    add_patterns_flag(p)
    add_device_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed for grouping (default 0)")
    p.add_argument(
        "--product-output",
        action="store_true",
        help=f"also write OUTPUT_DIR/{PRODUCT_FILE} (Ptychodus product: the object on the "
        "input product's grid, its probe, positions and metadata; for NPZ input a "
        "grid from the scan's object / positions and pixel size)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.cli.common import load_scan_from_args
    from ptychopinn.io.atomic import check_new_output
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.log import configure_cli_logging
    from ptychopinn.reconstruction.network import reconstruct
    from ptychopinn.workflows import write_reconstruction_outputs

    configure_cli_logging(args.quiet)
    bundle = load_bundle(args.model)
    product_path = args.output_dir / PRODUCT_FILE if args.product_output else None
    if product_path is not None:
        check_new_output(product_path, args.overwrite)  # refuse before any work
    scan = load_scan_from_args(args, "data").patterns(args.patterns)
    batch = inference_batch_size(
        args.inference_batch_size, bundle.execution.get("inference_batch_size")
    )
    device = torch_device(args)
    if args.correct_positions and not args.refine_epochs:
        from ptychopinn.errors import ConfigError

        raise ConfigError(
            "--correct-positions corrects positions during refinement: give "
            "--refine-epochs N as well"
        )
    recon = reconstruct(
        bundle, scan, batch_size=batch, seed=args.seed, quiet=args.quiet, device=device
    )
    if args.refine_epochs:
        from ptychopinn.workflows import refine_reconstruction, resolve_probe_refinement

        recon = refine_reconstruction(
            recon,
            scan,
            args.refine_epochs,
            quiet=args.quiet,
            seed=args.seed,
            prior_sigma=args.refine_prior_sigma,
            device=device,
            **position_kwargs(args),
            refine_probe=resolve_probe_refinement(args.refine_probe, scan),
        )
    recon.metadata["patterns"] = args.patterns
    if recon.metadata.get("positions_corrected"):
        from dataclasses import replace

        scan = replace(scan, positions_px=recon.positions_px)  # the product gets the corrected ones
    product = _product_object(recon, scan) if product_path is not None else None
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    if product is not None:
        from ptychopinn.data.ptychodus_h5 import write_product_for_scan

        grid, obj = product
        paths.append(
            write_product_for_scan(
                product_path,
                scan,
                obj,
                grid=grid,
                losses=recon.metadata.get("refine_losses") or None,
                overwrite=args.overwrite,
            )
        )
    for p in paths:
        print(p)
    return 0


def _product_object(recon, scan):
    """(grid, object on it): the scan's object grid (the input product's grid for Ptychodus
    input, else one built from the scan; see ``scan_object_grid``) and the stitched canvas
    cropped/padded onto it."""
    from ptychopinn.data.ptychodus_h5 import canvas_to_grid, scan_object_grid

    grid = scan_object_grid(scan)
    return grid, canvas_to_grid(recon.object, recon.offset_px, grid.shape_hw)
