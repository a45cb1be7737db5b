"""Pixel-level defocus cue for DSFA: per-token log band-energy ratios between each stack frame and the reference.

Why: a ViT's 14-px linear patch embedding cannot square or divide, so an encoder trained from scratch has to learn a
blur measurement through several blocks before the stack helps (measured: the cue is picked up only after 400-900
steps, BENCHMARKS.md). Physics gives that measurement in closed form. A defocused frame is the reference convolved with
the PSF of radius r, so for any zero-mean (band-pass) linear filter

    E_k / E_0 = |OTF(r * f_band)|^2        (E = local mean of the squared response over one token's pixels)

which depends on the blur radius r = K |1/focus - 1/depth| alone, not on the texture: the log ratio is a texture-free
blur feature per band, and bands at several scales pin r down over the whole 0.2-25 px range. log E_0 rides along as
the confidence (textureless tokens have E ~ 0 and no measurable blur).

The bands are fixed, from kornia: the Sobel gradient energy (|d/dx|^2 + |d/dy|^2, rotation-invariant) and the
Laplacian energy of the luma at dyadic scales (full, 1/2, 1/4, 1/8 resolution). Both filters sum to zero, so a
constant gives no response, as flux conservation under blur needs for the ratio to be blur-only. Nothing here learns
(the DSFA blocks' projections of these features do), so the cue runs without gradients: a first version with
learnable 3x3 filters spent most of its time on their weight gradients at full resolution (BENCHMARKS.md).
Hand-written: no library layer computes token-pooled band-energy ratios.

    DefocusCue(scales=S)(frames [B,F,3,H,W] sRGB, grid (h, w)) -> [B,F,h*w,4*S]
    (frame 0 is the reference: its ratio half is exactly zero)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import laplacian, spatial_gradient
from torch import nn

__all__ = ["DefocusCue"]

_LUMA = (0.299, 0.587, 0.114)
BANDS_PER_SCALE = 2  # Sobel gradient energy, Laplacian energy


class DefocusCue(nn.Module):
    """Token-pooled log band-energy ratios of stack frames against the reference (see the module docstring).

    Args:
        scales: number of dyadic scales (1 = full resolution only; 4 = full, 1/2, 1/4, 1/8).
        eps: energy floor (sRGB^2 units per filter response) of the logs, about the response energy of 8-bit
            quantisation noise; textureless tokens sit at log(eps).
    """

    def __init__(self, scales: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"DefocusCue needs scales >= 1, got {scales}")
        if not eps > 0:
            raise ValueError(f"DefocusCue eps must be > 0, got {eps}")
        self.scales = int(scales)
        self.eps = float(eps)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        """Features per token: 2*S log ratios followed by 2*S log reference energies."""
        return 2 * BANDS_PER_SCALE * self.scales

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Per-token cue features (no gradient: a fixed measurement of the input pixels).

        Args:
            frames: [B,F,3,H,W] sRGB in [0,1]; frame 0 is the sharp reference, frames 1.. the bokeh frames.
            grid: the token grid (h, w) the features are pooled to (H/patch, W/patch).

        Returns:
            [B,F,h*w,4*S]: log(E_k / E_0) per band (zero for frame 0), then log E_0 per band (the same for every
            frame: how much texture the reference has there).
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"DefocusCue frames must be [B,F,3,H,W], got {tuple(frames.shape)}")
        b, f, _, h, w = frames.shape
        gray = (frames.reshape(b * f, 3, h, w).float() * self.luma).sum(1, keepdim=True)
        energies = []
        for level in range(self.scales):
            x = gray if level == 0 else F.avg_pool2d(gray, 2**level, ceil_mode=True)
            if min(x.shape[-2:]) < 3:  # too coarse for a 3x3 filter: repeat the last band rather than fail
                energies.extend(energies[-BANDS_PER_SCALE:])
                continue
            grad_energy = spatial_gradient(x, mode="sobel").square().sum(2)  # [B*F,1,h',w']
            lap_energy = laplacian(x, kernel_size=3, border_type="replicate").square()
            energies.append(F.adaptive_avg_pool2d(grad_energy, grid))
            energies.append(F.adaptive_avg_pool2d(lap_energy, grid))
        log_e = torch.cat(energies, dim=1).add(self.eps).log()  # [B*F, 2S, h, w]
        log_e = log_e.view(b, f, -1, grid[0] * grid[1]).transpose(2, 3)  # [B,F,h*w,2S]
        log_ref = log_e[:, :1]
        return torch.cat([log_e - log_ref, log_ref.expand_as(log_e)], dim=-1).to(frames.dtype)
