"""Thin-lens bokeh renderers: a fast occlusion-aware layered renderer, an exact scatter reference, the BokehMe baseline.

All renderers take an all-in-focus image ``[B,3,H,W]`` (or ``[3,H,W]``), a metric depth map ``[B,1,H,W]`` (m), the
metric blur strength ``K_px_m`` (px*m, float or tensor [B]) and the focus distance ``focus_m`` (m, float or [B]),
and blur every pixel into a spot of signed radius ``r = K * (1/focus_m - 1/depth_m)`` px (> 0 behind the focal
plane). They return an image of the input's shape in the input's colour space. Work is done in float32 (float64 if
given), linear light, premultiplied RGBA. Outside the frame the scene is assumed to continue like its border pixels
(replicate padding), in every renderer, so that they agree at the borders.

- :func:`render_bokeh`: the fast renderer, occlusion-aware and differentiable w.r.t. image, depth, K and focus.
- :func:`render_exact_reference`: the direct scatter of every pixel's spot, O(pixels x r^2); exact where nothing
  occludes (smooth depth), the ground truth of the tests. Not occlusion-aware (a blurred background bleeds over a
  sharp foreground).
- :func:`render_scatter_bokehme`: the order-free normalised scatter of BokehMe's classical renderer, on our metric K.

Hand-written: kornia provides no defocus / per-pixel / layered blur (its filters apply one kernel per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import kornia
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import camera
from .checks import check_srgb_range, check_tensor, finite_float, is_int
from .aperture import Aperture, ImageAperture, kernel_half_size, make_aperture

#: bumped whenever a render of the same inputs changes (caches of rendered data key on it). 2: spots are drawn with
#: the continuous spot's second moment, so radii under 0.5 px blur too (physics.aperture).
RENDERER_VERSION = 2

#: blur radii above this many times the image's larger side are refused: such spots leave only the image mean, and
#: a K in the wrong units (e.g. px*m at another width, mm for m) would otherwise ask for gigabytes of layers.
MAX_RADIUS_IMAGE_SIDES = 2.0


__all__ = [
    "render_bokeh",
    "render_radius_map",
    "render_exact_reference",
    "render_scatter_bokehme",
    "layer_radii",
    "highlight_boost",
    "validate_render_inputs",
    "check_blur_radius",
    "MAX_RADIUS_IMAGE_SIDES",
]

Number = Union[float, int, torch.Tensor]

# ----------------------------------------------------------------------------------------------------------------
# input checks and common preparation
# ----------------------------------------------------------------------------------------------------------------


def check_blur_radius(K: float, focus_m: float, depth_min_m: float, depth_max_m: float, height: int, width: int,
                      name: str = "--K") -> float:
    """The largest CoC radius (px) of strength ``K`` focused at ``focus_m`` over depths in [min, max] m; a ValueError
    naming ``name`` (the option K came from), K, that radius and the limit when it exceeds MAX_RADIUS_IMAGE_SIDES x the
    image's larger side -- the renderer's own refusal, checked before any rendering."""
    camera.check_k(K, name)
    camera.check_focus(focus_m)
    camera.check_positive(depth_min_m, "depth_min_m")
    camera.check_positive(depth_max_m, "depth_max_m")
    for value, dim in ((height, "height"), (width, "width")):
        if not (is_int(value) and value >= 1):
            raise ValueError(f"{dim} must be an image size in px (an int >= 1); got {value!r}")
    spread = max(abs(1.0 / focus_m - 1.0 / depth_min_m), abs(1.0 / focus_m - 1.0 / depth_max_m))
    radius = K * spread
    limit = MAX_RADIUS_IMAGE_SIDES * max(height, width)
    if not radius <= limit:
        raise ValueError(f"{name} {K:g} px*m gives a blur radius of {radius:.4g} px (focus {focus_m:g} m, depth "
                         f"{depth_min_m:.4g}..{depth_max_m:.4g} m), more than the limit of {limit:g} px "
                         f"({MAX_RADIUS_IMAGE_SIDES:g} x the image's larger side, {max(height, width)} px); use a smaller "
                         f"strength")
    return radius


def _check_image(image: torch.Tensor, color_space: str, batched_only: bool = False) -> None:
    """``image`` [B,3,H,W] (or [3,H,W] unless ``batched_only``) and ``color_space``: the renderers clip sRGB to
    [0, 1], so an sRGB image must also lie in that range (ValueError naming what is wrong)."""
    check_tensor(image, "image", "[B,3,H,W]" if batched_only else "[B,3,H,W] or [3,H,W]", 4 if batched_only else (3, 4),
                 channels=3, dtype_hint="values in [0,1] for sRGB")
    if color_space not in ("srgb", "linear"):
        raise ValueError(f"color_space must be 'srgb' or 'linear'; got {color_space!r}")
    if color_space == "srgb":
        check_srgb_range(image, "image")


def _check_layer_options(layer_ratio: float, pyramid_radius_px: float) -> None:
    """The layered renderer's knobs: ``layer_ratio`` finite > 1, ``pyramid_radius_px`` finite >= 0."""
    if not finite_float(layer_ratio) > 1.0:
        raise ValueError(f"layer_ratio must be a finite number > 1; got {layer_ratio!r}")
    if not finite_float(pyramid_radius_px) >= 0:
        raise ValueError(f"pyramid_radius_px must be a finite number >= 0 (0 disables the pyramid); got "
                         f"{pyramid_radius_px!r}")


def _check_offsets_per_chunk(offsets_per_chunk: int) -> None:
    if not (is_int(offsets_per_chunk) and offsets_per_chunk >= 1):
        raise ValueError(f"offsets_per_chunk must be an int >= 1; got {offsets_per_chunk!r}")


def validate_render_inputs(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: Number, focus_m: Number, *,
                           color_space: str = "srgb", f_mm: Number | None = None) -> None:
    """Raise ``ValueError`` naming the argument for every kind of bad renderer input."""
    _check_image(image, color_space)
    if not torch.is_tensor(depth_m):
        raise ValueError(f"depth_m must be a torch.Tensor [B,1,H,W] of depths in metres; got {type(depth_m).__name__}")
    if depth_m.dim() != image.dim():
        raise ValueError(f"depth_m must have shape {'[B,1,H,W]' if image.dim() == 4 else '[1,H,W]'} to match image "
                         f"{tuple(image.shape)}; got {tuple(depth_m.shape)}")
    camera.check_depth_m(depth_m, like=image)
    camera.check_k(K_px_m)
    camera.check_focus(focus_m, f_mm=f_mm)
    batch = image.shape[0] if image.dim() == 4 else 1
    for value, name in ((K_px_m, "K_px_m"), (focus_m, "focus_m")):
        if torch.is_tensor(value) and value.numel() not in (1, batch):
            raise ValueError(f"{name} has {value.numel()} values but the batch has {batch} images; give a float "
                             f"or a tensor [B]")


def _working_dtype(image: torch.Tensor) -> torch.dtype:
    return torch.float64 if image.dtype == torch.float64 else torch.float32


def highlight_boost(linear_rgb: torch.Tensor, gain: float, threshold: float = 0.8) -> torch.Tensor:
    """Inverse tone map for bokeh balls: scale bright linear-light pixels up before the blur.

    A clipped photograph loses the energy of highlights, so their bokeh balls come out dull. Pixels whose linear
    luminance L exceeds ``threshold`` are multiplied by ``1 + gain * ((L - threshold) / (1 - threshold))^2``
    (clamped at L = 1, so a saturated pixel becomes ``1 + gain`` times brighter); ``gain = 0`` is the identity.
    Differentiable. [B,3,H,W] -> [B,3,H,W].
    """
    if gain < 0 or not math.isfinite(gain):
        raise ValueError(f"highlight_gain must be a finite number >= 0; got {gain}")
    if not torch.is_tensor(linear_rgb) or linear_rgb.dim() != 4 or linear_rgb.shape[1] != 3:
        shape = tuple(linear_rgb.shape) if torch.is_tensor(linear_rgb) else type(linear_rgb).__name__
        raise ValueError(f"linear_rgb must be a tensor [B,3,H,W] of linear-light RGB; got {shape}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"highlight_threshold must be in [0, 1); got {threshold}")
    if gain == 0:
        return linear_rgb
    lum = (0.2126 * linear_rgb[:, 0:1] + 0.7152 * linear_rgb[:, 1:2] + 0.0722 * linear_rgb[:, 2:3])
    t = ((lum - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)
    return linear_rgb * (1.0 + gain * t * t)


@dataclass
class _Prepared:
    linear: torch.Tensor  # [B,3,H,W] linear light, working dtype
    radius: torch.Tensor  # [B,1,H,W] signed CoC radius, px
    batched: bool


def _prepare(image, depth_m, K_px_m, focus_m, color_space, f_mm, highlight_gain=0.0, highlight_threshold=0.8,
             to_linear=True) -> _Prepared:
    validate_render_inputs(image, depth_m, K_px_m, focus_m, color_space=color_space, f_mm=f_mm)
    batched = image.dim() == 4
    if not batched:
        image, depth_m = image[None], depth_m[None]
    dtype = _working_dtype(image)
    img = image.to(dtype)
    if to_linear and color_space == "srgb":
        img = kornia.color.rgb_to_linear_rgb(img.clamp(0.0, 1.0))
    if to_linear:
        img = highlight_boost(img, float(highlight_gain), float(highlight_threshold))
    radius = camera.signed_coc_radius_px(depth_m.to(dtype), _as(K_px_m, dtype), _as(focus_m, dtype))
    return _Prepared(img, radius, batched)


def _as(x: Number, dtype: torch.dtype) -> Number:
    return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x


def _finish(linear: torch.Tensor, color_space: str, batched: bool, clip: bool) -> torch.Tensor:
    out = linear
    if color_space == "srgb":
        out = kornia.color.linear_rgb_to_rgb(out.clamp_min(0.0))
        if clip:
            out = out.clamp(0.0, 1.0)
    return out if batched else out[0]


# ----------------------------------------------------------------------------------------------------------------
# the fast layered renderer
# ----------------------------------------------------------------------------------------------------------------

#: radii (px) of the smallest blurred layers; beyond the last one, layers grow geometrically by ``layer_ratio``.
_SMALL_LAYERS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def layer_radii(max_radius_px: float, ratio: float = 1.2) -> list[float]:
    """Unsigned layer radii (px), ascending from the in-focus layer 0.0, the last one >= ``max_radius_px``.

    Spacing is fine near focus (0.25 px: a sub-pixel spot still blurs, with variance r^2/4, see physics.aperture)
    and relative beyond 1.5 px (factor ``ratio``), because blending two neighbouring spot sizes costs an error
    proportional to their difference relative to the radius.
    """
    if not ratio > 1.0 or not math.isfinite(ratio):
        raise ValueError(f"layer_ratio must be a finite number > 1; got {ratio}")
    if not (math.isfinite(max_radius_px) and max_radius_px >= 0):
        raise ValueError(f"max_radius_px must be a finite number >= 0 (px); got {max_radius_px}")
    radii = [0.0, *_SMALL_LAYERS]
    while radii[-1] < max_radius_px:
        radii.append(radii[-1] * ratio)
    # drop the large ones we do not reach
    while len(radii) > 1 and radii[-2] >= max_radius_px:
        radii.pop()
    return radii


def _scale_for(radius: float, pyramid_radius_px: float) -> int:
    """Power-of-two downsampling factor of a layer: the reduced radius lies in [R0, 2*R0)."""
    a = abs(radius)
    if pyramid_radius_px <= 0 or a < 2 * pyramid_radius_px:
        return 1
    return 2 ** int(math.floor(math.log2(a / pyramid_radius_px)))


def _depthwise(x: torch.Tensor, kernels: torch.Tensor, pad: bool = False, flipped: bool = False) -> torch.Tensor:
    """Per-channel 2-D convolution (scatter kernels [C,k,k]) of x [B,C,H,W] with zero padding; output [B,C,H,W]
    ('same') or, with ``pad``, the full spread [B,C,H+k-1,W+k-1]. ``flipped``: the kernels are already flipped."""
    k = kernels.shape[-1]
    padding = 2 * (k // 2) if pad else k // 2
    if k == 1:
        return x * kernels.view(1, -1, 1, 1)
    # conv2d correlates; flip to convolve with the scatter kernel (matters for asymmetric apertures)
    w = (kernels if flipped else torch.flip(kernels, dims=(-2, -1))).unsqueeze(1)
    if x.dtype == torch.float64:  # no fast grouped float64 kernel on CPU: one plain conv over channels-as-batch
        B, C, H, W = x.shape
        if bool((kernels == kernels[:1]).all()):
            y = F.conv2d(x.reshape(B * C, 1, H, W), w[:1], padding=padding)
            return y.reshape(B, C, y.shape[-2], y.shape[-1])
    x = x.contiguous(memory_format=torch.channels_last)  # a no-op for the renderer's channels-last layers
    return F.conv2d(x, w, padding=padding, groups=x.shape[1])


def render_bokeh(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: Number, focus_m: Number, *,
                 aperture: Union[str, Aperture, torch.Tensor] = "disk", color_space: str = "srgb",
                 highlight_gain: float = 0.0, highlight_threshold: float = 0.8, f_mm: Number | None = None,
                 layer_ratio: float = 1.2, pyramid_radius_px: float = 3.0,
                 return_radius: bool = False):
    """Occlusion-aware, differentiable thin-lens bokeh by layers in signed-radius space.

    Args:
        image: [B,3,H,W] (or [3,H,W]) all-in-focus image, sRGB in [0,1] or linear (``color_space``).
        depth_m: [B,1,H,W] (or [1,H,W]) metric depth (m), finite and > 0.
        K_px_m: blur strength (px*m), float or tensor [B], >= 0.
        focus_m: focus distance (m), float or tensor [B], > 0 (and > f_mm/1000 when ``f_mm`` is given).
        aperture: "disk", "hexagon", "polygon<N>", an :class:`~physics.aperture.Aperture` or a 2-D aperture image.
        highlight_gain, highlight_threshold: see :func:`highlight_boost` (applied in linear light before the blur;
            sRGB output is then clipped to [0,1] like a camera would).
        layer_ratio: growth factor of the layer radii beyond 1.5 px (smaller = more layers, more exact).
        pyramid_radius_px: R0; a layer of radius r >= 2*R0 is blurred at 1/s resolution with s = 2^floor(log2(r/R0))
            (its reduced radius in [R0, 2 R0)); 0 disables the pyramid (every layer at full resolution).
        return_radius: also return the signed CoC radius map [B,1,H,W] (px).

    Returns: [B,3,H,W] (or [3,H,W]) in ``color_space`` (and the radius map if asked).

    Method: every pixel is split between the two layers whose radii bracket its signed radius (weights linear in
    r^2, so the blend keeps the spot's second moment, and the output is differentiable w.r.t. depth, K and focus;
    layers run from an in-focus layer at 0 in 0.25-px steps to 1.5 px, then by ``layer_ratio``); each layer
    (premultiplied RGBA) is blurred with its aperture kernel (physics.aperture: drawn with the continuous spot's
    second moment, so sub-pixel radii blur too; flipped in front of the focal plane), large ones at reduced
    resolution (a wide spot is low-pass: average-pool by s, blur with radius r/s, bilinear upsample; all layers are
    pooled in one scatter pass);
    layers are composited front to back (signed radius ascending) with a saturating "over" (see :func:`_over_one`;
    the layers of one pyramid scale at that scale, then upsampled) so that a sharp foreground hides the blurred
    background behind it and a blurred foreground veils a sharp background; finally the colour is divided by the
    accumulated coverage, which fills background hidden behind a blurred foreground edge with the nearby visible
    background (a layered renderer has no hidden surfaces).

    Accuracy/speed knobs: the pyramid softens the rim of a large spot over about s px; invisible on ordinary (LDR)
    images (>= 44 dB against the exact scatter in the benchmark), visible on HDR highlights far above 1 in linear
    light (their soft rim stays above display white): raise ``pyramid_radius_px`` (4-8) or set it to 0 for crisp
    HDR bokeh balls, at a higher cost.
    """
    _check_layer_options(layer_ratio, pyramid_radius_px)
    prep = _prepare(image, depth_m, K_px_m, focus_m, color_space, f_mm, highlight_gain, highlight_threshold)
    ap = make_aperture(aperture)
    out = _render_layers(prep.linear, prep.radius, ap, layer_ratio=float(layer_ratio),
                         pyramid_radius_px=float(pyramid_radius_px))
    result = _finish(out, color_space, prep.batched, clip=highlight_gain > 0)
    if return_radius:
        return result, (prep.radius if prep.batched else prep.radius[0])
    return result


def render_radius_map(image: torch.Tensor, radius_px: torch.Tensor, *, aperture: Union[str, Aperture, torch.Tensor] =
                      "disk", color_space: str = "srgb", layer_ratio: float = 1.2,
                      pyramid_radius_px: float = 3.0) -> torch.Tensor:
    """The layered renderer of :func:`render_bokeh` driven by a signed CoC radius map instead of depth, K and focus.

    For callers that own the blur map itself (e.g. a generator that predicts where the defocus lies):
    ``render_radius_map(img, signed_coc_radius_px(depth, K, focus))`` equals ``render_bokeh(img, depth, K, focus)``.

    Args:
        image: [B,3,H,W] all-in-focus image, sRGB in [0,1] or linear (``color_space``).
        radius_px: [B,1,H,W] signed CoC radius (px; < 0 in front of the focal plane, composited over what lies
            behind), finite. Differentiable w.r.t. both inputs.
    Returns: [B,3,H,W] in ``color_space``.
    """
    _check_image(image, color_space, batched_only=True)
    _check_layer_options(layer_ratio, pyramid_radius_px)
    b, _, h, w = image.shape
    if not torch.is_tensor(radius_px) or tuple(radius_px.shape) != (b, 1, h, w):
        raise ValueError(f"radius_px must be a tensor [B,1,H,W] = {(b, 1, h, w)} matching image; got "
                         f"{tuple(radius_px.shape) if torch.is_tensor(radius_px) else type(radius_px).__name__}")
    if not torch.isfinite(radius_px.detach()).all():
        raise ValueError("radius_px contains NaN or infinite values")
    dtype = _working_dtype(image)
    lin = image.to(dtype)
    if color_space == "srgb":
        lin = kornia.color.rgb_to_linear_rgb(lin.clamp(0.0, 1.0))
    out = _render_layers(lin, radius_px.to(dtype), make_aperture(aperture), layer_ratio=float(layer_ratio),
                         pyramid_radius_px=float(pyramid_radius_px))
    return _finish(out, color_space, True, clip=False)


def _render_layers(lin: torch.Tensor, radius: torch.Tensor, ap: Aperture, *, layer_ratio: float,
                   pyramid_radius_px: float) -> torch.Tensor:
    B, _, H, W = lin.shape
    dtype, device = lin.dtype, lin.device
    rmax = float(radius.detach().abs().max())
    if rmax == 0.0:  # nothing is blurred
        return lin
    limit = MAX_RADIUS_IMAGE_SIDES * max(H, W)
    if rmax > limit:
        # spots this wide leave nothing but the image mean, and their layers and kernels would only cost memory
        raise ValueError(f"blur radius up to {rmax:.4g} px is more than {MAX_RADIUS_IMAGE_SIDES:g}x the image's larger "
                         f"side ({max(H, W)} px, limit {limit:g} px): check K (px*m at THIS image's width; radius = "
                         f"K |1/focus_m - 1/depth_m|) and that depth and focus are in metres")
    unsigned = layer_radii(rmax, layer_ratio)
    signed = [-r for r in reversed(unsigned[1:])] + [0.0] + unsigned[1:]  # front (most negative) first
    n = len(signed)
    scales = [_scale_for(r, pyramid_radius_px) for r in signed]
    smax = max(scales)

    # replicate-pad by the largest spot plus the pyramid's reach, to multiples of the largest pyramid factor so that
    # pooling blocks are anchored at the image origin (a batch renders each item exactly as it renders alone)
    margin = -(-(ap.half_size(rmax) + 1 + 2 * smax) // smax) * smax
    Hp = -(-(H + 2 * margin) // smax) * smax
    Wp = -(-(W + 2 * margin) // smax) * smax
    pad = (margin, Wp - W - margin, margin, Hp - H - margin)
    rgba = F.pad(torch.cat([lin, torch.ones_like(lin[:, :1])], dim=1), pad, mode="replicate")
    rs = F.pad(radius, pad, mode="replicate")

    # a pixel sits on segment [signed[j0], signed[j0+1]] (both ends of one sign: 0 is a knot) at fraction t of the
    # squared radius, so that the blend of the two kernels has the spot's second moment c r^2 (a blend's moment is
    # the weighted mean of theirs); differentiable w.r.t. rs
    kt = torch.tensor(signed, dtype=dtype, device=device)
    with torch.no_grad():
        j0 = (torch.bucketize(rs, kt) - 1).clamp(0, n - 2)
        hits = torch.bincount(j0.reshape(-1), minlength=n).cpu()
    used = [j for j in range(n) if hits[j] > 0 or (j > 0 and hits[j - 1] > 0)]
    k0, k1 = kt[j0], kt[j0 + 1]
    t = ((rs * rs - k0 * k0) / (k1 * k1 - k0 * k0)).clamp(0.0, 1.0)

    # each layer lives in its bounding box only (at its pyramid scale): the rows/columns whose range of segment
    # indices reaches it. Smooth depth puts each layer in a narrow band, so little work is spent on empty pixels.
    with torch.no_grad():
        row_lo, row_hi = j0.amin(dim=(0, 1, 3)).cpu(), j0.amax(dim=(0, 1, 3)).cpu()
        col_lo, col_hi = j0.amin(dim=(0, 1, 2)).cpu(), j0.amax(dim=(0, 1, 2)).cpu()
    box: dict[int, tuple[int, int, int, int]] = {}  # j -> (y0, x0, h, w) in layer pixels
    base = [0] * n
    total_len = 0
    for j in used:
        s = scales[j]
        rows = torch.nonzero((row_lo <= j) & (row_hi >= j - 1)).reshape(-1)
        cols = torch.nonzero((col_lo <= j) & (col_hi >= j - 1)).reshape(-1)
        y0, y1 = int(rows[0]) // s, -(-(int(rows[-1]) + 1) // s)
        x0, x1 = int(cols[0]) // s, -(-(int(cols[-1]) + 1) // s)
        box[j] = (y0, x0, y1 - y0, x1 - x0)
        base[j] = total_len
        total_len += (y1 - y0) * (x1 - x0)

    # pool every used layer to its scale in one pass: each pixel adds (1-t)*rgba to layer j0 and t*rgba to layer j0+1
    # of a flat buffer holding all layer boxes (no per-layer full-resolution work). The buffer is pixel-major (RGBA
    # last), so each layer is a channels-last image for free (fast convolutions).
    with torch.no_grad():
        tab = torch.zeros(5, n, dtype=torch.long)
        for j in used:
            tab[:, j] = torch.tensor([scales[j], base[j], box[j][0], box[j][1], box[j][3]])
        tab = tab.to(device)
        yy = torch.arange(Hp, device=device).view(1, 1, Hp, 1)
        xx = torch.arange(Wp, device=device).view(1, 1, 1, Wp)

        def flat_index(j):
            s, b0, y0, x0, w = tab[:, j]
            return (b0 + (yy // s - y0) * w + (xx // s - x0)).reshape(B, Hp * Wp, 1).expand(B, Hp * Wp, 4)

        idx0, idx1 = flat_index(j0), flat_index(j0 + 1)
    pix = rgba.permute(0, 2, 3, 1).reshape(B, Hp * Wp, 4)
    src1 = pix * t.reshape(B, Hp * Wp, 1)
    src0 = pix - src1
    buf = torch.zeros(B, total_len, 4, dtype=dtype, device=device)
    buf.scatter_add_(1, idx0, src0)  # in place: a fresh buffer, no copy of it (autograd records the scatter)
    buf.scatter_add_(1, idx1, src1)
    # split (not slice): autograd then assembles the buffer's gradient once instead of once per layer
    parts = dict(zip(used, buf.split([box[j][2] * box[j][3] for j in used], dim=1)))

    # runs of used layers with the same pyramid scale form a group, composited at that scale, then upsampled
    groups: list[tuple[int, list[int]]] = []
    for j in used:
        if groups and groups[-1][0] == scales[j]:
            groups[-1][1].append(j)
        else:
            groups.append((scales[j], [j]))

    col, acc = None, None
    for s, idx in groups:
        hs, ws = Hp // s, Wp // s
        col_g = torch.zeros(B, 3, hs, ws, dtype=dtype, device=device)
        acc_g = torch.zeros(B, 1, hs, ws, dtype=dtype, device=device)
        for j in idx:
            y0, x0, h, w = box[j]
            x = parts[j].reshape(B, h, w, 4).permute(0, 3, 1, 2)  # channels-last view of block sums
            rj = signed[j] / s
            hk = ap.half_size(rj)
            if hk > 0:  # the 1/s^2 of the average pooling is folded into the kernel
                x = _depthwise(x, _kernel(ap, rj, hk, dtype, device, 1.0 / (s * s)), pad=True, flipped=True)
            elif s > 1:
                x = x * (1.0 / (s * s))
            # the blurred box grows by hk on each side; clip it to the frame (beyond lies padding nobody sees)
            ya, xa = y0 - hk, x0 - hk
            yb, xb = ya + x.shape[-2], xa + x.shape[-1]
            cy0, cx0, cy1, cx1 = max(ya, 0), max(xa, 0), min(yb, hs), min(xb, ws)
            x = x[:, :, cy0 - ya:cy1 - ya, cx0 - xa:cx1 - xa]
            _over_into(*x.split([3, 1], dim=1), col_g[:, :, cy0:cy1, cx0:cx1], acc_g[:, :, cy0:cy1, cx0:cx1])
        if s > 1:
            col_g = F.interpolate(col_g, scale_factor=s, mode="bilinear", align_corners=False)
            acc_g = F.interpolate(acc_g, scale_factor=s, mode="bilinear", align_corners=False)
        col, acc = _over_one(col_g, acc_g, col, acc)
    out = col / acc.clamp_min(1e-6)
    return out[:, :, margin:margin + H, margin:margin + W].contiguous()


def _over_into(color: torch.Tensor, alpha: torch.Tensor, col: torch.Tensor, acc: torch.Tensor, eps: float = 1e-6):
    """:func:`_over_one` in place on views ``col``, ``acc`` of the running composite (autograd-safe: nothing saved
    for backward refers to their memory)."""
    take = torch.minimum(alpha, 1.0 - acc)
    col += color * (take / alpha.clamp_min(eps))
    acc += take


_KERNEL_CACHE: dict = {}


def _kernel(ap: Aperture, radius: float, half: int, dtype, device, gain: float = 1.0) -> torch.Tensor:
    """Flipped aperture kernel times ``gain``, repeated for RGBA: [4,k,k]. Cached for shapes with a cache key (the
    layer radii repeat from call to call)."""

    def make():
        k = ap.kernel(radius, dtype=dtype, device=device, half_size=half) * gain
        return torch.flip(k, dims=(-2, -1)).expand(4, -1, -1).contiguous()

    key = ap.cache_key()
    if key is None:
        return make()
    key = key + (radius, half, gain, dtype, str(device))
    k = _KERNEL_CACHE.get(key)
    if k is None:
        if len(_KERNEL_CACHE) > 4096:
            _KERNEL_CACHE.clear()
        k = _KERNEL_CACHE[key] = make()
    return k


def _over_one(color: torch.Tensor, alpha: torch.Tensor, col: torch.Tensor | None, acc: torch.Tensor | None,
              eps: float = 1e-6):
    """Saturating "over": composite one layer (premultiplied ``color`` [B,3,H,W], coverage ``alpha`` [B,1,H,W])
    behind what is already composited (``col``, ``acc``; None for the first layer).

    The layer fills only the coverage that is left: take = min(alpha, 1 - acc). Coverage of one continuous surface
    split over neighbouring layers therefore adds up (a surface does not occlude itself, and a smooth slanted plane
    matches the exact scatter), while a nearer surface that already covers a pixel hides what lies behind it (no
    background bleeding over a sharp foreground; a blurred foreground veils the background by its coverage).
    Hand-written (the "alpha saturate" blend of old graphics APIs, differentiable).
    """
    take = torch.minimum(alpha, 1.0 - acc) if acc is not None else alpha.clamp(max=1.0)
    part = color * (take / alpha.clamp_min(eps))
    if acc is None:
        return part, take
    return col + part, acc + take


# ----------------------------------------------------------------------------------------------------------------
# gather-over-offsets scatter renderers (exact reference, BokehMe baseline)
# ----------------------------------------------------------------------------------------------------------------


def _offsets(rmax: float, ap: Aperture, pad_px: float = 1.0) -> list[tuple[int, int]]:
    """Integer offsets a spot of nominal radius up to ``rmax`` px can reach (its raster radius plus the rim, which
    reaches up to 1 px further at a polygon's corners)."""
    h = ap.half_size(rmax)
    reach = float(ap.raster_radius(rmax).abs()) + pad_px
    radial = not isinstance(ap, ImageAperture)
    offs = []
    for dy in range(-h, h + 1):
        for dx in range(-h, h + 1):
            if radial and math.hypot(dx, dy) >= reach + 1e-9:
                continue
            offs.append((dy, dx))
    return offs


def _maybe_checkpoint(fn, *args):
    if torch.is_grad_enabled() and any(torch.is_tensor(a) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def render_exact_reference(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: Number, focus_m: Number, *,
                           aperture: Union[str, Aperture, torch.Tensor] = "disk", color_space: str = "srgb",
                           highlight_gain: float = 0.0, highlight_threshold: float = 0.8,
                           f_mm: Number | None = None, offsets_per_chunk: int = 32) -> torch.Tensor:
    """Direct scatter: every pixel spreads its (linear) light uniformly over its own soft-rimmed aperture spot.

    out(p) = sum_q I(q) * a(p - q; r_q) / sum_o a(o; r_q), with a the aperture weights of :mod:`physics.aperture`
    (the spot of radius r_q drawn with the continuous spot's second moment, so sub-pixel radii blur too).
    Cost O(pixels x r^2) (a gather over every offset of the largest spot); memory O(pixels) also for backward
    (chunks of offsets are recomputed in the backward pass). Exact where no surface occludes another (smooth depth);
    NOT occlusion-aware. Same arguments and return as :func:`render_bokeh`; differentiable.
    """
    _check_offsets_per_chunk(offsets_per_chunk)
    prep = _prepare(image, depth_m, K_px_m, focus_m, color_space, f_mm, highlight_gain, highlight_threshold)
    ap = make_aperture(aperture)
    lin, r = prep.linear, prep.radius
    B, _, H, W = lin.shape
    rmax = float(r.detach().abs().max())
    h = ap.half_size(rmax)
    offs = _offsets(rmax, ap)
    lin_p = F.pad(lin, (h, h, h, h), mode="replicate")
    r_p = ap.raster_radius(F.pad(r, (h, h, h, h), mode="replicate"))  # once, not per offset

    def area_chunk(rp, chunk):
        a = torch.zeros_like(rp)
        for dy, dx in chunk:
            a = a + ap.coverage(torch.tensor(float(dx), dtype=rp.dtype, device=rp.device),
                                torch.tensor(float(dy), dtype=rp.dtype, device=rp.device), rp)
        return a

    def gather_chunk(img, rp, area, chunk):
        out = torch.zeros_like(img[:, :, h:h + H, h:h + W])
        for dy, dx in chunk:
            ys, xs = h - dy, h - dx  # source q = p - o
            r_src = rp[:, :, ys:ys + H, xs:xs + W]
            w = ap.coverage(torch.tensor(float(dx), dtype=rp.dtype, device=rp.device),
                            torch.tensor(float(dy), dtype=rp.dtype, device=rp.device), r_src)
            out = out + (w / area[:, :, ys:ys + H, xs:xs + W]) * img[:, :, ys:ys + H, xs:xs + W]
        return out

    chunks = [offs[i:i + offsets_per_chunk] for i in range(0, len(offs), offsets_per_chunk)]
    area = None
    for ch in chunks:
        a = _maybe_checkpoint(lambda rp, ch=ch: area_chunk(rp, ch), r_p)
        area = a if area is None else area + a
    out = None
    for ch in chunks:
        o = _maybe_checkpoint(lambda img, rp, ar, ch=ch: gather_chunk(img, rp, ar, ch), lin_p, r_p, area)
        out = o if out is None else out + o
    return _finish(out, color_space, prep.batched, clip=highlight_gain > 0)


def render_scatter_bokehme(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: Number, focus_m: Number, *,
                           color_space: str = "srgb", gamma: float = 2.2, f_mm: Number | None = None,
                           offsets_per_chunk: int = 32) -> torch.Tensor:
    """BokehMe's classical order-free normalised scatter (our implementation), on the metric K axis.

    With r = |K (1/focus - 1/depth)| per source pixel q and dist = |p - q|:
    w = (0.5 + 0.5 tanh(4 (r_q - dist))) / (r_q^2 + 0.2), out = (sum w I^gamma / sum w)^(1/gamma), I the sRGB image.
    Not occlusion-aware (the background bleeds over a sharp foreground, a blurred foreground cannot veil); disk only.
    Same arguments and return as :func:`render_bokeh`; differentiable.
    """
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0; got {gamma}")
    _check_offsets_per_chunk(offsets_per_chunk)
    prep = _prepare(image, depth_m, K_px_m, focus_m, color_space, f_mm, to_linear=False)
    img = prep.linear  # still in the input colour space
    if color_space == "linear":
        img = kornia.color.linear_rgb_to_rgb(img.clamp_min(0.0))
    img = img.clamp_min(0.0) ** gamma
    r = prep.radius.abs()
    B, _, H, W = img.shape
    rmax = float(r.detach().max())
    h = kernel_half_size(rmax) + 1
    offs = [(dy, dx) for dy in range(-h, h + 1) for dx in range(-h, h + 1) if math.hypot(dx, dy) < rmax + 1.5]
    img_p = F.pad(img, (h, h, h, h), mode="replicate")
    r_p = F.pad(r, (h, h, h, h), mode="replicate")
    inv_area = 1.0 / (r_p * r_p + 0.2)

    def chunk_fn(im, rp, ia, chunk):
        num = torch.zeros_like(im[:, :, h:h + H, h:h + W])
        den = torch.zeros_like(rp[:, :, h:h + H, h:h + W])
        for dy, dx in chunk:
            ys, xs = h - dy, h - dx
            w = (0.5 + 0.5 * torch.tanh(4.0 * (rp[:, :, ys:ys + H, xs:xs + W] - math.hypot(dx, dy))))
            w = w * ia[:, :, ys:ys + H, xs:xs + W]
            num = num + w * im[:, :, ys:ys + H, xs:xs + W]
            den = den + w
        return torch.cat([num, den], dim=1)

    acc = None
    for i in range(0, len(offs), offsets_per_chunk):
        ch = offs[i:i + offsets_per_chunk]
        o = _maybe_checkpoint(lambda im, rp, ia, ch=ch: chunk_fn(im, rp, ia, ch), img_p, r_p, inv_area)
        acc = o if acc is None else acc + o
    out = (acc[:, :3] / acc[:, 3:].clamp_min(1e-12)).clamp_min(0.0) ** (1.0 / gamma)
    if color_space == "linear":
        out = kornia.color.rgb_to_linear_rgb(out.clamp(0.0, 1.0))
    return out if prep.batched else out[0]
