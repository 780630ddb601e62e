"""``ptychopinn simulate``: write a simulated scan with ground truth as a PtychoPINN NPZ."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (
    add_quiet_flag,
    positions_from_file,
    positive_float,
    positive_int,
    probe_from_file,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a scan with known ground truth",
        description="Simulate a far-field ptychography scan (counts, positions, probe, "
        "ground-truth object) through the training forward model.",
    )
    p.add_argument("--output", required=True, type=Path, help="output NPZ path")
    p.add_argument(
        "--patch-size",
        type=positive_int,
        default=64,
        help="N, diffraction pattern size (even, default 64)",
    )
    p.add_argument(
        "--n-positions",
        type=positive_int,
        default=1024,
        help="scan positions per scan (default 1024)",
    )
    p.add_argument(
        "--object",
        default="lines",
        help="object source: lines, grf, blobs, natural, skimage:NAME[,NAME2], "
        "file:PATH[,PATH2] (default lines)",
    )
    p.add_argument(
        "--object-size",
        type=positive_int,
        default=None,
        help="object side in pixels (default: scan extent + N + border)",
    )
    p.add_argument(
        "--amplitude-contrast", type=float, default=0.5, help="amplitude in [1-c, 1] (default 0.5)"
    )
    p.add_argument(
        "--phase-range",
        type=float,
        default=1.5707963267948966,
        help="peak-to-peak phase in radians (default pi/2)",
    )
    p.add_argument(
        "--probe",
        default="pinhole",
        choices=["pinhole", "gaussian", "disk"],
        help="probe kind (default pinhole)",
    )
    p.add_argument(
        "--probe-diameter",
        type=positive_float,
        default=None,
        help="probe diameter in pixels (default N/2)",
    )
    p.add_argument(
        "--probe-modes", type=positive_int, default=1, help="incoherent probe modes (default 1)"
    )
    p.add_argument(
        "--no-probe-mask",
        action="store_true",
        help="do not suppress probe tails near the window edge",
    )
    p.add_argument(
        "--scan",
        default="raster",
        choices=["raster", "fermat", "random"],
        help="scan pattern (default raster)",
    )
    p.add_argument(
        "--step",
        type=positive_float,
        default=None,
        help="step between neighbouring positions in pixels (default: diameter * (1 - overlap))",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=0.65,
        help="linear probe overlap used when --step is not given (default 0.65)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=0.1,
        help="raster jitter as a fraction of the step (default 0.1)",
    )
    p.add_argument(
        "--photons",
        type=positive_float,
        default=1e6,
        help="photons per pattern for a unit object (default 1e6)",
    )
    p.add_argument(
        "--noiseless", action="store_true", help="write expected counts without Poisson noise"
    )
    p.add_argument(
        "--n-scans",
        type=positive_int,
        default=1,
        help="number of scans, each with its own object; >1 writes OUTPUT_STEM_<i>.npz (default 1)",
    )
    p.add_argument(
        "--test-images",
        action="store_true",
        help="with --object natural: draw from the held-out test images (camera, moon)",
    )
    p.add_argument(
        "--probe-from",
        type=Path,
        default=None,
        metavar="F",
        help="use the probe of F instead of --probe: a reconstruction.npz (e.g. the "
        "probe retrieved from a measured scan) or any scan file; scaled to "
        "--photons; its size must equal --patch-size",
    )
    p.add_argument(
        "--positions-from",
        type=Path,
        default=None,
        metavar="F",
        help="use the scan positions of F (a reconstruction.npz, e.g. with corrected "
        "positions, or any scan file) instead of --scan/--n-positions/--step",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_quiet_flag(p)
    p.set_defaults(run=run)


def simulate_outputs(output: Path, n_scans: int) -> list[Path]:
    """The files ``simulate --output OUTPUT --n-scans K`` writes: OUTPUT itself for one scan,
    else OUTPUT's stem with ``_0`` .. ``_{K-1}`` (suffix kept, ``.npz`` if none)."""
    if n_scans == 1:
        return [output]
    suffix = output.suffix or ".npz"
    return [output.with_name(f"{output.stem}_{i}{suffix}") for i in range(n_scans)]


def run(args: argparse.Namespace) -> int:
    from ptychopinn.data.npz import write_npz
    from ptychopinn.data.simulate import SimulationConfig, simulate_scan
    from ptychopinn.io.atomic import check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger

    configure_cli_logging(args.quiet)
    log = get_logger("cli")
    outputs = simulate_outputs(args.output, args.n_scans)
    for out in outputs:
        check_new_output(out, args.overwrite)
    probe = (
        probe_from_file(args.probe_from, args.patch_size, "--patch-size")
        if args.probe_from
        else None
    )
    positions = positions_from_file(args.positions_from) if args.positions_from else None
    for i, out in enumerate(outputs):
        config = SimulationConfig(
            patch_size=args.patch_size,
            n_positions=args.n_positions,
            object_kind=args.object,
            object_size=args.object_size,
            amplitude_contrast=args.amplitude_contrast,
            phase_range=args.phase_range,
            probe_kind=args.probe,
            probe_diameter=args.probe_diameter,
            probe_modes=args.probe_modes,
            probe_soft_mask=not args.no_probe_mask,
            scan_kind=args.scan,
            step=args.step,
            overlap=args.overlap,
            jitter=args.jitter,
            photons=args.photons,
            noise=not args.noiseless,
            test_split=args.test_images,
            seed=args.seed + i,
        )
        scan = simulate_scan(config, probe=probe, positions=positions)
        if args.probe_from:
            scan.metadata["probe_from"] = str(args.probe_from)
        if args.positions_from:
            scan.metadata["positions_from"] = str(args.positions_from)
        write_npz(scan, out, overwrite=args.overwrite)
        log.info(
            "wrote %s: %d patterns %dx%d, object %dx%d, %.3g mean counts/pattern",
            out,
            scan.n_patterns,
            scan.patch_size,
            scan.patch_size,
            *scan.object_truth.shape,
            scan.mean_counts,
        )
    return 0
