"""Pixel-level defocus cue for DSFA: per-token log band-energy ratios between each stack frame and the reference.

Why: a ViT's 14-px linear patch embedding cannot square or divide, so an encoder trained from scratch has to learn a
blur measurement through several blocks before the stack helps (measured: the cue is picked up only after 400-900
steps, BENCHMARKS.md). Physics gives that measurement in closed form. A defocused frame is the reference convolved with
the PSF of radius r, so in any zero-mean band-pass filter's output

    E_k / E_0 = |OTF(r * f_band)|^2        (E = local mean of the squared response over one token's pixels)

which depends on the blur radius r = K |1/focus - 1/depth| alone, not on the texture: the log ratio is a texture-free
blur feature per band, and a few bands at several scales pin r down over the whole 0.2-25 px range. log E_0 rides along
as the confidence (textureless tokens have E ~ 0 and no measurable blur).

The filters are learnable 3x3 convolutions on the luma at several scales, with their mean removed at every call, so
every filter is band-pass by construction: its response to a constant is zero, as flux conservation under blur needs
for the ratio to be blur-only. Hand-written: no library layer computes token-pooled band-energy ratios.

    DefocusCue(channels=C, scales=S)(frames [B,F,3,H,W] sRGB, grid (h, w)) -> [B,F,h*w,2*C*S]
    (frame 0 is the reference: its ratio half is exactly zero)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DefocusCue"]

_LUMA = (0.299, 0.587, 0.114)


class DefocusCue(nn.Module):
    """Token-pooled log band-energy ratios of stack frames against the reference (see the module docstring).

    Args:
        channels: learnable band-pass filters per scale.
        scales: number of dyadic scales (1 = full resolution only; 3 = full, 1/2, 1/4).
        eps: energy floor (sRGB^2 units) of the logs; textureless tokens sit at log(eps).
    """

    def __init__(self, channels: int = 8, scales: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        if channels < 1 or scales < 1:
            raise ValueError(f"DefocusCue needs channels >= 1 and scales >= 1, got {channels}, {scales}")
        self.channels = int(channels)
        self.scales = int(scales)
        self.eps = float(eps)
        self.filters = nn.ParameterList(
            [nn.Parameter(torch.randn(channels, 1, 3, 3) / 3.0) for _ in range(scales)]
        )
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        """Features per token: C*S log ratios followed by C*S log reference energies."""
        return 2 * self.channels * self.scales

    def forward(self, frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Per-token cue features.

        Args:
            frames: [B,F,3,H,W] sRGB in [0,1]; frame 0 is the sharp reference, frames 1.. the bokeh frames.
            grid: the token grid (h, w) the features are pooled to (H/patch, W/patch).

        Returns:
            [B,F,h*w,2*C*S]: log(E_k / E_0) per band (zero for frame 0), then log E_0 per band (the same for every
            frame: how much texture the reference has there).
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"DefocusCue frames must be [B,F,3,H,W], got {tuple(frames.shape)}")
        b, f, _, h, w = frames.shape
        gray = (frames.reshape(b * f, 3, h, w) * self.luma.to(frames.dtype)).sum(1, keepdim=True)
        energies = []
        for level, weight in enumerate(self.filters):
            band_pass = weight - weight.mean(dim=(2, 3), keepdim=True)  # zero DC: blur-invariant to flat regions
            x = gray if level == 0 else F.avg_pool2d(gray, 2**level, ceil_mode=True)
            # replicate padding: a zero border would be a fake edge, equally strong in every frame (ratio -> 0)
            response = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), band_pass.to(x.dtype))
            energies.append(F.adaptive_avg_pool2d(response.square(), grid))
        log_e = torch.cat(energies, dim=1).clamp_min(0).add(self.eps).log()  # [B*F, C*S, h, w]
        log_e = log_e.view(b, f, -1, grid[0] * grid[1]).transpose(2, 3)  # [B,F,h*w,C*S]
        log_ref = log_e[:, :1]
        return torch.cat([log_e - log_ref, log_ref.expand_as(log_e)], dim=-1)
