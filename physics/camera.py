"""Thin-lens camera geometry: the metric blur strength K, signed circle-of-confusion maps, K conversions.

One axis everywhere: the metric strength ``K`` in px*m, so that a point at depth ``d`` (m) seen by a lens focused at
``s1`` (m) is blurred into a disc of signed radius

    r [px] = K * (1/s1 - 1/d)            (> 0 behind the focal plane, < 0 in front of it)

and ``K = A * fx``: the aperture radius ``A = f / (2N)`` (m) times the focal length in pixels ``fx`` of the image as it
is formed. A real lens that focuses by moving away from the sensor ("focus breathing") forms the image at
``f * s1 / (s1 - f)`` behind the lens, hence the exact ``s1 / (s1 - f)`` factor of

    K = f^2 * s1 / (2 N (s1 - f)) * W_px / W_sensor.

A renderer that keeps the pinhole field of view while refocusing (Blender Cycles) has ``fx = f * W_px / W_sensor``;
pass ``focus_breathing=False`` or use :func:`k_from_intrinsics` with the known ``fx``.

Every function accepts Python floats (returns a float) or tensors (returns a tensor, broadcast, differentiable).
Validation helpers raise ``ValueError`` naming the offending argument.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Mapping, Union

import torch

from physics.checks import check_broadcast

Number = Union[float, int, torch.Tensor]

#: Diagonal of the 24x36 mm "full frame" used by 35 mm-equivalent focal lengths (mm).
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.267 mm


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def check_positive(value: Number, name: str, *, allow_zero: bool = False) -> None:
    """Finite and > 0 (or >= 0); works on floats and tensors."""
    if value is None:
        raise ValueError(f"{name} is required (got None)")
    if _is_tensor(value):
        v = value.detach()
        if v.numel() == 0:
            raise ValueError(f"{name} is empty")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        bad = (v < 0) if allow_zero else (v <= 0)
        if bad.any():
            what = "negative values" if allow_zero else "zero or negative values"
            raise ValueError(f"{name} contains {what} (min {v.min().item():.4g}); expected "
                             f"{'>= 0' if allow_zero else '> 0'}")
        return
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a tensor, got {type(value).__name__}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} is not finite ({f})")
    if f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {f:.4g}")


def check_depth_m(depth_m: torch.Tensor, name: str = "depth_m", *, like: torch.Tensor | None = None,
                  like_name: str = "image") -> torch.Tensor:
    """Check a metric depth map: a tensor [B,1,H,W] or [1,H,W] / [H,W], finite and > 0 everywhere.

    ``like``: an image [B,C,H,W] / [C,H,W] whose spatial size (and batch, if both are 4-D) must match.
    Returns ``depth_m`` unchanged. Raises ``ValueError`` naming the argument.
    """
    if not _is_tensor(depth_m):
        raise ValueError(f"{name} must be a torch.Tensor of depths in metres, got {type(depth_m).__name__}")
    if depth_m.dim() not in (2, 3, 4) or (depth_m.dim() >= 3 and depth_m.shape[-3] != 1):
        raise ValueError(f"{name} must have shape [B,1,H,W], [1,H,W] or [H,W]; got {tuple(depth_m.shape)}")
    if depth_m.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(depth_m.shape)})")
    d = depth_m.detach()
    if torch.isnan(d).any():
        raise ValueError(f"{name} contains NaN ({int(torch.isnan(d).sum())} pixels); fill or mask them first")
    if torch.isinf(d).any():
        raise ValueError(f"{name} contains infinite values; clamp far depths to a finite maximum first")
    if (d <= 0).any():
        raise ValueError(f"{name} contains zero or negative depths ({int((d <= 0).sum())} pixels, min "
                         f"{d.min().item():.4g} m); depths must be > 0 metres (fill holes first)")
    if like is not None:
        if like.shape[-2:] != depth_m.shape[-2:]:
            raise ValueError(f"{name} size {tuple(depth_m.shape[-2:])} does not match {like_name} size "
                             f"{tuple(like.shape[-2:])}")
        if like.dim() == 4 and depth_m.dim() == 4 and like.shape[0] != depth_m.shape[0]:
            raise ValueError(f"{name} batch {depth_m.shape[0]} does not match {like_name} batch {like.shape[0]}")
    return depth_m


def check_k(K_px_m: Number, name: str = "K_px_m") -> Number:
    """Check a blur strength K (px*m): finite and >= 0 (0 = pinhole, no blur). Returns it unchanged."""
    check_positive(K_px_m, name, allow_zero=True)
    return K_px_m


def check_focus(focus_m: Number, name: str = "focus_m", *, f_mm: Number | None = None) -> Number:
    """Check a focus distance (m): finite, > 0 and, when ``f_mm`` is given, beyond the focal length."""
    check_positive(focus_m, name)
    if f_mm is not None:
        check_positive(f_mm, "f_mm")
        f_m = f_mm / 1000.0
        bad = (focus_m <= f_m)
        if bool(bad.any() if _is_tensor(bad) else bad):
            raise ValueError(f"{name} must be greater than the focal length ({_fmt(f_m)} m): a thin lens cannot "
                             f"focus closer than f; got {_fmt(focus_m)} m")
    return focus_m


def _fmt(x: Number) -> str:
    if _is_tensor(x):
        x = x.detach()
        return f"{x.min().item():.4g}" if x.numel() > 1 else f"{x.item():.4g}"
    return f"{float(x):.4g}"


# ----------------------------------------------------------------------------------------------------------------
# sensor and focal length in pixels
# ----------------------------------------------------------------------------------------------------------------


def sensor_width_from_f35(f_mm: Number, f35_mm: Number, aspect_ratio: Number) -> Number:
    """Sensor width (mm) from the 35 mm-equivalent focal length.

    The crop factor f35/f scales the full-frame diagonal (43.27 mm); the width follows from the image aspect
    ratio ``W/H`` (of the sensor area the image covers): ``width = diag * a / sqrt(1 + a^2)``.
    """
    check_positive(f_mm, "f_mm")
    check_positive(f35_mm, "f35_mm")
    check_positive(aspect_ratio, "aspect_ratio")
    diagonal_mm = FULL_FRAME_DIAGONAL_MM * f_mm / f35_mm
    return diagonal_mm * aspect_ratio / (1.0 + aspect_ratio**2) ** 0.5


def _sensor_width_mm(f_mm: Number, sensor_width_mm: Number | None, f35_mm: Number | None,
                     aspect_ratio: Number | None) -> Number:
    if sensor_width_mm is not None:
        check_positive(sensor_width_mm, "sensor_width_mm")
        return sensor_width_mm
    if f35_mm is not None:
        if aspect_ratio is None:
            raise ValueError("aspect_ratio (image width / height) is required with f35_mm to turn the sensor "
                             "diagonal into a width")
        return sensor_width_from_f35(f_mm, f35_mm, aspect_ratio)
    raise ValueError("give sensor_width_mm, or f35_mm (35 mm-equivalent focal length) with aspect_ratio")


def focal_px(f_mm: Number, image_width_px: Number, sensor_width_mm: Number, *, focus_m: Number | None = None
             ) -> Number:
    """Focal length in pixels ``fx`` of the formed image.

    Pinhole (``focus_m=None``): ``fx = f * W_px / W_sensor``. With ``focus_m`` the lens-to-sensor distance grows to
    ``f * s1 / (s1 - f)`` (focus breathing) and ``fx`` with it.
    """
    check_positive(f_mm, "f_mm")
    check_positive(image_width_px, "image_width_px")
    check_positive(sensor_width_mm, "sensor_width_mm")
    fx = f_mm / sensor_width_mm * image_width_px
    if focus_m is not None:
        check_focus(focus_m, f_mm=f_mm)
        f_m = f_mm / 1000.0
        fx = fx * focus_m / (focus_m - f_m)
    return fx


# ----------------------------------------------------------------------------------------------------------------
# K
# ----------------------------------------------------------------------------------------------------------------


def k_from_intrinsics(f_mm: Number, f_number: Number, fx_px: Number) -> Number:
    """K (px*m) = aperture radius (f / 2N, in metres) * focal length in pixels ``fx_px``.

    Valid for every camera model once ``fx_px`` is the focal length of the image as formed: pinhole intrinsics
    (Blender, no focus breathing) or a real lens' ``fx`` measured at its focus setting.
    """
    check_positive(f_mm, "f_mm")
    check_positive(f_number, "f_number")
    check_positive(fx_px, "fx_px")
    check_broadcast("k_from_intrinsics", f_mm=f_mm, f_number=f_number, fx_px=fx_px)
    return (f_mm / 1000.0) / (2.0 * f_number) * fx_px


def k_from_lens(f_mm: Number, f_number: Number, focus_m: Number, image_width_px: Number, *,
                sensor_width_mm: Number | None = None, f35_mm: Number | None = None,
                aspect_ratio: Number | None = None, focus_breathing: bool = True) -> Number:
    """Metric blur strength K (px*m) of a thin lens.

    ``K = f^2 * s1 / (2 N (s1 - f)) * W_px / W_sensor`` with focus breathing (a real lens, exact ``s1/(s1-f)``
    factor), ``K = f^2 / (2N) * W_px / W_sensor`` without (pinhole field of view kept while refocusing).

    Args:
        f_mm: focal length (mm). f_number: N. focus_m: focus distance s1 (m), > f.
        image_width_px: width of the image the radii are measured in (K is linear in it).
        sensor_width_mm: sensor width (mm); or ``f35_mm`` (35 mm-equivalent focal) with ``aspect_ratio`` (W/H).
    Floats in, float out; tensors broadcast and stay differentiable.
    """
    check_positive(f_number, "f_number")
    check_focus(focus_m, f_mm=f_mm)
    check_broadcast("k_from_lens", f_mm=f_mm, f_number=f_number, focus_m=focus_m, image_width_px=image_width_px,
                    sensor_width_mm=sensor_width_mm, f35_mm=f35_mm, aspect_ratio=aspect_ratio)
    width_mm = _sensor_width_mm(f_mm, sensor_width_mm, f35_mm, aspect_ratio)
    fx = focal_px(f_mm, image_width_px, width_mm, focus_m=focus_m if focus_breathing else None)
    return k_from_intrinsics(f_mm, f_number, fx)


def f_number_from_k(K_px_m: Number, f_mm: Number, focus_m: Number, image_width_px: Number, *,
                    sensor_width_mm: Number | None = None, f35_mm: Number | None = None,
                    aspect_ratio: Number | None = None, focus_breathing: bool = True) -> Number:
    """The f-number that gives strength ``K_px_m`` with this lens and image (inverse of :func:`k_from_lens`)."""
    check_positive(K_px_m, "K_px_m")  # K = 0 would need an infinite f-number
    check_broadcast("f_number_from_k", K_px_m=K_px_m, f_mm=f_mm, focus_m=focus_m, image_width_px=image_width_px,
                    sensor_width_mm=sensor_width_mm, f35_mm=f35_mm, aspect_ratio=aspect_ratio)
    k_at_n1 = k_from_lens(f_mm, 1.0, focus_m, image_width_px, sensor_width_mm=sensor_width_mm, f35_mm=f35_mm,
                          aspect_ratio=aspect_ratio, focus_breathing=focus_breathing)
    return k_at_n1 / K_px_m


def f_number_from_k_intrinsics(K_px_m: Number, f_mm: Number, fx_px: Number) -> Number:
    """The f-number that gives ``K_px_m`` for a camera with focal length ``f_mm`` and intrinsics ``fx_px``."""
    check_positive(K_px_m, "K_px_m")
    check_broadcast("f_number_from_k_intrinsics", K_px_m=K_px_m, f_mm=f_mm, fx_px=fx_px)
    return k_from_intrinsics(f_mm, 1.0, fx_px) / K_px_m


def coc_diameter_sensor_mm(f_mm: Number, f_number: Number, focus_m: Number, depth_m: Number) -> Number:
    """Circle-of-confusion diameter on the sensor (mm), with the lens focused by extension (focus breathing).

    ``c = f^2 |d - s1| / (N d (s1 - f)) = f^2 s1 / (N (s1 - f)) * |1/s1 - 1/d|``: aperture diameter f/N times the
    relative defocus of the image plane. Half of it over the pixel pitch is ``|r|`` of :func:`k_from_lens`.
    (METHOD.md writes the prefactor without ``s1``; that is not consistent with its own K formula.)
    """
    check_positive(f_number, "f_number")
    check_focus(focus_m, f_mm=f_mm)
    if _is_tensor(depth_m):
        check_depth_m(depth_m if depth_m.dim() >= 2 else depth_m.reshape(1, -1))
    else:
        check_positive(depth_m, "depth_m")
    check_broadcast("coc_diameter_sensor_mm", f_mm=f_mm, f_number=f_number, focus_m=focus_m, depth_m=depth_m)
    f_m = f_mm / 1000.0
    delta = 1.0 / focus_m - 1.0 / depth_m
    mag = delta.abs() if _is_tensor(delta) else abs(delta)
    return f_m**2 * focus_m / (f_number * (focus_m - f_m)) * mag * 1000.0


def _per_batch(x: Number, batch: int, ref: torch.Tensor, name: str) -> torch.Tensor:
    """A float or a tensor [], [1], [B] (or [B,1,1,1]) -> tensor [B,1,1,1] on ref's device/dtype."""
    t = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    if t.dim() == 4 and t.shape[1:] == (1, 1, 1):
        t = t.reshape(-1)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a float or a tensor of shape [B] (B={batch}); got {tuple(t.shape)}")
    if t.dim() == 1 and t.numel() not in (1, batch):
        raise ValueError(f"{name} has {t.numel()} values but the batch has {batch} images")
    return t.reshape(-1, 1, 1, 1).expand(batch, 1, 1, 1)


def signed_coc_radius_px(depth_m: torch.Tensor, K_px_m: Number, focus_m: Number) -> torch.Tensor:
    """Signed blur (CoC) radius map ``r = K * (1/s1 - 1/d)`` in pixels, > 0 behind the focal plane.

    Args:
        depth_m: [B,1,H,W] metric depth (m), > 0.
        K_px_m: float or tensor [B] (px*m), >= 0.
        focus_m: float or tensor [B] (m), > 0.
    Returns: [B,1,H,W] float tensor (differentiable w.r.t. all three inputs).
    """
    check_depth_m(depth_m)
    if depth_m.dim() != 4:
        raise ValueError(f"depth_m must have shape [B,1,H,W]; got {tuple(depth_m.shape)}")
    check_k(K_px_m)
    check_focus(focus_m)
    b = depth_m.shape[0]
    K = _per_batch(K_px_m, b, depth_m, "K_px_m")
    s1 = _per_batch(focus_m, b, depth_m, "focus_m")
    return K * (1.0 / s1 - 1.0 / depth_m)


def inverse_depth_range(depth_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (1/z_max, 1/z_min) of a depth map [B,1,H,W] -> two tensors [B]."""
    check_depth_m(depth_m)
    flat = depth_m.reshape(depth_m.shape[0], -1) if depth_m.dim() == 4 else depth_m.reshape(1, -1)
    return 1.0 / flat.amax(dim=1), 1.0 / flat.amin(dim=1)


def _check_per_image(value: Number, batch: int, name: str) -> None:
    """A float or a tensor of 1 or B values (one per image of depth_m)."""
    if _is_tensor(value) and value.numel() not in (1, batch):
        raise ValueError(f"{name} has {value.numel()} values (shape {tuple(value.shape)}) but depth_m has {batch} "
                         f"images; give a float or a tensor [B]")


def k_metric_to_bokehme(K_px_m: Number, depth_m: torch.Tensor) -> torch.Tensor:
    """Metric K (px*m) -> BokehMe-style K (px per unit of per-image min-max normalised disparity).

    ``K_BM = K * (1/z_min - 1/z_max)`` per image: the same physical blur expressed on disparity normalised to
    [0, 1] over the image's own depth range (scene dependent, hence only a conversion). Returns a tensor [B].
    """
    check_k(K_px_m)
    inv_far, inv_near = inverse_depth_range(depth_m)
    _check_per_image(K_px_m, inv_far.numel(), "K_px_m")
    if (inv_near - inv_far <= 0).any():
        raise ValueError("depth_m is constant in an image: the normalised-disparity K is undefined")
    return torch.as_tensor(K_px_m, dtype=inv_far.dtype, device=inv_far.device) * (inv_near - inv_far)


def k_bokehme_to_metric(K_bm: Number, depth_m: torch.Tensor) -> torch.Tensor:
    """BokehMe-style K (px per normalised disparity) -> metric K (px*m): ``K = K_BM / (1/z_min - 1/z_max)``."""
    check_k(K_bm, "K_bm")
    inv_far, inv_near = inverse_depth_range(depth_m)
    _check_per_image(K_bm, inv_far.numel(), "K_bm")
    span = inv_near - inv_far
    if (span <= 0).any():
        raise ValueError("depth_m is constant in an image: the normalised-disparity K is undefined")
    return torch.as_tensor(K_bm, dtype=span.dtype, device=span.device) / span


# ----------------------------------------------------------------------------------------------------------------
# camera record and EXIF
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThinLensCamera:
    """A thin-lens camera for one image. Lengths in the unit named by the field; ``to_dict()`` for logging.

    ``fx_px`` (optional): the focal length in pixels of the formed image when known (e.g. from intrinsics or a
    renderer); it overrides the sensor-based value, so ``K = f/(2N) * fx_px``.
    """

    f_mm: float
    f_number: float
    focus_m: float
    image_width_px: int
    image_height_px: int
    sensor_width_mm: float | None = None
    f35_mm: float | None = None
    focus_breathing: bool = True
    fx_px: float | None = None

    def __post_init__(self) -> None:
        check_positive(self.f_mm, "f_mm")
        check_positive(self.f_number, "f_number")
        check_focus(self.focus_m, f_mm=self.f_mm)
        check_positive(self.image_width_px, "image_width_px")
        check_positive(self.image_height_px, "image_height_px")
        if self.fx_px is None and self.sensor_width_mm is None and self.f35_mm is None:
            raise ValueError("ThinLensCamera needs sensor_width_mm, f35_mm or fx_px to relate mm to pixels")
        if self.fx_px is not None:
            check_positive(self.fx_px, "fx_px")

    @property
    def aspect_ratio(self) -> float:
        return self.image_width_px / self.image_height_px

    @property
    def sensor_width(self) -> float:
        """Sensor width in mm (from sensor_width_mm, f35_mm, or back from fx_px as a pinhole)."""
        if self.sensor_width_mm is not None or self.f35_mm is not None:
            return float(_sensor_width_mm(self.f_mm, self.sensor_width_mm, self.f35_mm, self.aspect_ratio))
        return self.f_mm * self.image_width_px / float(self.fx_px)

    @property
    def focal_px(self) -> float:
        """fx of the formed image (px)."""
        if self.fx_px is not None:
            return float(self.fx_px)
        return float(focal_px(self.f_mm, self.image_width_px, self.sensor_width,
                              focus_m=self.focus_m if self.focus_breathing else None))

    @property
    def K_px_m(self) -> float:
        """Metric blur strength (px*m)."""
        return float(k_from_intrinsics(self.f_mm, self.f_number, self.focal_px))

    def coc_radius_px(self, depth_m: torch.Tensor) -> torch.Tensor:
        """Signed CoC radius map [B,1,H,W] (px) of a depth map [B,1,H,W] (m)."""
        return signed_coc_radius_px(depth_m, self.K_px_m, self.focus_m)

    def intrinsics(self) -> torch.Tensor:
        """3x3 pinhole intrinsics (fx = fy, principal point at the image centre)."""
        fx = self.focal_px
        return torch.tensor([[fx, 0.0, self.image_width_px / 2.0], [0.0, fx, self.image_height_px / 2.0],
                             [0.0, 0.0, 1.0]], dtype=torch.float64)

    def with_f_number(self, f_number: float) -> "ThinLensCamera":
        d = asdict(self)
        d["f_number"] = f_number
        return ThinLensCamera(**d)

    def to_dict(self) -> dict:
        """Plain JSON-ready record: the fields plus the derived sensor width, fx and K."""
        d = asdict(self)
        d.update(sensor_width_derived_mm=self.sensor_width, focal_px_derived=self.focal_px, K_px_m=self.K_px_m,
                 K_units="px*m; r_px = K * (1/focus_m - 1/depth_m)")
        return d


def _exif_number(value: Any, name: str) -> float:
    """EXIF numbers come as floats, ints, 'a/b' strings, (num, den) tuples or rational objects."""
    try:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return float(value[0]) / float(value[1])
        if isinstance(value, str):
            return float(Fraction(value.strip()))
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"EXIF field {name} is not a number: {value!r}") from None


def camera_from_exif(exif: Mapping[str, Any], *, focus_m: float | None = None, sensor_width_mm: float | None = None,
                     image_width_px: int | None = None, image_height_px: int | None = None,
                     focus_breathing: bool = True) -> ThinLensCamera:
    """Build a :class:`ThinLensCamera` from EXIF-like fields.

    Reads FocalLength (mm), FNumber, FocalLengthIn35mmFilm (mm, optional), SubjectDistance (m; else
    ``focus_m``), and the image size from ImageWidth/ImageLength, ExifImageWidth/ExifImageHeight or
    PixelXDimension/PixelYDimension (else the keyword arguments; pass them when the image was resized).
    A sensor width (keyword) takes precedence over the 35 mm equivalent.
    """

    def get(*keys: str) -> Any:
        for k in keys:
            if k in exif and exif[k] not in (None, "", 0):
                return exif[k]
        return None

    f = get("FocalLength")
    n = get("FNumber")
    if f is None:
        raise ValueError("EXIF field FocalLength is missing")
    if n is None:
        raise ValueError("EXIF field FNumber is missing")
    f_mm = _exif_number(f, "FocalLength")
    f_number = _exif_number(n, "FNumber")
    if focus_m is None:
        dist = get("SubjectDistance")
        if dist is None:
            raise ValueError("focus distance unknown: EXIF SubjectDistance is missing; pass focus_m")
        focus_m = _exif_number(dist, "SubjectDistance")
    w = image_width_px or get("ImageWidth", "ExifImageWidth", "PixelXDimension")
    h = image_height_px or get("ImageLength", "ImageHeight", "ExifImageHeight", "PixelYDimension")
    if w is None or h is None:
        raise ValueError("image size unknown: EXIF ImageWidth/ImageLength missing; pass image_width_px and "
                         "image_height_px")
    f35 = get("FocalLengthIn35mmFilm")
    f35_mm = _exif_number(f35, "FocalLengthIn35mmFilm") if f35 is not None else None
    if sensor_width_mm is None and f35_mm is None:
        raise ValueError("sensor size unknown: EXIF FocalLengthIn35mmFilm is missing; pass sensor_width_mm")
    w_px, h_px = _exif_number(w, "ImageWidth"), _exif_number(h, "ImageLength")
    for value, name in ((w_px, "ImageWidth"), (h_px, "ImageLength")):
        if not (math.isfinite(value) and value >= 1 and value == int(value)):
            raise ValueError(f"EXIF field {name} must be a whole number of pixels >= 1; got {value!r}")
    return ThinLensCamera(f_mm=f_mm, f_number=f_number, focus_m=float(focus_m), image_width_px=int(w_px),
                          image_height_px=int(h_px), sensor_width_mm=sensor_width_mm,
                          f35_mm=None if sensor_width_mm is not None else f35_mm, focus_breathing=focus_breathing)


__all__ = [
    "FULL_FRAME_DIAGONAL_MM", "ThinLensCamera", "camera_from_exif", "check_depth_m", "check_focus", "check_k",
    "coc_diameter_sensor_mm", "f_number_from_k", "f_number_from_k_intrinsics", "focal_px", "inverse_depth_range",
    "k_bokehme_to_metric", "k_from_intrinsics", "k_from_lens", "k_metric_to_bokehme", "sensor_width_from_f35",
    "signed_coc_radius_px",
]
