"""Physics: shifts, probes, forward model and losses. Pure torch/numpy, no Lightning, no models."""

from ptychopinn.physics.forward import (
    back_propagate,
    diffraction_intensity,
    exit_waves,
    expected_counts,
    far_field,
    init_gain,
    overlap_constrain,
    probe_weight,
    weighted_average,
)
from ptychopinn.physics.losses import amplitude_mae, get_loss, poisson_nll
from ptychopinn.physics.shifts import (
    canvas_geometry,
    extract_patches,
    fourier_shift,
    place_patches,
    shift_image,
)

__all__ = [
    "back_propagate",
    "diffraction_intensity",
    "exit_waves",
    "expected_counts",
    "far_field",
    "init_gain",
    "overlap_constrain",
    "probe_weight",
    "weighted_average",
    "amplitude_mae",
    "get_loss",
    "poisson_nll",
    "canvas_geometry",
    "extract_patches",
    "fourier_shift",
    "place_patches",
    "shift_image",
]
