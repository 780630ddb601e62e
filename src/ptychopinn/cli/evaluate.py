"""``ptychopinn evaluate``: compare a reconstruction with the ground truth after removing ambiguities."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychopinn.cli.common import add_quiet_flag, nonneg_int, positive_float

OUTPUT_FILES = ("metrics.json", "frc.png", "comparison.png")


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
        "evaluate", help="metrics of a reconstruction against ground truth",
        description="Removes the global phase offset, linear phase ramp, amplitude scale and sub-pixel "
                    "translation, then reports amplitude/phase PSNR and SSIM, complex NRMSE and the FRC "
                    "(1/2-bit threshold) inside the scanned region, next to a flat-object baseline. Writes "
                    "OUTPUT_DIR/metrics.json, frc.png and comparison.png.")
    p.add_argument("--reconstruction", type=Path, required=True, metavar="R",
                   help="reconstruction.npz written by 'ptychopinn infer'")
    p.add_argument("--ground-truth", type=Path, required=True, metavar="F",
                   help="NPZ holding the true object as 'objectGuess' (e.g. a simulated scan) or 'object'")
    p.add_argument("--output-dir", type=Path, default=None, metavar="O",
                   help="output directory (default: the reconstruction's folder)")
    p.add_argument("--illumination-fraction", type=_fraction, default=None,
                   help="region = illumination above this fraction of its maximum (default 0.1)")
    p.add_argument("--shrink-px", type=nonneg_int, default=None,
                   help="erode the illuminated region by this many pixels (default 3)")
    p.add_argument("--radius-px", type=positive_float, default=None,
                   help="region radius around each position when the file has no illumination "
                        "(default: from the probe)")
    p.add_argument("--pixel-size-m", type=positive_float, default=None,
                   help="object pixel size in metres for the FRC resolution (default: from metadata)")
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
    rows = [("amplitude PSNR (dB)", "amplitude_psnr"), ("amplitude SSIM", "amplitude_ssim"),
            ("phase PSNR (dB)", "phase_psnr"), ("phase SSIM", "phase_ssim"),
            ("complex NRMSE", "complex_nrmse"), ("FRC resolution (px)", "frc_resolution_px"),
            ("FRC resolution (cyc/px)", "frc_resolution_cycles_per_px")]
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


def run(args: argparse.Namespace) -> int:
    import json

    from ptychopinn.errors import PtychoPINNError
    from ptychopinn.evaluation.align import ILLUMINATION_FRACTION, SHRINK_PX, align_to_truth
    from ptychopinn.evaluation.io import load_ground_truth, load_reconstruction_file
    from ptychopinn.evaluation.metrics import evaluate_aligned, pixel_size_from_metadata
    from ptychopinn.evaluation.plots import save_comparison_png, save_frc_png
    from ptychopinn.io.atomic import atomic_path, check_new_output
    from ptychopinn.log import configure_cli_logging, get_logger

    configure_cli_logging(args.quiet)
    log = get_logger("evaluate")
    recon = load_reconstruction_file(args.reconstruction)
    truth, truth_meta, truth_positions = load_ground_truth(args.ground_truth)
    out_dir = args.output_dir if args.output_dir is not None else args.reconstruction.parent
    targets = [out_dir / name for name in OUTPUT_FILES]
    for t in targets:
        check_new_output(t, args.overwrite)

    positions = recon.positions_px if recon.positions_px is not None else truth_positions
    try:
        pair = align_to_truth(
            recon.object, truth, offset_px=recon.offset_px, illumination=recon.illumination,
            positions_px=positions, radius_px=args.radius_px, probe=recon.probe,
            illumination_fraction=args.illumination_fraction or ILLUMINATION_FRACTION,
            shrink_px=SHRINK_PX if args.shrink_px is None else args.shrink_px)
    except PtychoPINNError as exc:
        raise PtychoPINNError(f"{recon.source} vs {args.ground_truth}: {exc}") from None
    pixel_size_m = args.pixel_size_m or pixel_size_from_metadata(recon.metadata, truth_meta)
    metrics = evaluate_aligned(pair, pixel_size_m=pixel_size_m)
    log.info("region: %s, %d px; removed shift (%.3f, %.3f) px, phase ramp (%.4g, %.4g) rad/px, "
             "scale %.4g", pair.params["region_source"], pair.params["region_pixels"],
             pair.params["shift_x_px"], pair.params["shift_y_px"],
             pair.params["phase_ramp_x_rad_per_px"], pair.params["phase_ramp_y_rad_per_px"],
             pair.params["amplitude_scale"])
    metrics.update({"reconstruction": str(args.reconstruction), "ground_truth": str(args.ground_truth),
                    "pixel_size_m": pixel_size_m})

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(targets[0], overwrite=args.overwrite) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    curve = metrics["frc_curve"]
    save_frc_png(curve["frequency_cycles_per_px"], curve["frc"], curve["threshold_half_bit"], targets[1],
                 resolution_cycles_per_px=(metrics["frc_resolution_cycles_per_px"]
                                           if metrics["frc_crossed_threshold"] else None),
                 overwrite=args.overwrite)
    rows, cols = pair.bbox(margin=4)
    save_comparison_png(pair.recon[rows, cols], pair.truth[rows, cols], targets[2],
                        mask=pair.mask[rows, cols], title="aligned reconstruction vs ground truth",
                        overwrite=args.overwrite,
                        origin_px=(pair.origin_px[0] + cols.start, pair.origin_px[1] + rows.start))
    print(metrics_table(metrics))
    for t in targets:
        print(t)
    return 0
