"""``ptychopinn evaluate``: quality of a reconstruction, against a ground truth (ambiguities
removed) and/or without one: the data residual on its scan and the FRC against an independent
reconstruction (e.g. of the other half of the scan)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import add_quiet_flag, nonneg_int, positive_float

OUTPUT_FILES = ("metrics.json", "frc.png", "comparison.png")
#: written beside metrics.json when --reference / --data are given (with or without a ground truth)
REFERENCE_FREE_FILES = {"reference": "frc_reference.png", "data": "residual.png"}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1 (exclusive)")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics of a reconstruction, with or without a ground truth",
        description="With --ground-truth: removes the global phase offset, linear phase ramp, "
        "amplitude scale and sub-pixel translation, then reports amplitude/phase PSNR "
        "and SSIM, complex NRMSE and the FRC (1/2-bit threshold) inside the scanned "
        "region, next to a flat-object baseline (OUTPUT_DIR/metrics.json, frc.png, "
        "comparison.png). Without a ground truth (measured data): --data SCAN gives "
        "the data residual (Poisson deviance per pixel, NLL per pattern, amplitude "
        "R-factor; residual.png maps it over the scan) and --reference R2 the FRC "
        "against an independent reconstruction such as the other half of the scan "
        "(frc_reference.png). Give at least one of the three.",
    )
    p.add_argument(
        "--reconstruction",
        type=Path,
        required=True,
        metavar="R",
        help="reconstruction.npz written by 'ptychopinn infer' or 'reconstruct'",
    )
    p.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        metavar="F",
        help="NPZ holding the true object as 'objectGuess' (e.g. a simulated scan) or 'object'",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="SCAN",
        help="the scan R was reconstructed from (any single-file format): report the "
        "data residual of R's object, probe and positions on its counts",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="R2",
        help="a second reconstruction of the same object from disjoint data (e.g. "
        "'reconstruct --patterns odd' when R used --patterns even): half-scan FRC",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        metavar="O",
        help="output directory (default: the reconstruction's folder)",
    )
    p.add_argument(
        "--illumination-fraction",
        type=_fraction,
        default=None,
        help="region = illumination above this fraction of its maximum (default 0.1)",
    )
    p.add_argument(
        "--shrink-px",
        type=nonneg_int,
        default=None,
        help="erode the illuminated region by this many pixels (default 3)",
    )
    p.add_argument(
        "--radius-px",
        type=positive_float,
        default=None,
        help="region radius around each position when the file has no illumination "
        "(default: from the probe)",
    )
    p.add_argument(
        "--pixel-size-m",
        type=positive_float,
        default=None,
        help="object pixel size in metres for the FRC resolution (default: from metadata)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_quiet_flag(p)
    p.set_defaults(run=run)


def _fmt(value, digits=4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def metrics_table(metrics: dict) -> str:
    """A short text table: reconstruction vs flat baseline."""
    rows = [
        ("amplitude PSNR (dB)", "amplitude_psnr"),
        ("amplitude SSIM", "amplitude_ssim"),
        ("phase PSNR (dB)", "phase_psnr"),
        ("phase SSIM", "phase_ssim"),
        ("complex NRMSE", "complex_nrmse"),
        ("FRC resolution (px)", "frc_resolution_px"),
        ("FRC resolution (cyc/px)", "frc_resolution_cycles_per_px"),
    ]
    if metrics.get("frc_resolution_m") is not None:
        rows.append(("FRC resolution (m)", "frc_resolution_m"))
    base = metrics.get("baseline_flat", {})
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'reconstruction':>14}  {'flat baseline':>14}"]
    for label, key in rows:
        lines.append(f"{label:<{width}}  {_fmt(metrics.get(key)):>14}  {_fmt(base.get(key)):>14}")
    if not metrics.get("frc_crossed_threshold", True):
        lines.append("(FRC never fell below the 1/2-bit threshold: resolution is at least Nyquist)")
    return "\n".join(lines)


def _reference_free(args, recon, pixel_size_m, log) -> tuple[dict, list]:
    """Data residual and/or FRC against a reference reconstruction; (metrics, plot jobs)."""
    from ptychopinn.errors import PtychoPINNError

    metrics, plots = {}, []
    if args.data is not None:
        from ptychopinn.data import load_scan
        from ptychopinn.evaluation.reference_free import data_residual

        scan = load_scan(args.data)
        which = recon.metadata.get("patterns", "all")
        if which in ("even", "odd") and scan.n_patterns != (
            0 if recon.positions_px is None else recon.positions_px.shape[0]
        ):
            scan = scan.patterns(which)  # the half this reconstruction was made from
        if recon.probe is None or recon.probe.shape[-1] != scan.patch_size:
            raise PtychoPINNError(
                f"{recon.source}: no probe matching the {scan.patch_size} x "
                f"{scan.patch_size} patterns of {args.data}; the data residual "
                "needs the reconstruction's probe"
            )
        positions = recon.positions_px
        if positions is not None and positions.shape[0] != scan.n_patterns:
            raise PtychoPINNError(
                f"{recon.source} holds {positions.shape[0]} positions but "
                f"{args.data} has {scan.n_patterns} patterns: evaluate the "
                "reconstruction against the scan (or half) it was made from"
            )
        res = data_residual(recon.object, recon.offset_px, recon.probe, scan, positions)
        per_pattern = res.pop("per_pattern_deviance")
        metrics["data_residual"] = res
        log.info(
            "data residual: deviance %.4g per pixel, R-factor %.4g",
            res["poisson_deviance_per_pixel"],
            res["r_factor"],
        )
        pos = scan.positions_px if positions is None else positions
        plots.append(
            ("data", lambda target: _residual_png(pos, per_pattern, res, target, args.overwrite))
        )
    if args.reference is not None:
        from ptychopinn.evaluation.io import load_reconstruction_file
        from ptychopinn.evaluation.plots import save_frc_metrics_png
        from ptychopinn.evaluation.reference_free import half_scan_frc

        other = load_reconstruction_file(args.reference)
        for r in (recon, other):
            if r.illumination is None:
                raise PtychoPINNError(
                    f"{r.source}: no 'illumination' map; the FRC against a "
                    "reference needs it (written by infer/reconstruct)"
                )
        out = half_scan_frc(
            recon,
            other,
            pixel_size_m=pixel_size_m,
            illumination_fraction=args.illumination_fraction,
            shrink_px=args.shrink_px,
        )
        out["reference"] = str(args.reference)
        metrics["reference_frc"] = out
        plots.append(
            (
                "reference",
                lambda target: save_frc_metrics_png(
                    out,
                    target,
                    title="FRC between independent reconstructions",
                    overwrite=args.overwrite,
                    label="FRC (reconstruction vs reference)",
                ),
            )
        )
    return metrics, plots


def _residual_png(positions, per_pattern, res, target, overwrite):
    from ptychopinn.evaluation.plots import save_residual_png

    return save_residual_png(
        positions,
        per_pattern,
        target,
        overwrite=overwrite,
        title=f"data residual: deviance {res['poisson_deviance_per_pixel']:.3g}"
        f"/pixel, R-factor {res['r_factor']:.3g}",
    )


def reference_free_table(metrics: dict) -> str:
    lines = []
    res = metrics.get("data_residual")
    if res:
        lines += [
            f"Poisson deviance per pixel  {_fmt(res['poisson_deviance_per_pixel'])}",
            f"Poisson NLL per pattern     {_fmt(res['poisson_nll_per_pattern'], 8)}",
            f"amplitude R-factor          {_fmt(res['r_factor'])}",
        ]
    ref = metrics.get("reference_frc")
    if ref:
        crossed = "" if ref["frc_crossed_threshold"] else " (never below the 1/2-bit threshold)"
        lines.append(f"FRC vs reference (px)       {_fmt(ref['frc_resolution_px'])}{crossed}")
        if ref.get("frc_resolution_m") is not None:
            lines.append(f"FRC vs reference (m)        {_fmt(ref['frc_resolution_m'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from ptychopinn.errors import PtychoPINNError
    from ptychopinn.evaluation.io import load_reconstruction_file
    from ptychopinn.evaluation.metrics import pixel_size_from_metadata
    from ptychopinn.io.atomic import atomic_path, check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger

    configure_cli_logging(args.quiet)
    log = get_logger("evaluate")
    if args.ground_truth is None and args.data is None and args.reference is None:
        raise PtychoPINNError(
            "nothing to evaluate against: give --ground-truth F, --data SCAN and/or --reference R2"
        )
    recon = load_reconstruction_file(args.reconstruction)
    out_dir = args.output_dir if args.output_dir is not None else args.reconstruction.parent
    targets = [out_dir / OUTPUT_FILES[0]]
    if args.ground_truth is not None:
        targets += [out_dir / name for name in OUTPUT_FILES[1:]]
    extra = {
        key: out_dir / name
        for key, name in REFERENCE_FREE_FILES.items()
        if getattr(args, key) is not None
    }
    for t in [*targets, *extra.values()]:
        check_new_output(t, args.overwrite)

    metrics: dict = {}
    truth_meta: dict = {}
    pair = None
    if args.ground_truth is not None:
        pair, metrics, truth_meta = _against_truth(args, recon, log)
    pixel_size_m = args.pixel_size_m or pixel_size_from_metadata(recon.metadata, truth_meta)
    if pair is not None:
        from ptychopinn.evaluation.metrics import evaluate_aligned

        metrics = evaluate_aligned(pair, pixel_size_m=pixel_size_m)
    free, plots = _reference_free(args, recon, pixel_size_m, log)
    metrics.update(free)
    metrics.update(
        {
            "reconstruction": str(args.reconstruction),
            "ground_truth": None if args.ground_truth is None else str(args.ground_truth),
            "data": None if args.data is None else str(args.data),
            "pixel_size_m": pixel_size_m,
        }
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(targets[0], overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    if pair is not None:
        _truth_plots(args, metrics, pair, targets)
        print(metrics_table(metrics))
    for key, job in plots:
        job(extra[key])
    table = reference_free_table(metrics)
    if table:
        print(table)
    for t in [*targets, *extra.values()]:
        print(t)
    return 0


def _against_truth(args, recon, log):
    from ptychopinn.errors import PtychoPINNError
    from ptychopinn.evaluation.align import (
        ILLUMINATION_FRACTION,
        SHRINK_PX,
        align_to_truth,
    )
    from ptychopinn.evaluation.io import load_ground_truth

    truth, truth_meta, truth_positions = load_ground_truth(args.ground_truth)
    positions = recon.positions_px if recon.positions_px is not None else truth_positions
    try:
        pair = align_to_truth(
            recon.object,
            truth,
            offset_px=recon.offset_px,
            illumination=recon.illumination,
            positions_px=positions,
            radius_px=args.radius_px,
            probe=recon.probe,
            illumination_fraction=args.illumination_fraction or ILLUMINATION_FRACTION,
            shrink_px=SHRINK_PX if args.shrink_px is None else args.shrink_px,
        )
    except PtychoPINNError as exc:
        raise PtychoPINNError(f"{recon.source} vs {args.ground_truth}: {exc}") from None
    log.info(
        "region: %s, %d px; removed shift (%.3f, %.3f) px, phase ramp (%.4g, %.4g) rad/px, "
        "scale %.4g",
        pair.params["region_source"],
        pair.params["region_pixels"],
        pair.params["shift_x_px"],
        pair.params["shift_y_px"],
        pair.params["phase_ramp_x_rad_per_px"],
        pair.params["phase_ramp_y_rad_per_px"],
        pair.params["amplitude_scale"],
    )
    return pair, {}, truth_meta


def _truth_plots(args, metrics, pair, targets):
    from ptychopinn.evaluation.plots import save_comparison_png, save_frc_metrics_png

    save_frc_metrics_png(metrics, targets[1], overwrite=args.overwrite)
    rows, cols = pair.bbox(margin=4)
    save_comparison_png(
        pair.recon[rows, cols],
        pair.truth[rows, cols],
        targets[2],
        mask=pair.mask[rows, cols],
        title="aligned reconstruction vs ground truth",
        overwrite=args.overwrite,
        origin_px=(pair.origin_px[0] + cols.start, pair.origin_px[1] + rows.start),
    )
