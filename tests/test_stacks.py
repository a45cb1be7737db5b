"""Bokeh and focal stacks: shapes, CoC maps against the thin-lens formula, K = 0 identity, batching, bad input."""

from __future__ import annotations

import pytest
import torch

from physics.camera import ThinLensCamera
from physics.render import render_bokeh
from physics.scenes import make_scene
from physics.stacks import bokeh_stack, bokeh_stack_from_camera, focal_stack, focal_stack_from_camera


@pytest.fixture(scope="module")
def batch():
    scenes = [make_scene(s, 24, 32) for s in (1, 2)]
    image = torch.stack([s.image for s in scenes])
    depth = torch.stack([s.depth_m for s in scenes])
    focus = torch.tensor([s.focus_m for s in scenes])
    return image, depth, focus


def test_bokeh_stack_shapes(batch):
    image, depth, focus = batch
    st = bokeh_stack(image, depth, [0.0, 1.5, 3.0], focus)
    assert st.frames.shape == (2, 3, 3, 24, 32)
    assert st.coc_radius_px.shape == (2, 3, 1, 24, 32)
    assert st.K_px_m.shape == (2, 3) and st.focus_m.shape == (2,)
    assert st.camera["K_px_m"] == [[0.0, 1.5, 3.0]] * 2


def test_bokeh_stack_coc_matches_thin_lens_formula(batch):
    image, depth, focus = batch
    ks = [1.5, 3.0]
    st = bokeh_stack(image, depth, ks, focus)
    for b in range(2):
        for i, k in enumerate(ks):
            expected = k * (1.0 / focus[b] - 1.0 / depth[b])  # computed here, independently of physics.camera
            assert torch.allclose(st.coc_radius_px[b, i], expected, atol=1e-5)


def test_zero_k_frame_is_the_input(batch):
    image, depth, focus = batch
    st = bokeh_stack(image, depth, [0.0, 2.0], focus)
    assert torch.equal(st.frames[:, 0], image)
    assert not torch.allclose(st.frames[:, 1], image, atol=1e-3)


def test_frames_equal_single_renders(batch):
    # one batched call of B*N gives the same frames as rendering each (image, K) alone
    image, depth, focus = batch
    st = bokeh_stack(image, depth, torch.tensor([[1.0, 2.5], [2.0, 0.5]]), focus)
    for b, ks in enumerate(([1.0, 2.5], [2.0, 0.5])):
        for i, k in enumerate(ks):
            single = render_bokeh(image[b:b + 1], depth[b:b + 1], k, float(focus[b]))
            assert torch.allclose(st.frames[b, i], single[0], atol=1e-5)


def test_focal_stack_coc_and_shapes(batch):
    image, depth, _ = batch
    fs = focal_stack(image, depth, 2.0, [0.6, 1.2, 3.0])
    assert fs.frames.shape == (2, 3, 3, 24, 32) and fs.focus_m.shape == (2, 3)
    for i, s1 in enumerate((0.6, 1.2, 3.0)):
        assert torch.allclose(fs.coc_radius_px[:, i], 2.0 * (1.0 / s1 - 1.0 / depth), atol=1e-5)


def test_stack_from_camera_uses_lens_k():
    s = make_scene(3, 16, 24)
    cam = ThinLensCamera(f_mm=35, f_number=2.8, focus_m=s.focus_m, image_width_px=24, image_height_px=16,
                         sensor_width_mm=23.6)
    st = bokeh_stack_from_camera(s.image[None], s.depth_m[None], cam, [2.8, 8.0])
    k28 = 0.035**2 * s.focus_m / (2 * 2.8 * (s.focus_m - 0.035)) * 24 / 0.0236
    assert st.K_px_m[0, 0].item() == pytest.approx(k28, rel=1e-5)
    assert st.K_px_m[0, 1].item() == pytest.approx(k28 * 2.8 / 8.0, rel=1e-5)
    assert st.camera["f_numbers"] == [2.8, 8.0]


def test_focal_stack_from_camera_breathing_changes_k():
    s = make_scene(3, 16, 24)
    cam = ThinLensCamera(f_mm=50, f_number=2.0, focus_m=1.0, image_width_px=24, image_height_px=16,
                         sensor_width_mm=36)
    fs = focal_stack_from_camera(s.image[None], s.depth_m[None], cam, [0.5, 2.0])
    # K grows by s1/(s1 - f): 0.5/0.45 vs 2/1.95
    ratio = fs.K_px_m[0, 0] / fs.K_px_m[0, 1]
    assert ratio.item() == pytest.approx((0.5 / 0.45) / (2.0 / 1.95), rel=1e-5)


def test_stack_bad_inputs(batch):
    image, depth, focus = batch
    with pytest.raises(ValueError, match="K_px_m"):
        bokeh_stack(image, depth, [1.0, -1.0], focus)
    with pytest.raises(ValueError, match="K_px_m must be"):
        bokeh_stack(image, depth, torch.ones(3, 2), focus)
    with pytest.raises(ValueError, match="depth_m size"):
        bokeh_stack(image, depth[..., :-1], [1.0], focus)
    with pytest.raises(ValueError, match="depth_m contains NaN"):
        bokeh_stack(image, torch.full_like(depth, float("nan")), [1.0], focus)
    with pytest.raises(ValueError, match="focus_m"):
        focal_stack(image, depth, 1.0, [0.0, 1.0])
    with pytest.raises(ValueError, match="image must be"):
        bokeh_stack(image[0], depth, [1.0], focus)
    with pytest.raises(ValueError, match="image_width_px"):
        cam = ThinLensCamera(f_mm=35, f_number=2.8, focus_m=1.0, image_width_px=99, image_height_px=16,
                             sensor_width_mm=23.6)
        bokeh_stack_from_camera(image, depth, cam, [2.8])


def _small_stack_inputs():
    return torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 2.0)


@pytest.mark.parametrize("maker", ["bokeh", "focal", "focal_camera"])
@pytest.mark.parametrize("shape", [(8, 8), (1, 8, 8)])
def test_stacks_refuse_an_unbatched_depth_map(maker, shape):
    image, depth = _small_stack_inputs()
    depth = depth.reshape(shape)
    cam = ThinLensCamera(50.0, 2.0, 2.0, 8, 8, sensor_width_mm=36.0)
    call = {"bokeh": lambda: bokeh_stack(image, depth, [1.0, 2.0], 1.0),
            "focal": lambda: focal_stack(image, depth, 1.0, [1.0, 2.0]),
            "focal_camera": lambda: focal_stack_from_camera(image, depth, cam, [2.0])}[maker]
    with pytest.raises(ValueError, match=r"depth_m must have shape \[B,1,H,W\] to match image"):
        call()


def test_bokeh_stack_refuses_non_numeric_strengths():
    image, depth = _small_stack_inputs()
    with pytest.raises(ValueError, match="K_px_m must be numbers.*got str 'ab'"):
        bokeh_stack(image, depth, "ab", 1.0)


def test_stacks_from_camera_refuse_a_single_number_for_a_sequence():
    image, depth = _small_stack_inputs()
    cam = ThinLensCamera(50.0, 2.0, 2.0, 8, 8, sensor_width_mm=36.0)
    with pytest.raises(ValueError, match="f_numbers must be a sequence of f-numbers.*got float 2.0"):
        bokeh_stack_from_camera(image, depth, cam, 2.0)
    with pytest.raises(ValueError, match=r"focus_m must be a sequence of focus distances \(m\).*got float 2.0"):
        focal_stack_from_camera(image, depth, cam, 2.0)


def test_render_frames_refuses_strengths_that_are_not_b_by_n():
    from physics.stacks import render_frames

    image, depth = _small_stack_inputs()
    with pytest.raises(ValueError, match=r"K_px_m must be a tensor \[B,N\] with B=1.*got \(2,\)"):
        render_frames(image, depth, torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"focus_m \(1, 3\) and K_px_m \(1, 2\) must both be \[B,N\]"):
        render_frames(image, depth, torch.ones(1, 2), torch.ones(1, 3))


def test_bokeh_stack_refuses_a_0_255_image():
    image, depth = _small_stack_inputs()
    with pytest.raises(ValueError, match=r"image values span .*expected sRGB in \[0, 1\]"):
        bokeh_stack(image * 255, depth, [1.0, 2.0], 1.0)
