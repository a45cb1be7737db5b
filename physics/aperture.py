"""Aperture shapes for thin-lens bokeh: disk, n-blade polygon, any user image; soft-rimmed, unit-area kernels.

An aperture is a function ``weights(dx, dy, radius_px)``: the (unnormalised) coverage, in [0, 1], of the pixel at
integer offset (dx, dy) (x right, y DOWN, image convention) by the blur spot of signed radius ``radius_px`` (the
continuous circle of confusion of physics.camera).

Rasterising a spot takes two steps. (1) :meth:`Aperture.coverage` draws the shape at a raster radius with an
anti-aliased rim (coverage ramps linearly over one pixel across the edge), so the kernels vary continuously with the
radius (needed for gradients and smooth layer blends). (2) :meth:`Aperture.raster_radius` picks that raster radius so
that the unit-sum kernel has the continuous spot's second moment: ``c * r^2`` per axis (``c = 1/4`` for a disk,
``(1 + 2 cos^2(pi/n)) / 12`` for an n-gon of circumradius r). Why: a pixel image is the scene integrated over each
pixel, and blurring a band-limited image by a continuous spot multiplies its spectrum by the spot's MTF, whose
curvature at zero frequency is that second moment. Drawing the spot from a point at the pixel centre instead (raster
radius = r) gives no blur at all up to r = 0.5 px and kernels ~1.6x too wide in variance at 0.75-1.25 px
(tools/bench_subpixel.py measures both against a supersampled reference). The map tends to r for large spots
(raster radius = sqrt(r^2 - e/c), e the rim's fixed extra variance) and to 0.5 px (a delta) as r -> 0, where the
variance c r^2 falls to zero continuously.

Sign and orientation convention (the same as Blender Cycles, see METHOD.md): for ``radius_px > 0`` (behind the focal
plane) a polygon has its corners at angles ``rotation + pi/blades + 2*pi*k/blades`` counter-clockwise from +x with y
UP; an image aperture looks like the image as displayed (row 0 at the top). For ``radius_px < 0`` (in front of the
focal plane) the spot is rotated by 180 degrees. ``radius_px`` is the circumradius: polygon corners lie on the circle
of radius |r|, an image aperture's square [-1, 1]^2 is scaled by |r|.

Hand-written: kornia has box/gaussian kernels only, no disk, polygon or image-shaped (bokeh) kernels, and no
moment-matched rasterisation.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Aperture",
    "DiskAperture",
    "PolygonAperture",
    "ImageAperture",
    "make_aperture",
    "kernel_half_size",
    "disk_kernel",
    "polygon_kernel",
]


def kernel_half_size(radius_px: float) -> int:
    """Half width (px) of the smallest odd square that holds the kernel of a spot of nominal radius ``|radius_px|``.

    0 (a 1x1 delta) only for r = 0: any r > 0 blurs (see the module docstring). A spot is drawn at a raster radius
    of at most max(r, 1) px and its soft rim reaches up to 1 px beyond that (at a triangle's corners; 0.5 px for a
    disk), so the square reaches every pixel centre closer than r + 1.
    """
    try:
        r = abs(float(radius_px))
    except (TypeError, ValueError):
        raise ValueError(f"radius_px must be a number (px); got {radius_px!r}") from None
    if not math.isfinite(r):
        raise ValueError(f"radius_px must be finite (px); got {radius_px!r}")
    if r == 0.0:
        return 0
    return max(1, int(math.ceil(r + 1.0)) - 1)


#: raster radii (px) of the moment table; beyond its end the closed form sqrt(r^2 - e/c) takes over.
_TABLE_STEP_PX, _TABLE_END_PX, _MOMENT_PROBES_PX = 0.005, 8.0, (32.0, 48.0)
_MOMENT_TABLES: dict = {}


class _MomentTable:
    """Per-axis second moment V(rho) of the unit-sum kernel drawn at raster radius rho (ascending), the continuous
    spot's coefficient c (second moment / r^2) and the rim's extra variance e = V(rho_end) - c rho_end^2."""

    def __init__(self, ap: "Aperture") -> None:
        # from 0: every shape drawn at raster radius 0 is a delta (a disk's or polygon's centre pixel only)
        rho = torch.arange(0.0, _TABLE_END_PX + 1e-9, _TABLE_STEP_PX, dtype=torch.float64)
        variance = _central_variance(ap, rho)
        # c from two large spots: the difference cancels the rim's constant extra variance
        r1, r2 = _MOMENT_PROBES_PX
        v1, v2 = _central_variance(ap, torch.tensor([r1, r2], dtype=torch.float64)).tolist()
        c = (v2 - v1) / (r2 * r2 - r1 * r1)
        variance = torch.cummax(variance, dim=0).values
        # keep the last point of every flat run (the inverse of a flat run is its far end: the largest delta-like
        # raster radius for V = 0)
        keep = torch.ones_like(variance, dtype=torch.bool)
        keep[:-1] = variance[1:] > variance[:-1]
        self.rho, self.variance = rho[keep], variance[keep]
        self.c = c
        self.excess = float(self.variance[-1]) - c * float(self.rho[-1]) ** 2

    def raster_radius(self, radius_px: torch.Tensor) -> torch.Tensor:
        a = radius_px.abs()
        target = self.c * a * a
        v = self.variance.to(device=a.device, dtype=a.dtype)
        rho = self.rho.to(device=a.device, dtype=a.dtype)
        with torch.no_grad():
            i = (torch.searchsorted(v, target.detach().contiguous(), right=True) - 1).clamp(0, v.numel() - 2)
        v0, v1, r0, r1 = v[i], v[i + 1], rho[i], rho[i + 1]
        inside = r0 + ((target - v0) / (v1 - v0)).clamp_min(0.0) * (r1 - r0)
        # (the clamp only guards the square root where this branch is not taken)
        beyond = (a * a - self.excess / self.c).clamp_min(float(self.rho[-1]) ** 2 * 0.5).sqrt()
        raster = torch.where(target > v[-1], beyond, inside)
        return torch.where(radius_px < 0, -raster, raster)


def _central_variance(ap: "Aperture", rho: torch.Tensor) -> torch.Tensor:
    """Per-axis variance (about its centroid, mean of x and y) of the kernel drawn at each raster radius in rho."""
    # (kernel_half_size also holds a shape drawn at raster radius rho: its rim reaches <= 1 px beyond rho)
    h = kernel_half_size(float(rho.max()))
    offs = torch.arange(-h, h + 1, dtype=torch.float64)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    out = []
    for chunk in rho.split(64):
        w = ap.coverage(dx[None], dy[None], chunk.view(-1, 1, 1))
        w = w / w.sum(dim=(-2, -1), keepdim=True)
        mx, my = (w * dx).sum(dim=(-2, -1)), (w * dy).sum(dim=(-2, -1))
        vx = (w * dx * dx).sum(dim=(-2, -1)) - mx * mx
        vy = (w * dy * dy).sum(dim=(-2, -1)) - my * my
        out.append(0.5 * (vx + vy))
    return torch.cat(out)


class Aperture:
    """Base class. Subclasses implement :meth:`coverage` (the shape at a raster radius); :meth:`weights` draws the
    spot of a physical radius (moment-matched, see the module docstring) and :meth:`kernel` normalises it."""

    name = "aperture"

    def cache_key(self) -> tuple | None:
        """A hashable description of the shape (None: do not cache kernels of this aperture)."""
        return None

    def coverage(self, dx: torch.Tensor, dy: torch.Tensor, raster_radius_px: torch.Tensor) -> torch.Tensor:
        """Soft coverage in [0, 1] of offset (dx, dy) px (y down) by the shape drawn at signed ``raster_radius_px``.

        All arguments broadcast together; the result has their broadcast shape. Differentiable w.r.t. the radius.
        """
        raise NotImplementedError

    def _moments(self) -> _MomentTable:
        key = self.cache_key()
        if key is None:
            table = getattr(self, "_moment_table", None)
            if table is None:
                table = self._moment_table = _MomentTable(self)
            return table
        table = _MOMENT_TABLES.get(key)
        if table is None:
            table = _MOMENT_TABLES[key] = _MomentTable(self)
        return table

    @property
    def second_moment_coefficient(self) -> float:
        """c: the continuous spot's per-axis second moment divided by r^2 (1/4 for a disk), measured on the shape."""
        return self._moments().c

    def raster_radius(self, radius_px: torch.Tensor | float) -> torch.Tensor:
        """Signed raster radius (px) whose kernel has the continuous spot's second moment c r^2; differentiable."""
        if not torch.is_tensor(radius_px) and not math.isfinite(float(radius_px)):
            raise ValueError(f"radius_px must be finite (px); got {radius_px!r}")
        r = radius_px if torch.is_tensor(radius_px) else torch.tensor(float(radius_px), dtype=torch.float64)
        return self._moments().raster_radius(r)

    def half_size(self, radius_px: float) -> int:
        """Half width (px) of the square that holds this aperture's spot of nominal radius ``radius_px``."""
        return kernel_half_size(radius_px)

    def weights(self, dx: torch.Tensor, dy: torch.Tensor, radius_px: torch.Tensor) -> torch.Tensor:
        """Soft coverage in [0, 1] of offset (dx, dy) px (y down) by the spot of signed physical radius
        ``radius_px`` (px). Broadcasts like :meth:`coverage`; differentiable w.r.t. radius_px."""
        return self.coverage(dx, dy, self.raster_radius(radius_px))

    def kernel(self, radius_px: float, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None, half_size: int | None = None) -> torch.Tensor:
        """Unit-sum kernel [k, k] (k = 2*half_size + 1, y down) for the signed radius ``radius_px`` (px).

        The kernel is the spread of one pixel's light onto the image (scatter form); its centre is the source pixel.
        """
        h = self.half_size(radius_px) if half_size is None else int(half_size)
        if h < 0:
            raise ValueError(f"half_size must be >= 0 (the kernel is [2*half_size+1]^2); got {half_size!r}")
        if not math.isfinite(float(radius_px)):
            raise ValueError(f"radius_px must be finite (px); got {radius_px!r}")
        offs = torch.arange(-h, h + 1, dtype=dtype, device=device)
        dy, dx = torch.meshgrid(offs, offs, indexing="ij")
        w = self.weights(dx, dy, torch.tensor(float(radius_px), dtype=dtype, device=device))
        total = w.sum()
        if not float(total) > 0:
            raise ValueError(f"aperture {self.name} has zero area at radius {radius_px} px")
        return w / total

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DiskAperture(Aperture):
    """Circular aperture: coverage ``clamp(|r| + 0.5 - dist, 0, 1)`` (a one-pixel linear rim)."""

    name = "disk"

    def cache_key(self):
        return ("disk",)

    def coverage(self, dx, dy, raster_radius_px):
        dist = torch.sqrt(dx * dx + dy * dy)
        return (raster_radius_px.abs() + 0.5 - dist).clamp(0.0, 1.0)


class PolygonAperture(Aperture):
    """Regular n-blade polygon with circumradius |r|, corners at ``rotation + pi/blades`` CCW from +x (y up).

    Coverage ``clamp(apothem - max_k <v, n_k> + 0.5, 0, 1)`` with the outward edge normals n_k at angles
    ``rotation + 2*pi*k/blades``: the distance to the nearest edge line, exact inside and along the edges.
    """

    name = "polygon"

    def __init__(self, blades: int, rotation: float = 0.0) -> None:
        if isinstance(blades, bool) or not isinstance(blades, (int, np.integer)) or blades < 3:
            raise ValueError(f"blades must be an integer >= 3 (number of aperture blades); got {blades!r}")
        if not math.isfinite(float(rotation)):
            raise ValueError(f"rotation must be a finite angle in radians; got {rotation!r}")
        self.blades = int(blades)
        self.rotation = float(rotation)
        self.name = f"polygon{self.blades}"

    def cache_key(self):
        return ("polygon", self.blades, self.rotation)

    def coverage(self, dx, dy, radius_px):
        apothem = radius_px.abs() * math.cos(math.pi / self.blades)
        if dx.numel() == 1 and dy.numel() == 1:
            # one offset against a radius map (the scatter renderers): the support is a scalar per sign
            ang = [self.rotation + 2.0 * math.pi * k / self.blades for k in range(self.blades)]
            proj = [float(dx) * math.cos(a) - float(dy) * math.sin(a) for a in ang]
            support = torch.where(radius_px < 0, max(-p for p in proj), max(proj))
            cover = (apothem - support + 0.5).clamp(0.0, 1.0)
            return torch.broadcast_to(cover, torch.broadcast_shapes(dx.shape, dy.shape, radius_px.shape))
        # flip 180 degrees in front of the focal plane; y up for the angle convention
        sign = torch.where(radius_px < 0, -1.0, 1.0).to(dx.dtype)
        vx, vy = dx * sign, -dy * sign
        k = torch.arange(self.blades, dtype=dx.dtype, device=dx.device)
        angles = self.rotation + 2.0 * math.pi * k / self.blades
        proj = vx.unsqueeze(-1) * torch.cos(angles) + vy.unsqueeze(-1) * torch.sin(angles)
        support = proj.max(dim=-1).values
        return (apothem - support + 0.5).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"PolygonAperture(blades={self.blades}, rotation={self.rotation})"


class ImageAperture(Aperture):
    """User-given aperture image (2-D, >= 0), mapped onto the square [-|r|, |r|]^2 px, row 0 at the top.

    Coverage at an offset is the mean of the bilinearly sampled image over ``oversample**2`` sub-pixel positions
    (area anti-aliasing), divided by the image maximum so that a fully open pixel has coverage 1. The second moment
    is matched (:meth:`Aperture.raster_radius`) from about 0.5 px on; below, the drawn spot stays a delta until the
    image reaches the neighbouring pixels and then jumps (a 32x32 half-open image: variance 0 at r = 0.1 px, 0.003
    px^2 at 0.25 px against 0.013 asked). The bilinear sampling reaches half an image pixel beyond the square
    [-|r|, |r|]^2, so spots are held in a slightly larger square (:meth:`half_size`).
    """

    name = "image"

    def __init__(self, image: Union[torch.Tensor, np.ndarray], *, oversample: int = 4,
                 name: str = "aperture_image") -> None:
        t = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).detach()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[0] < t.shape[-1]:
            t = t[:3].float().mean(0)  # channels first -> grey
        elif t.dim() == 3 and t.shape[-1] in (1, 3, 4):
            t = t[..., :3].float().mean(-1)  # channels last -> grey
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D image [h, w] (or grey/RGB); got shape {tuple(t.shape)}")
        if t.numel() == 0 or min(t.shape) < 1:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); give a non-empty aperture image")
        t = t.to(torch.float64)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values; expected finite values >= 0")
        if (t < 0).any():
            raise ValueError(f"{name} contains negative values; expected an aperture transmission >= 0")
        if not float(t.max()) > 0:
            raise ValueError(f"{name} is all zero: an aperture needs some open (> 0) pixels")
        if isinstance(oversample, bool) or int(oversample) != oversample or oversample < 1:
            raise ValueError(f"oversample must be an int >= 1 (sub-pixel samples per axis); got {oversample!r}")
        self.image = (t / t.max()).to(torch.float32)
        self.oversample = int(oversample)

    def half_size(self, radius_px: float) -> int:
        if float(radius_px) == 0.0:
            return 0
        # zero padding: a sample is non-zero up to 1 + 1/n (n the image side) in grid units, and the sub-pixel
        # samples of a pixel reach 0.5 - 0.5/oversample px from its centre
        raster = abs(float(self.raster_radius(float(radius_px))))
        reach = raster * (1.0 + 1.0 / min(self.image.shape)) + 0.5 - 0.5 / self.oversample
        return max(kernel_half_size(radius_px), int(math.ceil(reach)) - 1)

    def coverage(self, dx, dy, radius_px):
        dx, dy, radius_px = torch.broadcast_tensors(dx, dy, radius_px)
        shape = dx.shape
        img = self.image.to(device=dx.device, dtype=dx.dtype)[None, None]
        n = self.oversample
        sub = (torch.arange(n, dtype=dx.dtype, device=dx.device) + 0.5) / n - 0.5
        r = radius_px.abs().clamp_min(1e-6)
        sign = torch.where(radius_px < 0, -1.0, 1.0).to(dx.dtype)
        # flip 180 degrees in front of the focal plane
        gx = (dx.reshape(-1, 1, 1) + sub.view(1, 1, n)) * sign.reshape(-1, 1, 1) / r.reshape(-1, 1, 1)
        gy = (dy.reshape(-1, 1, 1) + sub.view(1, n, 1)) * sign.reshape(-1, 1, 1) / r.reshape(-1, 1, 1)
        gx, gy = torch.broadcast_tensors(gx, gy)
        grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, n * n, 2)
        vals = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = vals.reshape(-1, n * n).mean(dim=-1)
        # a point-like spot (|r| < 0.5 px) falls in its own pixel whatever the shape
        tiny = (radius_px.abs() < 0.5).reshape(-1)
        centre = ((dx == 0) & (dy == 0)).reshape(-1).to(dx.dtype)
        w = torch.where(tiny, centre, w)
        return w.reshape(shape)

    def __repr__(self) -> str:
        return f"ImageAperture(shape={tuple(self.image.shape)})"


def make_aperture(spec: Union[str, Aperture, torch.Tensor, np.ndarray] = "disk", *, blades: int | None = None,
                  rotation: float = 0.0) -> Aperture:
    """Build an aperture from ``"disk"``, ``"polygon"`` (with ``blades``), ``"hexagon"``/``"pentagon"``/...,
    ``"polygon6"``, an :class:`Aperture`, or a 2-D aperture image (tensor / ndarray)."""
    if isinstance(spec, Aperture):
        return spec
    if torch.is_tensor(spec) or isinstance(spec, np.ndarray):
        return ImageAperture(spec, name="aperture")
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("disk", "disc", "circle"):
            return DiskAperture()
        named = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8}
        if s in named:
            return PolygonAperture(named[s], rotation)
        if s.startswith("polygon"):
            n = s[len("polygon"):]
            if n:
                try:
                    blades = int(n)
                except ValueError:
                    raise ValueError(f"aperture {spec!r}: expected 'polygon<N>' with an integer N") from None
            if blades is None:
                raise ValueError("aperture 'polygon' needs blades=<int >= 3>")
            return PolygonAperture(blades, rotation)
    raise ValueError(f"aperture must be 'disk', 'polygon<N>', 'hexagon' etc., an Aperture or a 2-D aperture image; "
                     f"got {spec!r}")


def disk_kernel(radius_px: float, **kw) -> torch.Tensor:
    """Unit-sum soft-rimmed disk kernel [k, k] of radius |radius_px| px."""
    return DiskAperture().kernel(radius_px, **kw)


def polygon_kernel(radius_px: float, blades: int, rotation: float = 0.0, **kw) -> torch.Tensor:
    """Unit-sum polygon kernel [k, k] (circumradius |radius_px| px; flipped 180 degrees for radius_px < 0)."""
    return PolygonAperture(blades, rotation).kernel(radius_px, **kw)
