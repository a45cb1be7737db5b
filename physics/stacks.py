"""Bokeh stacks (several K, one focus) and focal stacks (several focus distances, one K), rendered as one batch.

Every frame comes with its signed CoC radius map ``r = K (1/focus_m - 1/depth_m)`` (px, > 0 behind the focal plane)
and the camera parameters it was rendered with, so that users can check calibration in physical units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch

from physics.camera import ThinLensCamera, check_depth_m, check_focus, check_k, signed_coc_radius_px
from physics.checks import check_tensor
from physics.render import render_bokeh

KLike = Union[float, Sequence[float], torch.Tensor]


@dataclass
class BokehStack:
    """frames [B,N,3,H,W] (input colour space), coc_radius_px [B,N,1,H,W], K_px_m [B,N], focus_m [B], camera."""

    frames: torch.Tensor
    coc_radius_px: torch.Tensor
    K_px_m: torch.Tensor
    focus_m: torch.Tensor
    camera: dict[str, Any] = field(default_factory=dict)


@dataclass
class FocalStack:
    """frames [B,N,3,H,W], coc_radius_px [B,N,1,H,W], focus_m [B,N], K_px_m [B,N] (constant over N unless the
    stack was made from a camera with focus breathing), camera."""

    frames: torch.Tensor
    coc_radius_px: torch.Tensor
    focus_m: torch.Tensor
    K_px_m: torch.Tensor
    camera: dict[str, Any] = field(default_factory=dict)


def _check_image_and_depth(image: torch.Tensor, depth_m: torch.Tensor) -> None:
    """image: a tensor [B,3,H,W]; depth_m: a tensor [B,1,H,W] (m, > 0) matching it."""
    check_tensor(image, "image", "[B,3,H,W]", 4, channels=3, must="be", dtype_hint="values in [0,1] for sRGB")
    if isinstance(depth_m, torch.Tensor) and depth_m.dim() != 4:
        raise ValueError(f"depth_m must have shape [B,1,H,W] to match image {tuple(image.shape)}; got "
                         f"{tuple(depth_m.shape)}")
    check_depth_m(depth_m, like=image)


def _check_sequence(values: Any, name: str, what: str) -> None:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a sequence of {what} (e.g. a list); got {type(values).__name__} "
                         f"{values!r}")


def _as_tensor(value: KLike, name: str, ref: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=ref.device, dtype=ref.dtype)
    try:
        return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be numbers (a float, a sequence or a tensor); got {type(value).__name__} "
                         f"{value!r}") from None


def _per_frame(value: KLike, batch: int, name: str, ref: torch.Tensor) -> torch.Tensor:
    """Sequence[float] | Tensor[N] | Tensor[B,N] -> Tensor[B,N] (float, on ref's device)."""
    t = _as_tensor(value, name, ref)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() == 1:
        t = t[None].expand(batch, -1)
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] < 1:
        raise ValueError(f"{name} must be a sequence of N values, a tensor [N] or a tensor [B,N] with B={batch}; "
                         f"got shape {tuple(t.shape)}")
    return t


def _per_image(value: KLike, batch: int, name: str, ref: torch.Tensor) -> torch.Tensor:
    """float | Tensor[] | Tensor[B] -> Tensor[B]."""
    t = _as_tensor(value, name, ref).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{name} must be a float or a tensor [B] with B={batch}; got {t.numel()} values")
    return t


def render_frames(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: torch.Tensor, focus_m: torch.Tensor,
                  **render_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B x N frames in ONE renderer call.

    Args: image [B,3,H,W], depth_m [B,1,H,W], K_px_m [B,N], focus_m [B,N].
    Returns (frames [B,N,3,H,W], coc_radius_px [B,N,1,H,W]). A frame with K = 0 is the input image itself.
    """
    _check_image_and_depth(image, depth_m)
    for value, name in ((K_px_m, "K_px_m"), (focus_m, "focus_m")):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != image.shape[0]:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a tensor [B,N] with B={image.shape[0]} (the image batch); got {shape}")
    if focus_m.shape != K_px_m.shape:
        raise ValueError(f"focus_m {tuple(focus_m.shape)} and K_px_m {tuple(K_px_m.shape)} must both be [B,N]")
    b, n = K_px_m.shape
    h, w = image.shape[-2:]
    flat_img = image[:, None].expand(b, n, 3, h, w).reshape(b * n, 3, h, w)
    flat_depth = depth_m[:, None].expand(b, n, 1, h, w).reshape(b * n, 1, h, w)
    flat_k, flat_focus = K_px_m.reshape(-1), focus_m.reshape(-1)
    frames = render_bokeh(flat_img, flat_depth, flat_k, flat_focus, **render_kwargs)
    # K = 0 is the pinhole: return the input bit for bit (no colour-space round-off)
    pinhole = (flat_k == 0).reshape(-1, 1, 1, 1)
    frames = torch.where(pinhole, flat_img, frames)
    coc = signed_coc_radius_px(flat_depth, flat_k, flat_focus)
    return frames.reshape(b, n, 3, h, w), coc.reshape(b, n, 1, h, w)


def _render_record(render_kwargs: dict[str, Any]) -> dict[str, Any]:
    rec = {}
    for k, v in render_kwargs.items():
        rec[k] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return rec


def bokeh_stack(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: KLike, focus_m: KLike,
                **render_kwargs: Any) -> BokehStack:
    """One image + depth rendered at N strengths with a fixed focus.

    Args:
        image: [B,3,H,W] (sRGB in [0,1] unless ``color_space="linear"`` is passed to the renderer).
        depth_m: [B,1,H,W] metres, > 0.
        K_px_m: N strengths (px*m, >= 0): a sequence, a tensor [N] (same for every image) or [B,N].
        focus_m: float or tensor [B] (m).
        render_kwargs: passed to :func:`physics.render.render_bokeh` (aperture, color_space, highlight_gain, ...).
    Returns: :class:`BokehStack` (frames [B,N,3,H,W], coc_radius_px [B,N,1,H,W], K_px_m [B,N], focus_m [B]).
    """
    _check_image_and_depth(image, depth_m)
    b = image.shape[0]
    K = _per_frame(K_px_m, b, "K_px_m", image)
    check_k(K)
    s1 = _per_image(focus_m, b, "focus_m", image)
    check_focus(s1)
    frames, coc = render_frames(image, depth_m, K, s1[:, None].expand_as(K), **render_kwargs)
    camera = {
        "kind": "bokeh_stack",
        "K_px_m": K.detach().cpu().tolist(),
        "focus_m": s1.detach().cpu().tolist(),
        "image_size_hw": [int(image.shape[-2]), int(image.shape[-1])],
        "K_units": "px*m; signed radius r_px = K * (1/focus_m - 1/depth_m), > 0 behind the focal plane",
        "render": _render_record(render_kwargs),
    }
    return BokehStack(frames=frames, coc_radius_px=coc, K_px_m=K, focus_m=s1, camera=camera)


def focal_stack(image: torch.Tensor, depth_m: torch.Tensor, K_px_m: KLike, focus_m: KLike,
                **render_kwargs: Any) -> FocalStack:
    """One image + depth rendered at N focus distances with a fixed strength K.

    Args:
        K_px_m: float or tensor [B] (px*m), the same for every frame (pinhole-style refocusing, as Blender).
        focus_m: N focus distances (m): a sequence, a tensor [N] or [B,N].
    Returns: :class:`FocalStack` (frames [B,N,3,H,W], coc_radius_px [B,N,1,H,W], focus_m [B,N], K_px_m [B,N]).
    """
    _check_image_and_depth(image, depth_m)
    b = image.shape[0]
    s1 = _per_frame(focus_m, b, "focus_m", image)
    check_focus(s1)
    K = _per_image(K_px_m, b, "K_px_m", image)
    check_k(K)
    K = K[:, None].expand_as(s1)
    frames, coc = render_frames(image, depth_m, K, s1, **render_kwargs)
    camera = {
        "kind": "focal_stack",
        "K_px_m": K.detach().cpu().tolist(),
        "focus_m": s1.detach().cpu().tolist(),
        "image_size_hw": [int(image.shape[-2]), int(image.shape[-1])],
        "K_units": "px*m; signed radius r_px = K * (1/focus_m - 1/depth_m), > 0 behind the focal plane",
        "render": _render_record(render_kwargs),
    }
    return FocalStack(frames=frames, coc_radius_px=coc, focus_m=s1, K_px_m=K, camera=camera)


def bokeh_stack_from_camera(image: torch.Tensor, depth_m: torch.Tensor, camera: ThinLensCamera,
                            f_numbers: Sequence[float], **render_kwargs: Any) -> BokehStack:
    """A bokeh stack over f-numbers of a thin-lens camera (K from the camera at each f-number, its focus).

    ``camera.image_width_px`` must equal the image width (K is in pixels of that width).
    """
    _check_image_and_depth(image, depth_m)
    _check_sequence(f_numbers, "f_numbers", "f-numbers")
    if camera.image_width_px != image.shape[-1]:
        raise ValueError(f"camera.image_width_px ({camera.image_width_px}) must equal the image width "
                         f"({image.shape[-1]}): K is measured in pixels of the image")
    if len(f_numbers) == 0:
        raise ValueError("f_numbers must list at least one f-number")
    ks = [camera.with_f_number(float(n)).K_px_m for n in f_numbers]
    stack = bokeh_stack(image, depth_m, ks, camera.focus_m, **render_kwargs)
    stack.camera["lens"] = camera.to_dict()
    stack.camera["f_numbers"] = [float(n) for n in f_numbers]
    return stack


def focal_stack_from_camera(image: torch.Tensor, depth_m: torch.Tensor, camera: ThinLensCamera,
                            focus_m: Sequence[float], **render_kwargs: Any) -> FocalStack:
    """A focal stack of a thin-lens camera: with focus breathing K changes with the focus distance (exact
    ``s1/(s1-f)`` factor), without it K stays fixed."""
    _check_image_and_depth(image, depth_m)
    _check_sequence(focus_m, "focus_m", "focus distances (m)")
    if camera.image_width_px != image.shape[-1]:
        raise ValueError(f"camera.image_width_px ({camera.image_width_px}) must equal the image width "
                         f"({image.shape[-1]}): K is measured in pixels of the image")
    if len(focus_m) == 0:
        raise ValueError("focus_m must list at least one focus distance")
    fields = camera.to_dict()
    base = {k: fields[k] for k in ("f_mm", "f_number", "image_width_px", "image_height_px", "sensor_width_mm",
                                   "f35_mm", "focus_breathing", "fx_px")}
    ks = [ThinLensCamera(**{**base, "focus_m": float(s)}).K_px_m for s in focus_m]
    b = image.shape[0]
    s1 = _per_frame(list(map(float, focus_m)), b, "focus_m", image)
    K = _per_frame(ks, b, "K_px_m", image)
    frames, coc = render_frames(image, depth_m, K, s1, **render_kwargs)
    cam = {"kind": "focal_stack", "K_px_m": K.tolist(), "focus_m": s1.tolist(), "lens": fields,
           "image_size_hw": [int(image.shape[-2]), int(image.shape[-1])], "render": _render_record(render_kwargs)}
    return FocalStack(frames=frames, coc_radius_px=coc, focus_m=s1, K_px_m=K, camera=cam)


__all__ = ["BokehStack", "FocalStack", "bokeh_stack", "bokeh_stack_from_camera", "focal_stack",
           "focal_stack_from_camera", "render_frames"]
