"""Focus fitting through the renderer, registration (phase correlation, Fourier shift) and exposure gain."""

from __future__ import annotations

import pytest
import torch

from physics.focus_fit import apply_gain, exposure_gain, fit_focus, phase_correlation, psnr_db, shift_image
from physics.render import render_bokeh
from physics.scenes import make_scene


@pytest.fixture(scope="module")
def scene():
    s = make_scene(4, 48, 64, p_textureless=0.1)  # depths 0.71-2.7 m
    return s.image[None], s.depth_m[None]


@pytest.mark.parametrize("focus_m", [0.5, 1.3, 8.0])  # in front of, inside and beyond the scene's depth range
def test_fit_focus_with_known_k(scene, focus_m):
    image, depth = scene
    observed = render_bokeh(image, depth, 3.0, focus_m)
    fit = fit_focus(image, depth, observed, K_px_m=3.0, steps=15, register=False, max_radius_px=12,
                    grid_focus=24)
    assert fit.focus_m == pytest.approx(focus_m, rel=0.01)
    assert fit.psnr_db > 50


def test_fit_focus_and_k(scene):
    image, depth = scene
    observed = render_bokeh(image, depth, 2.0, 1.3)
    fit = fit_focus(image, depth, observed, K_px_m=None, steps=25, register=False, max_radius_px=12,
                    grid_focus=16, grid_k=8)
    assert fit.focus_m == pytest.approx(1.3, rel=0.02)
    assert fit.K_px_m == pytest.approx(2.0, rel=0.03)


def test_fit_focus_with_shift_and_exposure(scene):
    image, depth = scene
    observed = render_bokeh(image, depth, 3.0, 1.0)
    observed = apply_gain(shift_image(observed, 1.25, -0.5), torch.tensor([0.9]))
    fit = fit_focus(image, depth, observed, K_px_m=3.0, steps=15, register=True, max_radius_px=12, grid_focus=24)
    assert fit.shift_px[0] == pytest.approx(-1.25, abs=0.15) and fit.shift_px[1] == pytest.approx(0.5, abs=0.15)
    assert fit.gain == pytest.approx(0.9, rel=0.03)  # the gain that maps the render onto the photo
    assert fit.focus_m == pytest.approx(1.0, rel=0.03)


def test_phase_correlation_recovers_subpixel_shift(scene):
    image, _ = scene
    moved = shift_image(image.double(), -2.3, 1.6)
    d = phase_correlation(image.double(), moved)[0]
    assert d[0].item() == pytest.approx(2.3, abs=0.05) and d[1].item() == pytest.approx(-1.6, abs=0.05)


def test_shift_image_integer_shift_moves_content(scene):
    image, _ = scene
    out = shift_image(image.double(), 2.0, 3.0)
    assert torch.allclose(out[..., 2:, 3:], image.double()[..., :-2, :-3], atol=1e-9)


def test_exposure_gain_closed_form(scene):
    image, _ = scene
    darker = apply_gain(image, torch.tensor([0.8]))
    g = exposure_gain(image, darker)
    assert g.item() == pytest.approx(0.8, rel=0.01)
    assert psnr_db(apply_gain(image, g), darker) > 45


def test_fit_focus_bad_inputs(scene):
    image, depth = scene
    with pytest.raises(ValueError, match="observed"):
        fit_focus(image, depth, image[..., :-1], K_px_m=1.0)
    with pytest.raises(ValueError, match="depth_m contains zero"):
        fit_focus(image, depth * 0, image, K_px_m=1.0)
    with pytest.raises(ValueError, match="K_px_m must be > 0"):
        fit_focus(image, depth, image, K_px_m=0.0)
    with pytest.raises(ValueError, match="focus_range_m"):
        fit_focus(image, depth, image, K_px_m=1.0, focus_range_m=(2.0, 1.0))
    with pytest.raises(ValueError, match="optimizer"):
        fit_focus(image, depth, image, K_px_m=1.0, optimizer="sgd", steps=1, grid_focus=2, register=False)
    with pytest.raises(ValueError, match="max_radius_px"):
        fit_focus(image, depth, image, K_px_m=1000.0, register=False)


# ---------------------------------------------------------------------------------------------- input validation


def _fit_inputs():
    return torch.rand(1, 3, 16, 16), torch.full((1, 1, 16, 16), 2.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"focus_range_m": (0.2, float("inf"))}, r"focus_range_m must be \(near, far\) with 0 < lo < hi, both finite"),
    ({"K_range": (0.2, float("inf"))}, r"K_range must be \(lo, hi\) with 0 < lo < hi, both finite"),
    ({"grid_scale": 0.0}, "grid_scale must be a finite number > 0; got 0.0"),
    ({"grid_focus": 0}, "grid_focus must be an int >= 1; got 0"),
    ({"grid_batch": 0}, "grid_batch must be an int >= 1; got 0"),
    ({"crop_px": -1}, "crop_px must be an int >= 0; got -1"),
    ({"steps": -1}, "steps must be an int >= 0; got -1"),
    ({"max_radius_px": float("nan")}, r"max_radius_px must be a number > 0 \(px\); got nan"),
])
def test_fit_focus_refuses_bad_options(kwargs, words):
    sharp, depth = _fit_inputs()
    with pytest.raises(ValueError, match=words):
        fit_focus(sharp, depth, sharp, **{"steps": 0, "grid_focus": 4, "grid_k": 2, "crop_px": 2, **kwargs})


def test_fit_focus_refuses_a_nan_or_0_255_photo_and_an_unbatched_depth():
    sharp, depth = _fit_inputs()
    bad = sharp.clone()
    bad[0, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="observed contains NaN or infinite values"):
        fit_focus(sharp, depth, bad, steps=0)
    with pytest.raises(ValueError, match=r"observed values span .*expected sRGB in \[0, 1\]"):
        fit_focus(sharp, depth, sharp * 255, steps=0)
    with pytest.raises(ValueError, match=r"depth_m must have shape \[1,1,H,W\] to match sharp"):
        fit_focus(sharp, depth[0, 0], sharp, steps=0)


def test_registration_and_metrics_refuse_bad_shapes():
    img = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"reference must have shape \[B,C,H,W\] or \[C,H,W\]"):
        phase_correlation(img[0, 0], img[0, 0])
    with pytest.raises(ValueError, match="reference contains NaN or infinite values"):
        phase_correlation(torch.full_like(img, float("nan")), img)
    with pytest.raises(ValueError, match=r"image must have shape \[B,C,H,W\]"):
        shift_image(img[0], 1.0, 1.0)
    with pytest.raises(ValueError, match="dy must be a finite shift"):
        shift_image(img, float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"target \(1, 3, 8, 8\) must have the shape of prediction"):
        exposure_gain(img, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"gain must be a tensor \[B\] with B=1"):
        apply_gain(img, torch.ones(3))
    with pytest.raises(ValueError, match=r"b \(1, 3, 8, 8\) must have the shape of a"):
        psnr_db(img, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="crop_px=20 leaves nothing of a 16x16 image"):
        psnr_db(img, img, crop_px=20)


@pytest.mark.parametrize("kwargs, words", [
    ({"k_lo": 0.0}, r"k_lo must be a finite strength > 0 \(px\*m"),
    ({"k_hi": float("nan")}, r"k_hi must be a finite strength > 0 \(px\*m"),
    ({"observed": torch.rand(1, 16, 16)}, r"observed must have the shape of sharp \(3, 16, 16\); got \(1, 16, 16\)"),
    ({"observed": torch.full((3, 16, 16), float("nan"))}, "observed: image contains NaN or infinite values"),
    ({"sharp": torch.rand(1, 3, 16, 16)}, r"sharp must be one image \[3,H,W\] \(unbatched\)"),
    ({"n": 0}, r"n must be an int >= 1 \(grid points\); got 0"),
])
def test_fit_k_refuses_bad_inputs(kwargs, words):
    from physics.k_fit import fit_k

    args = {"sharp": torch.rand(3, 16, 16), "depth_m": torch.full((1, 16, 16), 2.0), "focus_m": 1.0,
            "observed": torch.rand(3, 16, 16), "k_lo": 1.0, "k_hi": 10.0, **kwargs}
    with pytest.raises(ValueError, match=words):
        fit_k(**args)


def test_k_fit_helpers_refuse_bad_strengths():
    from physics.k_fit import fit_range, k_sensitivity_rms

    with pytest.raises(ValueError, match="k_min must be a finite strength > 0"):
        fit_range(-1.0, 2.0)
    with pytest.raises(ValueError, match=r"rel must be a relative step in \(0, 1\); got 2.0"):
        k_sensitivity_rms(torch.rand(3, 16, 16), torch.full((1, 16, 16), 2.0), 1.0, 1.0, rel=2.0)
