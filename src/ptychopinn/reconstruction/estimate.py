"""The physics-estimate engine: the network's input without the network, stitched.

Each group of gridsize^2 neighbouring patterns gets ``physics.forward.projection_estimate``
(error reduction from a flat object, the groups' patches made consistent by the overlap
constraint), exactly as the network receives it, and the patches are stitched like the network's.
It needs no model: a baseline that says what the network adds (``benchmarks/quality.py``) and a
fast, learning-free first look at a scan.
"""

from __future__ import annotations

import torch
from torch import nn

from ptychopinn.config import INFERENCE_BATCH_SIZE, PHASE_SYNC_ITERATIONS, DataConfig, ModelConfig
from ptychopinn.errors import ConfigError
from ptychopinn.reconstruction.engine import ENGINES
from ptychopinn.reconstruction.network import stitched_pass
from ptychopinn.reconstruction.result import Reconstruction


class EstimateOnly(nn.Module):
    """A generator that returns its physics-estimate input unchanged."""

    def forward(self, amplitude: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        return estimate


@ENGINES.register("estimate")
class EstimateEngine:
    """Projection estimate of every group, stitched. ``iterations``, ``gridsize`` and
    ``neighbors`` default to the package's recipe (``ModelConfig()``, ``DataConfig()``)."""

    name = "estimate"

    def __init__(
        self,
        *,
        iterations: int = ModelConfig().physics_iterations,
        gridsize: int = ModelConfig().gridsize,
        neighbors: int = DataConfig().neighbors,
        batch_size: int = INFERENCE_BATCH_SIZE,
        seed: int = 0,
        device: str | torch.device = "cpu",
        phase_sync_iterations: int = PHASE_SYNC_ITERATIONS,
        quiet: bool = True,
    ):
        if int(iterations) < 1:
            raise ConfigError(f"estimate engine: iterations {iterations!r}; expected >= 1")
        self.iterations, self.gridsize, self.neighbors = int(iterations), gridsize, neighbors
        self.options = dict(
            batch_size=batch_size,
            seed=seed,
            device=device,
            phase_sync_iterations=phase_sync_iterations,
            quiet=quiet,
        )

    @classmethod
    def for_model(cls, bundle, **options) -> EstimateEngine:
        """The estimate a model bundle's network takes as input: its physics iterations,
        gridsize and neighbours (``options``: the other arguments)."""
        return cls(
            iterations=bundle.model_config.physics_iterations,
            gridsize=bundle.model_config.gridsize,
            neighbors=bundle.data_config.neighbors,
            **options,
        )

    def run(self, scan, start=None, *, progress=None, stop=None) -> Reconstruction:
        mc = ModelConfig(
            n=scan.patch_size, gridsize=self.gridsize, physics_iterations=self.iterations
        )
        recon = stitched_pass(
            mc, self.neighbors, EstimateOnly(), scan, progress=progress, stop=stop, **self.options
        )
        recon.metadata["method"] = f"physics estimate ({self.iterations} iterations)"
        return recon
