"""``ptychopinn infer``: reconstruct a scan with a trained model in one pass and stitch it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (
    RUN_DEFAULTS,
    RUN_KEYS,
    add_patterns_flag,
    add_probe_from_flag,
    add_scan_input_flags,
    add_units_flag,
    check_run_audit,
    devices_of,
    with_probe_from,
    write_run_audit,
)
from ptychopinn.cli.execution_args import add_config_arguments, run_config_from_args
from ptychopinn.config import inference_batch_size

PRODUCT_FILE = "product.h5"
#: the configuration ``infer`` takes: where it runs, the network pass, refinement after it
INFER_KEYS = (*RUN_KEYS, "execution.strategy", "infer", "refine")
#: strategies of a network pass on several devices
INFER_STRATEGIES = ("auto", "ddp", "ddp_spawn")


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
    add_patterns_flag(p)
    add_probe_from_flag(p)
    p.add_argument(
        "--product-output",
        action="store_true",
        help=f"also write OUTPUT_DIR/{PRODUCT_FILE} (Ptychodus product: the object on the "
        "input product's grid, its probe, positions and metadata; for NPZ input a "
        "grid from the scan's object / positions and pixel size)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_config_arguments(p, sections=("execution", "infer", "refine"), only=INFER_KEYS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ptychopinn.cli.common import load_scan_from_args
    from ptychopinn.io.atomic import check_new_output
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.log import configure_cli_logging
    from ptychopinn.workflows import network_reconstruction, write_reconstruction_outputs

    rc = run_config_from_args(args, command_defaults=RUN_DEFAULTS)
    e, r = rc.execution, rc.refine
    configure_cli_logging(e.quiet)
    device, n_devices = devices_of(e.accelerator, e.devices)  # refuse before any work
    if n_devices > 1:
        if e.strategy not in INFER_STRATEGIES:
            from ptychopinn.errors import ConfigError

            raise ConfigError(
                f"--strategy {e.strategy}: the network pass on several devices runs under "
                f"{' or '.join(INFER_STRATEGIES[1:])} (auto: Lightning's choice, ddp)"
            )
        import lightning.pytorch  # noqa: F401  (it sets its loggers' levels when imported)

        configure_cli_logging(e.quiet)
    bundle = load_bundle(args.model)
    product_path = args.output_dir / PRODUCT_FILE if args.product_output else None
    if product_path is not None:
        check_new_output(product_path, args.overwrite)  # refuse before any work
    check_run_audit(args.output_dir, args.overwrite)
    scan = load_scan_from_args(args, "data").patterns(args.patterns)
    scan = with_probe_from(scan, args.probe_from)
    if r.correct_positions and not r.refine_epochs:
        from ptychopinn.errors import ConfigError

        raise ConfigError(
            "--correct-positions corrects positions during refinement: give "
            "--refine-epochs N as well"
        )
    recon = network_reconstruction(
        bundle,
        scan,
        batch_size=inference_batch_size(
            rc.infer.inference_batch_size, bundle.execution.get("inference_batch_size")
        ),
        phase_sync_iterations=rc.infer.phase_sync_iterations,
        precision=rc.infer.inference_precision,
        seed=e.seed,
        quiet=e.quiet,
        device=device,
        devices=n_devices,
        strategy=e.strategy,
    )
    if recon is None:  # a further process of a ddp launcher: rank 0 writes the outputs
        return 0
    if r.refine_epochs:
        from ptychopinn.reconstruction.gradient import GradientEngine

        engine = GradientEngine.from_config(r, seed=e.seed, quiet=e.quiet, device=device)
        recon = engine.run(scan, recon)
    recon.metadata["patterns"] = args.patterns
    if args.probe_from is not None:
        recon.metadata["probe_from"] = str(args.probe_from)
    if recon.metadata.get("positions_corrected"):
        from dataclasses import replace

        scan = replace(scan, positions_px=recon.positions_px)  # the product gets the corrected ones
    product = _product_object(recon, scan) if product_path is not None else None
    recon.metadata["config"] = {"refine": asdict(r), "infer": asdict(rc.infer)}
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    paths.append(write_run_audit(rc, args.output_dir, "infer", device))
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
