"""``ptychopinn reconstruct``: one command for one scan and no model.

Trains the network on the scan itself (self-supervised), reconstructs it, optionally refines the
object on the scan's own likelihood, and writes the same outputs as ``infer`` plus the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (add_quiet_flag, add_refine_probe_flag, add_units_flag, nonneg_int,
                                   positive_int)

#: ``--refine-only`` epochs when ``--refine-epochs`` is not given: enough for the slowly
#: converging low spatial frequencies of independently simulated scans (measured: 300 epochs of
#: 451 patterns, N=64, ~25 s on 2 CPU cores); the plateau rule stops earlier where it can.
REFINE_ONLY_EPOCHS = 300


def add_parser(sub) -> None:
    p = sub.add_parser("reconstruct", help="self-supervised reconstruction of one scan (no model needed)",
                       description="Train on the scan itself, reconstruct it in one pass, optionally "
                                   "refine; writes OUTPUT_DIR/reconstruction.npz, "
                                   "OUTPUT_DIR/amplitude_phase.png and OUTPUT_DIR/model.ptpinn (no model with "
                                   "--refine-only).")
    p.add_argument("--data", type=Path, required=True, metavar="F", help="scan to reconstruct (NPZ)")
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
    p.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
    from ptychopinn.data import load_scan
    from ptychopinn.io.atomic import check_new_output
    from ptychopinn.log import configure_cli_logging
    from ptychopinn.workflows import (RECONSTRUCTION_FILES, resolve_probe_refinement,
                                      self_supervised_reconstruction, write_reconstruction_outputs)

    configure_cli_logging(args.quiet)
    for name in RECONSTRUCTION_FILES:
        check_new_output(args.output_dir / name, args.overwrite)
    scan = load_scan(args.data, args.diffraction_units)
    if args.refine_only:
        from ptychopinn.workflows import refine_reconstruction

        recon = refine_reconstruction(None, scan, args.refine_epochs or REFINE_ONLY_EPOCHS,
                                      quiet=args.quiet, seed=args.seed,
                                      refine_probe=resolve_probe_refinement(args.refine_probe, scan))
        for path in write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite):
            print(path)
        return 0
    recon, _ = self_supervised_reconstruction(
        scan, args.output_dir,
        model_config=ModelConfig(gridsize=args.gridsize, n_filters_scale=args.n_filters_scale,
                                 physics_iterations=args.physics_iterations,
                                 skip_connections=args.physics_iterations > 0),
        data_config=DataConfig(diffraction_units=args.diffraction_units),
        training_config=TrainingConfig(max_epochs=args.max_epochs, batch_size=args.batch_size),
        execution_config=ExecutionConfig(seed=args.seed, quiet=args.quiet,
                                         learning_rate=args.learning_rate),
        refine_epochs=args.refine_epochs, overwrite=args.overwrite,
        refine_kwargs={"prior_sigma": args.refine_prior_sigma,
                       "refine_probe": resolve_probe_refinement(args.refine_probe, scan)})
    for path in write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite):
        print(path)
    return 0
