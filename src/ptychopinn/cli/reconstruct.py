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
    RUN_DEFAULTS,
    RUN_KEYS,
    add_patterns_flag,
    add_probe_from_flag,
    add_units_flag,
    check_run_audit,
    device_of,
    with_probe_from,
    write_run_audit,
)
from ptychopinn.cli.execution_args import add_config_arguments, run_config_from_args

#: Refinement epochs of the default (flat-start) reconstruction when ``--refine-epochs`` is not
#: given: enough for the slowly converging low spatial frequencies of independently simulated
#: scans (measured: 300 epochs of 451 patterns, N=64, ~25 s on 2 CPU cores); the plateau rule
#: stops earlier where it can.
REFINE_ONLY_EPOCHS = 300
#: written by --half-scan-frc
HALF_SCAN_FILES = ("half_scan_frc.json", "half_scan_frc.png")

#: the configuration keys of the network path (--network): the package's recipe (the config
#: dataclasses' defaults) for what it trains; a prior around the start only makes sense there
NETWORK_KEYS = (
    "model.gridsize",
    "model.n_filters_scale",
    "model.physics_iterations",
    "training.max_epochs",
    "training.batch_size",
    "execution.learning_rate",
    "refine.refine_prior_sigma",
)
#: ``reconstruct``'s own defaults: one device; a flat start refines for REFINE_ONLY_EPOCHS; the
#: network trains for fewer epochs than ``train`` (one scan, trained and reconstructed in one go)
#: and is not refined unless asked
FLAT_DEFAULTS = {**RUN_DEFAULTS, "refine.refine_epochs": REFINE_ONLY_EPOCHS}
NETWORK_DEFAULTS = {**RUN_DEFAULTS, "training.max_epochs": 20}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct one scan, no trained model needed",
        description="Iterative reconstruction of one scan: gradient refinement of "
        "the object (and of the probe when it is a guess) on the scan's "
        "own Poisson likelihood from a flat start. With --network, the "
        "network is first trained on the scan itself (self-supervised) "
        "and its single pass is the start. Writes "
        "OUTPUT_DIR/reconstruction.npz, OUTPUT_DIR/amplitude_phase.png and "
        "OUTPUT_DIR/config.resolved.yaml (and OUTPUT_DIR/model.ptpinn with --network). "
        f"Defaults that differ from the flags' own: --refine-epochs {REFINE_ONLY_EPOCHS} "
        "from a flat start (0 with --network), --max-epochs 20, --devices 1.",
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
        "from a flat start, see docs/performance.md); "
        + ", ".join("--" + k.split(".")[1].replace("_", "-") for k in NETWORK_KEYS)
        + " apply only with it",
    )
    p.add_argument(
        "--refine-only",
        action="store_true",
        help="refinement from a flat object, no network: the default; kept for scripts",
    )
    add_patterns_flag(p)
    add_probe_from_flag(p)
    p.add_argument(
        "--half-scan-frc",
        action="store_true",
        help="also reconstruct the even and odd halves of the scan the same way "
        f"(about twice the time) and write OUTPUT_DIR/{HALF_SCAN_FILES[0]} and "
        f"{HALF_SCAN_FILES[1]}: the FRC between the halves, a resolution estimate "
        "that needs no ground truth",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_units_flag(p)
    add_config_arguments(
        p,
        sections=("model", "training", "execution", "refine", "infer"),
        only=(*RUN_KEYS, *NETWORK_KEYS, "refine", "infer"),
    )
    p.set_defaults(run=run)


def run_config(args):
    """The RunConfig of a ``reconstruct`` command line (flags > --config > its own defaults >
    the dataclass defaults); network-only settings without --network are a ConfigError."""
    from ptychopinn.config_factory import SOURCE_CLI, SOURCE_DEFAULT, build_run_config
    from ptychopinn.errors import ConfigError

    if args.network and args.refine_only:
        raise ConfigError(
            "--network and --refine-only exclude each other (refinement from a "
            "flat object is the default)"
        )
    defaults = NETWORK_DEFAULTS if args.network else FLAT_DEFAULTS
    rc = run_config_from_args(args, defaults)
    if not args.network:
        # asked for on the command line, or a config file value that is not the default (an
        # audit file of an earlier flat run lists every key with its default value)
        base = build_run_config(command_defaults=defaults)
        given = [
            k
            for k in NETWORK_KEYS
            if rc.sources[k] == SOURCE_CLI
            or (rc.sources[k] != SOURCE_DEFAULT and rc.value(k) != base.value(k))
        ]
        if given:
            names = ", ".join("--" + k.split(".")[1].replace("_", "-") for k in given)
            raise ConfigError(
                f"{names} appl{'ies' if len(given) == 1 else 'y'} to the network "
                "path only: add --network (the default reconstruction is "
                "refinement from a flat object)"
            )
    else:
        # the scan's units are read with --diffraction-units; the bundle records them
        rc = rc.with_values(SOURCE_CLI, **{"data.diffraction_units": args.diffraction_units})
        if rc.model.physics_iterations == 0 and rc.sources["model.skip_connections"] == (
            SOURCE_DEFAULT
        ):  # without the real-space estimate, skips carry no aligned detail
            rc = rc.with_values(SOURCE_DEFAULT, **{"model.skip_connections": False})
    return rc


def _reconstruct(scan, args, rc, output_dir, device: str):
    """The reconstruction ``rc`` asks for, of ``scan``, on torch ``device``; the model goes to
    ``output_dir`` (None: not written)."""
    from ptychopinn.reconstruction.gradient import GradientEngine

    e = rc.execution
    if not args.network:
        engine = GradientEngine.from_config(rc.refine, seed=e.seed, quiet=e.quiet, device=device)
        return engine.run(scan)
    from ptychopinn.workflows import self_supervised_reconstruction

    recon, _ = self_supervised_reconstruction(
        scan, output_dir, run_config=rc, overwrite=args.overwrite, device=device
    )
    return recon


def _half_scan_frc(scan, args, rc, device, log) -> dict:
    from ptychopinn.evaluation.reference_free import half_scan_frc, split_halves

    halves = []
    for half in split_halves(scan):
        log.info(
            "half-scan FRC: reconstructing the %s patterns (%d)",
            half.metadata["patterns"],
            half.n_patterns,
        )
        halves.append(_reconstruct(half, args, rc, None, device))
    out = half_scan_frc(*halves, pixel_size_m=scan.geometry.pixel_width_m)
    log.info(
        "half-scan FRC resolution: %.3g px%s",
        out["frc_resolution_px"],
        "" if out["frc_crossed_threshold"] else " (never below the 1/2-bit threshold)",
    )
    return out


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ptychopinn.data import load_scan
    from ptychopinn.io.atomic import atomic_path, check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger
    from ptychopinn.workflows import RECONSTRUCTION_FILES, write_reconstruction_outputs

    rc = run_config(args)
    configure_cli_logging(rc.execution.quiet)
    device = device_of(rc.execution.accelerator, rc.execution.devices)  # refuse before any work
    extra = [args.output_dir / name for name in HALF_SCAN_FILES] if args.half_scan_frc else []
    for path in [*(args.output_dir / name for name in RECONSTRUCTION_FILES), *extra]:
        check_new_output(path, args.overwrite)
    check_run_audit(args.output_dir, args.overwrite)
    scan = load_scan(args.data, args.diffraction_units, format=args.data_format)
    scan = with_probe_from(scan.patterns(args.patterns), args.probe_from)
    recon = _reconstruct(scan, args, rc, args.output_dir, device)
    recon.metadata["patterns"] = args.patterns
    if args.probe_from is not None:
        recon.metadata["probe_from"] = str(args.probe_from)
    recon.metadata["config"] = {"refine": asdict(rc.refine), "infer": asdict(rc.infer)}
    frc_out = None
    if args.half_scan_frc:
        frc_out = _half_scan_frc(scan, args, rc, device, get_logger("reconstruct"))
        recon.metadata["half_scan_frc_px"] = frc_out["frc_resolution_px"]
    paths = write_reconstruction_outputs(recon, args.output_dir, overwrite=args.overwrite)
    if not args.network:  # with --network, training wrote it (the same settings, and its runtime)
        paths.append(write_run_audit(rc, args.output_dir, "reconstruct", device))
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
