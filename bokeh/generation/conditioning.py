"""K conditioning for the Stage-1 generators: the metric-K embedding (with a learned null K for CFG) and the
trained-range policy.

One K axis everywhere (METHOD.md section 1): K in px*m, blur radius r = K * (1/focus_m - 1/depth_m), for the image
as it is fed to the network (K scales linearly with image width, so callers convert K to the working width first).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


class KRangeError(ValueError):
    """A requested K lies outside the range the generator was trained on and the policy is ``"error"``."""


@dataclass(frozen=True)
class KRange:
    """The range of K (px*m, at the network's working width) a generator was trained on, and what to do outside it.

    Policy (documented choice): ``"clamp"`` (default) clamps to [k_min, k_max] and warns once per call naming the
    requested and the clamped values: a generator extrapolating K produces blur it never saw, and a clamped, flagged
    answer is more useful than garbage. ``"error"`` raises :class:`KRangeError` instead. Negative, NaN or infinite K
    is always a ValueError.
    """

    k_min: float
    k_max: float
    policy: str = "clamp"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k_min) and math.isfinite(self.k_max) and 0.0 <= self.k_min < self.k_max):
            raise ValueError(f"KRange needs 0 <= k_min < k_max (finite), got k_min={self.k_min}, k_max={self.k_max}")
        if self.policy not in ("clamp", "error"):
            raise ValueError(f"KRange policy must be 'clamp' or 'error', got {self.policy!r}")

    def apply(self, K_px_m: torch.Tensor, *, what: str = "K_px_m") -> torch.Tensor:
        """Check K against the trained range; return it clamped (policy clamp) or raise (policy error)."""
        K = torch.as_tensor(K_px_m, dtype=torch.float32)
        if not torch.isfinite(K).all() or (K < 0).any():
            raise ValueError(f"{what} must be finite and >= 0 (px*m), got {K.flatten().tolist()}")
        outside = (K < self.k_min - 1e-6) | (K > self.k_max + 1e-6)
        if outside.any():
            bad = sorted({round(float(k), 4) for k in K[outside].flatten()})
            msg = (
                f"{what} {bad} outside the trained range [{self.k_min:g}, {self.k_max:g}] px*m "
                "(at the generator's working width)"
            )
            if self.policy == "error":
                raise KRangeError(msg + "; pass K inside the range or use k_policy='clamp'")
            warnings.warn(msg + f"; clamped to [{self.k_min:g}, {self.k_max:g}]", stacklevel=3)
            K = K.clamp(self.k_min, self.k_max)
        return K


class KEmbedding(nn.Module):
    """K (px*m) -> conditioning vector(s): K / k_scale -> MLP (1 -> 64 -> hidden), or a learned null embedding.

    The null embedding stands for "no K" (classifier-free guidance on K): rows where ``null_mask`` is True get it
    instead of the MLP output. ``num_tokens > 1`` returns that many tokens (for cross-attention context); the extra
    tokens come from the same MLP's output through one linear map.
    """

    def __init__(self, hidden_dim: int, *, k_scale: float = 30.0, mlp_dim: int = 64, num_tokens: int = 1) -> None:
        super().__init__()
        if k_scale <= 0:
            raise ValueError(f"k_scale must be > 0, got {k_scale}")
        self.hidden_dim = hidden_dim
        self.num_tokens = num_tokens
        self.k_scale = float(k_scale)
        self.mlp = nn.Sequential(nn.Linear(1, mlp_dim), nn.SiLU(), nn.Linear(mlp_dim, hidden_dim * num_tokens))
        self.null = nn.Parameter(torch.randn(hidden_dim * num_tokens) * 0.02)

    def forward(self, K_px_m: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """K_px_m [B] -> [B, hidden] (num_tokens == 1) or [B, num_tokens, hidden]."""
        K = torch.as_tensor(K_px_m, dtype=self.null.dtype, device=self.null.device).reshape(-1, 1)
        emb = self.mlp(K / self.k_scale)
        if null_mask is not None:
            mask = torch.as_tensor(null_mask, device=emb.device).reshape(-1, 1).bool()
            emb = torch.where(mask, self.null.expand_as(emb), emb)
        if self.num_tokens > 1:
            return emb.view(-1, self.num_tokens, self.hidden_dim)
        return emb


def as_k_tensor(K_px_m: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """K as a 1-D float tensor [N] (a float becomes [1])."""
    K = torch.as_tensor(K_px_m, dtype=torch.float32)
    return K.reshape(-1)
