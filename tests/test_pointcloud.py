"""Point clouds from depth: pinhole geometry, PLY files, cloud distances, renders (every backend), bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bokeh import pointcloud as pc

H, W = 24, 32
K = np.array([[40.0, 0.0, 15.5], [0.0, 42.0, 11.5], [0.0, 0.0, 1.0]])


def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return u, v


def test_plane_at_known_depth_lifts_onto_the_pinhole_formula() -> None:
    depth = torch.full((1, H, W), 2.5)
    points, colours, index = pc.lift_depth(depth, K)
    u, v = _pixel_grid()
    assert colours is None and points.shape == (H * W, 3)
    np.testing.assert_allclose(points[:, 2], 2.5)
    np.testing.assert_allclose(points[:, 0], ((u - K[0, 2]) * 2.5 / K[0, 0]).reshape(-1)[index], atol=1e-6)
    np.testing.assert_allclose(points[:, 1], ((v - K[1, 2]) * 2.5 / K[1, 1]).reshape(-1)[index], atol=1e-6)


def test_tilted_plane_points_satisfy_the_plane_equation() -> None:
    normal, offset = np.array([0.2, -0.3, 1.0]), 3.0  # n . X = d
    u, v = _pixel_grid()
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    depth = offset / (rays @ normal)  # z where the ray of each pixel meets the plane
    points, _, _ = pc.lift_depth(torch.from_numpy(depth), {"fx": 40.0, "fy": 42.0, "cx": 15.5, "cy": 11.5})
    np.testing.assert_allclose(points @ normal, offset, rtol=1e-6)


def test_colours_masks_and_depth_range() -> None:
    depth = torch.full((1, H, W), 2.0)
    depth[0, 0, :4] = 0.0  # no measurement
    depth[0, 1, :3] = 50.0  # beyond max_depth_m
    valid = torch.ones(1, H, W, dtype=torch.bool)
    valid[0, 2, :2] = False
    image = torch.rand(3, H, W)
    points, colours, index = pc.lift_depth(depth, K, image, valid, max_depth_m=10.0)
    assert len(points) == H * W - 4 - 3 - 2
    np.testing.assert_allclose(colours, image.permute(1, 2, 0).reshape(-1, 3).numpy()[index], atol=1e-6)
    cloud = pc.depth_to_point_cloud(depth, K, max_depth_m=10.0)  # no image: coloured by depth
    assert cloud.has_colors() and len(cloud.points) == H * W - 7


def test_ply_round_trip_is_exact_and_atomic(tmp_path) -> None:
    rng = np.random.default_rng(0)
    points, colours = rng.normal(size=(500, 3)), rng.integers(0, 256, (500, 3)) / 255.0
    path = pc.write_point_cloud(tmp_path / "cloud.ply", pc.to_open3d(points, colours))
    back = pc.read_point_cloud(path)
    np.testing.assert_array_equal(np.asarray(back.points), points)
    np.testing.assert_allclose(np.asarray(back.colors), colours, atol=0.5 / 255)
    assert [p.name for p in tmp_path.iterdir()] == ["cloud.ply"]  # no temporary file left
    with pytest.raises(FileExistsError, match="overwrite"):
        pc.write_point_cloud(path, pc.to_open3d(points[:10]))
    pc.write_point_cloud(path, pc.to_open3d(points[:10]), overwrite=True)
    assert len(pc.read_point_cloud(path).points) == 10
    with pytest.raises(ValueError, match=r"\.ply"):
        pc.write_point_cloud(tmp_path / "cloud.txt", back)
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="no points"):
        pc.read_point_cloud(tmp_path / "empty.ply")


def test_chamfer_of_identical_clouds_is_zero_and_of_a_shift_is_the_shift() -> None:
    grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 3)  # 1 m spacing
    same = pc.cloud_distances(pc.to_open3d(grid), pc.to_open3d(grid))
    assert same["chamfer_m"] == 0.0 and same["rmse_m"] == 0.0
    shift = np.array([0.03, -0.04, 0.0])  # |shift| = 0.05 m, far below the 1 m spacing
    moved = pc.cloud_distances(pc.to_open3d(grid + shift), pc.to_open3d(grid))
    assert moved["chamfer_m"] == pytest.approx(0.05, abs=1e-9)
    assert moved["rmse_m"] == pytest.approx(0.05, abs=1e-9) and moved["hausdorff_m"] == pytest.approx(0.05)
    # One extra far point in the prediction only changes the pred->gt side.
    extra = pc.cloud_distances(pc.to_open3d(np.vstack([grid, [[2.0, 2.0, 13.0]]])), pc.to_open3d(grid))
    assert extra["pred_to_gt_mean_m"] == pytest.approx(10.0 / (len(grid) + 1)) and extra["gt_to_pred_mean_m"] == 0.0


def test_depth_cloud_comparison_of_a_scaled_prediction_matches_the_formula() -> None:
    gt = torch.full((1, H, W), 2.0)
    pred = gt * 1.1  # every point moves along its ray by 10 % of its distance to the camera
    result = pc.compare_depth_clouds(pred, gt, K)
    gt_points, _, _ = pc.lift_depth(gt, K)
    expected = 0.1 * np.linalg.norm(gt_points, axis=1)
    assert result["pixel_rmse_m"] == pytest.approx(float(np.sqrt(np.mean(expected**2))), rel=1e-6)
    assert result["pixel_mean_m"] == pytest.approx(float(expected.mean()), rel=1e-6)
    assert result["pixels"] == H * W and result["chamfer_m"] > 0
    with pytest.raises(ValueError, match="32x24 .* 16x12"):
        pc.compare_depth_clouds(gt, gt[:, ::2, ::2], K)


def test_voxel_downsampling_and_outlier_removal() -> None:
    grid = np.stack(np.meshgrid(*[np.arange(10) * 0.01] * 3), -1).reshape(-1, 3)  # 1000 points, 1 cm spacing
    cloud = pc.to_open3d(np.vstack([grid, [[5.0, 5.0, 5.0]]]))
    cleaned, info = pc.clean_point_cloud(cloud, outlier_std_ratio=2.0)
    assert info["points_in"] == 1001 and info["points_out"] == 1000
    assert np.asarray(cleaned.points).max() < 1.0
    # Open3D's voxel grid starts half a voxel below the minimum: point k of an axis falls in voxel
    # floor(0.5 + k * 1 cm / 2.5 cm) = 0,0,1,1,2,2,2,3,3,4 -> 5 voxels per axis, 125 in all.
    coarse, info = pc.clean_point_cloud(pc.to_open3d(grid), voxel_size_m=0.025, outlier_std_ratio=None)
    assert info["points_after_voxel"] == 125 and len(coarse.points) == 125
    with pytest.raises(ValueError, match="voxel_size_m"):
        pc.clean_point_cloud(cloud, voxel_size_m=0.0)


def _square_cloud() -> tuple[np.ndarray, np.ndarray]:
    xy = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 80), np.linspace(-0.4, 0.4, 64)), -1).reshape(-1, 2)
    points = np.c_[xy, np.full(len(xy), 2.0)]
    return points, np.tile([[1.0, 0.0, 0.0]], (len(points), 1))


def _red_box(picture: np.ndarray) -> tuple[int, int, int, int]:
    red = (picture[..., 0] > 200) & (picture[..., 1] < 80) & (picture[..., 2] < 80)
    ys, xs = np.nonzero(red)
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_splat_render_lands_where_the_pinhole_projects() -> None:
    points, colours = _square_cloud()
    camera = pc.ViewCamera("camera", K, np.eye(4), W * 4, H * 4)
    camera.intrinsic = K * np.array([[4], [4], [1]])
    picture = pc.splat_render(points, colours, camera, point_size=2)
    Ks = camera.intrinsic
    u = Ks[0, 0] * points[:, 0] / 2.0 + Ks[0, 2]
    v = Ks[1, 1] * points[:, 1] / 2.0 + Ks[1, 2]
    x0, x1, y0, y1 = _red_box(picture)
    assert abs(x0 - u.min()) <= 1 and abs(x1 - u.max()) <= 1 and abs(y0 - v.min()) <= 1 and abs(y1 - v.max()) <= 1
    assert (picture[0, 0] == 255).all()  # background
    # Nearest point wins: a green point in front of the square hides the red one behind it.
    front = np.array([[0.0, 0.0, 1.0]])
    both = pc.splat_render(np.vstack([points, front]), np.vstack([colours, [[0, 1, 0]]]), camera, point_size=1)
    cu, cv = int(round(Ks[0, 2])), int(round(Ks[1, 2]))
    assert tuple(both[cv, cu]) == (0, 255, 0)


def test_render_views_any_backend_agrees_with_the_splat_and_writes_a_png(tmp_path) -> None:
    from PIL import Image

    from bokeh.io import write_image

    points, colours = _square_cloud()
    cameras = pc.view_cameras(points, 96, 72, ["camera", "left", "top"], intrinsics=K, image_size=(W, H))
    results = pc.render_clouds({"a": (points, colours)}, cameras)  # best renderer available here
    splat = pc.render_clouds({"a": (points, colours)}, cameras, backend="splat")["a"]
    result = results["a"]
    assert result.backend in pc.RENDER_BACKENDS and result.message.startswith("renderer:")
    path = write_image(tmp_path / "left.png", result.images["left"])
    picture = np.asarray(Image.open(path))
    assert picture.shape == (72, 96, 3) and (picture != 255).any()
    if result.backend == "splat":
        pytest.skip("no Open3D renderer on this machine: nothing to compare the splat with")
    for name in ("camera", "left", "top"):
        box, reference = _red_box(result.images[name]), _red_box(splat.images[name])
        assert np.abs(np.array(box) - np.array(reference)).max() <= 2, (result.backend, name, box, reference)


def test_renderer_failure_falls_back_to_the_splat_with_a_message(monkeypatch) -> None:
    monkeypatch.setattr(pc, "_failed_backends", {})

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to load vulkan library!")

    monkeypatch.setattr(pc, "_render_open3d", broken)
    points, colours = _square_cloud()
    with pytest.warns(UserWarning, match="unavailable"):
        result = pc.render_views((points, colours), width=64, height=48, views=["camera"])
    assert result.backend == "splat" and "vulkan" in result.message and "fallback" in result.message
    assert (result.images["camera"] != 255).any()
    assert pc.choose_backend("auto") == ["splat"]  # failed renderers are not retried in this process
    with pytest.raises(ValueError, match="render backend"):
        pc.choose_backend("opengl")


def test_camera_view_reproduces_the_photo_and_side_by_side_tiles() -> None:
    points, colours = _square_cloud()
    cameras = pc.view_cameras(points, 2 * W, 2 * H, ["camera", "right"], intrinsics=K, image_size=(W, H))
    assert np.allclose(cameras[0].extrinsic, np.eye(4))
    np.testing.assert_allclose(cameras[0].intrinsic[0], [80.0, 0.0, 31.5])  # (cx + 0.5) * 2 - 0.5
    # The right view looks at the median-depth point on the optical axis from 35 degrees to the right.
    eye = -cameras[1].extrinsic[:3, :3].T @ cameras[1].extrinsic[:3, 3]
    assert eye[0] > 0 and np.linalg.norm(eye - [0, 0, 2.0]) == pytest.approx(2.0)
    renders = pc.render_clouds({"base": (points, colours), "gt": (points, colours)}, cameras, backend="splat")
    # The camera view shows the square where the photo's camera K projects it, at twice the size (pixel centres:
    # u' = (u + 0.5) * 2 - 0.5); the splat draws each point as a 1-px disc, so the box may grow by 1 px
    u = K[0, 0] * points[:, 0] / points[:, 2] + K[0, 2]
    v = K[1, 1] * points[:, 1] / points[:, 2] + K[1, 2]
    expected = [(u.min() + 0.5) * 2 - 0.5, (u.max() + 0.5) * 2 - 0.5, (v.min() + 0.5) * 2 - 0.5, (v.max() + 0.5) * 2 - 0.5]
    box = _red_box(renders["base"].images["camera"])
    assert np.abs(np.array(box) - np.array(expected)).max() <= 1.5, (box, expected)
    grid = pc.side_by_side(renders, pad=4)
    assert grid.shape == (2 * (2 * H) + 3 * 4, 2 * (2 * W) + 3 * 4, 3)


def test_bad_inputs_name_the_problem() -> None:
    depth = torch.ones(1, H, W)
    with pytest.raises(ValueError, match="fx, fy > 0"):
        pc.lift_depth(depth, [0.0, 40.0, 15.5, 11.5])
    with pytest.raises(ValueError, match="3x3 matrix"):
        pc.lift_depth(depth, [40.0, 40.0])
    with pytest.raises(ValueError, match="image is 16x12 but depth is 32x24"):
        pc.lift_depth(depth, K, torch.rand(3, 12, 16))
    with pytest.raises(ValueError, match="empty"):
        pc.render_views((np.zeros((0, 3)), None), views=["camera"])
    with pytest.raises(ValueError, match="unknown views"):
        pc.view_cameras(np.ones((3, 3)), 8, 8, ["front"])


def test_without_gpu_drivers_the_real_chain_falls_back_to_the_splat(monkeypatch) -> None:
    # No Vulkan driver and no Mesa DRI driver for the child renderers: both Open3D renderers must fail to start
    # (whatever this machine has installed) and the picture must still come, from the splat, with the reasons.
    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json")
    monkeypatch.setenv("LIBGL_DRIVERS_PATH", "/nonexistent")
    monkeypatch.setattr(pc, "_failed_backends", {})
    points, colours = _square_cloud()
    with pytest.warns(UserWarning, match="unavailable"):
        result = pc.render_views((points, colours), width=48, height=36, views=["camera"])
    assert result.backend == "splat"
    assert "offscreen:" in result.message and "legacy:" in result.message
    assert (result.images["camera"] != 255).any()
