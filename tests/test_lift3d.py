"""tools/lift3d.py end to end on tiny fixtures: files written, 3-D errors against the formula, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _tools import error_line, load_tool

H, W = 24, 32
CAMERA = ["--fx", "40", "--fy", "40", "--cx", "15.5", "--cy", "11.5"]


def _tool():
    return load_tool("lift3d", "lift3d_tool")


@pytest.fixture(scope="module")
def lift3d():
    return _tool()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "gt.npy", np.full((H, W), 2.0, np.float32))
    np.save(tmp_path / "pred.npy", np.full((H, W), 2.1, np.float32))
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    return {"gt": tmp_path / "gt.npy", "pred": tmp_path / "pred.npy", "rgb": tmp_path / "rgb.png"}


def test_lift3d_writes_clouds_renders_and_exact_errors(lift3d, inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--depth", f"pred={inputs['pred']}", "--image", str(inputs["rgb"]), "--gt", str(inputs["gt"]), *CAMERA,
            "--out", str(out), "--render-size", "64x48", "--views", "camera,left"]
    assert lift3d.main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"cloud_pred.ply", "cloud_ground_truth.ply", "render_pred_camera.png", "render_pred_left.png",
            "side_by_side.png", "metrics.json", "summary.json"} <= names
    metrics = json.loads((out / "metrics.json").read_text())["pred"]
    # Plane at 2.0 m predicted at 2.1 m: each point moves 0.1 m * |(x/z, y/z, 1)| along its ray.
    v, u = np.mgrid[0:H, 0:W]
    ray = np.sqrt(((u - 15.5) / 40) ** 2 + ((v - 11.5) / 40) ** 2 + 1)
    assert metrics["pixel_rmse_m"] == pytest.approx(0.1 * float(np.sqrt(np.mean(ray**2))), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["intrinsics"] == {"fx": 40.0, "fy": 40.0, "cx": 15.5, "cy": 11.5}
    assert summary["renderer"].startswith("renderer:") and summary["arguments"]["out"] == str(out)
    render = np.asarray(Image.open(out / "render_pred_camera.png"))
    assert render.shape == (48, 64, 3) and (render != 255).any()
    assert summary["renderer"] in capsys.readouterr().out


def test_existing_output_is_refused_unless_overwrite(lift3d, inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(out), "--backend", "splat", "--views", "camera",
            "--render-size", "32x24"]
    assert lift3d.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    assert lift3d.main(argv + ["--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "cloud_depth.ply").exists()


def test_dataset_sample_supplies_image_intrinsics_and_ground_truth(lift3d, tmp_path: Path) -> None:
    root = tmp_path / "scan"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(root / "rgb" / "a.png")
    np.save(root / "depth" / "a.npy", np.full((H, W), 3.0, np.float32))
    (root / "intrinsics.json").write_text(json.dumps({"fx": 40, "fy": 40, "cx": 15.5, "cy": 11.5}))
    np.save(tmp_path / "pred.npy", np.full((H, W), 2.9, np.float32))
    out = tmp_path / "out"
    argv = ["--dataset", str(root), "--sample", "a", "--depth", f"model={tmp_path / 'pred.npy'}", "--out", str(out),
            "--backend", "splat", "--views", "camera", "--render-size", "32x24"]
    assert lift3d.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sample"] == "a"
    assert summary["intrinsics"] == {"fx": 40.0, "fy": 40.0, "cx": 15.5, "cy": 11.5}
    # a plane 0.1 m nearer than the GT plane: each pixel's two points lie on its ray, 0.1 m x |(x, y, 1)| apart
    # with x = (u - cx) / fx, y = (v - cy) / fy -- the dataset's intrinsics, not any others, give this RMSE
    v, u = np.mgrid[0:H, 0:W]
    expected = 0.1 * np.sqrt(np.mean(1 + ((u - 15.5) / 40) ** 2 + ((v - 11.5) / 40) ** 2))
    assert json.loads((out / "metrics.json").read_text())["model"]["pixel_rmse_m"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    ([], "intrinsics missing"),
    (["--fx", "0", "--fy", "40", "--cx", "15.5", "--cy", "11.5"], "fx and fy must be > 0"),
    (["--fx", "40"], "all four"),
])
def test_bad_intrinsics_are_refused(lift3d, inputs, tmp_path: Path, capsys, extra, message) -> None:
    argv = ["--depth", str(inputs["pred"]), *extra, "--out", str(tmp_path / "out"), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_image_of_another_size_is_refused_naming_both(lift3d, inputs, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((H // 2, W // 2, 3), np.uint8)).save(tmp_path / "small.png")
    argv = ["--depth", str(inputs["pred"]), "--image", str(tmp_path / "small.png"), *CAMERA, "--out",
            str(tmp_path / "out"), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert "image is 16x12 but the depth map is 32x24" in capsys.readouterr().err


def test_bad_view_with_overwrite_keeps_the_previous_output(lift3d, inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    common = ["--depth", str(inputs["pred"]), *CAMERA, "--backend", "splat", "--render-size", "32x24"]
    argv = common + ["--out", str(out)]
    assert lift3d.main(argv + ["--views", "camera"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert lift3d.main(argv + ["--views", "camera,bottom", "--overwrite"]) == 2
    assert "unknown view(s) ['bottom']" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    new = tmp_path / "new"
    assert lift3d.main(common + ["--out", str(new), "--views", "camera,bottom"]) == 2
    assert not new.exists()  # no cloud_depth.ply left behind


def test_failure_while_writing_restores_the_previous_output(lift3d, inputs, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")

    def broken(depths, intrinsics, *, out_dir, **kwargs):
        (out_dir / "cloud_depth.ply").write_text("half")
        raise ValueError("depth map 'depth' has no valid pixel")

    monkeypatch.setattr(lift3d, "lift_compare_render", broken)
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(out), "--overwrite", "--views", "camera"]
    assert lift3d.main(argv) == 2
    assert [p.name for p in out.iterdir()] == ["old.txt"]


@pytest.mark.parametrize("size, message", [("100by50", "WIDTHxHEIGHT"), ("0x50", "at least 1x1")])
def test_bad_render_size_exits_2(lift3d, inputs, tmp_path: Path, capsys, size, message) -> None:
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(tmp_path / "out"), "--render-size", size]
    assert lift3d.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --render-size") and message in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_bad_outlier_std_is_refused_before_writing(lift3d, inputs, tmp_path: Path, capsys, value) -> None:
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(tmp_path / "out"), "--backend", "splat",
            "--render-size", "32x24", "--outlier-std", value]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == f"error: --outlier-std must be a finite number >= 0 (0 disables), got {float(value)}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "0", "-0.01"])
def test_bad_voxel_size_is_refused_before_writing(lift3d, inputs, tmp_path: Path, capsys, value) -> None:
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(tmp_path / "out"), "--voxel-size", value]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == (f"error: --voxel-size must be a finite size in metres > 0 (or left out), "
                                  f"got {float(value)}")
    assert not (tmp_path / "out").exists()


def test_invalid_intrinsics_json_is_named(lift3d, inputs, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "intr.json"
    bad.write_text('{fx: 40}')
    argv = ["--depth", str(inputs["pred"]), "--intrinsics", str(bad), "--out", str(tmp_path / "out")]
    assert lift3d.main(argv) == 2
    assert error_line(capsys).startswith(f"error: {bad}: not valid JSON (Expecting property name")
    assert not (tmp_path / "out").exists()


def test_out_under_a_file_is_an_error_line(lift3d, inputs, tmp_path: Path, capsys) -> None:
    (tmp_path / "blocker.png").write_bytes(b"not a folder")
    out = tmp_path / "blocker.png" / "sub"
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(out), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert str(tmp_path / "blocker.png") in error_line(capsys)


def test_output_folder_that_cannot_be_made_is_an_error_line(lift3d, inputs, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    def refuse(self, *args, **kwargs):  # a read-only place: bokeh.io.output_dir's mkdir fails
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "out"
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(out), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == f"error: cannot create output folder {out}: Permission denied"


def test_depth_that_is_a_folder_is_named_as_the_depth(lift3d, tmp_path: Path, capsys) -> None:
    (tmp_path / "maps").mkdir()
    argv = ["--depth", str(tmp_path / "maps"), *CAMERA, "--out", str(tmp_path / "out"), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == (f"error: --depth {tmp_path / 'maps'} is a folder, not a file; expected a depth file "
                                  "(.npy in metres, or a PNG)")
    assert not (tmp_path / "out").exists()


def test_depth_without_a_valid_pixel_states_the_range_readably(lift3d, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "nan.npy", np.full((H, W), np.nan, np.float32))
    argv = ["--depth", str(tmp_path / "nan.npy"), *CAMERA, "--out", str(tmp_path / "out"), "--backend", "splat"]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == (f"error: --depth {tmp_path / 'nan.npy'} has no valid pixel: all {H * W} are 0, NaN "
                                  "or inf; expected depths in metres, >= 0.001 m (--min-depth)")
    assert not (tmp_path / "out").exists()


def test_depth_outside_the_kept_range_says_where_its_values_lie(lift3d, inputs, tmp_path: Path, capsys) -> None:
    argv = ["--depth", str(inputs["pred"]), *CAMERA, "--out", str(tmp_path / "out"), "--backend", "splat",
            "--min-depth", "5", "--max-depth", "9"]
    assert lift3d.main(argv) == 2
    assert error_line(capsys) == (f"error: --depth {inputs['pred']} has no pixel at 5-9 m (--min-depth, --max-depth): "
                                  "its valid depths lie in 2.1-2.1 m; widen the range, or check the units (metres; "
                                  "--depth-scale for a PNG)")
    assert not (tmp_path / "out").exists()
