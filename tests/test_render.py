"""Renderers against the thin-lens formula, the exact scatter, flux conservation, occlusion and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from physics.aperture import PolygonAperture
from physics.render import (highlight_boost, layer_radii, render_bokeh, render_exact_reference,
                            render_scatter_bokehme)


def _texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth multi-scale colour noise in [0, 1], [1,3,h,w]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, h, w)
    for scale in (3, 8, 24):
        n = torch.rand(1, 3, max(2, h // scale), max(2, w // scale), generator=g)
        img += F.interpolate(n, size=(h, w), mode="bicubic", align_corners=False) / 3
    return img.clamp(0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def _point_light(size: int, depth: float, value: float = 1.0):
    img = torch.zeros(1, 3, size, size)
    img[:, :, size // 2, size // 2] = value
    return img, torch.full((1, 1, size, size), depth)


def _ball_radius(out: torch.Tensor, expected: float) -> float:
    """Radius from the ball's area = flux / plateau (plateau: mean over the inner half of the expected disk)."""
    ch = out[0, 0].double()
    n = ch.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    dist = torch.sqrt((yy**2 + xx**2).double())
    plateau = ch[dist <= max(0.5, 0.5 * abs(expected))].mean()
    return math.sqrt(float(ch.sum() / plateau) / math.pi)


# K (px*m), focus (m), depth (m): behind and in front of the focal plane, small and large radii
BALLS = [(20.0, 2.0, 4.0), (20.0, 2.0, 1.2), (40.0, 1.5, 8.0), (30.0, 3.0, 1.0), (10.0, 2.0, 3.0), (8.0, 2.0, 1.6)]


@pytest.mark.parametrize("K, focus, depth", BALLS)
def test_point_light_radius_matches_thin_lens(K, focus, depth):
    expected = K * abs(1 / focus - 1 / depth)
    img, d = _point_light(72, depth)
    out = render_bokeh(img, d, K, focus, color_space="linear")
    assert abs(_ball_radius(out, expected) - expected) < 0.5
    assert float(out.sum() / img.sum()) == pytest.approx(1.0, abs=1e-4)


def test_point_light_radius_exact_reference():
    K, focus, depth = 30.0, 3.0, 1.0
    expected = K * abs(1 / focus - 1 / depth)
    img, d = _point_light(56, depth)
    out = render_exact_reference(img, d, K, focus, color_space="linear")
    assert abs(_ball_radius(out, expected) - expected) < 0.5


def test_polygon_ball_orientation_and_flip():
    # pentagon, corners at 0.3 + pi/5 + 2 pi k/5 (CCW from +x, y up) behind the focal plane, rotated 180 deg in front:
    # the ball's 5-fold angular moment sum I * rho^2 * cos(5 (theta - corner)) is > 0 behind and < 0 in front
    K, focus = 30.0, 2.0
    corner = 0.3 + math.pi / 5
    for depth, sign in ((6.0, 1.0), (1.2, -1.0)):
        r = K * abs(1 / focus - 1 / depth)
        img, d = _point_light(64, depth)
        out = render_bokeh(img, d, K, focus, aperture=PolygonAperture(5, 0.3), color_space="linear")[0, 0].double()
        yy, xx = torch.meshgrid(torch.arange(64.0) - 32, torch.arange(64.0) - 32, indexing="ij")
        theta = torch.atan2(-yy, xx)
        rho2 = (xx**2 + yy**2).double()
        m5 = float((out * rho2 * torch.cos(5 * (theta - corner))).sum() / (out * rho2).sum())
        assert sign * m5 > 0.05, (depth, m5)
        assert abs(_ball_radius(out[None, None], r) - r) < 0.5 * r  # a ball of about the right size


def test_flux_conserved_constant_depth():
    img = torch.zeros(1, 3, 64, 64)
    img[:, :, 16:48, 16:48] = _texture(32, 32)  # black margin wider than the blur: no flux leaves the frame
    d = torch.full((1, 1, 64, 64), 5.0)
    out = render_bokeh(img, d, 25.0, 2.0, color_space="linear")  # r = 7.5 px
    assert torch.allclose(out.sum(dim=(-2, -1)), img.sum(dim=(-2, -1)), rtol=1e-4)
    assert float((out - img).abs().max()) > 0.05  # it did blur


def _slanted_plane(h: int, w: int, K: float, focus: float, rmax: float) -> torch.Tensor:
    yy = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    inv = 1 / focus - (rmax / K) * (0.75 * yy + 0.25 * xx)  # 1/depth linear in x, y: r from -rmax to rmax
    return (1 / inv).expand(1, 1, h, w).contiguous()


@pytest.mark.parametrize("aperture", ["disk", "hexagon"])
def test_matches_exact_reference_on_occlusion_free_scenes(aperture):
    img = _texture(64, 64, seed=1)
    K, focus = 20.0, 2.0
    plane = _slanted_plane(64, 64, K, focus, rmax=8.0)
    ref = render_exact_reference(img, plane, K, focus, aperture=aperture)
    out = render_bokeh(img, plane, K, focus, aperture=aperture)
    assert _psnr(out, ref) >= 35.0
    assert _psnr(img, ref) < 30.0  # the comparison is not trivial: the blur is strong
    const = torch.full((1, 1, 64, 64), 3.0)
    ref_c = render_exact_reference(img, const, K, focus, aperture=aperture)
    assert _psnr(render_bokeh(img, const, K, focus, aperture=aperture), ref_c) >= 35.0


def _edge_scene(fg_depth: float, bg_depth: float):
    """Blue square (fg) over a red textured background; returns image, depth and the fg mask."""
    img = torch.zeros(1, 3, 64, 64)
    img[:, 0] = 0.5 + 0.5 * _texture(64, 64, seed=3)[:, 0]
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., 20:44, 20:44] = True
    img = torch.where(mask, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1), img)
    depth = torch.where(mask, torch.tensor(fg_depth), torch.tensor(bg_depth))
    return img, depth, mask


def test_sharp_foreground_stays_sharp_over_blurred_background():
    img, depth, mask = _edge_scene(fg_depth=2.0, bg_depth=10.0)  # focus 2 m: r_bg = 30*(0.5-0.1) = 12 px
    K, focus = 30.0, 2.0
    ours = render_bokeh(img, depth, K, focus, color_space="linear")
    inner = mask.clone()
    inner[..., 21:43, 21:43] = False  # the one-pixel ring just inside the foreground edge
    leak_ours = float(ours[:, 0:1][inner].mean())
    leak_scatter = float(render_scatter_bokehme(img, depth, K, focus, color_space="linear")[:, 0:1][inner].mean())
    assert leak_ours < 0.01  # no red bleeding over the sharp blue square
    assert leak_scatter > 0.1  # while the order-free scatter bleeds (the test can fail)
    assert torch.allclose(ours[:, 2:3][mask], torch.ones(1), atol=1e-3)
    assert float((ours - img)[:, 0:1][~mask].abs().mean()) > 0.02  # the background is blurred


def test_blurred_foreground_veils_sharp_background():
    img, depth, mask = _edge_scene(fg_depth=1.0, bg_depth=2.0)  # focus 2 m: r_fg = -30*0.5 = -15 px... K=16 -> 8
    K, focus = 16.0, 2.0
    ours = render_bokeh(img, depth, K, focus, color_space="linear")
    ring = torch.zeros_like(mask)
    ring[..., 17:47, 17:47] = True
    ring &= ~mask  # 1-3 px outside the foreground square
    blue_out = float(ours[:, 2:3][ring].mean())
    assert blue_out > 0.15  # the blurred blue foreground spills over the sharp background (partial occlusion)
    far = torch.zeros_like(mask)
    far[..., :8, :8] = True  # background far from the foreground: sharp, untouched
    assert torch.allclose(ours[:, :, far[0, 0]], img[:, :, far[0, 0]], atol=1e-4)


def _fd_check(fn, x0: torch.Tensor, eps: float = 1e-6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    x = x0.clone().requires_grad_(True)
    fn(x).backward()
    analytic = float((x.grad * v).sum())
    numeric = float((fn(x0 + eps * v) - fn(x0 - eps * v)) / (2 * eps))
    assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-7)
    assert abs(analytic) > 1e-6  # a non-trivial gradient


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    h = w = 24
    img = 0.05 + 0.9 * _texture(h, w, seed=5).double()  # off the clamp kinks at 0 and 1
    depth = _slanted_plane(h, w, 12.0, 2.0, rmax=5.0).double()
    depth = depth * (1 + 0.1 * torch.rand(1, 1, h, w, dtype=torch.float64))  # rough: occlusions and layer splits
    depth[..., 8:16, 8:16] = 1.3  # an occluding foreground square
    K, focus = torch.tensor([12.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    weight = torch.rand(1, 3, h, w, dtype=torch.float64)

    def loss(im, de, k, f):
        return (render_bokeh(im, de, k, f, aperture="hexagon") * weight).sum()

    _fd_check(lambda x: loss(x, depth, K, focus), img)
    _fd_check(lambda x: loss(img, x, K, focus), depth, eps=1e-7)
    _fd_check(lambda x: loss(img, depth, x, focus), K)
    _fd_check(lambda x: loss(img, depth, K, x), focus)


def test_exact_reference_gradients():
    img = 0.05 + 0.9 * _texture(16, 16, seed=2).double()  # off the clamp kinks at 0 and 1
    # random depths: the soft rim is piecewise linear in r, keep the radii off its kinks
    depth = 1 / (0.5 + 0.25 * (torch.rand(1, 1, 16, 16, dtype=torch.float64) - 0.5))
    weight = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    _fd_check(lambda x: (render_exact_reference(img, depth, x, 2.0) * weight).sum(),
              torch.tensor([10.37], dtype=torch.float64), eps=1e-8)
    _fd_check(lambda x: (render_exact_reference(x, depth, 10.37, 2.0) * weight).sum(), img)


def test_batch_equals_per_item_loop():
    img = torch.cat([_texture(40, 48, seed=s) for s in (0, 1)])
    depth = torch.cat([_slanted_plane(40, 48, 15.0, 2.0, 6.0), torch.full((1, 1, 40, 48), 0.8)])
    K = torch.tensor([15.0, 6.0])
    focus = torch.tensor([2.0, 1.5])
    batched = render_bokeh(img, depth, K, focus, aperture="hexagon")
    for i in range(2):
        single = render_bokeh(img[i:i + 1], depth[i:i + 1], float(K[i]), float(focus[i]), aperture="hexagon")
        assert torch.allclose(batched[i:i + 1], single, atol=1e-5)


def test_unbatched_input_and_radius_map():
    img = _texture(32, 32)[0]
    depth = torch.full((1, 32, 32), 4.0)
    out, radius = render_bokeh(img, depth, 10.0, 2.0, return_radius=True)
    assert out.shape == (3, 32, 32) and radius.shape == (1, 32, 32)
    assert torch.allclose(radius, torch.full_like(radius, 10.0 * (1 / 2.0 - 1 / 4.0)))


def test_in_focus_is_identity_in_srgb():
    img = _texture(32, 32)
    depth = torch.full((1, 1, 32, 32), 2.0)
    assert torch.allclose(render_bokeh(img, depth, 30.0, 2.0), img, atol=1e-5)
    assert torch.allclose(render_bokeh(img, depth * 1.5, 0.0, 2.0), img, atol=1e-5)  # K = 0: a pinhole


def test_highlight_boost_raises_flux_of_bright_pixels_only():
    img, d = _point_light(48, 4.0)
    plain = render_bokeh(img, d, 20.0, 2.0, color_space="linear")
    boosted = render_bokeh(img, d, 20.0, 2.0, color_space="linear", highlight_gain=3.0)
    assert float(boosted.sum()) == pytest.approx(4.0 * float(plain.sum()), rel=1e-4)
    dark = torch.full((1, 3, 8, 8), 0.3)
    assert torch.equal(highlight_boost(dark, 3.0), dark)
    with pytest.raises(ValueError, match="highlight_gain"):
        render_bokeh(img, d, 20.0, 2.0, highlight_gain=-1.0)


def test_bokehme_scatter_ball_and_normalisation():
    K, focus, depth = 20.0, 2.0, 4.0
    img, d = _point_light(48, depth)
    out = render_scatter_bokehme(img, d, K, focus, color_space="linear", gamma=1.0)
    r = K * (1 / focus - 1 / depth)
    assert abs(_ball_radius(out, r) - r) < 0.5
    flat = torch.full((1, 3, 24, 24), 0.4)
    out = render_scatter_bokehme(flat, _slanted_plane(24, 24, K, focus, 6.0), K, focus)
    assert torch.allclose(out, flat, atol=1e-5)  # normalised: a flat image stays flat


def test_layer_radii_cover_the_range():
    radii = layer_radii(30.0, 1.2)
    assert radii[:3] == [0.0, 0.25, 0.5] and radii[-1] >= 30.0 and radii[-2] < 30.0  # from the in-focus layer
    assert all(b - a <= 0.25 + 1e-9 or b / a <= 1.2 + 1e-9 for a, b in zip(radii, radii[1:]))  # fine steps
    with pytest.raises(ValueError, match="layer_ratio"):
        layer_radii(10.0, 1.0)


def _impulse_second_moment(out: torch.Tensor) -> float:
    """Per-axis variance (px^2) about the centroid of a rendered point light [1,3,H,W] (linear, first channel)."""
    ch = out[0, 0].double()
    ch = ch / ch.sum()
    n = ch.shape[-1]
    offs = torch.arange(n, dtype=torch.float64)
    yy, xx = torch.meshgrid(offs, offs, indexing="ij")
    my, mx = float((ch * yy).sum()), float((ch * xx).sum())
    return 0.5 * float((ch * ((yy - my) ** 2 + (xx - mx) ** 2)).sum())


@pytest.mark.parametrize("radius", [0.1, 0.3, 0.6, 0.9, 1.3, 1.7, 2.6, 4.1])
@pytest.mark.parametrize("renderer", ["layered", "exact"])
def test_a_point_light_spreads_with_the_disks_second_moment(radius, renderer):
    # a pixel image of a point light defocused by a disk of radius r has the disk's second moment r^2/4 per axis,
    # also below one pixel (a sensor integrates the spot's light over each pixel; the blur does not stop at 0.5 px).
    # The layered renderer blends two layer kernels in between its layer radii and must keep that moment too.
    n, focus, depth = 25, 1.0, 2.0
    img = torch.zeros(1, 3, n, n, dtype=torch.float64)
    img[:, :, n // 2, n // 2] = 1.0
    d = torch.full((1, 1, n, n), depth, dtype=torch.float64)
    K = radius / (1 / focus - 1 / depth)
    render = render_bokeh if renderer == "layered" else render_exact_reference
    kw = {"pyramid_radius_px": 0.0} if renderer == "layered" else {}
    out = render(img, d, K, focus, color_space="linear", **kw)
    assert _impulse_second_moment(out) == pytest.approx(radius**2 / 4, rel=0.01, abs=2e-4)


def test_in_focus_pixels_stay_exactly_sharp_and_any_defocus_blurs():
    img = _texture(24, 24, seed=5)
    d = torch.full((1, 1, 24, 24), 2.0)
    assert torch.allclose(render_bokeh(img, d, 5.0, 2.0), img, atol=1e-6)  # r = 0 everywhere: the image itself
    slightly = render_bokeh(img, d, 3.0, 2.5)  # r = 3 (1/2.5 - 1/2) = -0.3 px
    assert float((slightly - img).abs().mean()) > 2e-4  # 5.3e-4 measured on this smooth texture: blurred a little


RENDERERS = [render_bokeh, render_exact_reference, render_scatter_bokehme]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_bad_inputs(renderer):
    img = torch.rand(1, 3, 16, 16)
    depth = torch.full((1, 1, 16, 16), 2.0)
    bad_depths = {"NaN": depth.clone().index_fill_(-1, torch.tensor([3]), float("nan")),
                  "zero or negative": depth.clone().index_fill_(-1, torch.tensor([3]), 0.0)}
    bad_depths["negative"] = -depth
    for what, bad in bad_depths.items():
        with pytest.raises(ValueError, match="depth_m"):
            renderer(img, bad, 10.0, 2.0)
    with pytest.raises(ValueError, match="depth_m.*size"):
        renderer(img, torch.full((1, 1, 16, 12), 2.0), 10.0, 2.0)
    with pytest.raises(ValueError, match="K_px_m"):
        renderer(img, depth, -1.0, 2.0)
    with pytest.raises(ValueError, match="focus_m"):
        renderer(img, depth, 10.0, 0.0)
    with pytest.raises(ValueError, match="focus_m.*focal length"):
        renderer(img, depth, 10.0, 0.04, f_mm=50.0)
    with pytest.raises(ValueError, match="image"):
        renderer(torch.rand(1, 4, 16, 16), depth, 10.0, 2.0)
    with pytest.raises(ValueError, match="color_space"):
        renderer(img, depth, 10.0, 2.0, color_space="xyz")
    with pytest.raises(ValueError, match="K_px_m"):
        renderer(img, depth, torch.tensor([1.0, 2.0, 3.0]), 2.0)


def test_bad_aperture_image_in_renderer():
    img = torch.rand(1, 3, 16, 16)
    depth = torch.full((1, 1, 16, 16), 3.0)
    with pytest.raises(ValueError, match="aperture"):
        render_bokeh(img, depth, 10.0, 2.0, aperture=torch.zeros(8, 8))
    with pytest.raises(ValueError, match="aperture"):
        render_exact_reference(img, depth, 10.0, 2.0, aperture=torch.zeros(0, 8))


# ------------------------------------------------------------------------------ the renderer driven by a radius map
def test_radius_map_renderer_is_render_bokeh_given_the_thin_lens_radius():
    """render_radius_map(img, r) with r = K (1/focus - 1/depth) is render_bokeh(img, depth, K, focus) bit for bit,
    both sides of the focal plane and per-sample K."""
    from physics.camera import signed_coc_radius_px
    from physics.render import render_radius_map

    img = torch.cat([_texture(40, 48, seed=s) for s in (0, 1)])
    depth = torch.cat([_slanted_plane(40, 48, 15.0, 2.0, 6.0), torch.full((1, 1, 40, 48), 0.8)])
    depth[1, :, 10:20, 12:30] = 5.0  # behind the focal plane next to a region in front of it
    K, focus = torch.tensor([15.0, 6.0]), torch.tensor([2.0, 1.5])
    expected = render_bokeh(img, depth, K, focus, aperture="hexagon")
    got = render_radius_map(img, signed_coc_radius_px(depth, K, focus), aperture="hexagon")
    assert torch.equal(got, expected)


def test_radius_map_renderer_gradient_matches_finite_differences():
    from physics.render import render_radius_map

    g = torch.Generator().manual_seed(4)
    img = 0.05 + 0.9 * _texture(20, 20, seed=7).double()
    radius = -(1.0 + 4.0 * torch.rand(1, 1, 20, 20, generator=g, dtype=torch.float64))  # 1-5 px, in front
    weight = torch.rand(1, 3, 20, 20, generator=g, dtype=torch.float64)
    _fd_check(lambda r: (render_radius_map(img, r) * weight).sum(), radius, eps=1e-7)


@pytest.mark.parametrize("radius, match", [(torch.zeros(1, 1, 8, 9), r"radius_px must be a tensor \[B,1,H,W\]"),
                                           (torch.full((1, 1, 8, 8), float("nan")), "NaN")])
def test_radius_map_renderer_refuses_a_bad_radius_map(radius, match):
    from physics.render import render_radius_map

    with pytest.raises(ValueError, match=match):
        render_radius_map(torch.rand(1, 3, 8, 8), radius)


def test_a_blur_wider_than_twice_the_image_is_refused_naming_radius_and_limit():
    """r = K |1/focus - 1/depth| = K / 2 px for a plane at 2 m focused at 1 m: K 64 on a 16-px image reaches the
    2x-image-side limit (32 px) and renders; K 100 (50 px) is refused, the message naming radius, limit and K."""
    from physics.render import render_radius_map

    img, depth = torch.rand(1, 3, 16, 16), torch.full((1, 1, 16, 16), 2.0)
    out = render_bokeh(img, depth, 64.0, 1.0)
    assert torch.isfinite(out).all() and out.shape == img.shape
    with pytest.raises(ValueError, match=r"blur radius up to 50 px .* limit 32 px.*check K"):
        render_bokeh(img, depth, 100.0, 1.0)
    with pytest.raises(ValueError, match="limit 32 px"):
        render_radius_map(img, torch.full((1, 1, 16, 16), -40.0))


def test_check_blur_radius_is_the_thin_lens_maximum_over_the_depth_range():
    """K max |1/focus - 1/depth| over [0.5, 10] m at focus 1 m: 10 x |1 - 2| = 10 px (the near end wins), under the
    16-px limit of an 8x8 image; 20 px*m (20 px) is refused naming the option it came from."""
    from physics.render import check_blur_radius

    assert check_blur_radius(10.0, 1.0, 0.5, 10.0, 8, 8) == pytest.approx(10.0)
    assert check_blur_radius(8.0, 0.5, 0.5, 10.0, 8, 8) == pytest.approx(8.0 * (2 - 0.1))  # the far end wins
    with pytest.raises(ValueError, match=r"--K 20 px\*m gives a blur radius of 20 px .* limit of 16 px"):
        check_blur_radius(20.0, 1.0, 0.5, 10.0, 8, 8, name="--K")


# ---------------------------------------------------------------------------------------------- input validation


def _small(b: int = 1, h: int = 8):
    return torch.rand(b, 3, h, h), torch.full((b, 1, h, h), 2.0)


@pytest.mark.parametrize("scale, shift, span", [(255.0, 0.0, "0..255"), (2.0, -1.0, "[-1, 1]")])
@pytest.mark.parametrize("renderer", ["bokeh", "exact", "radius_map"])
def test_srgb_image_far_outside_0_1_is_refused(scale, shift, span, renderer):
    from physics.render import render_radius_map

    img, d = _small()
    bad = img * scale + shift
    call = {"bokeh": lambda: render_bokeh(bad, d, 2.0, 1.0),
            "exact": lambda: render_exact_reference(bad, d, 2.0, 1.0),
            "radius_map": lambda: render_radius_map(bad, torch.ones(1, 1, 8, 8))}[renderer]
    with pytest.raises(ValueError, match=r"image values span .*expected sRGB in \[0, 1\]") as info:
        call()
    assert span in str(info.value)


def test_linear_image_above_one_and_srgb_slightly_outside_are_accepted():
    img, d = _small()
    assert torch.isfinite(render_bokeh(img * 20.0, d, 2.0, 1.0, color_space="linear")).all()  # HDR linear light
    assert torch.isfinite(render_bokeh(img * 1.1 - 0.05, d, 2.0, 1.0)).all()  # resampling overshoot


@pytest.mark.parametrize("kwargs, words", [
    ({"layer_ratio": math.inf}, "layer_ratio must be a finite number > 1; got inf"),
    ({"layer_ratio": 1.0}, "layer_ratio must be a finite number > 1"),
    ({"pyramid_radius_px": math.nan}, "pyramid_radius_px must be a finite number >= 0"),
    ({"pyramid_radius_px": -1.0}, "pyramid_radius_px must be a finite number >= 0"),
])
def test_render_bokeh_refuses_bad_layer_options(kwargs, words):
    from physics.render import render_radius_map

    img, d = _small()
    with pytest.raises(ValueError, match=words):
        render_bokeh(img, d, 20.0, 1.0, **kwargs)
    with pytest.raises(ValueError, match=words):
        render_radius_map(img, torch.full((1, 1, 8, 8), 4.0), **kwargs)


@pytest.mark.parametrize("renderer", [render_exact_reference, render_scatter_bokehme])
def test_scatter_renderers_refuse_zero_offsets_per_chunk(renderer):
    img, d = _small()
    with pytest.raises(ValueError, match="offsets_per_chunk must be an int >= 1; got 0"):
        renderer(img, d, 2.0, 1.0, offsets_per_chunk=0)


@pytest.mark.parametrize("args, words", [
    ((-2.0, 1.0, 0.5, 10.0, 8, 8), "--K must be >= 0, got -2"),
    ((math.nan, 1.0, 0.5, 10.0, 8, 8), "--K is not finite"),
    ((2.0, 0.0, 0.5, 10.0, 8, 8), "focus_m must be > 0, got 0"),
    ((2.0, 1.0, 0.0, 10.0, 8, 8), "depth_min_m must be > 0, got 0"),
    ((2.0, 1.0, 0.5, -1.0, 8, 8), "depth_max_m must be > 0, got -1"),
    ((2.0, 1.0, 0.5, 10.0, 0, 8), "height must be an image size in px"),
])
def test_check_blur_radius_refuses_bad_inputs(args, words):
    from physics.render import check_blur_radius

    with pytest.raises(ValueError, match=words):
        check_blur_radius(*args)


@pytest.mark.parametrize("radius", [math.nan, math.inf, -1.0])
def test_layer_radii_refuses_a_non_finite_or_negative_radius(radius):
    with pytest.raises(ValueError, match="max_radius_px must be a finite number >= 0"):
        layer_radii(radius)


def test_highlight_boost_refuses_an_unbatched_image():
    with pytest.raises(ValueError, match=r"linear_rgb must be a tensor \[B,3,H,W\].*got \(3, 8, 8\)"):
        highlight_boost(torch.rand(3, 8, 8), 1.0)
