"""tools/render_bokeh.py: outputs, CoC maps against the formula, lens strengths, clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bokeh.io import read_image, write_image, write_npy
from physics.scenes import make_scene
from _tools import load_tool


@pytest.fixture(scope="module")
def tool(repo_root_module):
    return load_tool("render_bokeh", "render_bokeh_tool")


@pytest.fixture(scope="module")
def repo_root_module():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


@pytest.fixture
def inputs(tmp_path):
    s = make_scene(5, 32, 40)
    write_image(tmp_path / "img.png", s.image)
    write_npy(tmp_path / "depth.npy", s.depth_m[0])
    return tmp_path, s


def test_k_stack_outputs_and_coc(tool, inputs):
    tmp, scene = inputs
    out = tmp / "out"
    rc = tool.main(["--image", str(tmp / "img.png"), "--depth", str(tmp / "depth.npy"), "--K", "0", "2", "5",
                    "--focus-m", "1.2", "--out", str(out)])
    assert rc == 0
    for i in range(3):
        assert (out / f"frame_{i:02d}.png").is_file() and (out / f"coc_{i:02d}.png").is_file()
    coc = np.load(out / "coc_02.npy")
    expected = 5.0 * (1 / 1.2 - 1 / scene.depth_m[0].numpy())
    assert np.allclose(coc, expected, atol=1e-4)
    # K = 0 frame is the input (up to 8-bit PNG round trip)
    assert torch.allclose(read_image(out / "frame_00.png"), read_image(tmp / "img.png"), atol=1 / 255)
    camera = json.loads((out / "camera.json").read_text())
    assert [f["K_px_m"] for f in camera["frames"]] == [0.0, 2.0, 5.0]
    grid = read_image(out / "grid.png")
    assert grid.shape[-1] > 5 * 40  # image, depth and three frames side by side


def test_lens_fields_give_thin_lens_k(tool, inputs):
    tmp, _ = inputs
    out = tmp / "lens"
    rc = tool.main(["--image", str(tmp / "img.png"), "--depth", str(tmp / "depth.npy"), "--f-mm", "50",
                    "--f-number", "2", "--sensor-width-mm", "36", "--focus-stack", "1.0", "2.0", "--out", str(out)])
    assert rc == 0
    frames = json.loads((out / "camera.json").read_text())["frames"]
    for rec, s1 in zip(frames, (1.0, 2.0)):
        assert rec["K_px_m"] == pytest.approx(0.05**2 * s1 / (4 * (s1 - 0.05)) * 40 / 0.036, rel=1e-6)
        assert rec["lens"]["f_number"] == 2.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--K", "-1"], "--K values must be >= 0"),
        (["--K", "1", "--f-number", "2"], "either --K or a lens"),
        (["--f-mm", "50", "--f-number", "2"], "sensor_width_mm"),
        (["--K", "1", "--focus-m", "0"], "focus distances must be > 0"),
        (["--K", "1", "--depth-scale", "0"], "--depth-scale must be finite and > 0"),  # was ignored for .npy
        (["--K", "1", "--depth-scale", "nan"], "--depth-scale must be finite and > 0"),
        (["--K", "1", "--highlight-gain", "nan"], "--highlight-gain must be a finite number >= 0 (0 = off); got nan"),
    ],
)
def test_bad_arguments_exit_2_with_message(tool, inputs, capsys, extra, message):
    tmp, _ = inputs
    rc = tool.main(["--image", str(tmp / "img.png"), "--depth", str(tmp / "depth.npy"), "--out", str(tmp / "o")]
                   + extra)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp / "o" / "camera.json").exists()


def test_bad_depth_files(tool, inputs, capsys):
    tmp, scene = inputs
    bad = scene.depth_m[0].clone()
    bad[0, 0] = 0.0
    write_npy(tmp / "holes.npy", bad)
    write_npy(tmp / "small.npy", scene.depth_m[0, :-1])
    args = ["--image", str(tmp / "img.png"), "--K", "2", "--out", str(tmp / "o")]
    assert tool.main(args + ["--depth", str(tmp / "holes.npy")]) == 2
    assert "invalid (zero) pixels" in capsys.readouterr().err
    assert tool.main(args + ["--depth", str(tmp / "small.npy")]) == 2
    assert "same size" in capsys.readouterr().err
    assert tool.main(args + ["--depth", str(tmp / "missing.npy")]) == 2
    assert "not found" in capsys.readouterr().err
    assert tool.main(args + ["--depth", str(tmp / "holes.npy"), "--fill-invalid"]) == 0


def test_refuses_non_empty_output(tool, inputs, capsys):
    tmp, _ = inputs
    (tmp / "busy").mkdir()
    (tmp / "busy" / "x.txt").write_text("keep")
    rc = tool.main(["--image", str(tmp / "img.png"), "--depth", str(tmp / "depth.npy"), "--K", "1",
                    "--out", str(tmp / "busy")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp / "busy" / "x.txt").read_text() == "keep"


def _args(tmp, *extra, depth="depth.npy"):
    return ["--image", str(tmp / "img.png"), "--depth", str(tmp / depth), *extra]


def test_bad_input_with_overwrite_keeps_the_previous_output(tool, inputs, capsys):
    tmp, _ = inputs
    out = tmp / "good"
    assert tool.main(_args(tmp, "--K", "1", "--focus-m", "1.2", "--out", str(out))) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc = tool.main(_args(tmp, "--K", "1", "--focus-m", "1.2", "--aperture", "triangl", "--overwrite",
                         "--out", str(out)))
    assert rc == 2 and "triangl" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # no hidden leftovers


@pytest.mark.parametrize("k", ["1e4", "1e9"])
def test_k_too_large_is_refused_naming_the_radius_and_limit(tool, inputs, capsys, k):
    tmp, scene = inputs
    rc = tool.main(_args(tmp, "--K", k, "--focus-m", "1.2", "--out", str(tmp / "o")))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --K ") and "blur radius of" in err and "limit of 80 px" in err
    assert err.count("\n") == 1 and not (tmp / "o").exists()
    if k == "1e4":
        d = scene.depth_m[0]
        radius = 1e4 * max(abs(1 / 1.2 - 1 / float(d.min())), abs(1 / 1.2 - 1 / float(d.max())))
        assert f"{radius:.4g} px" in err


def test_lens_k_too_large_is_refused(tool, inputs, capsys):
    tmp, _ = inputs
    rc = tool.main(_args(tmp, "--f-mm", "50", "--f-number", "0.01", "--sensor-width-mm", "1", "--focus-m", "1.2",
                         "--out", str(tmp / "o")))
    assert rc == 2 and "lens K" in capsys.readouterr().err and not (tmp / "o").exists()


def test_nan_k_leaves_no_output_folder(tool, inputs, capsys):
    tmp, _ = inputs
    assert tool.main(_args(tmp, "--K", "nan", "--out", str(tmp / "o"))) == 2
    assert "finite" in capsys.readouterr().err and not (tmp / "o").exists()


def test_nan_depth_is_named_as_nan(tool, inputs, capsys):
    tmp, scene = inputs
    depth = scene.depth_m[0].numpy().copy()
    depth.flat[:5] = np.nan
    np.save(tmp / "nan.npy", depth)
    assert tool.main(_args(tmp, "--K", "1", "--out", str(tmp / "o"), depth="nan.npy")) == 2
    assert "has 5 invalid (NaN) pixels" in capsys.readouterr().err
    depth.flat[5:7] = np.inf
    depth.flat[7] = 0.0
    np.save(tmp / "mixed.npy", depth)
    assert tool.main(_args(tmp, "--K", "1", "--out", str(tmp / "o"), depth="mixed.npy")) == 2
    assert "has 8 invalid pixels (5 NaN, 2 inf, 1 zero)" in capsys.readouterr().err
    assert not (tmp / "o").exists()


def test_depth_that_is_a_folder_is_named_as_the_depth(tool, inputs, capsys):
    tmp, _ = inputs
    (tmp / "depth_dir").mkdir()
    assert tool.main(_args(tmp, "--K", "1", "--out", str(tmp / "o"), depth="depth_dir")) == 2
    assert capsys.readouterr().err == (f"error: --depth {tmp / 'depth_dir'} is a folder, not a file; expected a depth "
                                       "file (.npy in metres, or a PNG)\n")
    assert not (tmp / "o").exists()


def test_lens_without_a_sensor_names_the_tool_flags(tool, inputs, capsys):
    tmp, _ = inputs
    assert tool.main(_args(tmp, "--f-mm", "50", "--f-number", "2", "--focus-m", "2", "--out", str(tmp / "o"))) == 2
    assert ("error: a lens (--f-mm, --f-number) needs --sensor-width-mm, --f35-mm (35 mm-equivalent focal length) "
            "or --fx-px to relate millimetres to pixels") in capsys.readouterr().err
    assert not (tmp / "o").exists()


def test_depth_of_another_size_is_named_height_by_width(tool, inputs, capsys):
    tmp, scene = inputs
    write_npy(tmp / "short.npy", scene.depth_m[0, :-4])
    assert tool.main(_args(tmp, "--K", "1", "--out", str(tmp / "o"), depth="short.npy")) == 2
    assert "error: --depth is 28x40 (HxW) but --image is 32x40 (HxW); they must have the same size" \
        in capsys.readouterr().err
