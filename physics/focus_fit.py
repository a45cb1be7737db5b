"""Fit the focus distance (and K) of a real defocused photo through the differentiable renderer.

Given a sharp image, its metric depth and a defocused photo of the same view, find the focus distance s1 (and the
strength K when it is unknown) such that ``render_bokeh(sharp, depth, K, s1)`` explains the photo:

1. optional global registration: sub-pixel phase correlation (hand-written with torch.fft: kornia has none) and a
   Fourier shift of the photo onto the sharp image;
2. a coarse grid over inverse focus distance (NOT limited to the scene's depth range: a focus in front of or
   beyond every surface is a valid answer) x log K, rendered in batches, optionally at a reduced scale;
3. L-BFGS (or Adam) on (log s1, log K) from the best grid point, with a closed-form exposure gain in linear
   light at every evaluation;
4. the fit error as PSNR (dB, sRGB) over the frame interior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import kornia
import torch
import torch.nn.functional as F

from physics.camera import check_depth_m, check_k
from physics.checks import check_srgb_range, check_tensor
from physics.render import render_bokeh


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} {tuple(b.shape)} must have the shape of {a_name} {tuple(a.shape)}")


def _check_int(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")


def _check_pair(pair: tuple[float, float], name: str, what: str) -> None:
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair ({what}) of numbers; got {pair!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"{name} must be ({what}) with 0 < lo < hi, both finite; got {pair!r}")

RenderFn = Callable[..., torch.Tensor]


# -------------------------------------------------------------------------------------------------- registration


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=-3) if x.dim() >= 3 else x


def phase_correlation(reference: torch.Tensor, moving: torch.Tensor, *, refine_steps: int = 3) -> torch.Tensor:
    """Global translation (dy, dx) in px such that ``shift_image(moving, dy, dx)`` aligns it with ``reference``.

    Args: reference, moving: [B,C,H,W] or [C,H,W] (same size). Returns [B,2] (or [2]) float.
    The integer peak of the phase correlation (Hann-windowed against the frame-border discontinuity), a parabola
    through its neighbours, then ``refine_steps`` Gauss-Newton (Lucas-Kanade) updates of the global translation on
    image gradients: a symmetric blur difference between the two images does not move either estimate.
    """
    check_tensor(reference, "reference", "[B,C,H,W] or [C,H,W]", (3, 4))
    check_tensor(moving, "moving", "[B,C,H,W] or [C,H,W]", (3, 4))
    if reference.dim() != moving.dim():
        raise ValueError(f"reference {tuple(reference.shape)} and moving {tuple(moving.shape)} must have the same "
                         f"number of dimensions")
    squeeze = reference.dim() == 3
    a = _gray(reference if not squeeze else reference[None]).to(torch.float64)
    b = _gray(moving if not squeeze else moving[None]).to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"reference and moving must have the same size; got {tuple(a.shape)} and {tuple(b.shape)}")
    h, w = a.shape[-2:]
    win = (torch.hann_window(h, periodic=False, dtype=a.dtype, device=a.device)[:, None]
           * torch.hann_window(w, periodic=False, dtype=a.dtype, device=a.device)[None])
    a = (a - a.mean(dim=(-2, -1), keepdim=True)) * win
    b = (b - b.mean(dim=(-2, -1), keepdim=True)) * win
    fa, fb = torch.fft.fft2(a), torch.fft.fft2(b)
    cross = fa * fb.conj()
    corr = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-12)).real  # peak at the shift of a relative to b
    n = corr.shape[0]
    flat = corr.reshape(n, -1).argmax(dim=1)
    py, px = flat // w, flat % w
    out = torch.zeros(n, 2, dtype=torch.float64, device=a.device)
    for i in range(n):
        y, x = int(py[i]), int(px[i])
        c0 = corr[i, y, x]

        def refine(cm: torch.Tensor, cp: torch.Tensor) -> float:
            d = cm - 2 * c0 + cp
            return float(0.5 * (cm - cp) / d) if d < 0 else 0.0

        dy = y + refine(corr[i, (y - 1) % h, x], corr[i, (y + 1) % h, x])
        dx = x + refine(corr[i, y, (x - 1) % w], corr[i, y, (x + 1) % w])
        out[i, 0] = dy - h if dy > h / 2 else dy
        out[i, 1] = dx - w if dx > w / 2 else dx
    ref4 = (reference if not squeeze else reference[None]).to(torch.float64)
    mov4 = (moving if not squeeze else moving[None]).to(torch.float64)
    for _ in range(refine_steps):
        out = out + _lucas_kanade_step(ref4, shift_image(mov4, out[:, 0], out[:, 1]))
    out = out.to(reference.dtype)
    return out[0] if squeeze else out


def _lucas_kanade_step(reference: torch.Tensor, moving: torch.Tensor, border: int = 8) -> torch.Tensor:
    """Least-squares translation update [B,2] (dy, dx) that moves ``moving`` onto ``reference`` (small shifts)."""
    a, b = _gray(reference), _gray(moving)
    gy = (b[:, 2:, 1:-1] - b[:, :-2, 1:-1]) / 2
    gx = (b[:, 1:-1, 2:] - b[:, 1:-1, :-2]) / 2
    diff = (a - b)[:, 1:-1, 1:-1]
    c = max(0, min(border, min(gy.shape[-2:]) // 4))
    sl = (slice(None), slice(c, gy.shape[-2] - c), slice(c, gy.shape[-1] - c))
    gy, gx, diff = gy[sl], gx[sl], diff[sl]
    # shifting by +t changes b by -t . grad b: solve  sum g g^T t = -sum g diff
    a11, a12, a22 = (gy * gy).sum((1, 2)), (gy * gx).sum((1, 2)), (gx * gx).sum((1, 2))
    b1, b2 = -(gy * diff).sum((1, 2)), -(gx * diff).sum((1, 2))
    det = (a11 * a22 - a12 * a12).clamp_min(1e-12)
    ty = (a22 * b1 - a12 * b2) / det
    tx = (a11 * b2 - a12 * b1) / det
    return torch.stack([ty, tx], dim=1).clamp(-1.0, 1.0)


def shift_image(image: torch.Tensor, dy: float | torch.Tensor, dx: float | torch.Tensor, *, pad: int = 16
                ) -> torch.Tensor:
    """Translate ``image`` [B,C,H,W] by (dy, dx) px (content moves down/right for positive values).

    Fourier shift of the reflect-padded image: exact for band-limited content, no interpolation blur (bilinear
    resampling would add up to a quarter pixel^2 of blur, comparable with the defocus being measured).
    """
    check_tensor(image, "image", "[B,C,H,W]", 4)
    for value, name in ((dy, "dy"), (dx, "dx")):
        v = torch.as_tensor(value).detach() if not isinstance(value, torch.Tensor) else value.detach()
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} must be a finite shift (px); got {value!r}")
    b, c, h, w = image.shape
    p = min(pad, h - 1, w - 1)
    x = F.pad(image, (p, p, p, p), mode="reflect")
    ph, pw = x.shape[-2:]
    ky = torch.fft.fftfreq(ph, dtype=image.dtype, device=image.device)[:, None]
    kx = torch.fft.rfftfreq(pw, dtype=image.dtype, device=image.device)[None, :]
    dy_t = torch.as_tensor(dy, dtype=image.dtype, device=image.device).reshape(-1, 1, 1, 1)
    dx_t = torch.as_tensor(dx, dtype=image.dtype, device=image.device).reshape(-1, 1, 1, 1)
    phase = torch.exp(-2j * math.pi * (ky * dy_t + kx * dx_t))
    out = torch.fft.irfft2(torch.fft.rfft2(x) * phase, s=(ph, pw))
    return out[..., p:p + h, p:p + w]


def exposure_gain(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares scalar gain g per image, in linear light, minimising ``||g * lin(pred) - lin(target)||^2``.

    prediction, target: [B,3,H,W] sRGB. Returns [B]."""
    check_tensor(prediction, "prediction", "[B,3,H,W]", 4)
    check_tensor(target, "target", "[B,3,H,W]", 4)
    _check_same_shape(prediction, target, "prediction", "target")
    lp = kornia.color.rgb_to_linear_rgb(prediction.clamp(0, 1))
    lt = kornia.color.rgb_to_linear_rgb(target.clamp(0, 1))
    m = torch.ones_like(lp[:, :1]) if mask is None else mask
    return (m * lp * lt).sum(dim=(1, 2, 3)) / (m * lp * lp).sum(dim=(1, 2, 3)).clamp_min(1e-12)


def apply_gain(image: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Multiply sRGB images [B,3,H,W] by gains [B] in linear light; result clamped to [0, 1] sRGB."""
    check_tensor(image, "image", "[B,3,H,W]", 4)
    if not isinstance(gain, torch.Tensor) or gain.numel() != image.shape[0]:
        shape = tuple(gain.shape) if isinstance(gain, torch.Tensor) else type(gain).__name__
        raise ValueError(f"gain must be a tensor [B] with B={image.shape[0]} (one gain per image); got {shape}")
    lin = kornia.color.rgb_to_linear_rgb(image.clamp(0, 1)) * gain.reshape(-1, 1, 1, 1)
    return kornia.color.linear_rgb_to_rgb(lin.clamp(0, 1))


def _check_crop(a: torch.Tensor, b: torch.Tensor, crop_px: int) -> None:
    check_tensor(a, "a", "[B,3,H,W]", 4)
    check_tensor(b, "b", "[B,3,H,W]", 4)
    _check_same_shape(a, b, "a", "b")
    _check_int(crop_px, "crop_px", 0)
    if 2 * crop_px >= min(a.shape[-2:]):
        raise ValueError(f"crop_px={crop_px} leaves nothing of a {a.shape[-2]}x{a.shape[-1]} image")


def psnr_db(a: torch.Tensor, b: torch.Tensor, crop_px: int = 0) -> float:
    """PSNR (dB, peak 1) between two sRGB images [B,3,H,W] over the interior (``crop_px`` border dropped)."""
    _check_crop(a, b, crop_px)
    if crop_px > 0:
        a, b = a[..., crop_px:-crop_px, crop_px:-crop_px], b[..., crop_px:-crop_px, crop_px:-crop_px]
    return float(kornia.metrics.psnr(a.clamp(0, 1), b.clamp(0, 1), 1.0))


def ssim(a: torch.Tensor, b: torch.Tensor, crop_px: int = 0) -> float:
    """Mean SSIM (kornia, 11 px Gaussian window) over the interior."""
    _check_crop(a, b, crop_px)
    if crop_px > 0:
        a, b = a[..., crop_px:-crop_px, crop_px:-crop_px], b[..., crop_px:-crop_px, crop_px:-crop_px]
    return float(kornia.metrics.ssim(a.clamp(0, 1), b.clamp(0, 1), 11).mean())


# -------------------------------------------------------------------------------------------------- fitting


@dataclass
class FocusFit:
    """Result of :func:`fit_focus`. Tensors [1,3,H,W] sRGB; shift_px (dy, dx) applied to the photo."""

    focus_m: float
    K_px_m: float
    gain: float
    shift_px: tuple[float, float]
    psnr_db: float
    rendered: torch.Tensor
    observed: torch.Tensor
    grid_best: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"focus_m": self.focus_m, "K_px_m": self.K_px_m, "gain": self.gain, "shift_px": list(self.shift_px),
                "psnr_db": self.psnr_db, "grid_best": self.grid_best, "final_loss": self.history[-1:]}


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="area")


def _loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, fit_gain: bool) -> torch.Tensor:
    """Masked MSE in sRGB after the closed-form linear-light gain (per image). pred/target [B,3,H,W] -> [B]."""
    if fit_gain:
        pred = apply_gain(pred, exposure_gain(pred, target, mask))
    return ((pred - target) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)))


def fit_focus(sharp: torch.Tensor, depth_m: torch.Tensor, observed: torch.Tensor, *, K_px_m: float | None = None,
              K_range: tuple[float, float] = (0.3, 40.0), focus_range_m: tuple[float, float] = (0.2, 100.0),
              grid_focus: int = 32, grid_k: int = 10, grid_scale: float = 1.0, steps: int = 40, lr: float = 0.03,
              register: bool = True, fit_gain: bool = True, crop_px: int = 8, grid_batch: int = 16,
              max_radius_px: float = 30.0, optimizer: str = "lbfgs",
              render_fn: RenderFn | None = None, **render_kwargs: Any) -> FocusFit:
    """Fit focus distance (and K when ``K_px_m`` is None) of ``observed`` given ``sharp`` + ``depth_m``.

    Args:
        sharp: [1,3,H,W] or [3,H,W] sRGB sharp image (may carry its own small blur: then the fitted K is the relative
            strength of the extra blur). depth_m: [1,1,H,W] or [1,H,W] metres. observed: same size as sharp.
        K_px_m: known strength (px*m at this width), or None to fit it within ``K_range`` (log grid).
        focus_range_m: inverse-focus grid limits (m); deliberately wider than any scene.
        grid_focus, grid_k: grid sizes; grid_scale: render the grid at this scale (K scaled with it) for speed.
        steps, optimizer, lr: refinement of (log s1, log K) at full resolution from the best grid point:
            "lbfgs" (strong-Wolfe line search, ``steps`` iterations) or "adam" (``steps`` steps of size ``lr``);
            0 steps: grid only. The best evaluated point is returned.
        register: phase-correlate and shift the photo onto the sharp image first.
        fit_gain: closed-form exposure gain in linear light at every evaluation.
        crop_px: border excluded from the loss and the PSNR.
        max_radius_px: grid candidates whose largest blur radius in the image exceeds this are skipped.
        render_fn: renderer with render_bokeh's signature (default :func:`physics.render.render_bokeh`).
    Returns: :class:`FocusFit`.
    """
    render = render_fn or render_bokeh
    check_tensor(sharp, "sharp", "[1,3,H,W] or [3,H,W]", (3, 4))
    check_tensor(observed, "observed", "[1,3,H,W] or [3,H,W]", (3, 4))
    if not isinstance(depth_m, torch.Tensor) or depth_m.dim() != sharp.dim():
        shape = tuple(depth_m.shape) if isinstance(depth_m, torch.Tensor) else type(depth_m).__name__
        raise ValueError(f"depth_m must have shape {'[1,1,H,W]' if sharp.dim() == 4 else '[1,H,W]'} to match sharp "
                         f"{tuple(sharp.shape)}; got {shape}")
    check_srgb_range(observed, "observed")
    sharp = sharp[None] if sharp.dim() == 3 else sharp
    observed = observed[None] if observed.dim() == 3 else observed
    depth_m = depth_m[None] if depth_m.dim() == 3 else depth_m
    if sharp.shape[0] != 1 or sharp.shape[1] != 3:
        raise ValueError(f"sharp must be one image [1,3,H,W] or [3,H,W]; got {tuple(sharp.shape)}")
    if observed.shape != sharp.shape:
        raise ValueError(f"observed {tuple(observed.shape)} must have the shape of sharp {tuple(sharp.shape)}")
    check_depth_m(depth_m, like=sharp, like_name="sharp")
    if K_px_m is not None:
        check_k(K_px_m)
        if K_px_m == 0:
            raise ValueError("K_px_m must be > 0 to fit a focus distance (K = 0 renders no blur)")
    _check_pair(focus_range_m, "focus_range_m", "near, far")
    _check_pair(K_range, "K_range", "lo, hi")
    for value, name in ((grid_focus, "grid_focus"), (grid_k, "grid_k"), (grid_batch, "grid_batch")):
        _check_int(value, name, 1)
    _check_int(steps, "steps", 0)
    _check_int(crop_px, "crop_px", 0)
    for value, name in ((grid_scale, "grid_scale"), (lr, "lr")):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    if not (isinstance(max_radius_px, (int, float)) and max_radius_px > 0):  # inf: keep every grid candidate
        raise ValueError(f"max_radius_px must be a number > 0 (px); got {max_radius_px!r}")
    h, w = sharp.shape[-2:]
    if 2 * crop_px >= min(h, w):
        raise ValueError(f"crop_px={crop_px} leaves nothing of a {h}x{w} image")

    shift = (0.0, 0.0)
    if register:
        d = phase_correlation(sharp, observed)[0]
        shift = (float(d[0]), float(d[1]))
        observed = shift_image(observed, shift[0], shift[1]).clamp(0, 1)

    def mask_for(hh: int, ww: int, c: int) -> torch.Tensor:
        m = torch.zeros(1, 1, hh, ww, dtype=sharp.dtype, device=sharp.device)
        m[..., c:hh - c, c:ww - c] = 1.0
        return m

    # ---- coarse grid (inverse focus x log K), batched renders
    g_sharp, g_obs = _resize(sharp, grid_scale), _resize(observed, grid_scale)
    g_depth = _resize(depth_m, grid_scale)
    g_mask = mask_for(g_sharp.shape[-2], g_sharp.shape[-1], max(1, int(round(crop_px * grid_scale))))
    dev = dict(dtype=sharp.dtype, device=sharp.device)
    inv_f = torch.linspace(1.0 / focus_range_m[1], 1.0 / focus_range_m[0], grid_focus, **dev)
    ks = (torch.tensor([float(K_px_m)], **dev) if K_px_m is not None else
          torch.logspace(math.log10(K_range[0]), math.log10(K_range[1]), grid_k, **dev))
    cand_f = (1.0 / inv_f).repeat_interleave(len(ks))
    cand_k = ks.repeat(grid_focus)
    inv_lo, inv_hi = 1.0 / float(depth_m.max()), 1.0 / float(depth_m.min())
    max_r = cand_k * torch.maximum((1.0 / cand_f - inv_lo).abs(), (1.0 / cand_f - inv_hi).abs())
    keep = max_r <= max_radius_px
    if not keep.any():
        raise ValueError(f"every grid candidate blurs by more than max_radius_px={max_radius_px}; lower K_range "
                         f"or raise max_radius_px")
    cand_f, cand_k = cand_f[keep], cand_k[keep]
    losses = []
    with torch.no_grad():
        for start in range(0, len(cand_f), grid_batch):
            f_b, k_b = cand_f[start:start + grid_batch], cand_k[start:start + grid_batch]
            n = len(f_b)
            pred = render(g_sharp.expand(n, -1, -1, -1), g_depth.expand(n, -1, -1, -1), k_b * grid_scale, f_b,
                          **render_kwargs)
            losses.append(_loss(pred, g_obs.expand(n, -1, -1, -1), g_mask.expand(n, -1, -1, -1), fit_gain))
    losses_t = torch.cat(losses)
    best = int(losses_t.argmin())
    grid_best = {"focus_m": float(cand_f[best]), "K_px_m": float(cand_k[best]), "mse": float(losses_t[best])}

    # ---- gradient refinement at full resolution
    log_s = torch.tensor(math.log(grid_best["focus_m"]), **dev, requires_grad=True)
    log_k = torch.tensor(math.log(grid_best["K_px_m"]), **dev, requires_grad=K_px_m is None)
    params = [log_s] + ([log_k] if K_px_m is None else [])
    mask = mask_for(h, w, crop_px)
    history: list[float] = []
    best_state = [log_s.item(), log_k.item(), math.inf]
    lo_s, hi_s = math.log(focus_range_m[0] * 0.5), math.log(focus_range_m[1] * 2)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        pred = render(sharp, depth_m, log_k.exp().reshape(1), log_s.clamp(lo_s, hi_s).exp().reshape(1),
                      **render_kwargs)
        loss = _loss(pred, observed, mask, fit_gain).sum()
        if loss.requires_grad:
            loss.backward()
        else:  # the renderer took a no-blur shortcut (every radius ~0): the loss is flat here
            for p in params:
                p.grad = torch.zeros_like(p)
        history.append(loss.item())
        if history[-1] < best_state[2]:
            best_state[:] = [log_s.clamp(lo_s, hi_s).item(), log_k.item(), history[-1]]
        return loss

    if steps > 0:
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, max_eval=int(steps * 1.5),
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-12)
            opt.step(closure)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                opt.step(closure)
        else:
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam'; got {optimizer!r}")
    focus = math.exp(best_state[0]) if steps else grid_best["focus_m"]
    k_fit = math.exp(best_state[1]) if steps else grid_best["K_px_m"]
    with torch.no_grad():
        pred = render(sharp, depth_m, torch.tensor([k_fit], **dev), torch.tensor([focus], **dev), **render_kwargs)
        gain = exposure_gain(pred, observed, mask) if fit_gain else torch.ones(1, **dev)
        pred = apply_gain(pred, gain) if fit_gain else pred
    return FocusFit(focus_m=focus, K_px_m=k_fit, gain=float(gain[0]), shift_px=shift,
                    psnr_db=psnr_db(pred, observed, crop_px), rendered=pred, observed=observed,
                    grid_best=grid_best, history=history)


__all__ = ["FocusFit", "apply_gain", "exposure_gain", "fit_focus", "phase_correlation", "psnr_db", "shift_image",
           "ssim"]
