"""Evaluation against ground truth: alignment (ambiguity removal), PSNR/SSIM/NRMSE/FRC, plots.

Pure numpy; matplotlib is imported only when a plot is written.
"""

from ptychopinn.evaluation.align import (
    AlignedPair,
    align_to_truth,
    register_translation,
)
from ptychopinn.evaluation.io import load_ground_truth, load_reconstruction_file
from ptychopinn.evaluation.metrics import (
    METRIC_KEYS,
    FRCResult,
    complex_nrmse,
    evaluate_aligned,
    evaluate_reconstruction,
    frc,
    half_bit_threshold,
    psnr,
    ssim,
)
from ptychopinn.evaluation.plots import (
    save_comparison_png,
    save_complex_png,
    save_frc_metrics_png,
    save_frc_png,
)

__all__ = [
    "AlignedPair",
    "align_to_truth",
    "register_translation",
    "load_ground_truth",
    "load_reconstruction_file",
    "METRIC_KEYS",
    "FRCResult",
    "complex_nrmse",
    "evaluate_aligned",
    "evaluate_reconstruction",
    "frc",
    "half_bit_threshold",
    "psnr",
    "ssim",
    "save_comparison_png",
    "save_complex_png",
    "save_frc_metrics_png",
    "save_frc_png",
]
