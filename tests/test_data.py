"""Stage-2 data: manifest (shared crop, bad input), aperture pairs (K from the lens), depth validity.

Fixtures are generated in tmp_path; nothing here reads ../shared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bokeh.io import write_image, write_npy
from lightning_modules.data import (
    AperturePairsDataset,
    DataError,
    ManifestDataset,
    build_datamodule,
    clean_depth,
    crop_and_flip,
    resize_sample,
)

H, W = 30, 40


def _coded_image(frame: int) -> np.ndarray:
    """uint8 HxWx3: R = x, G = y, B = 50 * frame, so every pixel says where it came from (exactly, in 8 bits)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x, y, np.full_like(x, 50 * frame)], -1).astype(np.uint8)


def _coded_depth() -> np.ndarray:
    """Depth (m) that encodes the pixel: 1 + x + 100 y, so a depth value names its source pixel."""
    y, x = np.mgrid[0:H, 0:W]
    return (1.0 + x + 100.0 * y).astype(np.float32)


def _write_sample(root, name: str, n_frames: int = 2, depth: np.ndarray | None = None) -> dict:
    write_image(root / f"{name}_rgb.png", _coded_image(0))
    frames = []
    for j in range(n_frames):
        write_image(root / f"{name}_f{j}.png", _coded_image(j + 1))
        frames.append(f"{name}_f{j}.png")
    write_npy(root / f"{name}_depth.npy", _coded_depth() if depth is None else depth)
    return {"image": f"{name}_rgb.png", "depth": f"{name}_depth.npy", "stack": frames,
            "K_px_m": [5.0 * (j + 1) for j in range(n_frames)], "intrinsics": [50.0, 50.0, 19.5, 14.5], "focus_m": 1.5}


def _write_manifest(path, records) -> None:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_manifest_shared_crop_keeps_frames_aligned(tmp_path):
    rec = _write_sample(tmp_path, "a", n_frames=3)
    _write_manifest(tmp_path / "m.jsonl", [rec])
    ds = ManifestDataset(tmp_path / "m.jsonl", crop=(14, 28), hflip=True)
    seen_flip = seen_plain = False
    for trial in range(12):
        torch.manual_seed(trial)
        s = ds[0]
        assert s["image"].shape == (3, 14, 28) and s["stack"].shape == (3, 3, 14, 28)
        x_img = (s["image"][0] * 255).round()
        y_img = (s["image"][1] * 255).round()
        for j in range(3):  # every frame's pixel comes from the same source pixel as the reference's
            assert torch.equal((s["stack"][j, 0] * 255).round(), x_img)
            assert torch.equal((s["stack"][j, 1] * 255).round(), y_img)
            assert torch.allclose(s["stack"][j, 2] * 255, torch.full_like(x_img, 50.0 * (j + 1)), atol=0.5)
        # and the depth too
        assert torch.equal(s["depth_m"][0], 1.0 + x_img + 100.0 * y_img)
        flipped = bool(x_img[0, 0] > x_img[0, -1])
        seen_flip |= flipped
        seen_plain |= not flipped
        # intrinsics follow the window: the principal point stays at the same scene point (x = 19.5 in the source)
        left = float(x_img[0, 0]) if not flipped else float(x_img[0, -1])
        cx = s["intrinsics"][0, 2].item()
        expected = 19.5 - left if not flipped else (28 - 1) - (19.5 - left)
        assert cx == pytest.approx(expected)
        assert s["intrinsics"][1, 2].item() == pytest.approx(14.5 - float(y_img[0, 0]))
    assert seen_flip and seen_plain


def test_crop_and_flip_moves_principal_point():
    sample = {"image": torch.rand(3, 10, 12), "stack": torch.rand(2, 3, 10, 12), "depth_m": torch.rand(1, 10, 12) + 1,
              "valid": torch.ones(1, 10, 12, dtype=torch.bool), "intrinsics": torch.tensor([[9.0, 0, 5.5], [0, 9.0, 4.5], [0, 0, 1]])}
    out = crop_and_flip(sample, 2, 3, 6, 8, flip=True)
    assert torch.equal(out["stack"][1, :, 0, 0], sample["stack"][1, :, 2, 3 + 7])
    assert out["intrinsics"][0, 2].item() == pytest.approx(7 - (5.5 - 3))
    assert out["intrinsics"][1, 2].item() == pytest.approx(4.5 - 2)


def test_resize_keeps_the_image_centre_at_the_principal_point_and_scales_k():
    """Integer pixel centres: the centre of a 12-px row is x = 5.5, of a 24-px row 11.5; resizing 12x10 -> 24x15 maps
    a centred principal point to the new centre (cx' = (cx + 0.5) sx - 0.5), fx and K scale with the width."""
    sample = {"image": torch.rand(3, 10, 12), "stack": torch.rand(2, 3, 10, 12), "depth_m": torch.rand(1, 10, 12) + 1,
              "valid": torch.ones(1, 10, 12, dtype=torch.bool), "K_px_m": torch.tensor([2.0, 4.0]),
              "intrinsics": torch.tensor([[9.0, 0, 5.5], [0, 8.0, 4.5], [0, 0, 1]])}
    out = resize_sample(sample, 15, 24)
    assert out["intrinsics"].tolist() == [[18.0, 0.0, 11.5], [0.0, 12.0, 7.0], [0.0, 0.0, 1.0]]
    assert out["K_px_m"].tolist() == [4.0, 8.0] and out["stack"].shape == (2, 3, 15, 24)


def test_manifest_missing_file_names_line_and_path(tmp_path):
    good = _write_sample(tmp_path, "a")
    bad = dict(good, stack=[good["stack"][0], "nowhere.png"])
    _write_manifest(tmp_path / "m.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"m\.jsonl:2: stack\[1\] file .*nowhere\.png does not exist"):
        ManifestDataset(tmp_path / "m.jsonl")


def test_manifest_stack_k_count_mismatch(tmp_path):
    rec = _write_sample(tmp_path, "a", n_frames=2)
    rec["K_px_m"] = [5.0]
    _write_manifest(tmp_path / "m.jsonl", [rec])
    with pytest.raises(DataError, match=r"m\.jsonl:1: 2 stack frames but 1 K_px_m values"):
        ManifestDataset(tmp_path / "m.jsonl")


def test_manifest_bad_fields(tmp_path):
    rec = _write_sample(tmp_path, "a")
    (tmp_path / "m.jsonl").write_text(json.dumps({k: v for k, v in rec.items() if k != "depth"}) + "\n")
    with pytest.raises(DataError, match="missing field 'depth'"):
        ManifestDataset(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"m\.jsonl:1: not valid JSON"):
        ManifestDataset(tmp_path / "m.jsonl")
    _write_manifest(tmp_path / "m.jsonl", [dict(rec, K_px_m=[-1.0, 2.0])])
    with pytest.raises(DataError, match="K_px_m must be finite and >= 0"):
        ManifestDataset(tmp_path / "m.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        ManifestDataset(tmp_path / "absent.jsonl")


def test_manifest_mismatched_frame_size(tmp_path):
    rec = _write_sample(tmp_path, "a")
    write_image(tmp_path / "a_f1.png", np.zeros((H - 2, W, 3), np.uint8))
    _write_manifest(tmp_path / "m.jsonl", [rec])
    ds = ManifestDataset(tmp_path / "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl:1: stack\[1\] .*a_f1\.png is 40x28 but the image is 40x30"):
        ds[0]


def test_nan_and_zero_depth_are_masked(tmp_path):
    depth = _coded_depth()
    depth[0, :5] = np.nan
    depth[1, :7] = 0.0
    rec = _write_sample(tmp_path, "a", depth=depth)
    _write_manifest(tmp_path / "m.jsonl", [rec])
    s = ManifestDataset(tmp_path / "m.jsonl")[0]
    assert not s["valid"][0, 0, :5].any() and not s["valid"][0, 1, :7].any()
    assert int(s["valid"].sum()) == H * W - 12
    assert torch.isfinite(s["depth_m"]).all() and (s["depth_m"][~s["valid"]] == 0).all()


def test_depth_without_valid_pixel_is_an_error(tmp_path):
    rec = _write_sample(tmp_path, "a", depth=np.full((H, W), np.nan, np.float32))
    _write_manifest(tmp_path / "m.jsonl", [rec])
    ds = ManifestDataset(tmp_path / "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl:1 .*depth has no valid pixel"):
        ds[0]
    with pytest.raises(DataError, match="no valid pixel"):
        clean_depth(torch.zeros(1, 4, 4), name="x", min_depth_m=1e-3, max_depth_m=10.0)
    with pytest.raises(DataError, match="no valid pixel"):  # all beyond the cap
        clean_depth(torch.full((1, 4, 4), 50.0), name="x", min_depth_m=1e-3, max_depth_m=10.0)


def test_manifest_datamodule_batches(tmp_path):
    recs = [_write_sample(tmp_path, n) for n in "abc"]
    _write_manifest(tmp_path / "train.jsonl", recs)
    dm = build_datamodule({"kind": "manifest", "batch_size": 2, "synthetic": {"height": 5},  # other kinds ignored
                           "manifest": {"train": str(tmp_path / "train.jsonl"), "val": str(tmp_path / "train.jsonl"),
                                        "test": None, "crop": [28, 28], "hflip": True}})
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 28, 28) and batch["stack"].shape == (2, 2, 3, 28, 28)
    assert batch["K_px_m"].shape == (2, 2) and batch["valid"].dtype == torch.bool
    val = next(iter(dm.val_dataloader()))  # centre crop, no flip at evaluation
    assert (val["image"][0, 0, 0, 0] * 255).round() == (W - 28) // 2
    with pytest.raises(DataError, match="no 'test' split"):
        dm.test_dataloader()


def _write_aperture_folder(root, n: int = 2, size=(45, 60)) -> None:
    h, w = size
    rows = ["id,rgb_f2_8,rgb_f8,depth_mm"]
    for i in range(n):
        for sub in ("f2.8", "f8", "depth"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "f8" / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "f2.8" / f"s{i}.png")
        depth_mm = np.full((h, w), 2500, np.uint16)
        depth_mm[:, :10] = 0  # holes
        Image.fromarray(depth_mm).save(root / "depth" / f"s{i}.png")
        rows.append(f"s{i},f2.8/s{i}.png,f8/s{i}.png,depth/s{i}.png")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


def test_aperture_pairs_k_from_camera(tmp_path):
    _write_aperture_folder(tmp_path)
    ds = AperturePairsDataset(tmp_path, f_numbers=[2.8], f_mm=35.0, sensor_width_mm=23.6, focus_m=1.7)
    s = ds[0]
    # thin lens by hand: K = f^2 s1 / (2 N (s1 - f)) * W_px / W_sensor, in metres and pixels
    f, n, s1 = 0.035, 2.8, 1.7
    expected = f**2 * s1 / (2 * n * (s1 - f)) * 60 / 0.0236
    assert s["K_px_m"].tolist() == pytest.approx([expected], rel=1e-5)
    assert s["stack"].shape == (1, 3, 45, 60) and s["image"].shape == (3, 45, 60)
    assert s["depth_m"][0, 0, 20].item() == pytest.approx(2.5)
    assert not s["valid"][0, :, :10].any() and s["valid"][0, :, 10:].all()
    assert s["intrinsics"][0, 0].item() == pytest.approx(35 / 23.6 * 60)
    # resized to multiples of 14: K and fx scale with the width
    small = AperturePairsDataset(tmp_path, height=28, width=42)[1]
    assert small["image"].shape == (3, 28, 42) and small["stack"].shape == (1, 3, 28, 42)
    assert small["K_px_m"].item() == pytest.approx(expected * 42 / 60, rel=1e-5)
    assert small["intrinsics"][0, 0].item() == pytest.approx(35 / 23.6 * 42, rel=1e-5)


def test_aperture_pairs_bad_input(tmp_path):
    _write_aperture_folder(tmp_path)
    with pytest.raises(DataError, match="no column 'rgb_f4'"):
        AperturePairsDataset(tmp_path, stack=["rgb_f4"], f_numbers=[4.0])
    with pytest.raises(DataError, match="1 stack columns .* but 2 f_numbers"):
        AperturePairsDataset(tmp_path, f_numbers=[2.8, 4.0])
    (tmp_path / "f8" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"index\.csv:3: rgb_f8 file .*s1\.png does not exist"):
        AperturePairsDataset(tmp_path)
    with pytest.raises(DataError, match="multiple of 14"):
        AperturePairsDataset(tmp_path, height=30, width=42)
    with pytest.raises(DataError, match="data.kind='nope'"):
        build_datamodule({"kind": "nope"})
