"""Evaluation metrics: metric-depth errors as a DDP-safe torchmetrics Metric, benchmark crops, bokeh image metrics.

Depth metrics (METHOD.md section 4), on the valid pixels of each image (gt within (min_depth_m, max_depth_m), finite,
inside the optional mask), predictions clamped to [min_depth_m, max_depth_m] as the usual NYU/KITTI protocols do:

    abs_rel  = mean |p - g| / g               sq_rel = mean (p - g)^2 / g
    rmse     = sqrt(mean (p - g)^2)            rmse_log = sqrt(mean (log p - log g)^2)
    log10    = mean |log10 p - log10 g|        deltaK = fraction of max(p/g, g/p) < 1.25^K, K = 1, 2, 3
    silog    = 100 * sqrt(mean e^2 - (mean e)^2), e = log p - log g   (the KITTI benchmark's, lambda = 1)

Averaging: per image, then over images (each image weighs the same, whatever its number of valid pixels), as the
NYU/KITTI evaluation scripts of the field do. The Metric keeps sums over images (``dist_reduce_fx="sum"``), so DDP
processes combine exactly. Images without a valid pixel are skipped and counted in ``num_skipped``.
torchmetrics has no masked depth metric (only MAPE/RMSE without masks), hence this hand-written one.
"""

from __future__ import annotations

import math
import warnings

import torch
from torchmetrics import Metric

__all__ = ["DepthMetrics", "depth_errors_per_image", "crop_mask", "DEPTH_METRIC_KEYS", "psnr", "ssim"]

DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")


def _as_bhw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    raise ValueError(f"{name} must be [H,W], [B,H,W] or [B,1,H,W], got {tuple(x.shape)}")


def crop_mask(height: int, width: int, kind: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Benchmark evaluation crop as a bool mask [H,W].

    kinds: "eigen_nyu" (rows 45:471, cols 41:601 of 480x640; scaled proportionally for other sizes),
    "garg_kitti" (rows 0.4081-0.9919 H, cols 0.0359-0.9641 W), "eigen_kitti" (rows 0.3324-0.9135 H, same cols).
    """
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if kind == "eigen_nyu":
        top, bottom = round(45 * height / 480), round(471 * height / 480)
        left, right = round(41 * width / 640), round(601 * width / 640)
    elif kind in ("garg_kitti", "eigen_kitti"):
        rows = (0.40810811, 0.99189189) if kind == "garg_kitti" else (0.3324324, 0.91351351)
        top, bottom = int(rows[0] * height), int(rows[1] * height)
        left, right = int(0.03594771 * width), int(0.96405229 * width)
    else:
        raise ValueError(f"unknown crop kind {kind!r}; known: 'eigen_nyu', 'garg_kitti', 'eigen_kitti'")
    mask[top:bottom, left:right] = True
    return mask


def depth_errors_per_image(
    pred_m: torch.Tensor,
    gt_m: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    min_depth_m: float = 1e-3,
    max_depth_m: float = 10.0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-image depth metrics.

    Args:
        pred_m, gt_m: depth in metres, [B,1,H,W], [B,H,W] or [H,W], same shape.
        valid_mask: bool, same shape, or None.
        min_depth_m, max_depth_m: valid gt range (exclusive) and clamp range of the prediction.

    Returns:
        ({key: Tensor[B] float64}, valid image flags Tensor[B] bool); metrics of images with no valid pixel are 0.
    """
    if pred_m.shape != gt_m.shape:
        raise ValueError(f"pred_m {tuple(pred_m.shape)} and gt_m {tuple(gt_m.shape)} differ in shape "
                         "(resize the prediction to the ground truth first)")
    if not 0 < min_depth_m < max_depth_m:
        raise ValueError(f"need 0 < min_depth_m < max_depth_m, got {min_depth_m}, {max_depth_m}")
    pred = _as_bhw(pred_m.detach(), "pred_m").double()
    gt = _as_bhw(gt_m.detach(), "gt_m").double()
    valid = torch.isfinite(gt) & (gt > min_depth_m) & (gt < max_depth_m)
    if valid_mask is not None:
        if valid_mask.shape != gt_m.shape:
            raise ValueError(f"valid_mask {tuple(valid_mask.shape)} and gt_m {tuple(gt_m.shape)} differ in shape")
        valid = valid & _as_bhw(valid_mask, "valid_mask").bool()
    if not bool(torch.isfinite(pred[valid]).all()):
        raise ValueError("pred_m has NaN/inf on valid pixels")
    pred = pred.clamp(min_depth_m, max_depth_m)
    gt = torch.where(valid, gt, torch.ones_like(gt))  # placeholders keep the logs finite; masked out below
    w = valid.double()
    count = w.flatten(1).sum(1)
    has = count > 0
    denom = count.clamp_min(1)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1) / denom

    diff = pred - gt
    log_diff = torch.log(pred) - torch.log(gt)
    ratio = torch.maximum(pred / gt, gt / pred)
    out = {
        "abs_rel": mean(diff.abs() / gt),
        "sq_rel": mean(diff**2 / gt),
        "rmse": mean(diff**2).sqrt(),
        "rmse_log": mean(log_diff**2).sqrt(),
        "log10": mean((torch.log10(pred) - torch.log10(gt)).abs()),
        "delta1": mean((ratio < 1.25).double()),
        "delta2": mean((ratio < 1.25**2).double()),
        "delta3": mean((ratio < 1.25**3).double()),
        "silog": 100.0 * (mean(log_diff**2) - mean(log_diff) ** 2).clamp_min(0).sqrt(),
    }
    return {k: v * has for k, v in out.items()}, has


class DepthMetrics(Metric):
    """AbsRel, SqRel, RMSE, RMSE-log, log10, delta1..3, SILog(x100), averaged per image (see the module docstring).

    Args:
        min_depth_m, max_depth_m: default valid range / prediction clamp (NYU: 1e-3-10 m, KITTI: 1e-3-80 m).
        crop: optional benchmark crop applied to every update ("eigen_nyu", "garg_kitti", "eigen_kitti").

    ``update(pred_m, gt_m, valid_mask=None, min_depth_m=None, max_depth_m=None)`` with depth in metres
    ([B,1,H,W], [B,H,W] or [H,W]); ``compute()`` -> {key: scalar tensor}; NaN (with a warning) before any valid image.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, min_depth_m: float = 1e-3, max_depth_m: float = 10.0, crop: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < min_depth_m < max_depth_m:
            raise ValueError(f"need 0 < min_depth_m < max_depth_m, got {min_depth_m}, {max_depth_m}")
        if crop is not None:
            crop_mask(8, 8, crop)  # validates the name early
        self.min_depth_m, self.max_depth_m, self.crop = float(min_depth_m), float(max_depth_m), crop
        for key in DEPTH_METRIC_KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_m: torch.Tensor, gt_m: torch.Tensor, valid_mask: torch.Tensor | None = None,
               min_depth_m: float | None = None, max_depth_m: float | None = None) -> None:
        lo = self.min_depth_m if min_depth_m is None else float(min_depth_m)
        hi = self.max_depth_m if max_depth_m is None else float(max_depth_m)
        if self.crop is not None:
            h, w = gt_m.shape[-2:]
            cm = crop_mask(h, w, self.crop, device=gt_m.device).expand_as(gt_m)
            valid_mask = cm if valid_mask is None else (valid_mask.bool() & cm)
        values, has = depth_errors_per_image(pred_m, gt_m, valid_mask, lo, hi)
        for key, v in values.items():
            setattr(self, key, getattr(self, key) + v.sum())
        self.num_images += has.sum()
        self.num_skipped += (~has).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = int(self.num_images)
        if n == 0:
            warnings.warn("DepthMetrics.compute() with no valid image: returning NaN", stacklevel=2)
            return {k: torch.tensor(math.nan, dtype=torch.float64) for k in DEPTH_METRIC_KEYS}
        return {k: getattr(self, k) / n for k in DEPTH_METRIC_KEYS}


def psnr(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """PSNR in dB of images [B,3,H,W] in [0, max_val] (kornia), one value per batch."""
    import kornia

    return kornia.metrics.psnr(pred, target, max_val)


def ssim(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Mean SSIM of images [B,3,H,W] in [0,1] (kornia, Gaussian window)."""
    import kornia

    return kornia.metrics.ssim(pred, target, window_size).mean()
