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
