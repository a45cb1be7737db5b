"""Real-data readers on tiny fixture folders: units, caps, crops, intrinsics, and every bad-input path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bokeh.datasets import (
    DatasetError,
    Intrinsics,
    dfd_indoor_dataset,
    eigen_crop_mask,
    evaluation_mask,
    garg_crop_mask,
    kitti_dataset,
    nyu_dataset,
    open_dataset,
    rgbd_folder_dataset,
)

H, W = 12, 16


def _rgb(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def _depth_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def _nyu_folder(root: Path, n: int = 2) -> list[np.ndarray]:
    """NYU demo layout: root/rgb, root/depth (mm), root/test_annotations.json with data/-prefixed paths."""
    depths, files = [], []
    for i in range(n):
        _rgb(root / "rgb" / f"rgb_{i:05d}.png", i)
        mm = np.random.default_rng(10 + i).integers(0, 12000, (H, W))
        _depth_png(root / "depth" / f"sync_depth_{i:05d}.png", mm)
        depths.append(mm)
        files.append({"cam_in": [20.0, 21.0, 7.5, 5.5], "rgb": f"data/{root.name}/rgb/rgb_{i:05d}.png",
                      "depth": f"data/{root.name}/depth/sync_depth_{i:05d}.png", "depth_scale": 1000.0})
    (root / "test_annotations.json").write_text(json.dumps({"files": files}))
    return depths


def test_nyu_reader_units_caps_and_intrinsics(tmp_path: Path) -> None:
    root = tmp_path / "nyu_demo"
    depths = _nyu_folder(root)
    ds = nyu_dataset(root, crop=None)
    assert len(ds) == 2 and ds.skipped == []
    sample = ds[1]
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    expected = depths[1].astype(np.float32) / 1000.0
    np.testing.assert_allclose(sample["depth_m"][0].numpy(), expected, rtol=1e-6)
    valid = (expected > 0.001) & (expected <= 10.0)  # NYU caps
    assert torch.equal(sample["valid"][0], torch.from_numpy(valid))
    assert (sample["fx"], sample["fy"], sample["cx"], sample["cy"]) == (20.0, 21.0, 7.5, 5.5)
    assert torch.equal(sample["intrinsics"], torch.tensor([[20.0, 0, 7.5], [0, 21.0, 5.5], [0, 0, 1]]))
    # The default NYU reader applies the Eigen crop to the valid mask.
    cropped = nyu_dataset(root)[1]["valid"]
    assert torch.equal(cropped, sample["valid"] & eigen_crop_mask(H, W))
    assert open_dataset(root).kind == "nyu"


def test_kitti_reader_sparse_depth_over_256_and_caps(tmp_path: Path) -> None:
    root = tmp_path / "kitti_demo"
    raw = np.zeros((H, W), np.uint16)
    raw[3, 4] = 256 * 10 + 128  # 10.5 m
    raw[5, 6] = 256 * 90  # 90 m: beyond the KITTI cap
    _rgb(root / "rgb" / "000.png", 0)
    _depth_png(root / "depth" / "000.png", raw)
    entry = {"cam_in": [30.0, 30.0, 8.0, 6.0], "rgb": "data/kitti_demo/rgb/000.png",
             "depth": "data/kitti_demo/depth/000.png", "depth_scale": 256.0}
    (root / "test_annotations.json").write_text(json.dumps({"files": [entry]}))
    ds = kitti_dataset(root, crop=None)
    sample = ds[0]
    assert sample["depth_m"][0, 3, 4].item() == pytest.approx(10.5)
    assert sample["depth_m"][0, 5, 6].item() == pytest.approx(90.0)
    assert sample["valid"].sum().item() == 1 and sample["valid"][0, 3, 4]
    assert open_dataset(root).kind == "kitti"


def test_standard_crops_match_the_published_boxes() -> None:
    eigen = eigen_crop_mask(480, 640)
    assert eigen.sum().item() == (471 - 45) * (601 - 41)
    assert eigen[0, 45, 41] and not eigen[0, 44, 41] and not eigen[0, 45, 601] and eigen[0, 470, 600]
    garg = garg_crop_mask(375, 1242)
    rows = int(0.40810811 * 375), int(0.99189189 * 375)
    cols = int(0.03594771 * 1242), int(0.96405229 * 1242)
    assert (rows, cols) == ((153, 371), (44, 1197))
    assert garg.sum().item() == (rows[1] - rows[0]) * (cols[1] - cols[0])
    depth = torch.full((1, 375, 1242), 50.0)
    depth[0, 200, 100] = 81.0  # over the 80 m cap
    mask = evaluation_mask(depth, "kitti")
    assert mask.sum().item() == garg.sum().item() - 1


def test_generic_folder_with_npy_depth_and_shared_or_per_sample_intrinsics(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    for i in range(3):
        _rgb(root / "rgb" / f"s{i}.jpg", i)
        (root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"s{i}.npy", np.full((H, W), 1.0 + i, np.float32))
    (root / "intrinsics.json").write_text(json.dumps({"fx": 15.0, "fy": 15.0, "cx": 7.5, "cy": 5.5}))
    (root / "intrinsics").mkdir()
    (root / "intrinsics" / "s2.json").write_text(json.dumps({"K": [[18, 0, 7], [0, 19, 5], [0, 0, 1]]}))
    ds = rgbd_folder_dataset(root)
    assert [ds[i]["name"] for i in range(3)] == ["s0", "s1", "s2"]
    assert ds[1]["depth_m"].unique().tolist() == [2.0]
    assert (ds[0]["fx"], ds[2]["fx"], ds[2]["fy"], ds[2]["cx"]) == (15.0, 18.0, 19.0, 7.0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["intrinsics"].shape == (2, 3, 3)


def test_generic_folder_png_depth_needs_a_scale(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    _rgb(root / "rgb" / "a.png", 0)
    _depth_png(root / "depth" / "a.png", np.full((H, W), 1500))
    with pytest.raises(DatasetError, match="depth_scale"):
        rgbd_folder_dataset(root, intrinsics=[15, 15, 7.5, 5.5])
    ds = rgbd_folder_dataset(root, intrinsics=[15, 15, 7.5, 5.5], depth_scale=1000)
    assert ds[0]["depth_m"].unique().tolist() == [1.5]


def test_aperture_pairs_dfd_layout(tmp_path: Path) -> None:
    root = tmp_path / "dfd"
    rows = ["id,rgb_f2_8,rgb_f8,depth_mm"]
    for i in range(2):
        _rgb(root / "f2.8" / f"d{i}.jpg", i, (43, 29))
        _rgb(root / "f8" / f"d{i}.jpg", 5 + i, (43, 29))
        _depth_png(root / "depth" / f"d{i}.png", np.full((29, 43), 1700 + i))
        rows.append(f"d{i},f2.8/d{i}.jpg,f8/d{i}.jpg,depth/d{i}.png")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(root)
    assert ds.kind == "dfd_indoor" and len(ds) == 2
    sample = ds[1]
    assert sample["fx"] == pytest.approx(35.0 / 23.6 * 43) and sample["cx"] == pytest.approx(21.0)
    assert sample["frames"].shape == (1, 3, 29, 43)
    assert sample["f_number"] == 8.0 and sample["frame_f_numbers"].tolist() == [pytest.approx(2.8)]
    assert sample["depth_m"].unique().tolist() == [pytest.approx(1.701)]
    # Thin-lens K of the f/2.8 frame at this width: f^2 s1 / (2 N (s1 - f)) * W / sensor width, focus 1.7 m.
    f, s1 = 0.035, 1.7
    expected_K = f * f * s1 / (2 * 2.8 * (s1 - f)) * 43 / 0.0236
    assert sample["K_px_m"].tolist() == [pytest.approx(expected_K, rel=1e-5)] and sample["focus_m"] == 1.7
    # f/2.8 as the image: the f/8 photo becomes the extra frame.
    swapped = dfd_indoor_dataset(root, image="f2_8")[1]
    assert torch.equal(swapped["frames"][0], sample["image"]) and swapped["f_number"] == 2.8
    # The documented full-resolution fx: 35 mm on a 23.6 mm sensor at 645 px is ~957 px (35 / 23.6 x 645 = 956.57).
    from bokeh.datasets import dfd_indoor_intrinsics

    assert dfd_indoor_intrinsics(645, 432).fx == pytest.approx(956.57, abs=0.01)


def test_intrinsics_scaling_follows_the_pixel_centre_convention() -> None:
    K = Intrinsics(100.0, 110.0, 31.5, 23.5)  # centre of a 64x48 image
    half = K.scaled(0.5, 0.5)
    assert (half.fx, half.fy) == (50.0, 55.0)
    assert (half.cx, half.cy) == (15.5, 11.5)  # still the centre of the 32x24 image
    # A point projects to the same relative position before and after resizing.
    x, y, z = 0.3, -0.2, 2.0
    u, u_half = K.fx * x / z + K.cx, half.fx * x / z + half.cx
    v, v_half = K.fy * y / z + K.cy, half.fy * y / z + half.cy
    assert (u_half + 0.5) == pytest.approx((u + 0.5) * 0.5)
    assert (v_half + 0.5) == pytest.approx((v + 0.5) * 0.5)
    assert Intrinsics.from_any({"cam_in": [1, 2, 3, 4]}).as_dict() == {"fx": 1.0, "fy": 2.0, "cx": 3.0, "cy": 4.0}


# ---------------------------------------------------------------------------------------------------- bad input


def test_depth_of_another_size_is_an_error_naming_both_sizes(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    _rgb(root / "rgb" / "a.png", 0)
    (root / "depth").mkdir()
    np.save(root / "depth" / "a.npy", np.ones((H + 2, W + 4), np.float32))
    with pytest.raises(DatasetError, match=rf"{W + 4}x{H + 2}.*{W}x{H}"):
        rgbd_folder_dataset(root, intrinsics=[15, 15, 7.5, 5.5])


@pytest.mark.parametrize("camera, message", [
    ([0.0, 15.0, 7.5, 5.5], "fx and fy must be > 0"),
    ([-15.0, 15.0, 7.5, 5.5], "fx and fy must be > 0"),
    ([15.0, 15.0, float("nan"), 5.5], "finite"),
    ([15.0, 15.0, 700.0, 5.5], "principal point"),
    ([0.1, 0.1, 7.5, 5.5], "field of view"),
])
def test_absurd_intrinsics_are_rejected(tmp_path: Path, camera: list[float], message: str) -> None:
    root = tmp_path / "scan"
    _rgb(root / "rgb" / "a.png", 0)
    (root / "depth").mkdir()
    np.save(root / "depth" / "a.npy", np.ones((H, W), np.float32))
    with pytest.raises(DatasetError, match=message):
        rgbd_folder_dataset(root, intrinsics=camera)


def test_missing_intrinsics_are_an_error(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    _rgb(root / "rgb" / "a.png", 0)
    with pytest.raises(DatasetError, match="intrinsics missing"):
        rgbd_folder_dataset(root)
    nyu = tmp_path / "nyu"
    _nyu_folder(nyu, 1)
    content = json.loads((nyu / "test_annotations.json").read_text())
    del content["files"][0]["cam_in"]
    (nyu / "test_annotations.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="intrinsics missing"):
        nyu_dataset(nyu)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "scan" / "rgb").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        rgbd_folder_dataset(tmp_path / "scan", intrinsics=[15, 15, 7.5, 5.5])
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        open_dataset(tmp_path / "scan" / "rgb")


def test_corrupt_image_in_the_middle_is_skipped_and_recorded(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    (root / "depth").mkdir(parents=True)
    for i in range(3):
        _rgb(root / "rgb" / f"s{i}.png", i)
        np.save(root / "depth" / f"s{i}.npy", np.ones((H, W), np.float32))
    (root / "rgb" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG body")
    with pytest.warns(UserWarning, match="skipping sample s1"):
        ds = rgbd_folder_dataset(root, intrinsics=[15, 15, 7.5, 5.5])
    assert [r.name for r in ds.records] == ["s0", "s2"]
    assert len(ds.skipped) == 1 and ds.skipped[0]["name"] == "s1" and "corrupt" in ds.skipped[0]["reason"]
    assert ds.summary()["skipped"] == ds.skipped
    assert ds[1]["name"] == "s2"


def test_truncated_jpeg_is_caught_by_the_decode_check(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    (root / "depth").mkdir(parents=True)
    for i in range(2):
        _rgb(root / "rgb" / f"s{i}.jpg", i, (64, 48))
        np.save(root / "depth" / f"s{i}.npy", np.ones((48, 64), np.float32))
    data = (root / "rgb" / "s0.jpg").read_bytes()
    (root / "rgb" / "s0.jpg").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping sample s0"):
        ds = rgbd_folder_dataset(root, intrinsics=[60, 60, 31.5, 23.5])
    assert [r.name for r in ds.records] == ["s1"]


def test_all_samples_unreadable_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "nyu"
    _nyu_folder(root, 1)
    (root / "rgb" / "rgb_00000.png").unlink()
    with pytest.warns(UserWarning, match="file not found"), pytest.raises(DatasetError, match="none of the 1"):
        nyu_dataset(root)


def test_caps_must_be_ordered(tmp_path: Path) -> None:
    root = tmp_path / "nyu"
    _nyu_folder(root, 1)
    with pytest.raises(ValueError, match="0 <= min < max"):
        nyu_dataset(root, min_depth_m=5.0, max_depth_m=1.0)
    assert math.isclose(nyu_dataset(root, max_depth_m=3.0).max_depth_m, 3.0)
