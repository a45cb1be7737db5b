"""Aperture kernels: unit area, the right size for sub-pixel and large radii, smooth in r, orientation and flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physics.aperture import (DiskAperture, ImageAperture, PolygonAperture, disk_kernel, kernel_half_size,
                              make_aperture, polygon_kernel)


def _raw_area(ap, radius: float) -> float:
    h = kernel_half_size(radius) + 1
    offs = torch.arange(-h, h + 1, dtype=torch.float64)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    return float(ap.weights(dx, dy, torch.tensor(radius, dtype=torch.float64)).sum())


@pytest.mark.parametrize("radius", [0.2, 0.5, 1.0, 2.5, 7.3, 20.0])
def test_disk_kernel_unit_sum_and_area(radius):
    k = disk_kernel(radius, dtype=torch.float64)
    assert k.shape[-1] == 2 * kernel_half_size(radius) + 1
    assert abs(float(k.sum()) - 1.0) < 1e-12
    if radius >= 7:  # (smaller spots are drawn a little smaller than r: their second moment is what is matched)
        assert _raw_area(DiskAperture(), radius) == pytest.approx(math.pi * radius**2, rel=0.02)


def _second_moment(k: torch.Tensor) -> float:
    """Per-axis variance of a unit-sum kernel about its centroid (mean of x and y), px^2."""
    h = k.shape[-1] // 2
    offs = torch.arange(-h, h + 1, dtype=k.dtype)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    mx, my = float((k * dx).sum()), float((k * dy).sum())
    return 0.5 * (float((k * (dx * dx + dy * dy)).sum()) - mx * mx - my * my)


@pytest.mark.parametrize("aperture,coefficient", [
    (DiskAperture(), 0.25),  # disk of radius r: per-axis second moment r^2 / 4
    (PolygonAperture(6, 0.3), (1 + 2 * math.cos(math.pi / 6) ** 2) / 12),  # n-gon, circumradius r
    (PolygonAperture(5, 0.0), (1 + 2 * math.cos(math.pi / 5) ** 2) / 12),
])
@pytest.mark.parametrize("radius", [0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 3.3, 7.9, 12.0])
def test_kernel_has_the_continuous_spots_second_moment(aperture, coefficient, radius):
    # a pixel image of a defocused scene is the scene blurred by the continuous spot: its spectrum is multiplied by
    # the spot's MTF, whose curvature at zero frequency is the spot's second moment, also below one pixel
    k = aperture.kernel(radius, dtype=torch.float64)
    # beyond 8 px a closed form replaces the table: the rim's extra variance is taken as constant there (0.2%)
    assert _second_moment(k) == pytest.approx(coefficient * radius**2, rel=2e-3 if radius < 8 else 5e-3, abs=4e-4)
    assert _second_moment(aperture.kernel(-radius, dtype=torch.float64)) == pytest.approx(_second_moment(k))


@pytest.mark.parametrize("aperture", [DiskAperture(), PolygonAperture(6, 0.3), PolygonAperture(5, 0.0),
                                      PolygonAperture(3, 0.0)])  # a triangle's soft corners reach furthest
@pytest.mark.parametrize("radius", [0.05, 0.3, 0.9, 1.4, 1.6, 2.6, 6.0, 9.5])
def test_kernel_half_size_holds_the_whole_spot(aperture, radius):
    h = kernel_half_size(radius)
    wide = aperture.kernel(radius, dtype=torch.float64, half_size=h + 2)
    assert float(wide[2:-2, 2:-2].sum()) == pytest.approx(1.0, abs=1e-12)  # nothing beyond the square


@pytest.mark.parametrize("radius", [0.3, 2.0, 9.5, 30.0])
def test_image_aperture_spots_fit_in_their_half_size(radius):
    img = torch.zeros(32, 32)
    img[:16] = 1.0
    ap = ImageAperture(img)
    h = ap.half_size(radius)
    wide = ap.kernel(radius, dtype=torch.float64, half_size=h + 2)
    assert float(wide[2:-2, 2:-2].sum()) == pytest.approx(1.0, abs=1e-12)  # nothing spills beyond the square
    assert ap.kernel(radius, dtype=torch.float64).shape[-1] == 2 * h + 1


def test_spot_shrinks_to_a_delta_at_focus():
    assert disk_kernel(0.0, dtype=torch.float64).tolist() == [[1.0]]  # exactly in focus: no blur, a 1x1 kernel
    centre = [float(disk_kernel(r, dtype=torch.float64)[1, 1]) for r in (0.4, 0.2, 0.1, 0.01)]
    assert centre == sorted(centre) and 0.999 < centre[-1] < 1.0  # continuous from r = 0, blurred for any r > 0


def test_polygon_area_matches_formula():
    # regular hexagon with circumradius R: area 3*sqrt(3)/2 * R^2
    R = 12.0
    assert _raw_area(PolygonAperture(6, 0.3), R) == pytest.approx(1.5 * math.sqrt(3) * R**2, rel=0.02)


def test_kernel_varies_smoothly_with_radius():
    a, b = disk_kernel(5.0, half_size=7), disk_kernel(5.01, half_size=7)
    assert float((a - b).abs().max()) < 1e-3
    assert float((a - b).abs().max()) > 0  # and it does change (the rim is soft, so d/dr exists)


def test_polygon_orientation_behind_focus():
    # pentagon, rotation 0.3 rad: corners at 0.3 + pi/5 + 2 pi k/5 CCW from +x with y up
    ap = PolygonAperture(5, 0.3)
    R = 20.0
    corner = 0.3 + math.pi / 5
    dx, dy = 0.9 * R * math.cos(corner), -0.9 * R * math.sin(corner)  # image rows grow downwards
    w = lambda x, y, r: float(ap.weights(torch.tensor(x), torch.tensor(y), torch.tensor(r)))  # noqa: E731
    assert w(round(dx), round(dy), R) == 1.0
    # the same point lies outside the 180-degree flipped spot in front of the focal plane (apothem 0.81 R)
    assert w(round(dx), round(dy), -R) == 0.0
    # an edge midpoint direction (rotation + 2 pi k/5) just beyond the apothem is outside behind the focus
    edge = 0.3
    ex, ey = 0.88 * R * math.cos(edge), -0.88 * R * math.sin(edge)
    assert w(round(ex), round(ey), R) == 0.0
    assert w(round(ex), round(ey), -R) == 1.0


def test_polygon_kernel_flip_is_180_degree_rotation():
    k_back = polygon_kernel(9.0, 5, 0.7, dtype=torch.float64)
    k_front = polygon_kernel(-9.0, 5, 0.7, dtype=torch.float64)
    assert torch.allclose(k_front, torch.flip(k_back, dims=(0, 1)))
    assert not torch.allclose(k_front, k_back)


def test_image_aperture_orientation_and_flip():
    img = torch.zeros(32, 32)
    img[:16] = 1.0  # the top half open
    ap = ImageAperture(img)
    k = ap.kernel(8.0, dtype=torch.float64)
    c = k.shape[0] // 2
    assert float(k[:c].sum()) > 0.9  # mass above the centre row, as displayed
    kf = ap.kernel(-8.0, dtype=torch.float64)
    assert float(kf[c + 1:].sum()) > 0.9  # flipped in front of the focal plane
    assert abs(float(k.sum()) - 1.0) < 1e-9


def test_image_aperture_of_a_disk_matches_the_disk():
    n = 256
    yy, xx = torch.meshgrid((torch.arange(n) + 0.5) / n * 2 - 1, (torch.arange(n) + 0.5) / n * 2 - 1, indexing="ij")
    disk_img = ((xx**2 + yy**2) <= 1.0).float()
    k_img = ImageAperture(disk_img).kernel(10.0, dtype=torch.float64)
    k_disk = disk_kernel(10.0, dtype=torch.float64)
    assert float((k_img - k_disk).abs().sum()) < 0.05


@pytest.mark.parametrize("bad, what", [
    (torch.zeros(0, 5), "empty"),
    (torch.zeros(8, 8), "all zero"),
    (torch.full((8, 8), float("nan")), "NaN"),
    (-torch.ones(8, 8), "negative"),
    (torch.ones(2, 3, 4, 5), "2-D"),
])
def test_bad_aperture_images(bad, what):
    with pytest.raises(ValueError, match=what):
        ImageAperture(bad, name="aperture")


def test_make_aperture_specs():
    assert isinstance(make_aperture("disk"), DiskAperture)
    hexa = make_aperture("hexagon", rotation=0.2)
    assert isinstance(hexa, PolygonAperture) and hexa.blades == 6 and hexa.rotation == 0.2
    assert make_aperture("polygon7").blades == 7
    assert isinstance(make_aperture(np.ones((5, 5))), ImageAperture)
    with pytest.raises(ValueError, match="aperture"):
        make_aperture("star")
    with pytest.raises(ValueError, match="blades"):
        PolygonAperture(2)


@pytest.mark.parametrize("radius", [math.nan, math.inf])
def test_kernels_refuse_a_non_finite_radius(radius):
    with pytest.raises(ValueError, match="radius_px must be finite"):
        disk_kernel(radius)
    with pytest.raises(ValueError, match="radius_px must be finite"):
        kernel_half_size(radius)
    with pytest.raises(ValueError, match="radius_px must be finite"):
        DiskAperture().raster_radius(radius)


def test_kernel_refuses_a_negative_half_size():
    with pytest.raises(ValueError, match=r"half_size must be >= 0.*got -1"):
        disk_kernel(3.0, half_size=-1)


def test_image_aperture_refuses_zero_oversampling():
    with pytest.raises(ValueError, match="oversample must be an int >= 1.*got 0"):
        ImageAperture(torch.ones(8, 8), oversample=0)
