"""``ptychopinn reconstruct``: one command for one scan and no model.

Trains the network on the scan itself (self-supervised), reconstructs it, optionally refines the
object on the scan's own likelihood, and writes the same outputs as ``infer`` plus the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (add_patterns_flag, add_quiet_flag, add_refine_probe_flag,
                                   add_units_flag, nonneg_int, positive_int)

#: ``--refine-only`` epochs when ``--refine-epochs`` is not given: enough for the slowly
#: converging low spatial frequencies of independently simulated scans (measured: 300 epochs of
#: 451 patterns, N=64, ~25 s on 2 CPU cores); the plateau rule stops earlier where it can.
REFINE_ONLY_EPOCHS = 300
#: written by --half-scan-frc
HALF_SCAN_FILES = ("half_scan_frc.json", "half_scan_frc.png")


def add_parser(sub) -> None:
    p = sub.add_parser("reconstruct", help="self-supervised reconstruction of one scan (no model needed)",
                       description="Train on the scan itself, reconstruct it in one pass, optionally "
                                   "refine; writes OUTPUT_DIR/reconstruction.npz, "
                                   "OUTPUT_DIR/amplitude_phase.png and OUTPUT_DIR/model.ptpinn (no model with "
                                   "--refine-only).")
    p.add_argument("--data", type=Path, required=True, metavar="F", help="scan to reconstruct (PtychoPINN NPZ, tike NPZ or CXI; see --data-format)")
    p.add_argument("--output-dir", type=Path, required=True, help="output directory")
    p.add_argument("--gridsize", type=positive_int, default=2, help="group size gridsize^2 (default 2)")
    p.add_argument("--max-epochs", type=positive_int, default=20, help="training epochs (default 20)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="groups per batch (default 16)")
    p.add_argument("--n-filters-scale", type=positive_int, default=1, help="network width (default 1)")
    p.add_argument("--physics-iterations", type=nonneg_int, default=20,
                   help="projection iterations of the physics estimate fed to the network (default 20)")
    p.add_argument("--refine-epochs", type=nonneg_int, default=0,
                   help="physics refinement epochs after the network (default 0)")
    p.add_argument("--refine-prior-sigma", type=float, default=None,
                   help="keep refinement near the network output: Gaussian prior of this per-pixel "
                        "width (e.g. 0.01; recommended at low dose; default none)")
    p.add_argument("--refine-only", action="store_true",
                   help="no network: physics refinement from a flat object (plain automatic-"
                        "differentiation iterative reconstruction); --refine-epochs defaults to "
                        f"{REFINE_ONLY_EPOCHS}, and it stops earlier once the step has decayed "
                        "(converged)")
    add_refine_probe_flag(p)
    add_patterns_flag(p)
    p.add_argument("--half-scan-frc", action="store_true",
                   help="also reconstruct the even and odd halves of the scan the same way "
                        f"(about twice the time) and write OUTPUT_DIR/{HALF_SCAN_FILES[0]} and "
                        f"{HALF_SCAN_FILES[1]}: the FRC between the halves, a resolution estimate "
                        "that needs no ground truth")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def _reconstruct(scan, args, output_dir):
    """The reconstruction ``args`` ask for, of ``scan``; the model goes to ``output_dir`` (None:
    not written)."""
    from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
    from ptychopinn.workflows import resolve_probe_refinement, self_supervised_reconstruction

    refine_probe = resolve_probe_refinement(args.refine_probe, scan)
    if args.refine_only:
        from ptychopinn.workflows import refine_reconstruction

        return refine_reconstruction(None, scan, args.refine_epochs or REFINE_ONLY_EPOCHS,
                                     quiet=args.quiet, seed=args.seed, refine_probe=refine_probe)
    recon, _ = self_supervised_reconstruction(
        scan, output_dir,
        model_config=ModelConfig(gridsize=args.gridsize, n_filters_scale=args.n_filters_scale,
                                 physics_iterations=args.physics_iterations,
                                 skip_connections=args.physics_iterations > 0),
        data_config=DataConfig(diffraction_units=args.diffraction_units),
        training_config=TrainingConfig(max_epochs=args.max_epochs, batch_size=args.batch_size),
        execution_config=ExecutionConfig(seed=args.seed, quiet=args.quiet,
                                         learning_rate=args.learning_rate),
        refine_epochs=args.refine_epochs, overwrite=args.overwrite,
        refine_kwargs={"prior_sigma": args.refine_prior_sigma, "refine_probe": refine_probe})
    return recon


def _half_scan_frc(scan, args, log) -> dict:
    from ptychopinn.evaluation.metrics import pixel_size_from_metadata
    from ptychopinn.evaluation.reference_free import half_scan_frc, split_halves

    halves = []
    for half in split_halves(scan):
        log.info("half-scan FRC: reconstructing the %s patterns (%d)", half.metadata["patterns"],
                 half.n_patterns)
        halves.append(_reconstruct(half, args, None))
    out = half_scan_frc(*halves, pixel_size_m=pixel_size_from_metadata(scan.metadata))
    log.info("half-scan FRC resolution: %.3g px%s", out["frc_resolution_px"],
             "" if out["frc_crossed_threshold"] else " (never below the 1/2-bit threshold)")
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from ptychopinn.data import load_scan
    from ptychopinn.io.atomic import atomic_path, check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger
    from ptychopinn.workflows import RECONSTRUCTION_FILES, write_reconstruction_outputs

    configure_cli_logging(args.quiet)
    extra = [args.output_dir / name for name in HALF_SCAN_FILES] if args.half_scan_frc else []
    for path in [*(args.output_dir / name for name in RECONSTRUCTION_FILES), *extra]:
        check_new_output(path, args.overwrite)
    scan = load_scan(args.data, args.diffraction_units, format=args.data_format)
    scan = scan.patterns(args.patterns)
    recon = _reconstruct(scan, args, args.output_dir)
    recon.metadata["patterns"] = args.patterns
    frc_out = None
    if args.half_scan_frc:
        frc_out = _half_scan_frc(scan, args, get_logger("reconstruct"))
        recon.metadata["half_scan_frc_px"] = frc_out["frc_resolution_px"]
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    if frc_out is not None:
        from ptychopinn.evaluation.plots import save_frc_png

        with atomic_path(extra[0], overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(frc_out, indent=2, allow_nan=False) + "\n")
        curve = frc_out["frc_curve"]
        save_frc_png(curve["frequency_cycles_per_px"], curve["frc"], curve["threshold_half_bit"],
                     extra[1], resolution_cycles_per_px=(frc_out["frc_resolution_cycles_per_px"]
                                                         if frc_out["frc_crossed_threshold"] else None),
                     title="half-scan FRC (even vs odd patterns)", overwrite=args.overwrite,
                     label="FRC (even half vs odd half)")
        paths += extra
    for path in paths:
        print(path)
    return 0
