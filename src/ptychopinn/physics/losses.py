"""Losses comparing measured and predicted counts (pure functions, PHYSICS.md section 3).

Shapes: ``measured`` and ``predicted`` (..., N, N) in counts; ``bad_pixels`` (N, N) bool, True
marks a pixel excluded from the loss.
"""

from __future__ import annotations

import torch

from ptychopinn.registry import Registry


def _masked_mean(values: torch.Tensor, bad_pixels: torch.Tensor | None) -> torch.Tensor:
    if bad_pixels is None:
        return values.mean()
    good = (~bad_pixels.bool()).to(values.dtype)
    good = good.expand(values.shape)
    return (values * good).sum() / good.sum().clamp_min(1.0)


def default_eps(measured: torch.Tensor, bad_pixels: torch.Tensor | None = None) -> torch.Tensor:
    """1e-6 of the mean count over good pixels (PHYSICS.md), never zero.

    Bad pixels are left out so that a hot pixel cannot inflate eps and bias the loss.
    """
    return (1e-6 * _masked_mean(measured.detach(), bad_pixels)).clamp_min(1e-12)


def poisson_nll(
    measured: torch.Tensor,
    predicted: torch.Tensor,
    *,
    bad_pixels: torch.Tensor | None = None,
    eps: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson negative log-likelihood per pixel, ``mean(lambda - I log(lambda + eps))``.

    The constant ``lgamma(I + 1)`` is dropped. Safe at zero counts and zero predictions; for
    fixed ``I`` it is minimal at ``lambda = I`` (up to eps).
    """
    if eps is None:
        eps = default_eps(measured, bad_pixels)
    return _masked_mean(poisson_nll_terms(measured, predicted, eps), bad_pixels)


def poisson_nll_terms(
    measured: torch.Tensor, predicted: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """The per-pixel terms of ``poisson_nll``, ``lambda - I log(lambda + eps)``, unreduced (for
    callers that need one value per pattern, e.g. a position search)."""
    return predicted - measured * torch.log(predicted + eps)


def amplitude_mae(
    measured: torch.Tensor,
    predicted: torch.Tensor,
    *,
    bad_pixels: torch.Tensor | None = None,
    eps: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean absolute error of amplitudes, ``mean(|sqrt(lambda) - sqrt(I)|)``."""
    if eps is None:
        eps = default_eps(measured, bad_pixels)
    values = (torch.sqrt(predicted + eps) - torch.sqrt(measured.clamp_min(0))).abs()
    return _masked_mean(values, bad_pixels)


#: name -> loss(measured, predicted, bad_pixels=None, eps=None) -> scalar tensor.
LOSSES = Registry("loss")
LOSSES.add("poisson", poisson_nll)
LOSSES.add("mae", amplitude_mae)


def get_loss(name: str):
    return LOSSES[name]
