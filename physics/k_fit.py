"""The strength K (px*m) that best explains an observed defocused image under the physics renderer.

Given the sharp image, its depth and the focus, a grid over log K (then a finer grid and a parabola) finds the K
whose :func:`physics.render.render_bokeh` is closest (MSE, sRGB) to the observed image: the K-calibration of a
bokeh generator (``tools/compare_bokeh.py``, ``bokeh.generation.calibration``). ``k_sensitivity_rms`` says whether
an image can tell K apart at all (a weak K on a far, smooth scene cannot). For a real photo with an unknown focus
and exposure, see :mod:`physics.focus_fit`.
"""

from __future__ import annotations

import math

import torch

from physics.camera import check_focus, check_k
from physics.render import render_bokeh, validate_render_inputs


def _check_k_range(k_lo: float, k_hi: float, lo_name: str = "k_lo", hi_name: str = "k_hi") -> None:
    for value, name in ((k_lo, lo_name), (k_hi, hi_name)):
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"{name} must be a finite strength > 0 (px*m; the grid is over log K); got {value!r}")


def _check_scene(sharp: torch.Tensor, depth_m: torch.Tensor, focus_m: float,
                 observed: torch.Tensor | None = None, color_space: str = "srgb") -> None:
    """One scene, unbatched: sharp [3,H,W] sRGB, depth_m [1,H,W] (m), observed [3,H,W] like sharp."""
    if not isinstance(sharp, torch.Tensor) or sharp.dim() != 3:
        shape = tuple(sharp.shape) if isinstance(sharp, torch.Tensor) else type(sharp).__name__
        raise ValueError(f"sharp must be one image [3,H,W] (unbatched); got {shape}")
    if not isinstance(depth_m, torch.Tensor) or depth_m.dim() != 3:
        shape = tuple(depth_m.shape) if isinstance(depth_m, torch.Tensor) else type(depth_m).__name__
        raise ValueError(f"depth_m must be one depth map [1,H,W] (unbatched, m); got {shape}")
    validate_render_inputs(sharp, depth_m, 0.0, 1.0, color_space=color_space)
    check_focus(focus_m)
    if observed is not None:
        if not isinstance(observed, torch.Tensor) or observed.shape != sharp.shape:
            shape = tuple(observed.shape) if isinstance(observed, torch.Tensor) else type(observed).__name__
            raise ValueError(f"observed must have the shape of sharp {tuple(sharp.shape)}; got {shape}")
        try:
            validate_render_inputs(observed, depth_m, 0.0, 1.0, color_space=color_space)
        except ValueError as error:
            raise ValueError(f"observed: {error}") from None


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 (grid points); got {value!r}")


def fit_range(k_min: float, k_max: float) -> tuple[float, float]:
    """The K search range (px*m) for a generator trained on [k_min, k_max]: 0.1 k_min to 2 k_max, wide enough that
    a frame far off its asked strength is measured, not clipped to the trained range."""
    _check_k_range(k_min, k_max, "k_min", "k_max")
    return 0.1 * k_min, 2.0 * k_max


def _renders(sharp: torch.Tensor, depth_m: torch.Tensor, K_px_m: torch.Tensor, focus_m: float | torch.Tensor,
             **render_options) -> torch.Tensor:
    """Physics renders [M,3,H,W] (sRGB, clipped to [0, 1]) of one scene at M strengths K (and foci: a number or [M])."""
    m = K_px_m.numel()
    focus = focus_m if torch.is_tensor(focus_m) else torch.full((m,), float(focus_m))
    with torch.no_grad():
        return render_bokeh(sharp[None].expand(m, -1, -1, -1), depth_m[None].expand(m, -1, -1, -1), K_px_m, focus,
                            **render_options).clamp(0, 1)


def _parabola_min(xs: torch.Tensor, err: torch.Tensor) -> float:
    i = int(err.argmin())
    if 0 < i < len(xs) - 1:
        e0, em, ep = float(err[i]), float(err[i - 1]), float(err[i + 1])
        denom = em - 2 * e0 + ep
        if denom > 1e-12:
            step = float(xs[1] - xs[0])
            return float(xs[i]) + float(max(-0.5, min(0.5, 0.5 * (em - ep) / denom))) * step
    return float(xs[i])


def fit_k(sharp: torch.Tensor, depth_m: torch.Tensor, focus_m: float, observed: torch.Tensor, k_lo: float,
          k_hi: float, n: int = 20, n_fine: int = 9, render_options: dict | None = None) -> float:
    """1-D K-calibration: the K whose physics render best explains ``observed``.

    A log-K grid of ``n`` points over [k_lo, k_hi] (35% apart for the default range), then ``n_fine`` points between
    the best one's neighbours and a parabola through the best three: a coarse grid alone leaves errors of the order
    of the 15% being measured.
    """
    _check_scene(sharp, depth_m, focus_m, observed, (render_options or {}).get("color_space", "srgb"))
    _check_k_range(k_lo, k_hi)
    _check_count(n, "n")
    _check_count(n_fine, "n_fine")

    def errors(logk: torch.Tensor) -> torch.Tensor:
        renders = _renders(sharp, depth_m, logk.exp(), focus_m, **(render_options or {}))
        return (renders - observed[None]).pow(2).flatten(1).mean(1)

    logk = torch.linspace(math.log(k_lo), math.log(k_hi), n)
    i = int(errors(logk).argmin())
    fine = torch.linspace(float(logk[max(i - 1, 0)]), float(logk[min(i + 1, n - 1)]), n_fine)
    return math.exp(_parabola_min(fine, errors(fine)))


def k_sensitivity_rms(sharp: torch.Tensor, depth_m: torch.Tensor, focus_m: float, K: float,
                      rel: float = 0.15) -> float:
    """RMS difference (sRGB, [0, 1]) between the physics renders at K (1 + rel) and K (1 - rel).

    Below one 8-bit code value (1/255) no image can tell K to within ``rel``: e.g. a weak K on a far, smooth scene,
    where the radii are a small fraction of a pixel (a sub-pixel blur has variance r^2/4: its effect is second order
    in r). Such rows are kept out of the headline K-calibration error (``k_cal_err_measurable``) and counted.
    """
    _check_scene(sharp, depth_m, focus_m)
    check_k(K, "K")
    if not (isinstance(rel, (int, float)) and 0 < rel < 1):
        raise ValueError(f"rel must be a relative step in (0, 1); got {rel!r}")
    r = _renders(sharp, depth_m, torch.tensor([K * (1 + rel), K * (1 - rel)]), focus_m)
    return float((r[0] - r[1]).pow(2).mean().sqrt())


K_MEASURABLE_RMS = 1.0 / 255.0


def k_measurability(sharp: torch.Tensor, depth_m: torch.Tensor, focus_m: float, K: float) -> tuple[float, bool]:
    """(:func:`k_sensitivity_rms` at K, whether it reaches ``K_MEASURABLE_RMS``): can this scene tell K to 15%?
    The one definition of a measurable row, for every K-calibration figure and fit."""
    rms = k_sensitivity_rms(sharp, depth_m, focus_m, K)
    return rms, rms >= K_MEASURABLE_RMS


def fit_k_focus(sharp: torch.Tensor, depth_m: torch.Tensor, focus_m: float, observed: torch.Tensor, k_lo: float,
                k_hi: float, n_k: int = 10, n_focus: int = 5) -> tuple[float, float]:
    """2-D K-calibration: grid over inverse focus (around the true one, +-40%) x log K; returns (K, focus_m)."""
    _check_scene(sharp, depth_m, focus_m, observed)
    _check_k_range(k_lo, k_hi)
    _check_count(n_k, "n_k")
    _check_count(n_focus, "n_focus")
    inv = torch.linspace(0.6 / focus_m, 1.4 / focus_m, n_focus)
    logk = torch.linspace(math.log(k_lo), math.log(k_hi), n_k)
    grid_inv, grid_logk = torch.meshgrid(inv, logk, indexing="ij")
    renders = _renders(sharp, depth_m, grid_logk.flatten().exp(), 1.0 / grid_inv.flatten())
    err = (renders - observed[None]).pow(2).flatten(1).mean(1).view(n_focus, n_k)
    i, j = divmod(int(err.argmin()), n_k)
    k = math.exp(_parabola_min(logk, err[i]))
    return k, float(1.0 / inv[i])


__all__ = ["K_MEASURABLE_RMS", "fit_k", "fit_k_focus", "fit_range", "k_measurability", "k_sensitivity_rms"]
