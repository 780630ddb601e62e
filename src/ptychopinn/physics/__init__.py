"""Physics: shifts, probes, forward model and losses. Pure torch/numpy, no Lightning, no models."""

from ptychopinn.physics.forward import (
    ForwardModel,
    diffraction_intensity,
    far_field,
    init_gain,
    overlap_constrain,
    probe_weight,
)
from ptychopinn.physics.losses import amplitude_mae, get_loss, poisson_nll
from ptychopinn.physics.shifts import (
    canvas_geometry,
    extract_patches,
    fourier_shift,
    place_patches,
)

__all__ = [
    "ForwardModel",
    "diffraction_intensity",
    "far_field",
    "init_gain",
    "overlap_constrain",
    "probe_weight",
    "amplitude_mae",
    "get_loss",
    "poisson_nll",
    "canvas_geometry",
    "extract_patches",
    "fourier_shift",
    "place_patches",
]
