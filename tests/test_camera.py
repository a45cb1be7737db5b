"""Thin-lens camera: K against METHOD.md's worked values, CoC maps, conversions, EXIF, validation."""

from __future__ import annotations

import math

import pytest
import torch

from physics.camera import (
    ThinLensCamera,
    camera_from_exif,
    check_depth_m,
    check_focus,
    check_k,
    coc_diameter_sensor_mm,
    f_number_from_k,
    f_number_from_k_intrinsics,
    k_bokehme_to_metric,
    k_from_intrinsics,
    k_from_lens,
    k_metric_to_bokehme,
    sensor_width_from_f35,
    signed_coc_radius_px,
)


@pytest.mark.parametrize(
    "f_mm, f35_mm, n, s1, w, h, expected",
    [
        (50, 50, 2.0, 1.8, 1920, 1080, 32.7),
        (85, 85, 2.8, 3.2, 1920, 1080, 67.5),
        (50, 50, 1.8, 2.5, 1024, 768, 21.0),
        (35, 52, 5.6, 4.0, 1280, 720, 5.6),
    ],
)
def test_k_matches_method_worked_values(f_mm, f35_mm, n, s1, w, h, expected):
    k = k_from_lens(f_mm, n, s1, w, f35_mm=f35_mm, aspect_ratio=w / h)
    assert abs(k - expected) < 0.1


def test_k_first_worked_value_by_hand():
    # 16:9 full-frame width 43.267*16/sqrt(337) = 37.71 mm; K = 0.05^2*1.8/(4*1.75) * 1920/0.03771
    width_m = math.hypot(36, 24) * 16 / math.hypot(16, 9) / 1000
    by_hand = 0.05**2 * 1.8 / (2 * 2.0 * (1.8 - 0.05)) * 1920 / width_m
    assert k_from_lens(50, 2.0, 1.8, 1920, f35_mm=50, aspect_ratio=16 / 9) == pytest.approx(by_hand, rel=1e-9)


def test_k_linear_in_image_width():
    k1 = k_from_lens(50, 2.0, 1.8, 960, sensor_width_mm=36.0)
    k2 = k_from_lens(50, 2.0, 1.8, 1920, sensor_width_mm=36.0)
    assert k2 == pytest.approx(2 * k1, rel=1e-12)


def test_blender_scene_k_with_breathing_and_pinhole():
    # Numbers of blender_dof/scenes.json scene s1_fronto_planes: 50 mm, 36 mm sensor, 384 px, f/2.8, focus 2 m.
    # The K recorded there, 4.884004884, equals the s1/(s1-f) (focus-breathing) form; the pinhole form (f/2N)*fx
    # with fx = 533.33 px is 2.5 % smaller (4.762).
    assert k_from_lens(50, 2.8, 2.0, 384, sensor_width_mm=36.0) == pytest.approx(4.884004884, abs=1e-6)
    pinhole = k_from_lens(50, 2.8, 2.0, 384, sensor_width_mm=36.0, focus_breathing=False)
    assert pinhole == pytest.approx(0.05 / 5.6 * 533.3333333, abs=1e-6)
    assert k_from_intrinsics(50, 2.8, 533.3333333) == pytest.approx(pinhole, rel=1e-9)


def test_sensor_width_from_f35_full_frame_3_2_is_36mm():
    assert sensor_width_from_f35(50, 50, 1.5) == pytest.approx(36.0, abs=1e-9)
    assert sensor_width_from_f35(35, 52.5, 1.5) == pytest.approx(24.0, abs=1e-9)


def test_k_inverse_in_f_number_and_roundtrip():
    k = k_from_lens(35, 2.8, 1.7, 645, sensor_width_mm=23.6)
    assert k == pytest.approx(6.1, abs=0.1)  # dfd_indoor README: K ~ 6.1 at f/2.8
    assert f_number_from_k(k, 35, 1.7, 645, sensor_width_mm=23.6) == pytest.approx(2.8, rel=1e-9)
    assert k_from_lens(35, 8.0, 1.7, 645, sensor_width_mm=23.6) == pytest.approx(k * 2.8 / 8.0, rel=1e-12)
    assert f_number_from_k_intrinsics(k_from_intrinsics(50, 4.0, 800.0), 50, 800.0) == pytest.approx(4.0)


def test_k_batched_tensors_broadcast_and_differentiable():
    n = torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64, requires_grad=True)
    s1 = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    k = k_from_lens(50.0, n, s1, 1000, sensor_width_mm=36.0)
    assert k.shape == (3,)
    for i in range(3):
        assert k[i].item() == pytest.approx(k_from_lens(50, n[i].item(), s1[i].item(), 1000, sensor_width_mm=36))
    k.sum().backward()
    # dK/dN = -K/N ; dK/ds1 = -K * f / (s1 (s1 - f))
    f = 0.05
    assert torch.allclose(n.grad, -k.detach() / n.detach())
    assert torch.allclose(s1.grad, -k.detach() * f / (s1.detach() * (s1.detach() - f)))


def test_signed_coc_radius_map_formula_and_sign():
    depth = torch.tensor([1.0, 2.0, 4.0, 8.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    r = signed_coc_radius_px(depth, torch.tensor([10.0, 20.0]), torch.tensor([2.0, 4.0]))
    expected0 = 10.0 * (0.5 - torch.tensor([1.0, 0.5, 0.25, 0.125]))
    expected1 = 20.0 * (0.25 - torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert torch.allclose(r[0].flatten(), expected0)
    assert torch.allclose(r[1].flatten(), expected1)
    assert r[0, 0, 0, 0] < 0 and r[0, 0, 1, 1] > 0  # in front negative, behind positive
    assert r[0, 0, 0, 1] == 0  # on the focal plane


def test_signed_coc_radius_gradients():
    depth = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64, requires_grad=True)
    K = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    s1 = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    signed_coc_radius_px(depth, K, s1).sum().backward()
    assert depth.grad.item() == pytest.approx(5.0 / 9.0)
    assert K.grad.item() == pytest.approx(1 / 1.5 - 1 / 3.0)
    assert s1.grad.item() == pytest.approx(-5.0 / 1.5**2)


def test_coc_diameter_on_sensor_matches_radius_px():
    # diameter (mm) / pixel pitch (mm/px) / 2 = |r| px, with pitch = sensor width / image width
    c_mm = coc_diameter_sensor_mm(50, 2.0, 2.0, 5.0)
    # textbook: c = f^2 |d - s1| / (N d (s1 - f))
    assert c_mm == pytest.approx(0.05**2 * (5.0 - 2.0) / (2.0 * 5.0 * 1.95) * 1000, rel=1e-12)
    k = k_from_lens(50, 2.0, 2.0, 6000, sensor_width_mm=36.0)
    assert c_mm / (36.0 / 6000) / 2 == pytest.approx(k * (0.5 - 0.2), rel=1e-9)


def test_bokehme_k_conversion_roundtrip():
    depth = torch.stack([torch.linspace(1.0, 4.0, 16), torch.linspace(0.5, 10.0, 16)]).reshape(2, 1, 4, 4)
    k_bm = k_metric_to_bokehme(torch.tensor([6.0, 6.0]), depth)
    assert torch.allclose(k_bm, torch.tensor([6.0 * (1 - 0.25), 6.0 * (2 - 0.1)]))
    assert torch.allclose(k_bokehme_to_metric(k_bm, depth), torch.tensor([6.0, 6.0]))


def test_bokehme_k_rejects_constant_depth():
    with pytest.raises(ValueError, match="constant"):
        k_metric_to_bokehme(5.0, torch.ones(1, 1, 4, 4))


def test_camera_from_exif_matches_k_from_lens():
    exif = {"FocalLength": "50/1", "FNumber": (28, 10), "FocalLengthIn35mmFilm": 75, "SubjectDistance": 2.5,
            "ImageWidth": 1536, "ImageLength": 1024}
    cam = camera_from_exif(exif)
    expected = k_from_lens(50, 2.8, 2.5, 1536, f35_mm=75, aspect_ratio=1.5)
    assert cam.K_px_m == pytest.approx(expected, rel=1e-12)
    assert cam.sensor_width == pytest.approx(24.0, rel=1e-9)
    d = cam.to_dict()
    assert d["K_px_m"] == pytest.approx(expected) and d["f_number"] == pytest.approx(2.8)


def test_camera_from_exif_missing_focus_names_field():
    with pytest.raises(ValueError, match="SubjectDistance"):
        camera_from_exif({"FocalLength": 50, "FNumber": 2, "FocalLengthIn35mmFilm": 50, "ImageWidth": 10,
                          "ImageLength": 10})


def test_camera_fx_override_and_coc_map():
    cam = ThinLensCamera(f_mm=50, f_number=2.8, focus_m=2.0, image_width_px=384, image_height_px=256,
                         fx_px=533.3333333)
    assert cam.K_px_m == pytest.approx(4.7619, abs=1e-4)
    depth = torch.full((1, 1, 2, 2), 4.0)
    assert torch.allclose(cam.coc_radius_px(depth), torch.full((1, 1, 2, 2), cam.K_px_m * 0.25))
    assert cam.intrinsics()[0, 2].item() == 192.0


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth, match",
    [
        (torch.tensor([[[[1.0, float("nan")]]]]), "NaN"),
        (torch.tensor([[[[1.0, 0.0]]]]), "zero or negative"),
        (torch.tensor([[[[1.0, -2.0]]]]), "zero or negative"),
        (torch.tensor([[[[1.0, float("inf")]]]]), "infinite"),
        (torch.ones(1, 3, 2, 2), "shape"),
    ],
)
def test_check_depth_rejects_bad_depth(depth, match):
    with pytest.raises(ValueError, match=f"depth_m.*{match}|{match}"):
        check_depth_m(depth)


def test_check_depth_size_mismatch_names_both():
    with pytest.raises(ValueError, match="depth_m size .* does not match image"):
        check_depth_m(torch.ones(1, 1, 4, 4), like=torch.ones(1, 3, 4, 5))


def test_check_k_rejects_negative_and_nan():
    with pytest.raises(ValueError, match="K_px_m"):
        check_k(-1.0)
    with pytest.raises(ValueError, match="K_px_m.*NaN"):
        check_k(torch.tensor([1.0, float("nan")]))
    assert check_k(0.0) == 0.0


def test_focus_within_focal_length_rejected():
    with pytest.raises(ValueError, match="focus_m must be greater than the focal length"):
        check_focus(0.04, f_mm=50)
    with pytest.raises(ValueError, match="focus_m"):
        k_from_lens(50, 2.0, 0.05, 1000, sensor_width_mm=36)


def test_k_from_lens_needs_sensor_size():
    with pytest.raises(ValueError, match="sensor_width_mm"):
        k_from_lens(50, 2.0, 2.0, 1000)
    with pytest.raises(ValueError, match="aspect_ratio"):
        k_from_lens(50, 2.0, 2.0, 1000, f35_mm=75)


def test_k_from_lens_rejects_nonpositive_f_number():
    with pytest.raises(ValueError, match="f_number"):
        k_from_lens(50, 0.0, 2.0, 1000, sensor_width_mm=36)


@pytest.mark.parametrize("call, message", [
    (lambda: k_from_lens(torch.tensor([50.0, 35.0]), torch.tensor([1.8, 2.8, 4.0]), 2.0, 640, sensor_width_mm=36),
     "k_from_lens: the shapes of f_mm [2], f_number [3] do not broadcast"),
    (lambda: k_from_intrinsics(50.0, torch.tensor([1.8, 2.8]), torch.tensor([500.0, 600.0, 700.0])),
     "k_from_intrinsics: the shapes of f_number [2], fx_px [3] do not broadcast"),
    (lambda: f_number_from_k(torch.tensor([10.0, 20.0]), 50.0, torch.tensor([2.0, 3.0, 4.0]), 640, sensor_width_mm=36),
     "f_number_from_k: the shapes of K_px_m [2], focus_m [3] do not broadcast"),
    (lambda: coc_diameter_sensor_mm(50.0, 2.0, torch.tensor([2.0, 3.0]), torch.full((3, 1, 4, 4), 1.5)),
     "coc_diameter_sensor_mm: the shapes of focus_m [2], depth_m [3, 1, 4, 4] do not broadcast"),
])
def test_lens_formulas_name_arguments_whose_shapes_do_not_broadcast(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_lens_formulas_still_broadcast_a_batch_against_one_value():
    # [2] against [1] and floats: K per lens, by the formula f^2 / (2 N) * W_px / W_sensor * s1 / (s1 - f)
    k = k_from_lens(torch.tensor([50.0, 35.0]), torch.tensor([2.0]), 2.0, 640, sensor_width_mm=36)
    expected = [(f / 1e3) ** 2 / (2 * 2.0) * 640 / 36e-3 * 2.0 / (2.0 - f / 1e3) for f in (50.0, 35.0)]
    assert k.tolist() == pytest.approx(expected, rel=1e-6)


def test_signed_coc_rejects_batch_mismatch():
    with pytest.raises(ValueError, match="K_px_m has 3 values"):
        signed_coc_radius_px(torch.ones(2, 1, 2, 2), torch.ones(3), 1.0)


@pytest.mark.parametrize("convert", ["to_bokehme", "to_metric"])
def test_bokehme_conversions_refuse_a_k_per_image_of_the_wrong_length(convert):
    from physics.camera import k_bokehme_to_metric, k_metric_to_bokehme

    depth = torch.linspace(1.0, 4.0, 32).reshape(2, 1, 4, 4)
    fn, name = (k_metric_to_bokehme, "K_px_m") if convert == "to_bokehme" else (k_bokehme_to_metric, "K_bm")
    with pytest.raises(ValueError, match=rf"{name} has 3 values \(shape \(3,\)\) but depth_m has 2 images"):
        fn(torch.ones(3), depth)


def test_camera_from_exif_names_a_bad_image_width():
    from physics.camera import camera_from_exif

    exif = {"FocalLength": 50, "FNumber": 2, "SubjectDistance": 2, "ImageWidth": "abc", "ImageLength": 10,
            "FocalLengthIn35mmFilm": 50}
    with pytest.raises(ValueError, match="EXIF field ImageWidth is not a number: 'abc'"):
        camera_from_exif(exif)
    with pytest.raises(ValueError, match="EXIF field ImageLength must be a whole number of pixels"):
        camera_from_exif({**exif, "ImageWidth": 10, "ImageLength": 10.5})
