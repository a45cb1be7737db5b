"""Depth from bokeh: blur-radius estimation on physics-rendered stacks and the Depth-from-Bokeh-Sweep regression."""

from __future__ import annotations

import math

import kornia
import pytest
import torch
import torch.nn.functional as F

from physics.aperture import disk_kernel
from physics.dfd import (
    blur_bank,
    blur_to_radius_map,
    depth_from_aperture_pair,
    depth_from_bokeh_sweep,
    depth_from_stack,
    estimate_blur_radius,
    relative_k,
)


def _texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Band-limited random sRGB texture [1,3,H,W] (pixel noise upsampled 2x)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((1, 3, h // 2 + 1, w // 2 + 1), generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


# ---- regression ---------------------------------------------------------------------------------------------------


def test_sweep_exact_radii_recover_delta_and_depth():
    depth = torch.tensor([2.0, 3.0, 5.0, 9.0]).reshape(1, 1, 2, 2)
    focus = 1.5
    K = torch.tensor([[4.0, 8.0, 12.0]])
    delta_true = 1 / focus - 1 / depth
    radii = K[:, :, None, None, None] * delta_true[:, None]
    delta, d = depth_from_bokeh_sweep(radii, K, focus)
    assert torch.allclose(delta, delta_true, atol=1e-6)
    assert torch.allclose(d, depth, rtol=1e-5)


def test_sweep_front_of_focus_sign():
    K = torch.tensor([5.0, 10.0])
    radii = (K * (1 / 2.0 - 1.0)).abs().reshape(1, 2, 1, 1, 1)  # magnitudes
    _, d = depth_from_bokeh_sweep(radii, K, 2.0, behind_focus=False)
    assert d.item() == pytest.approx(1.0, rel=1e-5)


def test_sweep_unbiased_and_variance_falls_as_one_over_sum_k2():
    # r_i = K_i * Delta + N(0, sigma^2): Var(Delta_hat) = sigma^2 / sum K_i^2 (METHOD.md section 1)
    g = torch.Generator().manual_seed(0)
    sigma, delta_true, n_draws = 0.3, 0.2, 200_000
    for ks in ([5.0], [5.0, 10.0], [5.0, 10.0, 20.0]):
        K = torch.tensor(ks)
        r = K.reshape(1, -1, 1, 1, 1) * delta_true + sigma * torch.randn((n_draws, len(ks), 1, 1, 1), generator=g)
        delta, _ = depth_from_bokeh_sweep(r, K, 1.0, behind_focus=None)
        predicted_var = sigma**2 / float((K**2).sum())
        assert delta.mean().item() == pytest.approx(delta_true, abs=4 * math.sqrt(predicted_var / n_draws))
        assert delta.var().item() == pytest.approx(predicted_var, rel=0.02)


def test_sweep_weights_ignore_zero_weight_frame():
    K = torch.tensor([5.0, 10.0])
    r = torch.tensor([1.0, 99.0]).reshape(1, 2, 1, 1, 1)  # second frame is garbage
    w = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
    delta, _ = depth_from_bokeh_sweep(r, K, 1.0, weights=w)
    assert delta.item() == pytest.approx(0.2)


def test_sweep_beyond_infinity_clamped():
    K = torch.tensor([10.0])
    r = torch.full((1, 1, 1, 1, 1), 20.0)  # Delta = 2 > 1/s1 = 1: past infinity
    _, d = depth_from_bokeh_sweep(r, K, 1.0, max_depth_m=100.0)
    assert d.item() == pytest.approx(100.0)


def test_sweep_bad_inputs():
    r = torch.ones(1, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="K_px_m"):
        depth_from_bokeh_sweep(r, torch.tensor([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="K_px_m must be"):
        depth_from_bokeh_sweep(r, torch.tensor([1.0, 2.0, 3.0]), 1.0)
    with pytest.raises(ValueError, match="focus_m"):
        depth_from_bokeh_sweep(r, torch.tensor([1.0, 2.0]), 0.0)
    with pytest.raises(ValueError, match="radius_px"):
        depth_from_bokeh_sweep(torch.ones(1, 2, 3, 3), torch.tensor([1.0, 2.0]), 1.0)
    with pytest.raises(ValueError, match="at least one frame with K > 0"):
        depth_from_bokeh_sweep(r, torch.tensor([0.0, 0.0]), 1.0)


# ---- disk blur and radius estimation --------------------------------------------------------------------------------


def test_blur_bank_matches_direct_convolution():
    img = _texture(20, 24)
    out = blur_bank(img, [0.0, 2.5])
    assert torch.allclose(out[0], img, atol=1e-5)
    direct = kornia.filters.filter2d(img, disk_kernel(2.5)[None], border_type="reflect")
    assert torch.allclose(out[1][..., 4:-4, 4:-4], direct[..., 4:-4, 4:-4], atol=1e-5)


def test_estimate_radius_subpixel_on_uniform_blur():
    ref = _texture(64, 64, seed=1)
    lin = kornia.color.rgb_to_linear_rgb(ref)
    true = [1.6, 3.1, 4.7]
    frames = torch.stack([kornia.color.linear_rgb_to_rgb(blur_bank(lin, [r])[0]) for r in true], dim=1)
    radius = estimate_blur_radius(ref, frames, max_radius_px=6.0, step_px=0.25)
    for i, r in enumerate(true):
        err = (radius[0, i, 0, 8:-8, 8:-8] - r).abs()
        assert err.median().item() < 0.08


def test_blur_to_radius_map_is_the_bank_per_pixel_and_reads_back_as_its_radius():
    """Each pixel is the candidate blur of its own radius (exactly the bank's on the candidate grid, whatever its
    neighbours' radii), and a radius between candidates is drawn as the r^2 blend the estimator refines with, so
    estimate_blur_radius (same grid) reads a constant map back exactly."""
    lin = kornia.color.rgb_to_linear_rgb(_texture(40, 40, seed=4))
    radius = torch.full((1, 1, 1, 40, 40), 1.0)
    radius[..., 20:] = 3.0
    out = blur_to_radius_map(lin, radius, step_px=0.5)
    bank = blur_bank(lin, [1.0, 3.0])
    assert torch.allclose(out[:, 0, ..., :20], bank[0][..., :20], atol=1e-6)
    assert torch.allclose(out[:, 0, ..., 20:], bank[1][..., 20:], atol=1e-6)

    between = torch.tensor([1.3, 2.2]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 40, 40)
    frames = blur_to_radius_map(lin, between, step_px=0.5)
    read = estimate_blur_radius(lin, frames, max_radius_px=4.0, step_px=0.5, color_space="linear")
    assert read[0, 0, 0, 6:-6, 6:-6].median().item() == pytest.approx(1.3, abs=1e-3)
    assert read[0, 1, 0, 6:-6, 6:-6].median().item() == pytest.approx(2.2, abs=1e-3)

    with pytest.raises(ValueError, match="radius_px"):
        blur_to_radius_map(lin, -radius)
    with pytest.raises(ValueError, match="radius_px"):
        blur_to_radius_map(lin, radius[..., :10])


def test_confidence_low_on_textureless_high_on_texture():
    ref = _texture(48, 48, seed=2)
    ref[..., :, :24] = 0.4  # left half textureless
    lin = kornia.color.rgb_to_linear_rgb(ref)
    frame = kornia.color.linear_rgb_to_rgb(blur_bank(lin, [2.0])[0])
    _, conf = estimate_blur_radius(ref, frame[:, None], max_radius_px=5.0, return_confidence=True)
    assert conf[0, 0, 0, 8:-8, 2:12].max() < 0.05
    assert conf[0, 0, 0, 8:-8, 34:-4].median() > 0.5


def test_relative_k_quadrature():
    assert relative_k(5.0, 3.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="larger than K_reference_px_m"):
        relative_k(2.0, 3.0)


def test_aperture_pair_recovers_depth_of_blurred_plane():
    # sharp frame with its own blur r_s = K_s*Delta, wide frame r_w = K_w*Delta; pair -> Delta via K_rel
    K_s, K_w, focus, depth = 3.0, 9.0, 1.0, 2.5
    delta = 1 / focus - 1 / depth  # 0.6 -> r_s = 1.8, r_w = 5.4 px
    tex = kornia.color.rgb_to_linear_rgb(_texture(64, 64, seed=3))
    sharp = kornia.color.linear_rgb_to_rgb(blur_bank(tex, [K_s * delta])[0])
    wide = kornia.color.linear_rgb_to_rgb(blur_bank(tex, [K_w * delta])[0])
    out = depth_from_aperture_pair(sharp, wide, K_s, K_w, focus, max_radius_px=8.0)
    d = out["depth_m"][0, 0, 10:-10, 10:-10]
    assert d.median().item() == pytest.approx(depth, rel=0.02)


def test_estimate_radius_bad_inputs():
    ref = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="frames must be"):
        estimate_blur_radius(ref, torch.rand(1, 2, 3, 16, 15), max_radius_px=3)
    with pytest.raises(ValueError, match="reference must be"):
        estimate_blur_radius(torch.rand(3, 16, 16), torch.rand(1, 2, 3, 16, 16), max_radius_px=3)
    with pytest.raises(ValueError, match="max_radius_px"):
        estimate_blur_radius(ref, torch.rand(1, 1, 3, 16, 16), max_radius_px=0)
    with pytest.raises(ValueError, match="window_px"):
        estimate_blur_radius(ref, torch.rand(1, 1, 3, 16, 16), max_radius_px=3, window_px=4)
    with pytest.raises(ValueError, match="color_space"):
        estimate_blur_radius(ref, torch.rand(1, 1, 3, 16, 16), max_radius_px=3, color_space="lab")
    with pytest.raises(ValueError, match="reference_blur_ratio"):
        estimate_blur_radius(ref, torch.rand(1, 1, 3, 16, 16), max_radius_px=3, reference_blur_ratio=1.5)
    with pytest.raises(ValueError, match="confidence must be"):
        estimate_blur_radius(ref, torch.rand(1, 1, 3, 16, 16), max_radius_px=3, return_confidence=True,
                             confidence="entropy")


# ---- on physics-rendered stacks (physics.render) -------------------------------------------------------------------


def test_depth_from_stack_on_rendered_scenes():
    # procedural scenes, K = 1, 2, 4 px*m: Delta on textured pixels away from depth edges (where the fronto-parallel
    # window model holds). pyramid_radius_px=0: the renderer's reduced-resolution blur of large layers widens spots
    # by a few percent (r = 9 px reads as ~9.6), which is the renderer's approximation, not the estimator's.
    from physics.scenes import make_scene
    from physics.stacks import bokeh_stack

    errors = []
    for seed in range(4):
        s = make_scene(seed, 96, 128, p_textureless=0.2)
        img, d = s.image[None], s.depth_m[None]
        st = bokeh_stack(img, d, [1.0, 2.0, 4.0], s.focus_m, pyramid_radius_px=0.0)
        out = depth_from_stack(img, st.frames, st.K_px_m, s.focus_m)
        true_delta = 1 / s.focus_m - 1 / d
        inv = 1 / d
        k = 2 * int(float(st.coc_radius_px.abs().max()) + 5) + 1
        spread = F.max_pool2d(inv, k, 1, k // 2) + F.max_pool2d(-inv, k, 1, k // 2)
        mask = (spread < 0.02) & (out["confidence"] > 0.3)
        errors.append((out["inv_depth_offset"] - true_delta)[mask])
    err = torch.cat(errors)
    assert err.numel() > 5000
    # measured: median |error| 0.0013 1/m, mean -0.0069 1/m over ~14800 pixels (Delta spans 0-1.5 1/m here; with the
    # parabola sub-step refinement and the old renderer: 0.0084)
    assert err.abs().median().item() < 0.003
    assert abs(err.mean().item()) < 0.01


@pytest.mark.parametrize("radius", [0.25, 0.4, 0.5, 1.0, 2.0])
def test_sub_pixel_radii_are_recovered_on_a_textured_plane(radius):
    # a sub-pixel defocus blurs with variance r^2/4, so it is measurable; between candidates the estimate blends
    # the two neighbouring candidate blurs (what the renderer draws there), so it is exact on a rendered plane
    from physics.render import render_bokeh

    img = _texture(64, 64, seed=7)
    frame = render_bokeh(img, torch.full((1, 1, 64, 64), 2.0), radius / 0.5, 1.0)  # r = K (1/1 - 1/2)
    r = estimate_blur_radius(img, frame[:, None], max_radius_px=4.0)
    assert r[0, 0, 0, 8:-8, 8:-8].median().item() == pytest.approx(radius, abs=0.01)


def test_rendered_stack_noise_unbiased_and_variance_falls_with_frames():
    # fronto-parallel textured plane, Delta = 0.6 1/m, independent sensor noise per frame (noise-free reference)
    from physics.render import render_bokeh

    img = _texture(96, 96, seed=4)
    depth = torch.full((1, 1, 96, 96), 2.5)
    frame = render_bokeh(img, depth, 4.0, 1.0)[0]
    g = torch.Generator().manual_seed(0)
    variances = []
    for n in (1, 2, 4):
        frames = frame[None, None].repeat(1, n, 1, 1, 1) + 0.03 * torch.randn((1, n, 3, 96, 96), generator=g)
        r = estimate_blur_radius(img, frames, max_radius_px=6.0, reference_noise=False)
        delta, _ = depth_from_bokeh_sweep(r, torch.full((n,), 4.0), 1.0)
        inner = delta[0, 0, 10:-10, 10:-10]
        assert inner.mean().item() == pytest.approx(0.6, abs=0.005)  # unbiased
        variances.append(inner.var().item())
    # 1/sum K^2 with equal K: variance ratio 1/2 and 1/4 (windows make neighbouring errors correlated: loose bounds)
    assert 0.3 < variances[1] / variances[0] < 0.65
    assert 0.12 < variances[2] / variances[0] < 0.35


def test_depth_from_stack_in_front_of_a_far_focus():
    """Stage-2's default stack (focus 100 m, every surface in front of it): a textured plane at 1.25 m, blurred by
    r_i = K_i (1/d - 1/100) px with a disk, is recovered by the default candidate range (not the behind-focus one,
    which would stop at K/focus ~ 0.1 px)."""
    K, focus, depth = torch.tensor([2.0, 5.0, 12.0]), 100.0, 1.25
    radii = (K * (1 / depth - 1 / focus)).tolist()  # 1.58, 3.96, 9.5 px
    tex = kornia.color.rgb_to_linear_rgb(_texture(80, 80, seed=5))
    frames = torch.stack([kornia.color.linear_rgb_to_rgb(blur_bank(tex, [r])[0]) for r in radii], dim=1)
    out = depth_from_stack(kornia.color.linear_rgb_to_rgb(tex), frames, K, focus, behind_focus=False, min_depth_m=0.5)
    d = out["depth_m"][0, 0, 16:-16, 16:-16]
    assert d.median().item() == pytest.approx(depth, rel=0.05)
    with pytest.raises(ValueError, match="min_depth_m"):
        depth_from_stack(tex, frames, K, focus, behind_focus=False, min_depth_m=200.0)


# ---------------------------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("which", ["reference", "frames"])
def test_estimate_blur_radius_refuses_nan_images(which):
    ref, frames = torch.rand(1, 3, 16, 16), torch.rand(1, 2, 3, 16, 16)
    if which == "reference":
        ref[0, 0, 3, 3] = math.nan
    else:
        frames[0, 1, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match=f"{which} contains NaN or infinite values"):
        estimate_blur_radius(ref, frames, max_radius_px=2.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"step_px": math.inf}, "step_px must be a finite number > 0; got inf"),
    ({"window_px": 4}, "window_px must be a positive odd integer; got 4"),
    ({"noise_floor": -1.0}, "noise_floor must be a finite number >= 0; got -1.0"),
])
def test_estimate_blur_radius_refuses_bad_options(kwargs, words):
    with pytest.raises(ValueError, match=words):
        estimate_blur_radius(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 3, 16, 16), max_radius_px=2.0, **kwargs)


def test_estimate_blur_radius_refuses_an_empty_stack_and_0_255_images():
    ref = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"frames is empty \(shape \(1, 0, 3, 16, 16\)\)"):
        estimate_blur_radius(ref, torch.rand(1, 0, 3, 16, 16), max_radius_px=2.0)
    with pytest.raises(ValueError, match=r"reference values span .*expected sRGB in \[0, 1\]"):
        estimate_blur_radius(ref * 255, torch.rand(1, 2, 3, 16, 16) * 255, max_radius_px=2.0)
    with pytest.raises(ValueError, match="reference must be a torch.Tensor"):
        estimate_blur_radius(ref.numpy(), torch.rand(1, 2, 3, 16, 16), max_radius_px=2.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"radius_px": torch.full((1, 2, 1, 4, 4), math.nan)}, "radius_px contains NaN or infinite values"),
    ({"weights": -torch.ones(1, 2, 1, 4, 4)}, "weights contains negative values"),
    ({"weights": torch.full((1, 2, 1, 4, 4), math.nan)}, "weights contains NaN or infinite values"),
    ({"max_depth_m": 0.0}, "max_depth_m must be a finite number > 0; got 0.0"),
    ({"max_depth_m": math.nan}, "max_depth_m must be a finite number > 0; got nan"),
])
def test_depth_from_bokeh_sweep_refuses_bad_inputs(kwargs, words):
    args = {"radius_px": torch.ones(1, 2, 1, 4, 4), "K_px_m": torch.ones(2), "focus_m": 1.0, **kwargs}
    with pytest.raises(ValueError, match=words):
        depth_from_bokeh_sweep(args.pop("radius_px"), args.pop("K_px_m"), args.pop("focus_m"), **args)


def test_depth_from_stack_names_a_nan_strength_not_the_candidate_range():
    with pytest.raises(ValueError, match="K_px_m contains NaN or infinite values"):
        depth_from_stack(torch.rand(1, 3, 16, 16), torch.rand(1, 2, 3, 16, 16), torch.tensor([1.0, math.nan]), 1.0)


def test_depth_from_aperture_pair_refuses_a_wide_frame_of_another_shape():
    from physics.dfd import depth_from_aperture_pair

    with pytest.raises(ValueError, match=r"wide must be a tensor \[B,3,H,W\] of the shape of sharp"):
        depth_from_aperture_pair(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8), 1.0, 2.0, 1.0, max_radius_px=2.0)


def test_blur_bank_refuses_no_radii_and_non_finite_radii():
    with pytest.raises(ValueError, match="radii_px must be one or more finite radii"):
        blur_bank(torch.rand(1, 3, 8, 8), [])
    with pytest.raises(ValueError, match="radii_px must be one or more finite radii"):
        blur_bank(torch.rand(1, 3, 8, 8), [math.nan])
    with pytest.raises(ValueError, match=r"image must be \[B,C,H,W\]; got \(3, 8, 8\)"):
        blur_bank(torch.rand(3, 8, 8), [1.0])
