"""Depth losses (metres in, scalar out)."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["silog_loss"]


def silog_loss(
    pred_m: torch.Tensor,
    gt_m: torch.Tensor,
    mask: torch.Tensor | None = None,
    lambda_: float = 0.5,
    *,
    eps: float = 1e-6,
    on_empty: Literal["zero", "raise"] = "zero",
) -> torch.Tensor:
    """Scale-invariant log loss sqrt(mean g^2 - lambda * mean(g)^2), g = log gt - log pred, over the valid pixels.

    The means run over every valid pixel of the batch together (one scalar per batch, as in the published training).

    Args:
        pred_m: predicted depth in metres, any shape (e.g. [B,1,H,W]); clamped at ``eps`` before the log.
        gt_m: ground-truth depth in metres, same shape.
        mask: valid pixels (bool, same shape) or None; pixels with gt <= 0 or non-finite gt are dropped as well.
        lambda_: variance weight in [0, 1] (0: log-RMSE, 1: fully scale-invariant).
        eps: floor on pred (m); the radicand is floored at eps^2 (keeps the square root finite and differentiable).
        on_empty: no valid pixel -> "zero" returns 0 still attached to ``pred_m``'s graph (a batch of sky or
            invalid depth then neither crashes training nor leaves DDP with unused parameters); "raise" -> ValueError.

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs; computed in that precision under autocast too).
    """
    if pred_m.shape != gt_m.shape:
        raise ValueError(f"silog_loss: pred_m {tuple(pred_m.shape)} and gt_m {tuple(gt_m.shape)} differ in shape")
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"silog_loss: lambda_ must be in [0, 1], got {lambda_}")
    if on_empty not in ("zero", "raise"):
        raise ValueError(f"silog_loss: on_empty must be 'zero' or 'raise', got {on_empty!r}")
    valid = torch.isfinite(gt_m) & (gt_m > 0)
    if mask is not None:
        if mask.shape != gt_m.shape:
            raise ValueError(f"silog_loss: mask {tuple(mask.shape)} and gt_m {tuple(gt_m.shape)} differ in shape")
        valid = valid & mask.bool()
    count = valid.sum()
    if int(count) == 0:
        if on_empty == "raise":
            raise ValueError("silog_loss: no valid pixel (mask empty or gt <= 0 everywhere)")
        return pred_m.sum() * 0.0
    # at least float32: bf16 logs (8-bit mantissa) would swamp the small log-ratios the loss is made of
    dtype = torch.promote_types(pred_m.dtype, torch.float32)
    g = torch.log(gt_m[valid].to(dtype)) - torch.log(pred_m[valid].to(dtype).clamp_min(eps))
    radicand = (g**2).mean() - lambda_ * g.mean() ** 2
    return torch.sqrt(radicand.clamp_min(eps * eps))
