"""``GaussianBlur`` with torchvision's call signature for (..., H, W) tensors (pure torch)."""

import torch


class GaussianBlur:
    def __init__(self, kernel_size, sigma=(0.1, 2.0)):
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        s = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
        self.kernel_size, self.sigma = k, (float(s[0]), float(s[-1]))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        (kx, ky), (sx, sy) = self.kernel_size, self.sigma

        def taps(k, s):
            x = torch.arange(k, dtype=img.dtype, device=img.device) - (k - 1) / 2
            w = torch.exp(-0.5 * (x / s) ** 2)
            return w / w.sum()

        kernel = taps(ky, sy)[:, None] * taps(kx, sx)[None, :]
        flat = img.reshape(-1, 1, *img.shape[-2:])
        flat = torch.nn.functional.pad(flat, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
        out = torch.nn.functional.conv2d(flat, kernel[None, None])
        return out.reshape(img.shape)
