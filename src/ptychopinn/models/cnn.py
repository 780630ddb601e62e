"""The ``cnn`` generator: a U-Net-like encoder/decoder sized from N.

Input: (B, C, N, N) normalised diffraction amplitudes (C = gridsize^2 channels, one per pattern
of a group). Output: (B, C, N, N) complex64 object patches with amplitude ``amp_max * sigmoid``
(bounded positive) and phase ``pi * tanh`` (PHYSICS.md section 3). The models know nothing of
physics.

Depth follows N: the encoder halves the size until 8 x 8 (N=32: 2 levels, 64: 3, 128: 4, 256: 5).
Width: ``16 * n_filters_scale`` filters at the first level, doubling per level (capped at 256).
Skip connections are optional: diffraction space and real space are not aligned pixel by pixel,
so the skip path carries little spatial information here (see docs/architecture.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptychopinn.errors import ConfigError
from ptychopinn.models.registry import register_generator


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GELU(),
    )


class CNNGenerator(nn.Module):
    """See the module docstring. With ``estimate_input`` the network also receives a real-space
    first estimate of each patch (B, C, N, N complex, e.g. from a few physics projections) as
    2C extra channels and outputs a multiplicative correction of it: at initialisation (zero head)
    the output equals the estimate, so training starts from physics, not from noise."""

    def __init__(
        self,
        n: int,
        channels: int = 1,
        n_filters_scale: int = 2,
        skip: bool = False,
        amp_max: float = 1.5,
        support: float | None = None,
        estimate_input: bool = False,
    ):
        super().__init__()
        self.estimate_input = estimate_input
        if n < 16 or n & (n - 1):
            raise ConfigError(f"n: {n} must be a power of two >= 16 for the cnn generator")
        if n_filters_scale < 1:
            raise ConfigError(f"n_filters_scale: {n_filters_scale} must be >= 1")
        self.n, self.channels, self.skip, self.amp_max = n, channels, skip, amp_max
        levels = int(math.log2(n)) - 3
        widths = [min(16 * n_filters_scale * 2**i, 256) for i in range(levels + 1)]
        self.down = nn.ModuleList()
        cin = channels * (3 if estimate_input else 1)
        for w in widths[:-1]:
            self.down.append(_block(cin, w))
            cin = w
        self.pool = nn.AvgPool2d(2)
        self.bottom = _block(cin, widths[-1])
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        cin = widths[-1]
        for w in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.up.append(_block(w * (2 if skip else 1), w))
            cin = w
        self.head = nn.Conv2d(cin, 2 * channels, 3, padding=1)
        if estimate_input:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if support is not None:
            y, x = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
            r = torch.sqrt(x.float() ** 2 + y.float() ** 2)
            mask = 0.5 * (1 - torch.tanh((r - support * n / 2) / 1.5))
            self.register_buffer("support_mask", mask)
        else:
            self.support_mask = None

    def forward(
        self, amplitudes: torch.Tensor, estimate: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.estimate_input:
            if estimate is None:
                raise ValueError("this generator needs the physics estimate as second input")
            x = torch.cat([amplitudes, estimate.real - 1, estimate.imag], dim=1)
        else:
            x = amplitudes
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for upconv, block in zip(self.upconv, self.up, strict=False):
            x = upconv(x)
            s = skips.pop()
            x = block(torch.cat([x, s], dim=1) if self.skip else x)
        out = self.head(x)
        if self.estimate_input:
            # bounded multiplicative correction of the estimate, identity at a zero head
            base_amp = estimate.abs().clamp(1e-3, self.amp_max * (1 - 1e-3))
            logit = torch.log(base_amp / (self.amp_max - base_amp))
            amp = self.amp_max * torch.sigmoid(out[:, : self.channels] + logit)
            phase = torch.angle(estimate) + math.pi * torch.tanh(out[:, self.channels :])
        else:
            amp = self.amp_max * torch.sigmoid(out[:, : self.channels])
            phase = math.pi * torch.tanh(out[:, self.channels :])
        if self.support_mask is not None:
            # outside the probe support the object is taken as flat (amplitude 1, phase 0)
            m = self.support_mask
            amp = 1 + m * (amp - 1)
            phase = m * phase
        return torch.polar(amp.float(), phase.float())


@register_generator("cnn")
def build_cnn(
    n: int,
    channels: int = 1,
    n_filters_scale: int = 2,
    skip: bool = False,
    amp_max: float = 1.5,
    support: float | None = None,
    estimate_input: bool = False,
) -> CNNGenerator:
    return CNNGenerator(
        n=n,
        channels=channels,
        n_filters_scale=n_filters_scale,
        skip=skip,
        amp_max=amp_max,
        support=support,
        estimate_input=estimate_input,
    )
