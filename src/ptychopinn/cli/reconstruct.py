"""``ptychopinn reconstruct``: one command for one scan and no model.

By default an iterative reconstruction: gradient refinement on the scan's own likelihood from a
flat object, retrieving the probe when it is a guess. With ``--network`` the network is trained
on the scan itself (self-supervised) first and its single pass is refined; the model is written
too. Outputs as ``infer``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import (
    add_device_flags,
    add_patterns_flag,
    add_position_flags,
    add_quiet_flag,
    add_refine_probe_flag,
    add_units_flag,
    nonneg_int,
    position_kwargs,
    positive_float,
    positive_int,
    torch_device,
)
from ptychopinn.config import ExecutionConfig, ModelConfig, TrainingConfig

#: Refinement epochs of the default (flat-start) reconstruction when ``--refine-epochs`` is not
#: given: enough for the slowly converging low spatial frequencies of independently simulated
#: scans (measured: 300 epochs of 451 patterns, N=64, ~25 s on 2 CPU cores); the plateau rule
#: stops earlier where it can.
REFINE_ONLY_EPOCHS = 300
#: written by --half-scan-frc
HALF_SCAN_FILES = ("half_scan_frc.json", "half_scan_frc.png")


#: options of the network path (--network) and their defaults: the package's recipe (the config
#: dataclasses' defaults), except fewer epochs (one scan, trained and reconstructed in one go)
NETWORK_DEFAULTS = {
    "gridsize": ModelConfig().gridsize,
    "max_epochs": 20,
    "batch_size": TrainingConfig().batch_size,
    "n_filters_scale": ModelConfig().n_filters_scale,
    "physics_iterations": ModelConfig().physics_iterations,
    "learning_rate": ExecutionConfig().learning_rate,
    "refine_prior_sigma": None,
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct one scan, no trained model needed",
        description="Iterative reconstruction of one scan: gradient refinement of "
        "the object (and of the probe when it is a guess) on the scan's "
        "own Poisson likelihood from a flat start. With --network, the "
        "network is first trained on the scan itself (self-supervised) "
        "and its single pass is the start. Writes "
        "OUTPUT_DIR/reconstruction.npz and OUTPUT_DIR/amplitude_phase.png "
        "(and OUTPUT_DIR/model.ptpinn with --network).",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="F",
        help="scan to reconstruct (PtychoPINN NPZ, tike NPZ or CXI; see --data-format)",
    )
    p.add_argument("--output-dir", type=Path, required=True, help="output directory")
    p.add_argument(
        "--network",
        action="store_true",
        help="train the network on this scan first and start from its single pass "
        "(slower; on independently simulated scans it scored below refinement "
        "from a flat start, see docs/performance.md); the options below marked "
        "[network] apply only with it",
    )
    p.add_argument(
        "--refine-only",
        action="store_true",
        help="refinement from a flat object, no network: the default; kept for scripts",
    )
    p.add_argument(
        "--refine-epochs",
        type=nonneg_int,
        default=None,
        help=f"refinement epochs (default {REFINE_ONLY_EPOCHS}, stopping earlier once "
        "the plateau rule has decayed the step; with --network default 0)",
    )
    p.add_argument(
        "--gridsize",
        type=positive_int,
        default=None,
        help=f"[network] group size gridsize^2 (default {NETWORK_DEFAULTS['gridsize']})",
    )
    p.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help=f"[network] training epochs (default {NETWORK_DEFAULTS['max_epochs']})",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"[network] groups per batch (default {NETWORK_DEFAULTS['batch_size']})",
    )
    p.add_argument(
        "--n-filters-scale",
        type=positive_int,
        default=None,
        help=f"[network] network width (default {NETWORK_DEFAULTS['n_filters_scale']})",
    )
    p.add_argument(
        "--physics-iterations",
        type=nonneg_int,
        default=None,
        help="[network] projection iterations of the physics estimate fed to the "
        f"network (default {NETWORK_DEFAULTS['physics_iterations']})",
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        help=f"[network] learning rate (default {NETWORK_DEFAULTS['learning_rate']:g})",
    )
    p.add_argument(
        "--refine-prior-sigma",
        type=positive_float,
        default=None,
        help="[network] keep refinement near the network output: Gaussian prior of "
        "this per-pixel width (e.g. 0.01; recommended at low dose; default none)",
    )
    add_refine_probe_flag(p)
    add_position_flags(p)
    add_patterns_flag(p)
    add_device_flags(p)
    p.add_argument(
        "--half-scan-frc",
        action="store_true",
        help="also reconstruct the even and odd halves of the scan the same way "
        f"(about twice the time) and write OUTPUT_DIR/{HALF_SCAN_FILES[0]} and "
        f"{HALF_SCAN_FILES[1]}: the FRC between the halves, a resolution estimate "
        "that needs no ground truth",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_quiet_flag(p)
    p.set_defaults(run=run)


def _reconstruct(scan, args, output_dir, device: str):
    """The reconstruction ``args`` ask for, of ``scan``, on torch ``device``; the model goes to
    ``output_dir`` (None: not written)."""
    from ptychopinn.config import DataConfig
    from ptychopinn.workflows import (
        resolve_probe_refinement,
        self_supervised_reconstruction,
    )

    refine_probe = resolve_probe_refinement(args.refine_probe, scan)
    if not args.network:
        from ptychopinn.workflows import refine_reconstruction

        epochs = REFINE_ONLY_EPOCHS if args.refine_epochs is None else args.refine_epochs
        return refine_reconstruction(
            None,
            scan,
            epochs,
            quiet=args.quiet,
            seed=args.seed,
            refine_probe=refine_probe,
            device=device,
            **position_kwargs(args),
        )
    net = {
        k: (NETWORK_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k))
        for k in NETWORK_DEFAULTS
    }
    recon, _ = self_supervised_reconstruction(
        scan,
        output_dir,
        model_config=ModelConfig(
            gridsize=net["gridsize"],
            n_filters_scale=net["n_filters_scale"],
            physics_iterations=net["physics_iterations"],
            skip_connections=net["physics_iterations"] > 0,  # skips carry the estimate's detail
        ),
        data_config=DataConfig(diffraction_units=args.diffraction_units),
        training_config=TrainingConfig(max_epochs=net["max_epochs"], batch_size=net["batch_size"]),
        execution_config=ExecutionConfig(
            seed=args.seed,
            quiet=args.quiet,
            learning_rate=net["learning_rate"],
            accelerator=args.accelerator,
            devices=1,
        ),
        refine_epochs=args.refine_epochs or 0,
        overwrite=args.overwrite,
        refine_kwargs={
            "prior_sigma": net["refine_prior_sigma"],
            "refine_probe": refine_probe,
            "device": device,
            **position_kwargs(args),
        },
        device=device,
    )
    return recon


def check_mode_options(args) -> None:
    """Network-only options without --network, or --network with --refine-only: one-line error."""
    from ptychopinn.errors import ConfigError

    if args.network and args.refine_only:
        raise ConfigError(
            "--network and --refine-only exclude each other (refinement from a "
            "flat object is the default)"
        )
    if not args.network:
        given = [k for k in NETWORK_DEFAULTS if getattr(args, k) is not None]
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(
                f"{names} appl{'ies' if len(given) == 1 else 'y'} to the network "
                "path only: add --network (the default reconstruction is "
                "refinement from a flat object)"
            )


def _half_scan_frc(scan, args, device, log) -> dict:
    from ptychopinn.evaluation.metrics import pixel_size_from_metadata
    from ptychopinn.evaluation.reference_free import half_scan_frc, split_halves

    halves = []
    for half in split_halves(scan):
        log.info(
            "half-scan FRC: reconstructing the %s patterns (%d)",
            half.metadata["patterns"],
            half.n_patterns,
        )
        halves.append(_reconstruct(half, args, None, device))
    out = half_scan_frc(*halves, pixel_size_m=pixel_size_from_metadata(scan.metadata))
    log.info(
        "half-scan FRC resolution: %.3g px%s",
        out["frc_resolution_px"],
        "" if out["frc_crossed_threshold"] else " (never below the 1/2-bit threshold)",
    )
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from ptychopinn.data import load_scan
    from ptychopinn.io.atomic import atomic_path, check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger
    from ptychopinn.workflows import RECONSTRUCTION_FILES, write_reconstruction_outputs

    configure_cli_logging(args.quiet)
    check_mode_options(args)
    device = torch_device(args)  # refuse an unusable accelerator before any work
    extra = [args.output_dir / name for name in HALF_SCAN_FILES] if args.half_scan_frc else []
    for path in [*(args.output_dir / name for name in RECONSTRUCTION_FILES), *extra]:
        check_new_output(path, args.overwrite)
    scan = load_scan(args.data, args.diffraction_units, format=args.data_format)
    scan = scan.patterns(args.patterns)
    recon = _reconstruct(scan, args, args.output_dir, device)
    recon.metadata["patterns"] = args.patterns
    frc_out = None
    if args.half_scan_frc:
        frc_out = _half_scan_frc(scan, args, device, get_logger("reconstruct"))
        recon.metadata["half_scan_frc_px"] = frc_out["frc_resolution_px"]
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    if frc_out is not None:
        from ptychopinn.evaluation.plots import save_frc_metrics_png

        with atomic_path(extra[0], overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(frc_out, indent=2, allow_nan=False) + "\n")
        save_frc_metrics_png(
            frc_out,
            extra[1],
            title="half-scan FRC (even vs odd patterns)",
            overwrite=args.overwrite,
            label="FRC (even half vs odd half)",
        )
        paths += extra
    for path in paths:
        print(path)
    return 0
