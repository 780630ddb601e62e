"""Reconstruction engines: one module per engine, one protocol (``engine.Engine``), one stitcher.

- ``network``: a trained bundle's single pass (``reconstruct``) and the patch prediction training
  shares (``predict_group_patches``);
- ``estimate``: the physics estimate the network takes as input, stitched (no model);
- ``gradient``: refinement on the scan's own Poisson likelihood (``refine``): object, probe
  retrieval, position correction;
- ``stitching``: patches -> one phase-synchronised canvas; ``result``: ``Reconstruction``.

Names are imported lazily (``from ptychopinn.reconstruction import reconstruct``), so that the
torch-free ``result`` module can be used without importing torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Reconstruction": "result",
    "load_reconstruction": "result",
    "stitch": "stitching",
    "reconstruct": "network",
    "predict_patches": "network",
    "predict_group_patches": "network",
    "NetworkEngine": "network",
    "EstimateEngine": "estimate",
    "refine": "gradient",
    "Refiner": "gradient",
    "RefineResult": "gradient",
    "GradientEngine": "gradient",
    "ENGINES": "engine",
    "Engine": "engine",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"ptychopinn.reconstruction.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ptychopinn.reconstruction' has no attribute {name!r}")
