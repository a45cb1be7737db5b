"""tools/infer.py: intrinsics (user / EXIF / default), sizes and K scaling, outputs, skipped files, refusals."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from _tools import load_tool

H, W = 30, 45  # not multiples of 14: the working size differs and the depth must come back to 30x45
FAST = ["--resolution", "56", "--outlier-std", "0"]


@pytest.fixture(scope="module")
def infer():
    return load_tool("infer", "infer_tool")


def _photo(path: Path, seed: int = 0, size: tuple[int, int] = (W, H), f35: float | None = None) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    picture = Image.fromarray(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    if f35 is None:
        picture.save(path)
    else:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = int(f35)  # FocalLengthIn35mmFilm
        picture.save(path, exif=exif)
    return path


def _args(infer, *argv: str) -> argparse.Namespace:
    return infer.parse_args(list(argv))


def test_working_size_keeps_the_aspect_ratio_in_multiples_of_14(infer) -> None:
    for (h, w), resolution in [((480, 640), 518), ((375, 1242), 518), ((H, W), 56), ((1024, 768), 252)]:
        wh, ww = infer.working_size(h, w, resolution)
        assert wh % 14 == 0 and ww % 14 == 0 and abs(max(wh, ww) - resolution) <= 7
        assert abs(wh / ww - h / w) <= 14 / min(wh, ww)  # rounding to the patch grid is the only distortion


def test_exif_35mm_equivalent_gives_fx(infer, tmp_path: Path) -> None:
    path = _photo(tmp_path / "exif.jpg", size=(60, 40), f35=36)
    camera, fields = infer.exif_intrinsics(path, 60, 40)
    # f35 / 43.27 mm * diagonal: a 36 mm-equivalent lens on a 3:2 photo has fx = W (f35 / 36 * W).
    assert camera.fx == pytest.approx(36 * math.hypot(60, 40) / 43.2666) == pytest.approx(60.0, abs=0.01)
    assert (camera.cx, camera.cy) == (29.5, 19.5) and fields["FocalLengthIn35mmFilm"] == 36.0
    item = infer.Item("exif", path)
    resolved, source, _ = infer.resolve_intrinsics(_args(infer, str(path), "--out", "x"), item, 60, 40, None)
    assert source == "exif" and resolved.fx == camera.fx


def test_default_intrinsics_are_documented_and_warned(infer, tmp_path: Path, capsys) -> None:
    path = _photo(tmp_path / "plain.png")
    camera, source, details = infer.resolve_intrinsics(_args(infer, str(path), "--out", "x"), infer.Item("p", path),
                                                       W, H, None)
    assert source == "default" and camera.fx == camera.fy == 0.8 * max(W, H)
    assert (camera.cx, camera.cy) == ((W - 1) / 2, (H - 1) / 2) and details["fx_fraction_of_long_side"] == 0.8
    assert "WARNING" in capsys.readouterr().err


def test_user_intrinsics_win_and_bad_ones_are_refused(infer, tmp_path: Path) -> None:
    path = _photo(tmp_path / "a.png", f35=50)
    item = infer.Item("a", path)
    flags = _args(infer, str(path), "--out", "x", "--fx", "40", "--fy", "41", "--cx", "22", "--cy", "14.5")
    camera, source, _ = infer.resolve_intrinsics(flags, item, W, H, None)
    assert (camera.fx, camera.fy, source) == (40.0, 41.0, "user (--fx --fy --cx --cy)")
    by_name = {"a": {"fx": 30, "fy": 30, "cx": 22, "cy": 14.5}}
    camera, source, _ = infer.resolve_intrinsics(_args(infer, str(path), "--out", "x", "--intrinsics", "c.json"),
                                                 item, W, H, by_name)
    assert camera.fx == 30 and source == "user (--intrinsics)"
    with pytest.raises(ValueError, match="all four"):
        infer.resolve_intrinsics(_args(infer, str(path), "--out", "x", "--fx", "40"), item, W, H, None)
    with pytest.raises(ValueError, match="fx and fy must be > 0"):
        infer.resolve_intrinsics(_args(infer, str(path), "--out", "x", "--fx", "-1", "--fy", "40", "--cx", "22",
                                       "--cy", "14"), item, W, H, None)
    with pytest.raises(ValueError, match="principal point"):
        infer.resolve_intrinsics(_args(infer, str(path), "--out", "x", "--fx", "40", "--fy", "40", "--cx", "400",
                                       "--cy", "14"), item, W, H, None)


@pytest.mark.slow  # imports diffusers + transformers + Lightning once (most of its time)
def test_folder_with_a_corrupt_image_runs_stage1_and_stage2_end_to_end(infer, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    _photo(folder / "a.png", 1)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    _photo(folder / "c.jpg", 2, f35=28)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipping"):
        assert infer.main([str(folder), "--out", str(out), "--steps", "1", *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["images"]] == ["a", "c"]
    assert [s["name"] for s in summary["skipped"]] == ["b"]
    assert summary["stage1"]["random_weights"] and summary["stage2"]["random_weights"]
    a, c = summary["images"]
    assert a["intrinsics_source"] == "default" and c["intrinsics_source"] == "exif"
    assert a["working_size_hw"] == [42, 56] and a["size_hw"] == [H, W]
    # Default K: Stage-2 training strengths [2, 5, 12] px*m at 112 px, scaled to the 45 px photo.
    assert a["stack"]["K_px_m_input"] == pytest.approx([2 * W / 112, 5 * W / 112, 12 * W / 112])
    depth = np.load(out / "a" / "depth.npy")
    assert depth.shape == (H, W) and depth.dtype == np.float32 and (depth > 0).all()
    for name in ("depth.png", "stack.png", "cloud.ply"):
        assert (out / "a" / name).stat().st_size > 0
    from bokeh.pointcloud import read_point_cloud

    assert len(read_point_cloud(out / "a" / "cloud.ply").points) == H * W  # outlier removal off: every pixel


def _stage2_checkpoint(path: Path) -> None:
    import lightning
    from omegaconf import OmegaConf

    from lightning_modules.config import load_config
    from lightning_modules.stage2 import Stage2Module

    cfg = OmegaConf.to_container(load_config(["model/stage2_tiny.yaml"]), resolve=True)
    cfg.update(use_stack=True, data={"synthetic": {"K_px_m": [2.0, 5.0], "width": 56}})
    module = Stage2Module(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the weights off their initialisation so that the depth varies across the picture
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": cfg},
                "pytorch-lightning_version": lightning.__version__}, path)


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stage2") / "s2.ckpt"
    _stage2_checkpoint(path)
    return path


@pytest.mark.slow
def test_checkpoint_with_real_frames_matches_the_model_and_scales_K(infer, stage2_ckpt: Path, tmp_path: Path) -> None:
    from lightning_modules.stage2 import Stage2Module

    ckpt = stage2_ckpt
    _photo(tmp_path / "ref.png", 3)
    _photo(tmp_path / "wide.png", 4)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "ref.png", "stack": ["wide.png"], "K_px_m": [6.0],
                                                     "fx": 50, "fy": 50, "cx": 22, "cy": 14.5}) + "\n")
    out = tmp_path / "out"
    assert infer.main([str(tmp_path / "rows.jsonl"), "--stack", "real", "--checkpoint", str(ckpt), "--out", str(out),
                       "--base-checkpoint", str(ckpt), "--render", "--render-backend", "splat", *FAST]) == 0
    record = json.loads((out / "summary.json").read_text())["images"][0]
    h, w = record["working_size_hw"]
    assert record["stack"]["K_px_m_working"] == pytest.approx([6.0 * w / W])  # K follows the width
    assert record["intrinsics_source"] == "manifest" and record["intrinsics"]["fx"] == 50
    module = Stage2Module.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False).eval()
    from bokeh.io import read_image

    ref = infer._resize(read_image(tmp_path / "ref.png")[None], (h, w))
    wide = infer._resize(read_image(tmp_path / "wide.png")[None], (h, w))
    with torch.no_grad():
        expected = module(ref, wide[:, None], torch.tensor([[6.0 * w / W]]))
    expected = F.interpolate(expected, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    depth = np.load(out / "ref" / "depth.npy")
    np.testing.assert_allclose(depth, expected, rtol=1e-5)
    assert depth.std() > 1e-4  # a real picture of depth, not a constant
    # The base model runs on the photo alone; its cloud is drawn beside BokehDepth's from the same viewpoints.
    with torch.no_grad():
        base = F.interpolate(module(ref), size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(np.load(out / "ref" / "base_depth.npy"), base, rtol=1e-5)
    assert np.abs(base - depth).max() > 0  # the stack changed the answer
    side = np.asarray(Image.open(out / "ref" / "side_by_side.png"))
    assert side.shape[0] == 2 * 360 + 3 * 4 and (out / "ref" / "base_cloud.ply").exists()
    assert record["renderer"] == "renderer: numpy point splat"


def test_physics_stack_renders_from_the_given_depth(infer, tmp_path: Path) -> None:
    """The saved frame (stack.png: photo | frame) is physics.render.render_bokeh of the photo and the given depth at
    the working size, with K scaled to the working width and the focus at the depth's 5th percentile."""
    from bokeh.io import read_image
    from physics.render import render_bokeh

    photo = _photo(tmp_path / "p.png", 5)
    depth = np.linspace(1.0, 4.0, H * W, dtype=np.float32).reshape(H, W)
    np.save(tmp_path / "d.npy", depth)
    out = tmp_path / "out"
    assert infer.main([str(photo), "--stack", "physics", "--stack-depth", str(tmp_path / "d.npy"), "--K", "20",
                       "--out", str(out), "--no-cloud", *FAST]) == 0
    record = json.loads((out / "summary.json").read_text())["images"][0]
    stack = record["stack"]
    h, w = record["working_size_hw"]
    focus = float(np.quantile(depth, 0.05))
    assert (h, w) == (42, 56) and stack["K_px_m_working"] == pytest.approx([20 * w / W])
    assert stack["kind"].startswith("physics") and stack["focus_m"] == pytest.approx(focus, 1e-3)
    # by hand: the photo upsampled bilinearly, the depth by nearest, to the working size; K at the working width
    image = F.interpolate(read_image(photo)[None], size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    depth_work = F.interpolate(torch.from_numpy(depth)[None, None], size=(h, w), mode="nearest")
    with torch.no_grad():
        expected = render_bokeh(image, depth_work, 20 * w / W, focus)[0].permute(1, 2, 0).numpy()
    grid = np.asarray(Image.open(out / "p" / "stack.png")).astype(np.float64) / 255
    pad = 2  # bokeh.io.image_grid: one row of 2 px-padded cells, photo then the frame
    assert grid.shape == (h + 2 * pad, 2 * w + 3 * pad, 3)
    frame = grid[pad:pad + h, 2 * pad + w:2 * pad + 2 * w]
    below_label = slice(16, h)  # the "K=..." label is drawn over the cell's top-left corner
    error = np.abs(frame[below_label] - expected[below_label])
    # only 8-bit rounding is left (<= 0.5/255, ~0.25/255 on average). Measured when this was written: correct
    # render mean 0.98e-3 / max 1.96e-3; K not scaled to the working width (20) mean 6.2e-3 / max 42e-3;
    # K 10 % off mean 2.7-3.1e-3 / max 19e-3; depth mirrored left-right max 5.8e-3; constant 2.5 m depth mean
    # 5.8e-3; depth resized bilinearly max 3.3e-3; focus at the median depth mean 87e-3
    assert error.mean() < 0.3 / 255 and error.max() < 0.6 / 255, (error.mean(), error.max())


def test_existing_output_is_refused_unless_overwrite(infer, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = [str(photo), "--out", str(out), "--stack", "none", "--no-cloud", *FAST]
    assert infer.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert infer.main(argv + ["--overwrite"]) == 0 and (out / "a" / "depth.npy").exists()


def test_bad_inputs_are_refused_with_a_reason(infer, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert infer.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o1")]) == 2
    assert "holds no images" in capsys.readouterr().err
    photo = _photo(tmp_path / "a.png")
    small = _photo(tmp_path / "small.png", size=(20, 10))
    assert infer.main([str(photo), "--stack", "real", "--frames", str(small), "--frame-K", "3", "--out",
                       str(tmp_path / "o2"), "--no-cloud", *FAST]) == 2
    assert "small.png is 20x10 but the photo is 45x30" in capsys.readouterr().err
    assert infer.main([str(photo), "--stack", "real", "--out", str(tmp_path / "o3"), *FAST]) == 2
    assert "needs frames and their K" in capsys.readouterr().err
    assert infer.main([str(photo), "--K", "3,-1", "--out", str(tmp_path / "o4"), *FAST]) == 2
    assert ">= 0" in capsys.readouterr().err
    assert infer.main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "o5")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_stage1_generator_feeds_stage2_with_the_K_it_used(infer, stage2_ckpt: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from bokeh.io import read_image
    from lightning_modules.config import load_config
    from lightning_modules.stage1 import Stage1Module, export_generator, load_generator
    from lightning_modules.stage2 import Stage2Module

    stage1 = Stage1Module(OmegaConf.to_container(load_config(["stage1.yaml"]), resolve=True))
    generator_ = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a generator that is not at its initialisation
        for parameter in stage1.generator.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator_))
    export_generator(stage1, tmp_path / "stage1")
    photo = _photo(tmp_path / "g.png", 6)
    out = tmp_path / "out"
    assert infer.main([str(photo), "--generator", str(tmp_path / "stage1"), "--checkpoint", str(stage2_ckpt), "--K",
                       "2.0", "--steps", "1", "--out", str(out), "--no-cloud", *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    record = summary["images"][0]
    assert summary["stage1"]["random_weights"] is False and summary["stage1"]["source"].endswith("stage1")
    h, w = record["working_size_hw"]
    assert record["stack"]["K_px_m_requested_working"] == pytest.approx([2.0 * w / W])
    generator, _ = load_generator(tmp_path / "stage1")
    image = infer._resize(read_image(photo)[None], (h, w)).clamp(0, 1)
    stack = generator.generate_stack(image, torch.tensor([2.0 * w / W]), num_steps=1, seed=0)
    K_used = stack.K_work_px_m * (w / stack.work_size[1])  # what the generator drew, at the Stage-2 width
    assert record["stack"]["K_px_m_working"] == pytest.approx(K_used.tolist())
    module = Stage2Module.load_from_checkpoint(str(stage2_ckpt), map_location="cpu", weights_only=False).eval()
    with torch.no_grad():
        expected = module(image, stack.frames, K_used[None])
    expected = F.interpolate(expected, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(np.load(out / "g" / "depth.npy"), expected, rtol=1e-5)


# ------------------------------------------------------------------------------- failures keep the previous output


def _previous_output(out: Path) -> Path:
    """A stand-in for an earlier good result in ``out``."""
    (out / "old").mkdir(parents=True)
    (out / "old" / "depth.npy").write_bytes(b"previous")
    (out / "summary.json").write_text("{}")
    return out


def _unchanged(out: Path) -> bool:
    """``out`` holds exactly the previous output, and no hidden copy of it is left beside it."""
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return files == ["old", "old/depth.npy", "summary.json"] and not leftovers and \
        (out / "old" / "depth.npy").read_bytes() == b"previous"


def _stage1_checkpoint(path: Path) -> Path:
    """What a Stage-1 Lightning checkpoint looks like to a loader: task stage1, generator.* weights."""
    torch.save({"state_dict": {"generator.net.conv.weight": torch.zeros(1)},
                "hyper_parameters": {"cfg": {"task": "stage1", "model": {"kind": "compact"}}}}, path)
    return path


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(n in err[0] for n in needles), err[0]
    return err[0]


def test_overwrite_with_a_bad_checkpoint_keeps_the_previous_output(infer, tmp_path: Path, capsys) -> None:
    """A missing, corrupt or Stage-1 --checkpoint: one error line naming the file, exit 2, the previous output
    untouched with --overwrite, and no folder left behind for a new --out."""
    photo = _photo(tmp_path / "a.png")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    stage1 = _stage1_checkpoint(tmp_path / "stage1.ckpt")
    out = _previous_output(tmp_path / "out")
    cases = [(tmp_path / "nope.ckpt", ("nope.ckpt", "not found")),
             (corrupt, ("cannot read --", f"checkpoint {corrupt}: not a PyTorch checkpoint (")),
             (stage1, ("is a Stage-1 generator checkpoint", "needs a Stage-2 (BokehDepth or base) checkpoint",
                       "pass the generator with --generator"))]
    for ckpt, needles in cases:
        for option in ("--checkpoint", "--base-checkpoint"):
            argv = [str(photo), option, str(ckpt), "--stack", "none", "--no-cloud", *FAST]
            assert infer.main(argv + ["--out", str(out), "--overwrite"]) == 2
            _one_error_line(capsys, *needles)
            assert _unchanged(out)
            assert infer.main(argv + ["--out", str(tmp_path / "new")]) == 2
            capsys.readouterr()
            assert not (tmp_path / "new").exists()


def test_bad_options_leave_no_output_folder(infer, tmp_path: Path, capsys) -> None:
    """Refused before any model is loaded: a missing generator, a negative --fx, one frame with two K values."""
    photo = _photo(tmp_path / "a.png")
    out = _previous_output(tmp_path / "out")
    cases = [(["--generator", str(tmp_path / "nogen")], "--generator"),
             (["--stack", "none", "--fx=-100", "--fy", "40", "--cx", "22", "--cy", "14"], "fx and fy must be > 0"),
             (["--stack", "real", "--frames", str(photo), "--frame-K", "1,2"], "1 frame(s) but 2 K value(s)"),
             (["--stack", "physics", "--stack-depth", str(tmp_path / "none.npy")], "none.npy not found")]
    for extra, needle in cases:
        assert infer.main([str(photo), *extra, "--out", str(out), "--overwrite", *FAST]) == 2, extra
        _one_error_line(capsys, needle)
        assert _unchanged(out)
        assert infer.main([str(photo), *extra, "--out", str(tmp_path / "new"), *FAST]) == 2
        capsys.readouterr()
        assert not (tmp_path / "new").exists()


def test_a_failure_while_processing_restores_the_previous_output(infer, tmp_path: Path, capsys) -> None:
    """A stack depth of the wrong size or with negative values fails inside the per-photo loop (after the output
    folder was set up): the previous output comes back, a new folder is removed."""
    photo = _photo(tmp_path / "a.png")
    np.save(tmp_path / "short.npy", np.ones((10, W), np.float32))
    np.save(tmp_path / "negative.npy", -np.ones((H, W), np.float32))
    out = _previous_output(tmp_path / "out")
    for depth, needle in (("short.npy", "stack depth is 45x10"), ("negative.npy", "negative values")):
        argv = [str(photo), "--stack", "physics", "--stack-depth", str(tmp_path / depth), "--K", "5", "--no-cloud",
                "--fx", "40", "--fy", "40", "--cx", "22", "--cy", "14.5", *FAST]
        assert infer.main(argv + ["--out", str(out), "--overwrite"]) == 2
        assert needle in capsys.readouterr().err
        assert _unchanged(out)
        assert infer.main(argv + ["--out", str(tmp_path / "new")]) == 2
        assert not (tmp_path / "new").exists()


def test_nan_stack_depth_is_warned_about_with_its_count(infer, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "a.png")
    depth = np.linspace(1.0, 4.0, H * W, dtype=np.float32).reshape(H, W)
    depth[0, :7] = np.nan
    np.save(tmp_path / "nan.npy", depth)
    out = tmp_path / "out"
    assert infer.main([str(photo), "--stack", "physics", "--stack-depth", str(tmp_path / "nan.npy"), "--K", "5",
                       "--no-cloud", "--fx", "40", "--fy", "40", "--cx", "22", "--cy", "14.5", "--out", str(out),
                       *FAST]) == 0
    assert f"has 7 of {H * W} pixels without a valid depth (0, NaN or inf)" in capsys.readouterr().err
    record = json.loads((out / "summary.json").read_text())["images"][0]
    assert record["stack"]["depth_invalid_pixels"] == 7


# ------------------------------------------------------------------------- malformed manifests, files and options

_BAD_INPUTS = {  # case: (file name, its content, the options after the photo / manifest, the expected line)
    "row not an object": ("rows.jsonl", "5\n", [],
                          "{file}:1: expected a JSON object {{image, ...}}, got int"),
    "K_px_m not a list": ("rows.jsonl", '{"image": "a.png"}\n\n{"image": "a.png", "stack": ["a.png"], "K_px_m": 3}\n',
                          ["--stack", "real"],
                          "{file}:3: 'K_px_m' must be a list of numbers (px*m, one per stack frame), got 3"),
    "bad JSONL line": ("rows.jsonl", '{"image": "a.png"}\n{bad\n', [],
                       "{file}:2: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                       "(char 1))"),
    "bad JSON manifest": ("rows.json", "[{bad", [],
                          "{file}: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 3 "
                          "(char 2))"),
    "bad --intrinsics JSON": ("cam.json", "{not json", ["--intrinsics", "{file}"],
                              "{file}: not valid JSON (Expecting property name enclosed in double quotes: line 1 "
                              "column 2 (char 1))"),
    "--device cuda without CUDA": (None, None, ["--device", "cuda"],
                                   "--device cuda is not available here (torch.cuda.is_available() is False); use "
                                   "--device cpu"),
}


@pytest.mark.parametrize("case", list(_BAD_INPUTS))
def test_malformed_inputs_are_one_error_line_naming_the_file(infer, tmp_path: Path, capsys, monkeypatch,
                                                             case: str) -> None:
    """A manifest row that is not an object, a K_px_m that is not a list, invalid JSON (named with its file, and
    line for JSONL), CUDA asked for where there is none: exit 2, one line, no output folder."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    name, content, extra, expected = _BAD_INPUTS[case]
    photo = _photo(tmp_path / "a.png")
    file = tmp_path / name if name else None
    if file is not None:
        file.write_text(content)
    source = photo if file is None or "--intrinsics" in extra else file
    out = tmp_path / "out"
    options = [a.format(file=file) for a in extra]  # after --stack none: a case's own --stack wins
    assert infer.main([str(source), "--stack", "none", "--no-cloud", *options, "--out", str(out), *FAST]) == 2
    assert _one_error_line(capsys) == "error: " + expected.format(file=file)
    assert not out.exists()


def test_intrinsics_file_with_a_list_is_one_camera(infer, tmp_path: Path) -> None:
    """--intrinsics holding [fx, fy, cx, cy] (what Intrinsics.from_any reads) is the camera of every photo."""
    photo = _photo(tmp_path / "a.png")
    (tmp_path / "cam.json").write_text("[40, 41, 22, 14.5]")
    out = tmp_path / "out"
    assert infer.main([str(photo), "--intrinsics", str(tmp_path / "cam.json"), "--stack", "none", "--no-cloud",
                       "--out", str(out), *FAST]) == 0
    record = json.loads((out / "summary.json").read_text())["images"][0]
    assert record["intrinsics_source"] == "user (--intrinsics)"
    assert [record["intrinsics"][k] for k in ("fx", "fy", "cx", "cy")] == [40, 41, 22, 14.5]


def test_zero_steps_is_a_usage_error(infer, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "a.png")
    with pytest.raises(SystemExit) as stop:
        infer.main([str(photo), "--steps", "0", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "argument --steps: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- a run folder as --checkpoint, working size


def test_checkpoint_run_folder_uses_its_bokehdepth_checkpoint(infer, tmp_path: Path, capsys) -> None:
    """A tools/fit.py run folder given to --checkpoint: its bokehdepth/ model's checkpoint, found as eval.py does."""
    run = tmp_path / "run"
    ckpt = run / "bokehdepth" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    _stage2_checkpoint(ckpt)
    photo = _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert infer.main([str(photo), "--checkpoint", str(run), "--stack", "none", "--no-cloud", "--out", str(out),
                       *FAST]) == 0
    assert f"--checkpoint {run}: using {ckpt}" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["stage2"]["checkpoint"] == str(ckpt.resolve())


def test_checkpoint_folder_without_a_checkpoint_is_one_error_line(infer, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    photo = _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert infer.main([str(photo), "--checkpoint", str(empty), "--stack", "none", "--no-cloud", "--out", str(out),
                       *FAST]) == 2
    assert _one_error_line(capsys).startswith(
        f"error: --checkpoint {empty} is a folder without a Stage-2 checkpoint (no checkpoint in {empty / 'checkpoints'}")
    assert not out.exists()


def test_working_size_is_said_when_it_differs_from_the_photo(infer, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "a.png")
    assert infer.main([str(photo), "--stack", "none", "--no-cloud", "--out", str(tmp_path / "out"), *FAST]) == 0
    assert (f"a.png: {H}x{W} (HxW) upscaled to the working size 42x56 (--resolution 56: the long side, in multiples "
            "of 14 px); a smaller --resolution is faster") in capsys.readouterr().out
