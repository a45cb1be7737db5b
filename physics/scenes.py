"""Seeded procedural RGB-D scenes for defocus: sharp sRGB image, metric depth, intrinsics, focus distance.

What depth-from-defocus needs, at any resolution and deterministic per seed:

- a background that is a far fronto-parallel wall, a slanted plane, or a wall with a floor (inverse depth linear in
  the pixel coordinates, which is exact for planes);
- 2-7 occluding objects (ellipses, rotated rectangles, convex polygons, wobbly blobs) at several depths, some
  fronto-parallel and some slanted, composited with a z-buffer, so depth has real discontinuities;
- textured (band-limited noise, stripes, checkers, speckle) and textureless (flat or gently shaded) regions;
- small bright highlights (sRGB values 0.95-1.0 on surfaces whose other values stay <= 0.9) with an HDR gain map
  ``hdr_gain`` (linear radiance = linear(image) * hdr_gain, 1 elsewhere) for bokeh-ball rendering.

Appearance does not reveal depth (the default, ``appearance_cues=0``): texture kind, scale, colours, object sizes
and highlight placement are drawn independently of the depths, and textures are not perspective-foreshortened. Only
the occlusion order and the sharp subject (see below) tie appearance to geometry, so defocus stays the informative cue.

``appearance_cues=a > 0`` adds the two monocular cues real photos carry, on the same geometry (depth, labels, focus,
intrinsics and highlight positions equal those of the ``a=0`` scene of the same seed):

- perspective texture scale: a surface's texture periods are multiplied by ``z_ref / z_surface`` (twice as far ->
  features half as large in px), with ``z_ref`` the geometric mean of ``depth_range_m`` and ``z_surface`` the
  harmonic mean depth over the surface's own footprint (one scale per surface: a slanted plane is not foreshortened
  across itself); scaled periods are floored at 2 px so fine textures do not alias into coarse ones;
- aerial perspective (haze), in linear light after compositing: ``t * radiance + (1 - t) * HAZE_LINEAR`` with
  transmittance ``t = exp(-a * depth_m / far)`` per pixel and one fixed haze colour for every scene (a light grey-blue,
  so that colour, not only contrast, drifts with depth). On highlights only the surface term is boosted:
  ``linear(image) * hdr_gain = t * gain * linear(tint) + (1 - t) * HAZE_LINEAR`` exactly, with the stored pixel as
  bright (max channel) as the hazed tint, so highlights stay brighter than the hazed surfaces around them and fade
  into the haze far away (hazed surfaces reach the haze's sRGB 0.91, above the 0.9 cap of the cue-free scenes).

Focus policy: a fronto-parallel "subject" object is the nearest surface and ``focus_m`` is its depth (= the minimum
depth of the scene), so the whole scene lies on or behind the focal plane and the signed CoC radius
``K (1/focus_m - 1/depth_m)`` is >= 0 everywhere (no front/back sign ambiguity). ``focus_policy="none"`` draws the
subject like any other object and focuses on the median depth instead (both signs occur).

Everything is vectorised torch on one ``torch.Generator``; a 128x128 scene takes a few milliseconds on a CPU.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from physics.checks import is_int

TEXTURES = ("flat", "noise", "stripes", "checker", "speckle")
HAZE_LINEAR = (0.70, 0.75, 0.80)  # linear RGB airlight of appearance_cues > 0: a light grey-blue sky
MIN_PERIOD_PX = 2.0  # perspective-scaled texture periods stop here (Nyquist: finer stripes would alias)


@dataclass
class Scene:
    """One synthetic view.

    image: [3,H,W] float32 sRGB in [0,1]. depth_m: [1,H,W] float32 metres (z along the optical axis).
    intrinsics: [3,3] float32 (fx, fy, cx, cy in px). focus_m: focus distance (m) under the focus policy.
    hdr_gain: [1,H,W] float32 >= 1, linear-light multiplier (> 1 on highlights). labels: [1,H,W] int64 surface id
    (0 = background wall, 1 = floor, 2.. = objects, 2 = the subject). seed: the seed it was made from.
    info: the drawn parameters (subject / background depth, appearance_cues, and per surface its label, texture
    kind, depth_m = harmonic mean depth over its footprint, texture_scale, period_px = its texture's coarsest period as
    seen, after the perspective scale; None when textureless).
    """

    image: torch.Tensor
    depth_m: torch.Tensor
    intrinsics: torch.Tensor
    focus_m: float
    hdr_gain: torch.Tensor
    labels: torch.Tensor
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Tensors for a DataLoader (collatable): image, depth_m, intrinsics, focus_m (0-d), hdr_gain, seed."""
        return {
            "image": self.image,
            "depth_m": self.depth_m,
            "intrinsics": self.intrinsics,
            "focus_m": torch.tensor(self.focus_m, dtype=torch.float32),
            "hdr_gain": self.hdr_gain,
            "seed": torch.tensor(self.seed, dtype=torch.int64),
        }


# ------------------------------------------------------------------------------------------------ random helpers


class _Rng:
    """Thin wrapper around a seeded CPU torch.Generator (all draws go through it: determinism per seed)."""

    def __init__(self, seed: int):
        seed = int(seed) & 0x7FFF_FFFF_FFFF_FFFF
        self.seed = seed
        self.g = torch.Generator().manual_seed(seed)
        self.py = random.Random(seed)  # scalar draws: much cheaper than 0-d tensors
        self._tex: torch.Generator | None = None

    @property
    def tex(self) -> torch.Generator:
        """Second stream for perspective-scaled noise grids: their size depends on depth, and drawing them from ``g``
        would shift every later draw (shapes, highlights), i.e. change the geometry along with the appearance."""
        if self._tex is None:
            self._tex = torch.Generator().manual_seed(self.seed ^ 0x2545_F491_4F6C_DD1D)
        return self._tex

    def uniform(self, lo: float = 0.0, hi: float = 1.0, size: tuple[int, ...] = ()) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=self.g)

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return self.py.uniform(lo, hi)

    def log_u(self, lo: float, hi: float) -> float:
        return math.exp(self.u(math.log(lo), math.log(hi)))

    def randint(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi] inclusive."""
        return self.py.randint(lo, hi)

    def choice(self, options: tuple) -> Any:
        return options[self.py.randrange(len(options))]

    def colour(self) -> torch.Tensor:
        """A random sRGB colour in [0.03, 0.9] with random saturation (grey to vivid)."""
        grey = self.u(0.08, 0.85)
        sat = self.u(0.0, 0.7)
        return torch.tensor([min(max(grey + sat * (self.u() - 0.5), 0.03), 0.9) for _ in range(3)])


# ------------------------------------------------------------------------------------------------ textures


def _scaled_period(period_px: float, scale: float) -> float:
    """Texture period (px) of a surface seen at ``scale`` = z_ref / z_surface, floored at MIN_PERIOD_PX."""
    return period_px if scale == 1.0 else max(period_px * scale, MIN_PERIOD_PX)


def _noise(rng: _Rng, h: int, w: int, period_px: float, octaves: int = 3, scale: float = 1.0) -> torch.Tensor:
    """Band-limited value noise in [0,1], [H,W]: bicubic upsampling of random grids, coarsest period
    ``period_px`` (times the perspective ``scale``; see :func:`_scaled_period`)."""
    out = torch.zeros(h, w)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        p = max(period_px / (2**o), 1.5)
        gh, gw = max(2, math.ceil(h / p) + 1), max(2, math.ceil(w / p) + 1)
        grid = torch.rand((1, 1, gh, gw), generator=rng.g)
        if scale != 1.0:
            # the unscaled draw above keeps rng.g where the cue-free scene has it; the grid used comes from rng.tex
            p = max(_scaled_period(period_px, scale) / (2**o), 1.5)
            gh, gw = max(2, math.ceil(h / p) + 1), max(2, math.ceil(w / p) + 1)
            grid = torch.rand((1, 1, gh, gw), generator=rng.tex)
        up = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
        out += amp * up
        total += amp
        amp *= 0.5
    out = out / total
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo).clamp_min(1e-6)


def _texture(rng: _Rng, kind: str, X: torch.Tensor, Y: torch.Tensor, short_px: int,
             scale: float = 1.0) -> tuple[torch.Tensor, float | None]:
    """A [3,H,W] sRGB texture of ``kind`` over the whole frame (masked later), and its period as seen (px; None for
    "flat"). Periods are drawn in px (3-40) and multiplied by the perspective ``scale`` (1 = depth-independent;
    speckle's 1-px dots stay 1 px). The draws do not depend on ``scale``."""
    h, w = X.shape
    c1, c2 = rng.colour(), rng.colour()
    if kind == "flat":
        # textureless: one colour with a faint linear shading (no usable defocus cue inside)
        shade = 1.0 + rng.u(-0.08, 0.08) * X + rng.u(-0.08, 0.08) * Y
        return (c1[:, None, None] * shade).clamp(0, 0.9), None
    period = rng.log_u(3.0, 40.0)  # px
    if kind == "noise":
        t = _noise(rng, h, w, period, octaves=rng.randint(1, 4), scale=scale)
        t = t if rng.u() < 0.5 else (t > 0.5).float() * 0.8 + 0.2 * t
    elif kind == "stripes":
        theta = rng.u(0, math.pi)
        phase = (X * math.cos(theta) + Y * math.sin(theta)) * short_px / _scaled_period(period, scale)
        t = 0.5 + 0.5 * torch.sin(2 * math.pi * phase + rng.u(0, 2 * math.pi))
        if rng.u() < 0.5:
            t = (t > 0.5).float()
    elif kind == "checker":
        theta = rng.u(0, math.pi)
        a = (X * math.cos(theta) + Y * math.sin(theta)) * short_px / _scaled_period(period, scale)
        b = (-X * math.sin(theta) + Y * math.cos(theta)) * short_px / _scaled_period(period, scale)
        t = ((torch.floor(a) + torch.floor(b)) % 2).float()
    elif kind == "speckle":
        t = torch.rand((h, w), generator=rng.g)
        t = (t > rng.u(0.5, 0.9)).float() * 0.7 + 0.3 * _noise(rng, h, w, period, 2, scale=scale)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown texture {kind!r}")
    return (c1[:, None, None] * (1 - t) + c2[:, None, None] * t).clamp(0, 0.9), _scaled_period(period, scale)


# ------------------------------------------------------------------------------------------------ shapes


def _shape_mask(rng: _Rng, X: torch.Tensor, Y: torch.Tensor, cx: float, cy: float, radius: float) -> torch.Tensor:
    """Boolean [H,W] mask of a random shape centred at (cx, cy) with size ``radius`` (units of the short side)."""
    kind = rng.choice(("ellipse", "rectangle", "polygon", "blob"))
    theta = rng.u(0, math.pi)
    dx, dy = X - cx, Y - cy
    a = dx * math.cos(theta) + dy * math.sin(theta)
    b = -dx * math.sin(theta) + dy * math.cos(theta)
    aspect = rng.u(0.4, 1.0)
    if kind == "ellipse":
        return (a / radius) ** 2 + (b / (radius * aspect)) ** 2 <= 1.0
    if kind == "rectangle":
        return (a.abs() <= radius) & (b.abs() <= radius * aspect)
    if kind == "polygon":
        n = rng.randint(3, 7)
        angles = torch.sort(rng.uniform(0, 2 * math.pi, (n,))).values
        mask = torch.ones_like(X, dtype=torch.bool)
        for ang in angles.tolist():  # n half-planes (n <= 7), each vectorised over the image
            dist = radius * rng.u(0.6, 1.0)
            mask &= (dx * math.cos(ang) + dy * math.sin(ang)) <= dist
        return mask
    # blob: radius modulated by a few random harmonics of the polar angle
    phi = torch.atan2(dy, dx)
    rho = torch.sqrt(dx**2 + dy**2)
    r = torch.full_like(phi, radius)
    for k in range(2, 5):
        r = r + radius * rng.u(0.0, 0.18) * torch.cos(k * phi + rng.u(0, 2 * math.pi))
    return rho <= r


def _plane_inv_depth(rng: _Rng, X: torch.Tensor, Y: torch.Tensor, inv0: float, cx: float, cy: float,
                     max_rel_change: float, extent: float) -> torch.Tensor:
    """Inverse depth of a random (slanted) plane: ``inv0 * (1 + g . (p - c))``, changing by at most
    ``max_rel_change`` of ``inv0`` over a distance ``extent`` from the centre (1/z is affine in pixels for a plane)."""
    theta = rng.u(0, 2 * math.pi)
    g = rng.u(0.0, max_rel_change) / max(extent, 1e-6)
    return inv0 * (1.0 + g * ((X - cx) * math.cos(theta) + (Y - cy) * math.sin(theta)))


# ------------------------------------------------------------------------------------------------ scene


def _number(value: Any) -> float:
    """float(value), NaN when it is not a number (every comparison with it then fails)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pair(value: Any, name: str, what: str) -> tuple[float, float]:
    """A (lo, hi) pair of numbers -> two floats; ValueError naming ``name`` otherwise."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair ({what}), got {value!r}") from None
    return _number(lo), _number(hi)


def make_scene(seed: int, height: int, width: int, *, depth_range_m: tuple[float, float] = (0.5, 10.0),
               num_objects: tuple[int, int] = (2, 7), p_textureless: float = 0.25, p_slanted: float = 0.5,
               highlights_per_mpx: float = 300.0, hfov_deg: tuple[float, float] = (45.0, 75.0),
               focus_policy: str = "nearest", appearance_cues: float = 0.0) -> Scene:
    """Make one deterministic scene from ``seed``.

    Args:
        seed: any int; equal seeds give bit-identical scenes.
        height, width: image size in px (>= 8 each; any aspect ratio).
        depth_range_m: (near, far) bounds of all depths (m); the subject lies in the nearer part of the range
            (log-uniform up to the geometric mean), the background in the farther part, up to ``far``.
        num_objects: inclusive range of occluding objects besides the subject.
        p_textureless: probability that a surface is textureless (flat or faintly shaded).
        p_slanted: probability that an object is a slanted plane rather than fronto-parallel.
        highlights_per_mpx: mean number of small highlights per megapixel (at least 2 per scene).
        hfov_deg: range of the horizontal field of view that sets fx (independent of the content).
        focus_policy: "nearest" (focus on the fronto-parallel nearest subject, all r >= 0) or "none" (subject
            drawn like the others, focus at the median depth).
        appearance_cues: a >= 0 (dimensionless). 0: appearance hides depth (bit-identical to scenes made before the
            option existed). a > 0: perspective texture scale (on/off) and haze with optical depth
            ``a * depth_m / far`` (see the module docstring); the geometry is that of the a = 0 scene.
    Returns: :class:`Scene`.
    """
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    for value, name in ((height, "height"), (width, "width")):
        if not is_int(value):
            raise ValueError(f"{name} must be an int number of px (>= 8), got {type(value).__name__} {value!r}")
    if height < 8 or width < 8:
        raise ValueError(f"height and width must be >= 8 px, got {height}x{width}")
    near, far = _pair(depth_range_m, "depth_range_m", "near, far")
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"depth_range_m must be (near, far) with 0 < near < far, got {depth_range_m}")
    _pair(num_objects, "num_objects", "lo, hi")
    if not all(is_int(v) for v in num_objects):
        raise ValueError(f"num_objects must be (lo, hi) of ints, got {num_objects!r}")
    if num_objects[0] < 0 or num_objects[1] < num_objects[0]:
        raise ValueError(f"num_objects must be (lo, hi) with 0 <= lo <= hi, got {num_objects}")
    for value, name in ((p_textureless, "p_textureless"), (p_slanted, "p_slanted")):
        if not _number(value) <= 1.0 or not _number(value) >= 0.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    if not (math.isfinite(_number(highlights_per_mpx)) and highlights_per_mpx >= 0):
        raise ValueError(f"highlights_per_mpx must be a finite number >= 0, got {highlights_per_mpx!r}")
    fov_lo, fov_hi = _pair(hfov_deg, "hfov_deg", "lo, hi")
    if not (0 < fov_lo < 180 and 0 < fov_hi < 180):
        raise ValueError(f"hfov_deg must be (lo, hi) degrees, each in (0, 180), got {hfov_deg}")
    if focus_policy not in ("nearest", "none"):
        raise ValueError(f"focus_policy must be 'nearest' or 'none', got {focus_policy!r}")
    try:
        cues = float(appearance_cues)
    except (TypeError, ValueError):
        cues = math.nan
    if not (math.isfinite(cues) and cues >= 0):
        raise ValueError(f"appearance_cues must be a finite number >= 0 (0 = appearance hides depth), "
                         f"got {appearance_cues!r}")

    rng = _Rng(seed)
    short = min(height, width)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / short
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / short
    Y, X = torch.meshgrid(ys, xs, indexing="ij")  # units of the short side, origin at the centre
    half_w, half_h = width / (2 * short), height / (2 * short)

    inv_near, inv_far = 1.0 / near, 1.0 / far
    mid = math.sqrt(near * far)  # also the reference depth of the perspective texture scale
    surfaces: list[dict[str, Any]] = []

    def tex(inv: torch.Tensor) -> torch.Tensor:
        """Texture of the surface with inverse depth ``inv`` (0 off its footprint), recorded in ``surfaces``."""
        kind = "flat" if rng.u() < p_textureless else rng.choice(TEXTURES[1:])
        on = inv > 0
        # an empty footprint (a shape that misses every pixel centre) is never seen: any depth will do
        z = 1.0 / float(inv[on].mean()) if bool(on.any()) else mid
        scale = mid / z if cues > 0 else 1.0
        texture, period_px = _texture(rng, kind, X, Y, short, scale)
        surfaces.append({"label": layer_id[0], "texture": kind, "depth_m": z, "texture_scale": scale,
                         "period_px": period_px})
        return texture

    subject_z = rng.log_u(near, mid)
    # background: its nearest point at least 1.5x the subject's depth when the range allows it
    bg_lo = min(max(subject_z * 1.5, mid), far)
    bg_z = rng.log_u(bg_lo, far) if bg_lo < far else far

    # z-buffer over layers, drawn back to front: a layer wins where its inverse depth is >= the current one
    # (nearest surface; later layers win exact ties, so the subject beats an object clamped to its depth)
    inv_depth = torch.zeros_like(X)
    image = torch.zeros(3, height, width)
    labels = torch.zeros(height, width, dtype=torch.int64)

    def composite(inv: torch.Tensor) -> None:
        nonlocal inv_depth, image
        texture = tex(inv)  # drawn after the layer's geometry, as always: the seed -> scene map does not change
        win = (inv > 0) & (inv >= inv_depth)
        inv_depth = torch.where(win, inv, inv_depth)
        image = torch.where(win[None], texture, image)
        labels.masked_fill_(win, layer_id[0])
        layer_id[0] += 1

    layer_id = [0]

    # layer 0: the background wall, fronto-parallel or slanted (always covers the frame)
    wall = torch.full_like(X, 1.0 / bg_z)
    if rng.u() < 0.5:
        wall = _plane_inv_depth(rng, X, Y, 1.0 / bg_z, 0.0, 0.0, 0.6, math.hypot(half_w, half_h))
    composite(wall.clamp(inv_far, 1.0 / bg_lo if bg_lo < far else inv_far))

    # layer 1: an optional floor (inverse depth grows linearly below a horizon)
    if rng.u() < 0.4:
        horizon = rng.u(-0.2 * half_h, 0.6 * half_h)
        slope = (1.0 / (subject_z * rng.u(1.1, 1.4)) - 1.0 / bg_z) / max(half_h - horizon, 1e-3)
        floor = (1.0 / bg_z + slope * (Y - horizon)) * (Y > horizon)
        composite(floor.clamp(max=1.0 / subject_z))
    else:
        layer_id[0] += 1

    # layer 2: the subject (fronto-parallel at subject_z under the "nearest" policy)
    n_obj = rng.randint(num_objects[0], num_objects[1])
    for i in range(n_obj + 1):
        is_subject = i == 0
        radius = rng.u(0.1, 0.35)
        cx, cy = rng.u(-half_w, half_w) * 0.85, rng.u(-half_h, half_h) * 0.85
        mask = _shape_mask(rng, X, Y, cx, cy, radius)
        if is_subject:
            z = subject_z
        else:
            z = rng.log_u(subject_z * 1.05, max(bg_z * 0.9, subject_z * 1.1))
        if (is_subject and focus_policy == "nearest") or rng.u() >= p_slanted:
            inv = torch.full_like(X, 1.0 / z)
        else:
            inv = _plane_inv_depth(rng, X, Y, 1.0 / z, cx, cy, 0.4, radius)
        lo = inv_far
        hi = 1.0 / subject_z if focus_policy == "nearest" else inv_near
        composite(torch.where(mask, inv.clamp(lo, hi), torch.zeros_like(inv)))

    depth = (1.0 / inv_depth).clamp(near, far)

    haze = torch.tensor(HAZE_LINEAR)
    if cues > 0:
        transmittance = torch.exp(-cues * depth / far)  # [H,W]
        lin = kornia.color.rgb_to_linear_rgb(image)
        image = kornia.color.linear_rgb_to_rgb(transmittance * lin + (1 - transmittance) * haze[:, None, None])

    # highlights: tiny bright discs at depth-independent positions, values 0.95-1, HDR gain 2-30 in linear light
    n_hl = max(2, int(highlights_per_mpx * height * width / 1e6 + rng.u()))
    hdr_gain = torch.ones(height, width)
    px = rng.uniform(0.0, float(width), (n_hl,))  # centres in pixel units
    py = rng.uniform(0.0, float(height), (n_hl,))
    pr = rng.uniform(0.6, 2.0, (n_hl,))  # radii (px)
    gains = rng.uniform(math.log(2.0), math.log(30.0), (n_hl,)).exp()
    tint = rng.uniform(0.95, 1.0, (n_hl, 3))
    # each disc touches at most the 5x5 pixels around its centre: test those (no full-frame work per highlight)
    off = torch.arange(-2, 3)
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    iy = (py.floor().long()[:, None] + oy.reshape(1, -1)).clamp(0, height - 1)  # [n,25]
    ix = (px.floor().long()[:, None] + ox.reshape(1, -1)).clamp(0, width - 1)
    d2 = (ix + 0.5 - px[:, None]) ** 2 + (iy + 0.5 - py[:, None]) ** 2
    inside = (d2 <= pr[:, None] ** 2) | (d2 == d2.min(dim=1, keepdim=True).values)  # >= its nearest pixel
    hl_idx = torch.arange(n_hl)[:, None].expand_as(d2)[inside]
    flat = (iy * width + ix)[inside]
    image = image.reshape(3, -1).clone()
    if cues > 0:
        t_hl = transmittance.reshape(-1)[flat]  # [m]
        surface = kornia.color.rgb_to_linear_rgb(tint[hl_idx].T[:, None])[:, 0]  # [3,m] linear
        airlight = (1 - t_hl) * haze[:, None]
        radiance = t_hl * gains[hl_idx] * surface + airlight  # the gain boosts the surface term, not the haze
        # one gain per pixel must serve three channels: store radiance / g with g chosen so the pixel's brightest
        # channel is that of the hazed tint (g >= 1 since radiance >= hazed tint channel by channel)
        g = radiance.amax(0) / (t_hl * surface + airlight).amax(0)
        image[:, flat] = kornia.color.linear_rgb_to_rgb((radiance / g)[:, None])[:, 0]
        hdr_gain.view(-1)[flat] = g
    else:
        image[:, flat] = tint[hl_idx].T
        hdr_gain.view(-1)[flat] = gains[hl_idx]
    image = image.reshape(3, height, width)

    if focus_policy == "nearest":
        focus_m = float(subject_z)
    else:
        focus_m = float(depth.median())

    fov = math.radians(rng.u(*hfov_deg))
    fx = width / (2.0 * math.tan(fov / 2.0))
    # the grid's origin (the optical axis) lies between the two middle pixel centres: x = (W - 1) / 2 in the
    # integer-pixel-centre convention of every other camera here (bokeh.datasets.Intrinsics, tools/infer.py)
    intrinsics = torch.tensor([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    return Scene(
        image=image.clamp(0, 1).contiguous(),
        depth_m=depth[None].contiguous(),
        intrinsics=intrinsics,
        focus_m=focus_m,
        hdr_gain=hdr_gain[None].contiguous(),
        labels=labels[None],
        seed=int(seed),
        info={"num_objects": n_obj, "subject_depth_m": subject_z, "background_depth_m": bg_z,
              "num_highlights": n_hl, "depth_range_m": (near, far), "focus_policy": focus_policy,
              "appearance_cues": cues, "haze_linear": HAZE_LINEAR if cues > 0 else None,
              "texture_reference_depth_m": mid, "surfaces": surfaces},
    )


def scene_options_from_json(text: str, name: str = "scene_options") -> dict[str, Any]:
    """A JSON object of :func:`make_scene` keywords (``name`` is how the caller calls it, for the error), checked
    against make_scene's signature. Raises ValueError naming what is wrong."""
    import inspect
    import json

    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object such as '{{\"appearance_cues\": 1.0}}'; "
                         f"got {text!r} ({error.msg})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(options).__name__}: {text!r}")
    allowed = set(inspect.signature(make_scene).parameters) - {"seed", "height", "width"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; make_scene takes {sorted(allowed)}")
    return options


class SyntheticSceneDataset(Dataset):
    """``num_scenes`` procedural scenes of ``height`` x ``width``, made on the fly (deterministic per index).

    Item ``i`` is ``make_scene(seed * 1_000_003 + i, ...)`` as a dict: image [3,H,W], depth_m [1,H,W],
    intrinsics [3,3], focus_m (0-d tensor), hdr_gain [1,H,W], seed (0-d int64). Extra keyword options go to
    :func:`make_scene`.
    """

    def __init__(self, num_scenes: int, height: int, width: int, seed: int = 0, **options: Any):
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
        self.num_scenes, self.height, self.width, self.seed = int(num_scenes), int(height), int(width), int(seed)
        self.options = options
        make_scene(self.seed * 1_000_003, self.height, self.width, **options)  # fail fast on bad options

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_scenes <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} scenes")
        index %= self.num_scenes
        scene = make_scene(self.seed * 1_000_003 + index, self.height, self.width, **self.options)
        return scene.to_dict()


__all__ = ["HAZE_LINEAR", "Scene", "SyntheticSceneDataset", "TEXTURES", "make_scene"]
