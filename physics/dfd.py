"""Depth from bokeh in closed form: per-pixel blur radii from a stack, then the Depth-from-Bokeh-Sweep regression.

1. :func:`estimate_blur_radius` matches every frame of a stack against the sharp reference re-blurred by a disk of
   each candidate radius (in linear light), compares them over a local window, takes the best candidate per pixel and
   refines it between its neighbours by the best blend of the two candidate blurs (a closed-form quadratic). A
   confidence in [0, 1) says how much the error curve varies (textureless pixels: ~0).
2. :func:`depth_from_bokeh_sweep` regresses the inverse-depth offset ``Delta = 1/s1 - 1/d`` from radii
   ``r_i = K_i Delta + noise``: ``Delta_hat = sum_i w_i K_i r_i / sum_i w_i K_i^2`` (unbiased; variance
   ``sigma^2 / sum K_i^2`` for equal weights), then ``d = 1 / (1/s1 - Delta_hat)``.
3. Real aperture pairs: the "sharp" frame (e.g. f/8) carries its own blur ``K_ref |Delta|``. Cross-blurring (the
   reference by the frame's candidate disk, the frame by the reference's) is exact for any such pair
   (:func:`depth_from_aperture_pair`). For rendering one from the other, :func:`relative_k` gives the strength
   ``K_rel = sqrt(K^2 - K_ref^2)`` of the extra blur (a disk convolved with a disk has the second moment of a disk
   with the quadratic sum of the radii).

Hand-written here: blurs of one reference at many radii share one FFT (kornia has no disk kernel or per-radius
FFT bank); kernels come from physics.aperture, local windows from kornia's box blur.
"""

from __future__ import annotations

import math
from typing import Sequence

import kornia
import torch
import torch.nn.functional as F

from physics.aperture import Aperture, make_aperture
from physics.camera import check_focus, check_k
from physics.checks import check_positive_float, check_srgb_range, check_tensor


def blur_bank(image: torch.Tensor, radii_px: Sequence[float] | torch.Tensor,
              aperture: str | Aperture = "disk") -> torch.Tensor:
    """Blur ``image`` [B,C,H,W] by aperture spots of every radius in ``radii_px`` (C_r radii) -> [C_r,B,C,H,W].

    Kernels are :mod:`physics.aperture`'s (soft rim, unit area). One FFT of the reflect-padded image, one product
    per radius (exact linear convolution inside the frame).
    """
    check_tensor(image, "image", "[B,C,H,W]", 4, must="be")
    ap = make_aperture(aperture)
    radii = [float(r) for r in (radii_px.reshape(-1).tolist() if isinstance(radii_px, torch.Tensor) else radii_px)]
    if not radii or not all(math.isfinite(r) for r in radii):
        raise ValueError(f"radii_px must be one or more finite radii (px); got {radii}")
    pad = int(math.ceil(max(radii) + 1)) + 1
    b, c, h, w = image.shape
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(image, (pad, pad, pad, pad), mode=mode)
    ph, pw = padded.shape[-2:]
    spec = torch.fft.rfft2(padded)
    size = 2 * pad + 1
    kernels = torch.stack([ap.kernel(r, half_size=pad, dtype=image.dtype, device=image.device) for r in radii])
    # place each kernel centred at (0, 0) of a [ph, pw] canvas (circular shift), then its spectrum
    canvas = torch.zeros(len(radii), ph, pw, dtype=image.dtype, device=image.device)
    canvas[:, :size, :size] = kernels
    canvas = torch.roll(canvas, shifts=(-pad, -pad), dims=(-2, -1))
    kspec = torch.fft.rfft2(canvas)  # [C_r, ph, pw//2+1]
    out = torch.fft.irfft2(spec[None] * kspec[:, None, None], s=(ph, pw))
    return out[..., pad:pad + h, pad:pad + w]


def blur_to_radius_map(image: torch.Tensor, radius_px: torch.Tensor, *, step_px: float = 0.25,
                       aperture: str | Aperture = "disk") -> torch.Tensor:
    """``image`` [B,C,H,W] blurred at a per-pixel spot radius: radius_px [B,N,1,H,W] (px, >= 0) -> [B,N,C,H,W].

    Each output pixel blends the two spots of the candidate grid 0, step, 2 step, ... around its radius, with the
    weight linear in r^2 (the blend then has the second moment of the spot in between): the image model that
    :func:`estimate_blur_radius` refines with, so a frame made from a constant map reads back as that radius. A
    convolution per candidate radius, no occlusion (physics.render draws occlusion); linear light is the caller's
    choice (pass linear values for physically correct blends).
    """
    check_tensor(image, "image", "[B,C,H,W]", 4, must="be")
    if not isinstance(radius_px, torch.Tensor):
        raise ValueError(f"radius_px must be a torch.Tensor [B,N,1,H,W]; got {type(radius_px).__name__}")
    if radius_px.dim() != 5 or radius_px.shape[0] != image.shape[0] or radius_px.shape[2] != 1 \
            or radius_px.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"radius_px must be [B,N,1,H,W] matching image {tuple(image.shape)}; "
                         f"got {tuple(radius_px.shape)}")
    if not bool(torch.isfinite(radius_px).all()) or bool((radius_px < 0).any()):
        raise ValueError("radius_px must be finite and >= 0")
    if not step_px > 0:
        raise ValueError(f"step_px must be > 0; got {step_px}")
    n_cand = int(math.floor(float(radius_px.max()) / step_px)) + 2
    radii = torch.arange(n_cand, dtype=image.dtype, device=image.device) * step_px
    bank = blur_bank(image, radii, aperture)  # [C_r,B,C,H,W]
    lo = (radius_px / step_px).floor().long().clamp(0, n_cand - 2)  # [B,N,1,H,W]
    u_lo, u_hi = radii[lo] ** 2, radii[lo + 1] ** 2
    t = ((radius_px**2 - u_lo) / (u_hi - u_lo)).clamp(0.0, 1.0)
    b, n, c = radius_px.shape[0], radius_px.shape[1], image.shape[1]
    h, w = image.shape[-2:]
    flat = bank.permute(1, 0, 2, 3, 4)  # [B,C_r,C,H,W]
    idx_lo = lo.expand(b, n, c, h, w)
    pick_lo = flat.gather(1, idx_lo)
    pick_hi = flat.gather(1, idx_lo + 1)
    return (1 - t) * pick_lo + t * pick_hi


def _to_linear(x: torch.Tensor, color_space: str) -> torch.Tensor:
    if color_space == "srgb":
        return kornia.color.rgb_to_linear_rgb(x.clamp(0, 1))
    if color_space == "linear":
        return x
    raise ValueError(f"color_space must be 'srgb' or 'linear', got {color_space!r}")


def estimate_blur_radius(reference: torch.Tensor, frames: torch.Tensor, *, max_radius_px: float,
                         step_px: float = 0.25, window_px: int = 9, color_space: str = "srgb",
                         reference_blur_ratio: float | Sequence[float] | torch.Tensor = 0.0,
                         aperture: str | Aperture = "disk", noise_floor: float = 1e-5,
                         reference_noise: bool = True, return_confidence: bool = False,
                         confidence: str = "contrast",
                         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel disk blur radius of each frame of a stack.

    For every candidate radius ``r`` of frame i the reference is blurred by a disk of radius ``r`` and the frame by a
    disk of radius ``rho_i * r`` (``rho_i = reference_blur_ratio``: the reference's own blur relative to the frame's,
    0 for an all-in-focus reference, ``K_ref / K_i`` for a real aperture pair). Convolutions commute, so at the true
    radius both sides equal the all-in-focus image blurred by both disks, whatever the reference's own blur.
    The windowed squared residual is divided by its white-noise variance factor ``||D(r)||^2 + ||D(rho r)||^2`` (so
    that stronger smoothing of the noise does not pull estimates towards large radii); the best candidate per pixel is
    refined between its neighbours (:func:`_refine_between_candidates`).

    Args:
        reference: [B,3,H,W] the sharpest view. frames: [B,N,3,H,W] blurrier views of it (same colour space).
        max_radius_px: largest candidate frame radius (px); candidates run 0, step, ..., max.
        step_px: candidate spacing (px). window_px: side of the square error window (px, odd).
        color_space: "srgb" (inputs in sRGB, matched in linear light) or "linear".
        reference_blur_ratio: rho, a float or N values in [0, 1).
        aperture: spot shape of the candidates (:func:`physics.aperture.make_aperture`), "disk" by default.
        reference_noise: True when the reference carries sensor noise like the frames (photos); False for a
            noise-free reference (rendered or denoised): sets the noise-variance normalisation.
        confidence: "contrast" (in [0,1]; ~0 on textureless pixels) or "curvature" (the error curve's curvature at
            its minimum over its mean level, 1/px^2: an inverse-variance weight; small near r = 0, where a spot's
            effect is second order in r), or "both"
            (then the return is radius, contrast, curvature).
        noise_floor: added to the error in the confidence denominator (squared linear units).
    Returns:
        radius_px [B,N,1,H,W] (unsigned frame radius, px) and, with ``return_confidence``, confidence
        [B,N,1,H,W] (see ``confidence``; contrast = ``(mean_c e_c - min_c e_c) / (mean_c e_c + noise_floor)``).
    """
    if confidence not in ("contrast", "curvature", "both"):
        raise ValueError(f"confidence must be 'contrast' or 'curvature'; got {confidence!r}")
    check_tensor(reference, "reference", "[B,3,H,W]", 4, channels=3, channels_dim=1, must="be")
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a torch.Tensor [B,N,3,H,W]; got {type(frames).__name__}")
    if frames.dim() != 5 or frames.shape[0] != reference.shape[0] or frames.shape[2:] != reference.shape[1:]:
        raise ValueError(f"frames must be [B,N,3,H,W] matching reference {tuple(reference.shape)}; "
                         f"got {tuple(frames.shape)}")
    check_tensor(frames, "frames", "[B,N,3,H,W] with N >= 1", 5, channels=3, channels_dim=2, must="be")
    if not (max_radius_px > 0 and step_px > 0 and math.isfinite(max_radius_px)):
        raise ValueError(f"max_radius_px and step_px must be > 0; got {max_radius_px}, {step_px}")
    check_positive_float(step_px, "step_px")
    if isinstance(window_px, bool) or not float(window_px) == int(window_px) or window_px < 1 or window_px % 2 == 0:
        raise ValueError(f"window_px must be a positive odd integer; got {window_px!r}")
    check_positive_float(noise_floor, "noise_floor", allow_zero=True)
    if color_space not in ("srgb", "linear"):
        raise ValueError(f"color_space must be 'srgb' or 'linear', got {color_space!r}")
    if color_space == "srgb":
        check_srgb_range(reference, "reference")
        check_srgb_range(frames, "frames")
    b, n = frames.shape[:2]
    ratios = torch.as_tensor(reference_blur_ratio, dtype=torch.float64).reshape(-1)
    if ratios.numel() == 1:
        ratios = ratios.expand(n)
    if ratios.numel() != n or not torch.isfinite(ratios).all() or (ratios < 0).any() or (ratios >= 1).any():
        raise ValueError(f"reference_blur_ratio must be one value or N={n} values in [0, 1); got "
                         f"{reference_blur_ratio}")
    ref = _to_linear(reference, color_space)
    frm = _to_linear(frames, color_space)
    n_cand = int(math.floor(max_radius_px / step_px + 1e-6)) + 1
    radii = [i * step_px for i in range(n_cand)]
    ap = make_aperture(aperture)
    bank = blur_bank(ref, radii, ap)  # [C,B,3,H,W]
    norm_ref = torch.tensor([float((ap.kernel(r) ** 2).sum()) for r in radii], dtype=ref.dtype)
    h, w = ref.shape[-2:]
    errors, raw, cross, step_sq = [], [], [], []

    def window(x: torch.Tensor) -> torch.Tensor:  # [M,B,H,W] -> windowed mean over window_px^2
        m = x.shape[0]
        return kornia.filters.box_blur(x.reshape(m * b, 1, h, w), (window_px, window_px),
                                       border_type="reflect").reshape(m, b, h, w)

    for i in range(n):  # N is small (2-6 frames); each step is one batched window filter over all candidates
        rho = float(ratios[i])
        if rho > 0:
            frame_bank = blur_bank(frm[:, i], [rho * r for r in radii], ap)  # [C,B,3,H,W]
            norm_frm = torch.tensor([float((ap.kernel(rho * r) ** 2).sum()) for r in radii], dtype=ref.dtype)
        else:
            frame_bank = frm[:, i][None]
            norm_frm = torch.ones(n_cand, dtype=ref.dtype)
        diff = bank - frame_bank  # [C,B,3,H,W]
        e = window((diff**2).sum(dim=2))
        var_factor = ((norm_ref if reference_noise else 0.0) + norm_frm).to(ref.device).reshape(n_cand, 1, 1, 1)
        errors.append(e / var_factor)
        if n_cand > 1:  # the terms of the residual between neighbouring candidates (sub-step refinement)
            step = diff[1:] - diff[:-1]
            raw.append(e)
            cross.append(window((diff[:-1] * step).sum(dim=2)))
            step_sq.append(window((step**2).sum(dim=2)))
    err = torch.stack(errors, dim=2)  # [C,B,N,H,W]
    best = err.argmin(dim=0)  # [B,N,H,W]
    if n_cand > 1:
        radius = _refine_between_candidates(torch.stack(raw, 2), torch.stack(cross, 2), torch.stack(step_sq, 2),
                                            best, step_px)[:, :, None]
    else:
        radius = torch.zeros_like(best, dtype=err.dtype)[:, :, None]
    if not return_confidence:
        return radius
    e0 = err.gather(0, best[None])[0]
    em = err.gather(0, (best - 1).clamp_min(0)[None])[0]
    ep = err.gather(0, (best + 1).clamp_max(n_cand - 1)[None])[0]
    mean_e = err.mean(dim=0)
    contrast = ((mean_e - e0) / (mean_e + noise_floor)).clamp(0.0, 1.0)
    # curvature of the error curve at its minimum relative to the error level (~ inverse variance of r)
    curvature = (em - 2 * e0 + ep).clamp_min(0.0) / step_px**2 / (mean_e + noise_floor)
    if confidence == "both":
        return radius, contrast[:, :, None], curvature[:, :, None]
    return radius, (contrast if confidence == "contrast" else curvature)[:, :, None]


def _refine_between_candidates(raw: torch.Tensor, cross: torch.Tensor, step_sq: torch.Tensor, best: torch.Tensor,
                               step_px: float) -> torch.Tensor:
    """Sub-step radius: the best blend of the two candidate blurs on either side of the best candidate.

    Between candidates c_k and c_{k+1} the blurred reference is modelled as the blend (1 - t) B_k + t B_{k+1}, t linear
    in the squared radius (the blend has the second moment c r^2 of the spot in between: the layered renderer draws
    a spot that way). The windowed residual is then exactly quadratic in t:
    ``e(t) = raw_k + 2 t cross_k + t^2 step_sq_k`` (raw_k = |D_k|^2, cross_k = <D_k, D_{k+1} - D_k>,
    step_sq_k = |D_{k+1} - D_k|^2, windowed; D the reference-minus-frame residual). Its minimum on [0, 1] is taken on
    the segment below and the one above ``best`` and the lower one wins.

    Args: raw [C,B,N,H,W]; cross, step_sq [C-1,B,N,H,W]; best [B,N,H,W] (the argmin of the normalised error).
    Returns: [B,N,H,W] radii (px) >= 0.
    """
    n_cand = raw.shape[0]
    u = (torch.arange(n_cand, dtype=raw.dtype, device=raw.device) * step_px) ** 2
    results = []
    for seg in ((best - 1).clamp(0, n_cand - 2), best.clamp(0, n_cand - 2)):
        e_k = raw.gather(0, seg[None])[0]
        c_k = cross.gather(0, seg[None])[0]
        s_k = step_sq.gather(0, seg[None])[0]
        t = torch.where(s_k > 0, -c_k / s_k.clamp_min(1e-30), torch.zeros_like(c_k)).clamp(0.0, 1.0)
        e_min = e_k + 2 * t * c_k + t * t * s_k
        results.append((e_min, u[seg] + t * (u[seg + 1] - u[seg])))
    (e_lo, u_lo), (e_hi, u_hi) = results
    return torch.where(e_lo <= e_hi, u_lo, u_hi).clamp_min(0.0).sqrt()


def depth_from_bokeh_sweep(radius_px: torch.Tensor, K_px_m: torch.Tensor, focus_m: float | torch.Tensor, *,
                           weights: torch.Tensor | None = None, behind_focus: bool | None = True,
                           max_depth_m: float = 1e3) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth-from-Bokeh-Sweep: least squares over frames of ``r_i = K_i * Delta``.

    Args:
        radius_px: [B,N,1,H,W] blur radii (px). Magnitudes with ``behind_focus=True`` (Delta >= 0, scene behind the
            focal plane) or ``False`` (in front, Delta <= 0); already signed radii with ``behind_focus=None``.
        K_px_m: [B,N] or [N] strengths (px*m) of the frames (relative strengths for aperture pairs).
        focus_m: float or [B] focus distance (m).
        weights: optional [B,N,1,H,W] >= 0 per-pixel frame weights (e.g. confidences); equal weights by default.
        max_depth_m: depth where ``1/s1 - Delta <= 1/max_depth_m`` (at or beyond infinity) is clamped to.
    Returns:
        inv_depth_offset [B,1,H,W] (1/m): ``Delta_hat = sum w K r / sum w K^2``;
        depth_m [B,1,H,W]: ``1 / (1/s1 - Delta_hat)``, clamped to (0, max_depth_m].
    """
    check_tensor(radius_px, "radius_px", "[B,N,1,H,W] with N >= 1", 5, channels=1, channels_dim=2, must="be")
    check_positive_float(max_depth_m, "max_depth_m")
    b, n = radius_px.shape[:2]
    K = torch.as_tensor(K_px_m, dtype=radius_px.dtype, device=radius_px.device)
    if K.dim() == 1:
        K = K[None].expand(b, -1)
    if K.shape != (b, n):
        raise ValueError(f"K_px_m must be [B,N]=({b},{n}) or [N]; got {tuple(K.shape)}")
    check_k(K)
    if (K.sum(dim=1) <= 0).any():
        raise ValueError("K_px_m: every image needs at least one frame with K > 0")
    s1 = torch.as_tensor(focus_m, dtype=radius_px.dtype, device=radius_px.device).reshape(-1)
    if s1.numel() == 1:
        s1 = s1.expand(b)
    if s1.numel() != b:
        raise ValueError(f"focus_m must be a float or [B] with B={b}; got {s1.numel()} values")
    check_focus(s1)
    if weights is None:
        weights = torch.ones_like(radius_px)
    elif not isinstance(weights, torch.Tensor) or weights.shape != radius_px.shape:
        raise ValueError(f"weights must have the shape of radius_px {tuple(radius_px.shape)}; got "
                         f"{tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__}")
    else:
        w = weights.detach()
        if not torch.isfinite(w).all():
            raise ValueError("weights contains NaN or infinite values; expected finite weights >= 0")
        if (w < 0).any():
            raise ValueError(f"weights contains negative values (min {float(w.min()):.4g}); expected weights >= 0")
    if behind_focus is None:
        r = radius_px
    else:
        r = radius_px.abs() if behind_focus else -radius_px.abs()
    Kb = K[:, :, None, None, None]
    num = (weights * Kb * r).sum(dim=1)
    den = (weights * Kb**2).sum(dim=1)
    delta = num / den.clamp_min(1e-12)
    inv_d = 1.0 / s1[:, None, None, None] - delta
    depth = 1.0 / inv_d.clamp_min(1.0 / max_depth_m)
    return delta, depth


def depth_from_stack(reference: torch.Tensor, frames: torch.Tensor, K_px_m: torch.Tensor,
                     focus_m: float | torch.Tensor, *, max_radius_px: float | None = None, max_depth_m: float = 1e3,
                     behind_focus: bool = True, min_depth_m: float = 0.3, **estimate_kwargs) -> dict[str, torch.Tensor]:
    """Closed-form depth from a bokeh stack with known K: radii per frame, then the sweep weighted by curvature.

    Args: reference [B,3,H,W] sharp; frames [B,N,3,H,W]; K_px_m [B,N] or [N]; focus_m float or [B].
        max_radius_px: candidate range. Default behind the focus: the largest K times 1/focus_m (a point at
        infinity) plus one pixel; in front of it (``behind_focus=False``, e.g. a far focus): the largest K times
        1/min_depth_m - 1/focus_m (the nearest surface expected), at most a quarter of the image width (larger
        blurs are not measurable in a window), plus one pixel. ``estimate_kwargs`` go to :func:`estimate_blur_radius`.
        behind_focus: the scene lies behind the focal plane (True) or in front of it (False).
        min_depth_m: nearest depth expected in front of the focus (m), for the default candidate range.
    Returns dict(radius_px [B,N,1,H,W], confidence [B,1,H,W] (mean contrast over frames), weight [B,N,1,H,W],
    inv_depth_offset [B,1,H,W], depth_m [B,1,H,W]).
    """
    check_tensor(reference, "reference", "[B,3,H,W]", 4, channels=3, channels_dim=1, must="be")
    K = torch.as_tensor(K_px_m, dtype=reference.dtype)
    check_k(K)
    check_focus(focus_m if isinstance(focus_m, torch.Tensor) else torch.as_tensor(focus_m, dtype=torch.float64))
    check_positive_float(max_depth_m, "max_depth_m")
    if max_radius_px is None:
        s1_min = float(torch.as_tensor(focus_m).min())
        if not s1_min > 0:
            raise ValueError(f"focus_m must be > 0; got {focus_m}")
        if behind_focus:
            max_radius_px = float(K.max()) / s1_min + 1.0
        else:
            if not 0 < min_depth_m < s1_min:
                raise ValueError(f"min_depth_m must lie in (0, focus_m={s1_min}) in front of the focus; got {min_depth_m}")
            s1_max = float(torch.as_tensor(focus_m).max())
            reach = float(K.max()) * (1.0 / min_depth_m - 1.0 / s1_max)
            max_radius_px = min(reach, 0.25 * reference.shape[-1]) + 1.0
    radius, contrast, weight = estimate_blur_radius(reference, frames, max_radius_px=max_radius_px,
                                                    return_confidence=True, confidence="both", **estimate_kwargs)
    delta, depth = depth_from_bokeh_sweep(radius, K, focus_m, weights=weight, behind_focus=behind_focus,
                                          max_depth_m=max_depth_m)
    return {"radius_px": radius, "confidence": contrast.mean(dim=1), "weight": weight, "inv_depth_offset": delta,
            "depth_m": depth}


def relative_k(K_px_m: float | torch.Tensor, K_reference_px_m: float | torch.Tensor) -> float | torch.Tensor:
    """Strength of the extra blur between a reference with its own blur (K_ref) and a frame (K):
    ``sqrt(K^2 - K_ref^2)`` (second-moment match of disk-on-disk blur). Requires K > K_ref >= 0."""
    check_k(K_px_m)
    check_k(K_reference_px_m, "K_reference_px_m")
    diff = K_px_m**2 - K_reference_px_m**2
    bad = diff <= 0
    if bool(bad.any() if isinstance(bad, torch.Tensor) else bad):
        raise ValueError("K_px_m must be larger than K_reference_px_m (the frame must be the blurrier one)")
    return diff**0.5


def depth_from_aperture_pair(sharp: torch.Tensor, wide: torch.Tensor, K_sharp_px_m: float, K_wide_px_m: float,
                             focus_m: float | torch.Tensor, *, max_radius_px: float, step_px: float = 0.25,
                             window_px: int = 9, color_space: str = "srgb", behind_focus: bool = True,
                             max_depth_m: float = 1e3) -> dict[str, torch.Tensor]:
    """Depth from a real aperture pair (e.g. f/8 + f/2.8 of the same view, registered).

    Both frames are blurred: ``r_sharp = K_sharp |Delta|``, ``r_wide = K_wide |Delta|``. The wide frame's radius is
    found by cross-blurring (reference blurred by D(r), wide frame by D(r K_sharp/K_wide); see
    :func:`estimate_blur_radius`), then ``Delta = r_wide / K_wide``.
    Returns dict(radius_px [B,1,H,W] (of the wide frame), confidence [B,1,H,W], inv_depth_offset [B,1,H,W],
    depth_m [B,1,H,W]).
    """
    check_k(K_sharp_px_m, "K_sharp_px_m")
    check_k(K_wide_px_m, "K_wide_px_m")
    check_tensor(sharp, "sharp", "[B,3,H,W]", 4, channels=3, channels_dim=1, must="be")
    if not isinstance(wide, torch.Tensor) or wide.shape != sharp.shape:
        raise ValueError(f"wide must be a tensor [B,3,H,W] of the shape of sharp {tuple(sharp.shape)}; got "
                         f"{tuple(wide.shape) if isinstance(wide, torch.Tensor) else type(wide).__name__}")
    if not K_wide_px_m > K_sharp_px_m:
        raise ValueError(f"K_wide_px_m ({K_wide_px_m}) must be larger than K_sharp_px_m ({K_sharp_px_m})")
    radius, conf = estimate_blur_radius(sharp, wide[:, None], max_radius_px=max_radius_px, step_px=step_px,
                                        window_px=window_px, color_space=color_space,
                                        reference_blur_ratio=float(K_sharp_px_m) / float(K_wide_px_m),
                                        return_confidence=True)
    delta, depth = depth_from_bokeh_sweep(radius, torch.tensor([float(K_wide_px_m)]), focus_m,
                                          behind_focus=behind_focus, max_depth_m=max_depth_m)
    return {"radius_px": radius[:, 0], "confidence": conf[:, 0], "inv_depth_offset": delta, "depth_m": depth}


__all__ = ["blur_bank", "depth_from_aperture_pair", "depth_from_bokeh_sweep", "depth_from_stack",
           "estimate_blur_radius", "relative_k"]
