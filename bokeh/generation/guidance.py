"""Depth-free physics guidance for Stage-1 sampling, applied as a gradient step on the predicted clean image.

(a) Flux conservation. Defocus redistributes light, it does not create or remove it: in linear light the defocused
    image keeps the sharp image's local mean at scales well above the blur radius. Penalty (per image):
        L_flux = 1/2 sum_p (G_s * lin(pred) - G_s * lin(sharp))^2,
    with a Gaussian low-pass G_s of sigma s = max(min_sigma_px, sigma_factor * K * max_inv_depth_m), an upper bound
    of the blur radius r = K (1/s1 - 1/d) <= K / s1 for a focus distance s1 >= 1 / max_inv_depth_m.
(b) Stack consistency. Across a stack the blur radius grows linearly with K: r_i(p) = K_i Delta(p) (METHOD.md
    section 1). Two ways to enforce it (``stack_estimator``):
    - ``physics`` (default): physics.dfd.estimate_blur_radius -- the estimator of the comparison tool and of the
      closed-form depth baseline -- measures every predicted frame's per-pixel radius r_i against the sharp input;
      the sweep regression (inverse-variance weights, as physics.dfd.depth_from_stack) gives one
      Delta(p) = sum_i w_i K_i r_i / sum_i w_i K_i^2 per pixel, and each frame is pulled toward the input blurred at
      its line-consistent radius K_i Delta(p) (physics.dfd.blur_to_radius_map):
          L_stack = 1/2 sum_p c(p) sum_i |lin(frame_i) - D(K_i Delta) * lin(sharp)|^2,
      with c(p) the estimator's contrast confidence (flat regions carry no blur information). The measurement and
      the targets are held fixed during a step (the estimator's argmin is not smooth), so a step moves each pixel
      toward its target by strength x c x (lin(frame) - target) x the slope of the sRGB-to-linear curve there (then
      the trust region below).
    - ``proxy``: a cheaper surrogate with no candidate bank: for an edge of width w0 blurred by s the local gradient
      magnitude falls by sqrt(1 + (s/w0)^2), so rho_i = sqrt((g_ref / g_i)^2 - 1) = s_i / w0 (g = local RMS of the
      luminance gradient); the penalty is the scale-free residual of the per-pixel line,
          L_stack = mean_p w(p) sum_i (rho_i - K_i Delta)^2 / (sum_i rho_i^2 + 1),  Delta = sum K rho / sum K^2,
      weighted by the reference's gradient energy over its mean w(p).
The guided update is img <- img - clamp(grad(flux_strength * L_flux + stack_strength * L_stack), +-max_step), in
image units (the clamp is a trust region: a blur measurement's gradient can be large where it saturates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Any

import torch
import kornia

from physics.dfd import blur_to_radius_map, depth_from_bokeh_sweep, estimate_blur_radius


STACK_ESTIMATORS = ("physics", "proxy")


@dataclass
class GuidanceConfig:
    flux_strength: float = 0.0
    stack_strength: float = 0.0
    sigma_factor: float = 1.5
    max_inv_depth_m: float = 1.0
    min_sigma_px: float = 2.0
    window_sigma_px: float = 1.5
    start_fraction: float = 0.0  # apply from this fraction of the sampling steps on (0 = from the first step)
    max_step: float = 0.03  # trust region: no pixel moves by more than this (sRGB units) in one guidance step
    max_rho: float = 8.0  # blur proxies saturate softly here (blur radius / edge width)
    stack_estimator: str = "physics"  # physics (physics.dfd.estimate_blur_radius) | proxy (gradient-energy ratio)
    estimator_step_px: float = 0.5  # physics estimator: spacing of the candidate radii (px), widened when needed so
    estimator_max_candidates: int = 48  # that at most this many candidates cover the range (cost bounded at any size)
    estimator_window_px: int = 7  # physics estimator: side of its error window (px, odd)
    estimator_max_inv_m: float = 2.5  # physics estimator: candidates reach max(K) * this (1/m; 2.5 = a 0.4 m surface
                                      # in front of a far focus, the layered head's defocus range)

    def __post_init__(self) -> None:
        if self.stack_estimator not in STACK_ESTIMATORS:
            raise ValueError(f"stack_estimator must be one of {STACK_ESTIMATORS}, got {self.stack_estimator!r}")
        if not (self.estimator_step_px > 0 and self.estimator_max_candidates >= 2):
            raise ValueError(f"estimator_step_px must be > 0 and estimator_max_candidates >= 2, got "
                             f"{self.estimator_step_px!r}, {self.estimator_max_candidates!r}")
        for name in ("flux_strength", "stack_strength"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (0 = off), got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.flux_strength > 0 or self.stack_strength > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _blur(image: torch.Tensor, sigma: torch.Tensor, max_kernel: int) -> torch.Tensor:
    """Per-item Gaussian blur (sigma [B] px), replicate borders."""
    smax = float(sigma.max())
    ks = min(2 * math.ceil(3 * smax) + 1, max_kernel)
    ks = ks if ks % 2 else ks - 1
    sig = torch.stack([sigma, sigma], dim=-1).to(image)
    return kornia.filters.gaussian_blur2d(image, (ks, ks), sig, border_type="replicate")


def flux_sigma_px(K_px_m: torch.Tensor, cfg: GuidanceConfig) -> torch.Tensor:
    return (cfg.sigma_factor * K_px_m * cfg.max_inv_depth_m).clamp_min(cfg.min_sigma_px)


def flux_conservation_loss(pred: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor,
                           cfg: GuidanceConfig) -> torch.Tensor:
    """[B] per-image penalty: pred, sharp [B,3,H,W] sRGB in [0,1]; K [B] px*m at this image's width."""
    sigma = flux_sigma_px(K_px_m.to(pred), cfg)
    max_kernel = 2 * min(pred.shape[-2:]) + 1
    lin_pred = kornia.color.rgb_to_linear_rgb(pred.clamp(0, 1))
    lin_sharp = kornia.color.rgb_to_linear_rgb(sharp.clamp(0, 1))
    diff = _blur(lin_pred, sigma, max_kernel) - _blur(lin_sharp, sigma, max_kernel)
    return 0.5 * diff.pow(2).flatten(1).sum(1)


def _gradient_rms(image: torch.Tensor, window_sigma: float) -> torch.Tensor:
    lum = kornia.color.rgb_to_grayscale(image.clamp(0, 1))
    grad = kornia.filters.spatial_gradient(lum, mode="sobel", normalized=True)  # [B,1,2,H,W]
    energy = grad.pow(2).sum(2)
    ks = 2 * math.ceil(3 * window_sigma) + 1
    energy = kornia.filters.gaussian_blur2d(energy, (ks, ks), (window_sigma, window_sigma), border_type="replicate")
    return (energy + 1e-5).sqrt()  # floor: flat regions carry no blur information, keep their ratio bounded


def blur_proxy(reference: torch.Tensor, frames: torch.Tensor, window_sigma: float = 1.5, max_rho: float = 8.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable blur proxy rho [B,N,1,H,W] (radius / local edge width, soft-saturated at ``max_rho``) and
    texture weight [B,1,H,W]."""
    b, n = frames.shape[:2]
    g_ref = _gradient_rms(reference, window_sigma)  # [B,1,H,W]
    g = _gradient_rms(frames.flatten(0, 1), window_sigma).view(b, n, 1, *frames.shape[-2:])
    ratio2 = (g_ref[:, None] / g).pow(2)
    rho = (torch.relu(ratio2 - 1.0) + 1e-4).sqrt()
    rho = max_rho * torch.tanh(rho / max_rho)
    weight = g_ref / g_ref.flatten(1).mean(1).view(-1, 1, 1, 1).clamp_min(1e-6)
    return rho, weight


def consistent_stack_targets(lin_reference: torch.Tensor, lin_frames: torch.Tensor, K_px_m: torch.Tensor,
                             cfg: GuidanceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """What a stack consistent with its own blur would be: frames [B,N,3,H,W], reference [B,3,H,W], both in LINEAR
    light, K [B,N] px*m -> targets [B,N,3,H,W] in linear light (the reference blurred at K_i Delta per pixel) and the
    confidence [B,1,H,W] in [0, 1). No gradient (see the module docstring)."""
    with torch.no_grad():
        # larger blurs are not measurable in a small window (and would cost a candidate each): cap at a quarter of
        # the width, as physics.dfd.depth_from_stack does
        max_radius = max(min(float(K_px_m.max()) * cfg.estimator_max_inv_m, 0.25 * lin_frames.shape[-1]), 1.0)
        step = max(cfg.estimator_step_px, max_radius / (cfg.estimator_max_candidates - 1))
        radius, contrast, weight = estimate_blur_radius(
            lin_reference, lin_frames, max_radius_px=max_radius, step_px=step, window_px=cfg.estimator_window_px,
            color_space="linear", reference_noise=False, return_confidence=True, confidence="both")
        # the sweep regression's Delta (px per px*m) does not depend on the focus, whose depth output is not used
        delta, _ = depth_from_bokeh_sweep(radius, K_px_m, 1.0, weights=weight, behind_focus=None)
        K = K_px_m.to(lin_frames).view(*K_px_m.shape, 1, 1, 1)
        target_radius = (K * delta[:, None]).clamp(0.0, max_radius)
        targets = blur_to_radius_map(lin_reference, target_radius, step_px=step)
    return targets, contrast.mean(1)


def stack_consistency_loss(frames: torch.Tensor, reference: torch.Tensor, K_px_m: torch.Tensor,
                           cfg: GuidanceConfig) -> torch.Tensor:
    """[B] penalty: frames [B,N,3,H,W], reference [B,3,H,W] (sRGB in [0,1]), K [B,N] px*m; zero when N < 2."""
    if frames.shape[1] < 2:
        return frames.new_zeros(frames.shape[0])
    if cfg.stack_estimator == "physics":
        lin = kornia.color.rgb_to_linear_rgb(frames.clamp(0, 1))
        lin_reference = kornia.color.rgb_to_linear_rgb(reference.detach().clamp(0, 1))
        targets, confidence = consistent_stack_targets(lin_reference, lin.detach(), K_px_m, cfg)
        resid = (lin - targets).pow(2).sum(dim=(1, 2))  # [B,H,W]
        return 0.5 * (confidence[:, 0] * resid).flatten(1).sum(1)
    rho, weight = blur_proxy(reference, frames, cfg.window_sigma_px, cfg.max_rho)
    K = K_px_m.to(frames).view(*K_px_m.shape, 1, 1, 1)
    delta = (K * rho).sum(1) / K.pow(2).sum(1).clamp_min(1e-8)  # [B,1,H,W]
    resid = (rho - K * delta[:, None]).pow(2).sum(1)
    norm = rho.pow(2).sum(1) + 1.0  # scale-free where blur is measurable, damped where it is not (rho << 1)
    return (weight * resid / norm).flatten(1).mean(1)


class PhysicsGuidance:
    """Gradient step on predicted clean images of a stack (flattened [B*N,3,H,W]) by the two penalties above."""

    def __init__(self, cfg: GuidanceConfig) -> None:
        self.cfg = cfg

    def losses(self, images: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor, n_frames: int
               ) -> dict[str, torch.Tensor]:
        out = {}
        if self.cfg.flux_strength > 0:
            out["flux"] = flux_conservation_loss(images, sharp, K_px_m, self.cfg).sum()
        if self.cfg.stack_strength > 0 and n_frames > 1:
            b = images.shape[0] // n_frames
            frames = images.view(b, n_frames, *images.shape[1:])
            ref = sharp.view(b, n_frames, *sharp.shape[1:])[:, 0]
            out["stack"] = stack_consistency_loss(frames, ref, K_px_m.view(b, n_frames), self.cfg).sum()
        return out

    def step(self, images: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Return images after one gradient step (no graph kept)."""
        if not self.cfg.enabled:
            return images
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            parts = self.losses(x, sharp.detach(), K_px_m.detach(), n_frames)
            total = self.cfg.flux_strength * parts.get("flux", 0.0) + self.cfg.stack_strength * parts.get("stack", 0.0)
            if not torch.is_tensor(total) or not total.requires_grad:
                return images
            (grad,) = torch.autograd.grad(total, x)
        return (images - grad.clamp(-self.cfg.max_step, self.cfg.max_step)).detach()
