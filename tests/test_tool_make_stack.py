"""tools/make_stack.py: image / folder / manifest -> stack frames + a Stage-2-readable JSONL manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.config import load_config
from lightning_modules.stage1 import build, export_generator
from _tools import error_line, load_tool


make_stack = load_tool("make_stack", "tool_make_stack")

TINY = ["data.height=16", "data.width=16", "model.compact.unet.block_out_channels=[16, 32]",
        "model.compact.unet.down_block_types=[DownBlock2D, CrossAttnDownBlock2D]",
        "model.compact.unet.up_block_types=[CrossAttnUpBlock2D, UpBlock2D]",
        "model.compact.unet.cross_attention_dim=16", "model.compact.unet.attention_head_dim=8",
        "eval.num_steps=2", "k.min=0.5", "k.max=2.0", "eval.K_px_m=[1.0, 2.0]"]


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY))
    with torch.no_grad():
        for p in module.generator.net.unet.conv_out.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("gen")
    export_generator(module, path)
    return path


def _write(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


def test_folder_with_gray_rgba_and_corrupt_images(tmp_path, generator_dir):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a_rgb.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write(src / "b_gray.png", rng.integers(0, 255, (18, 24), dtype=np.uint8))
    _write(src / "c_rgba.png", rng.integers(0, 255, (16, 16, 4), dtype=np.uint8))
    (src / "d_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        code = make_stack.main(["--generator", str(generator_dir), "--input", str(src), "--out", str(out),
                                "--K", "1.0", "2.0", "--K-at-width", "16", "--steps", "2"])
    messages = " ".join(str(w.message) for w in record)
    assert "grayscale" in messages and "alpha" in messages
    assert code == 1  # one image skipped
    rows = [json.loads(line) for line in (out / "stacks.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["images/a_rgb.png", "images/b_gray.png", "images/c_rgba.png"]
    run = json.loads((out / "run.json").read_text())
    assert len(run["skipped"]) == 1 and "d_corrupt" in run["skipped"][0]["image"]
    first = rows[0]
    assert first["K_px_m"] == pytest.approx([1.0 * 30 / 16, 2.0 * 30 / 16])  # K follows each image's width
    for rel in first["stack"]:
        assert Image.open(out / rel).size == (30, 20)  # aspect ratio and size restored
    assert not (out / "stacks.jsonl.tmp").exists()


def test_manifest_keeps_depth_and_intrinsics_and_refuses_a_non_empty_output(tmp_path, generator_dir):
    rng = np.random.default_rng(1)
    _write(tmp_path / "rgb.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "depth.npy", np.full((16, 16), 2.0, np.float32))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "rgb.png", "depth": "depth.npy",
                                                  "intrinsics": [20, 20, 8, 8]}) + "\n")
    out = tmp_path / "out"
    assert make_stack.main(["--generator", str(generator_dir), "--input", str(tmp_path / "m.jsonl"), "--out", str(out),
                            "--steps", "1"]) == 0
    row = json.loads((out / "stacks.jsonl").read_text())
    assert row["intrinsics"] == [20, 20, 8, 8] and (out / row["depth"]).resolve() == (tmp_path / "depth.npy").resolve()
    assert row["K_px_m"] == pytest.approx([1.0, 2.0]) and len(row["stack"]) == 2  # the generator's eval K
    with pytest.raises(FileExistsError, match="not empty"):
        make_stack.run(make_stack.parse_args(["--generator", str(generator_dir), "--input", str(tmp_path / "m.jsonl"),
                                              "--out", str(out)]))


def test_k_outside_the_trained_range_is_refused_with_policy_error(tmp_path, generator_dir):
    from bokeh.generation import KRangeError

    _write(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(KRangeError, match=r"rgb.png \(16 px wide\), K \[50.0\].*outside the trained range"):
        make_stack.run(make_stack.parse_args(["--generator", str(generator_dir), "--input", str(tmp_path / "rgb.png"),
                                              "--out", str(tmp_path / "o"), "--K", "50", "--k-policy", "error",
                                              "--steps", "1"]))
    assert not (tmp_path / "o").exists()  # the folder it had begun is removed


def test_default_config_makes_stage2_stacks_in_range_and_records_the_training_focus(tmp_path):
    """configs/stage1.yaml's K range (at 64 px) holds Stage-2's default stack, K = [2, 5, 12] px*m at 112 px, without
    clamping; K beyond it is clamped with a warning; rows record the generator's training focus (100 m)."""
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY[2:6]))  # tiny UNet; the default width, K and focus
    assert (module.cfg["data"]["width"], module.cfg["data"]["synthetic"]["focus_m"]) == (64, 100.0)
    export_generator(module, tmp_path / "gen")
    rng = np.random.default_rng(2)
    _write(tmp_path / "rgb.png", rng.integers(0, 255, (84, 112, 3), dtype=np.uint8))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "rgb.png", "focus_m": 1.7}) + "\n")
    args = ["--generator", str(tmp_path / "gen"), "--input", str(tmp_path / "m.jsonl"), "--steps", "1"]
    with pytest.warns(UserWarning) as record:
        assert make_stack.main(args + ["--out", str(tmp_path / "a"), "--K", "2", "5", "12", "--K-at-width", "112"]) == 0
    messages = " ".join(str(w.message) for w in record)
    assert "outside the trained range" not in messages and "training focus 100 m" in messages
    row = json.loads((tmp_path / "a" / "stacks.jsonl").read_text())
    assert row["K_px_m"] == pytest.approx([2.0, 5.0, 12.0])
    assert row["K_work_px_m"] == pytest.approx([2 * 64 / 112, 5 * 64 / 112, 12 * 64 / 112], abs=1e-5)
    assert row["focus_m"] == 100.0 and json.loads((tmp_path / "a" / "run.json").read_text())["focus_m"] == 100.0
    # without --K: the generator's eval strengths, which are Stage-2's stack at 64 px, scaled to the image's 112 px
    args = ["--generator", str(tmp_path / "gen"), "--input", str(tmp_path / "rgb.png"), "--steps", "1"]
    assert make_stack.main(args + ["--out", str(tmp_path / "b")]) == 0
    row = json.loads((tmp_path / "b" / "stacks.jsonl").read_text())
    assert row["K_px_m"] == pytest.approx([2, 5, 12], abs=1e-5) and row["focus_m"] == 100.0
    with pytest.warns(UserWarning, match=r"outside the trained range \[0.5, 8\].*clamped"):
        make_stack.main(args + ["--out", str(tmp_path / "c"), "--K", "16", "0.5", "--K-at-width", "112"])
    row = json.loads((tmp_path / "c" / "stacks.jsonl").read_text())
    assert row["K_work_px_m"] == pytest.approx([8.0, 0.5])  # 16 -> 9.14 at 64 px: clamped; 0.5 -> 0.29: clamped


def test_layered_generator_writes_its_defocus_map_at_the_image_size(tmp_path):
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY + ["model.compact.head=layered"]))
    export_generator(module, tmp_path / "gen")
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a.png", np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert make_stack.main(["--generator", str(tmp_path / "gen"), "--input", str(src), "--out", str(out),
                            "--steps", "2"]) == 0
    row = json.loads((out / "stacks.jsonl").read_text().splitlines()[0])
    defocus = np.load(out / row["defocus_inv_m"])
    # a fresh layered head renders a uniform defocus map of defocus_init_inv_m (configs/stage1.yaml: 0.5 1/m)
    assert defocus.shape == (20, 30) and np.allclose(defocus, 0.5, atol=1e-5)
    assert Image.open(out / row["defocus_png"]).size == (30, 20)


def test_a_calibrated_generator_records_its_run_strengths_and_can_be_run_uncalibrated(tmp_path):
    """K 1 and 2 px*m asked of a 16-px image at the 16-px training width, calibration gain 1.5 / 1.25 -> the
    generator runs at K 1.5 and 2.5 (a K-free layered head is not held to its trained range), recorded per row and
    in run.json; --uncalibrated runs at the asked K and records no calibration."""
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY + ["model.compact.head=layered"]))
    export_generator(module, tmp_path / "gen")
    meta = json.loads((tmp_path / "gen" / "generator.json").read_text())
    meta["k_calibration"] = {"knots_px_m": [1.0, 2.0], "gains": [1.5, 1.25]}
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(meta))
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a.png", np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    args = ["--generator", str(tmp_path / "gen"), "--input", str(src), "--steps", "1", "--K", "1", "2"]
    assert make_stack.main(args + ["--out", str(tmp_path / "cal")]) == 0
    row = json.loads((tmp_path / "cal" / "stacks.jsonl").read_text().splitlines()[0])
    assert row["K_px_m"] == [1.0, 2.0] and row["K_run_px_m"] == pytest.approx([1.5, 2.5])
    assert json.loads((tmp_path / "cal" / "run.json").read_text())["k_calibration"]["gains"] == [1.5, 1.25]
    assert make_stack.main(args + ["--out", str(tmp_path / "plain"), "--uncalibrated"]) == 0
    row = json.loads((tmp_path / "plain" / "stacks.jsonl").read_text().splitlines()[0])
    assert "K_run_px_m" not in row
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["k_calibration"] is None
    # the calibrated frame at K 1 is the uncalibrated frame asked for its run strength K 1 * gain(1) = 1.5 (same
    # seed and input), to within one code value of PNG rounding; 1.5 is inside the trained range [0.5, 2], so the
    # uncalibrated run is not clamped. (K 2 runs at 2.5, beyond that range: an uncalibrated run would clamp it.)
    assert make_stack.main(args[:-2] + ["1.5", "--out", str(tmp_path / "run_k"), "--uncalibrated"]) == 0
    row = json.loads((tmp_path / "run_k" / "stacks.jsonl").read_text().splitlines()[0])
    assert row["K_work_px_m"] == pytest.approx([1.5]) and "K_run_px_m" not in row

    def frame(run: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / run / "frames" / "a_k0.png"), dtype=float)

    calibrated, at_run_k, plain = frame("cal"), frame("run_k"), frame("plain")
    assert np.abs(calibrated - at_run_k).max() <= 1.0
    # and that equality tells the run strength apart: the frame at the asked K 1 (calibration ignored) is not it
    assert np.abs(plain - at_run_k).max() > 4.0
    # K 2 runs at 2.5: a fresh layered head renders its uniform 0.5 1/m map by physics, i.e. render_bokeh of a plane
    # at |1/100 - 1/depth| = 0.5 1/m (focus 100 m) at K 2.5, to within one code value; at the asked K 2 it is not
    from bokeh.io import read_image
    from physics.render import render_bokeh

    image = read_image(src / "a.png")[None]
    plane = torch.full((1, 1, 16, 16), 1 / (1 / 100.0 + 0.5))

    def physics(K: float) -> np.ndarray:
        frame = render_bokeh(image, plane, torch.tensor([K]), torch.tensor([100.0])).clamp(0, 1)[0]
        return np.round(frame.permute(1, 2, 0).numpy() * 255)

    strong = np.asarray(Image.open(tmp_path / "cal" / "frames" / "a_k1.png"), dtype=float)
    assert np.abs(strong - physics(2.5)).max() <= 1.0
    assert np.abs(strong - physics(2.0)).max() > 4.0


@pytest.mark.parametrize("option, message", [
    (["--stack-guidance", "-0.5"], "stack_strength must be a finite number >= 0"),
    (["--steps", "0"], "argument --steps: expected a whole number >= 1, got 0"),
])
def test_a_bad_option_value_is_a_usage_error_naming_the_option(tmp_path, generator_dir, capsys, option, message):
    _write(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        make_stack.main(["--generator", str(generator_dir), "--input", str(tmp_path / "rgb.png"),
                         "--out", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_physics_stack_guidance_runs_through_the_tool_and_is_recorded(tmp_path, generator_dir):
    _write(tmp_path / "rgb.png", (np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8))
    code = make_stack.main(["--generator", str(generator_dir), "--input", str(tmp_path / "rgb.png"),
                            "--out", str(tmp_path / "o"), "--steps", "1", "--stack-guidance", "0.5"])
    assert code == 0
    guidance = json.loads((tmp_path / "o" / "run.json").read_text())["guidance"]
    assert guidance["stack_strength"] == 0.5 and guidance["stack_estimator"] == "physics"
    assert len((tmp_path / "o" / "stacks.jsonl").read_text().splitlines()) == 1
    # the guidance ran: the same input and seed without it (--stack-guidance 0) gives other frames ...
    assert make_stack.main(["--generator", str(generator_dir), "--input", str(tmp_path / "rgb.png"),
                            "--out", str(tmp_path / "off"), "--steps", "1", "--stack-guidance", "0"]) == 0
    assert json.loads((tmp_path / "off" / "run.json").read_text())["guidance"]["stack_strength"] == 0.0
    from bokeh.generation.guidance import GuidanceConfig, stack_consistency_loss
    from bokeh.io import read_image

    def stack(run: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row = json.loads((tmp_path / run / "stacks.jsonl").read_text())
        frames = torch.stack([read_image(tmp_path / run / rel) for rel in row["stack"]])[None]
        return frames, read_image(tmp_path / run / row["image"])[None], torch.tensor([row["K_px_m"]])

    (guided, ref, K), (unguided, ref_off, K_off) = stack("o"), stack("off")
    assert torch.equal(ref, ref_off) and torch.equal(K, K_off) and K.shape == (1, 2)
    assert float((guided - unguided).abs().max()) * 255 > 2.5
    # ... and more consistent ones: the stack penalty it descends (read back from the 8-bit frames at the input size)
    # is lower. Here 0.83 vs 1.06; with other generator / image seeds 0.76-0.78 of the unguided penalty.
    cfg = GuidanceConfig(stack_strength=0.5)
    loss_guided = float(stack_consistency_loss(guided, ref, K, cfg))
    loss_unguided = float(stack_consistency_loss(unguided, ref, K, cfg))
    assert loss_guided < 0.9 * loss_unguided, (loss_guided, loss_unguided)


# ----------------------------------------------------------------------------- bad input: one error line, exit 2
def _args(generator_dir, src, out, *extra):
    return ["--generator", str(generator_dir), "--input", str(src), "--out", str(out), "--steps", "1", *extra]


def _error_line(capsys) -> str:
    return error_line(capsys, skip="stacks:")  # tqdm's bar aside


@pytest.mark.parametrize("case, expected", [
    ("missing_input", "input not found: "),
    ("missing_generator", "no Stage-1 generator at "),
    ("empty_folder", "holds no images"),
    ("broken_jsonl", "m.jsonl:2: not valid JSON"),
    ("row_without_image", "m.jsonl:1: missing field 'image'"),
    ("negative_k", "--K values must be finite strengths > 0 px*m; got -3 (in --K 1 -3)"),
    ("k_out_of_range", "outside the trained range"),
    ("non_empty_out", "exists and is not empty; pass --overwrite"),
    ("row_with_two_intrinsics", "m.jsonl:1: intrinsics: intrinsics must be [fx, fy, cx, cy] or a 3x3 matrix"),
    ("row_with_focus_in_words", "m.jsonl:1: focus_m must be a distance in metres, finite and > 0; got 'far'"),
    ("cfg_nan", "--cfg must be a finite guidance scale (1 = off); got nan"),
    ("generator_config_not_an_object", "is a JSON list; expected the generator.json a Stage-1 fit writes"),
    ("out_under_a_file", "rgb.png is a file, not a folder"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, generator_dir, capsys, case, expected):
    _write(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))
    src, gen, out, extra = tmp_path / "rgb.png", generator_dir, tmp_path / "out", []
    if case == "missing_input":
        src = tmp_path / "nope.png"
    elif case == "missing_generator":
        gen = tmp_path / "no_generator"
    elif case == "empty_folder":
        src = tmp_path / "empty"
        src.mkdir()
    elif case in ("broken_jsonl", "row_without_image"):
        src = tmp_path / "m.jsonl"
        src.write_text('{"image": "rgb.png"}\n{broken\n' if case == "broken_jsonl" else '{"depth": "d.npy"}\n')
    elif case == "negative_k":
        extra = ["--K", "1", "-3"]
    elif case == "k_out_of_range":
        extra = ["--K", "1e6", "--k-policy", "error"]
    elif case == "non_empty_out":
        out.mkdir()
        (out / "keep.txt").write_text("previous")
    elif case in ("row_with_two_intrinsics", "row_with_focus_in_words"):
        src = tmp_path / "m.jsonl"
        field = '"intrinsics": [1, 2]' if case == "row_with_two_intrinsics" else '"focus_m": "far"'
        src.write_text('{"image": "rgb.png", ' + field + '}\n')
    elif case == "cfg_nan":
        extra = ["--cfg", "nan"]
    elif case == "generator_config_not_an_object":
        gen = tmp_path / "broken"
        gen.mkdir()
        (gen / "generator.json").write_text("[1, 2]")
        (gen / "generator.safetensors").write_bytes((generator_dir / "generator.safetensors").read_bytes())
    elif case == "out_under_a_file":
        out = tmp_path / "rgb.png" / "out"
    assert make_stack.main(_args(gen, src, out, *extra)) == 2
    assert expected in _error_line(capsys)
    if case == "non_empty_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_a_failed_overwrite_keeps_the_previous_output(tmp_path, generator_dir, capsys):
    _write(tmp_path / "rgb.png", np.full((16, 16, 3), 128, np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert make_stack.main(_args(generator_dir, tmp_path / "rgb.png", out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for src, extra in ((tmp_path / "rgb.png", ["--K", "-2"]),  # refused before the folder is touched
                       (tmp_path / "rgb.png", ["--K", "50", "--k-policy", "error"]),  # fails inside it
                       (tmp_path / "corrupt.png", [])):  # nothing could be processed
        assert make_stack.main(_args(generator_dir, src, out, "--overwrite", *extra)) == 2, extra
        _error_line(capsys)
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.png", "out", "rgb.png"]  # no hidden leftovers


def test_only_unreadable_inputs_is_an_error_naming_them_and_leaves_no_output(tmp_path, generator_dir, capsys):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    assert make_stack.main(_args(generator_dir, tmp_path / "corrupt.png", out)) == 2
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "no input could be processed" in error[0] and "corrupt.png" in error[0]
    assert "wrote" not in captured.out and not out.exists()


def test_manifest_depths_are_checked_bad_rows_skipped_and_invalid_pixels_counted(tmp_path, generator_dir, capsys):
    """A wrong-shape, negative or all-invalid depth skips its row (named in run.json); NaN pixels are counted in a
    warning and the row is kept."""
    _write(tmp_path / "rgb.png", np.zeros((16, 20, 3), np.uint8))
    nan = np.full((16, 20), 2.0, np.float32)
    nan[:2] = np.nan
    depths = {"ok": np.full((16, 20), 2.0, np.float32), "nan": nan, "shape": np.ones((10, 12), np.float32),
              "neg": -np.ones((16, 20), np.float32), "allnan": np.full((16, 20), np.nan, np.float32)}
    for name, array in depths.items():
        np.save(tmp_path / f"{name}.npy", array)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": "rgb.png", "depth": f"{name}.npy"}) + "\n"
                                              for name in depths))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"nan.npy: 40 of 320 pixels are invalid \(0, NaN or inf"):
        assert make_stack.main(_args(generator_dir, tmp_path / "m.jsonl", out)) == 1
    rows = [json.loads(line) for line in (out / "stacks.jsonl").read_text().splitlines()]
    assert [Path(r["depth"]).name for r in rows] == ["ok.npy", "nan.npy"]
    skipped = {Path(s["depth"]).name: s["error"] for s in json.loads((out / "run.json").read_text())["skipped"]}
    assert set(skipped) == {"shape.npy", "neg.npy", "allnan.npy"}
    assert "is 10x12 (HxW) but its image" in skipped["shape.npy"] and "is 16x20" in skipped["shape.npy"]
    assert "negative values" in skipped["neg.npy"] and "no valid pixel" in skipped["allnan.npy"]
    assert "shape.npy is 10x12" in capsys.readouterr().err


def test_a_wrong_shape_depth_alone_is_refused_naming_both_shapes(tmp_path, generator_dir, capsys):
    _write(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))
    np.save(tmp_path / "d.npy", np.ones((8, 8), np.float32))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "rgb.png", "depth": "d.npy"}) + "\n")
    assert make_stack.main(_args(generator_dir, tmp_path / "m.jsonl", tmp_path / "out")) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "d.npy is 8x8 (HxW) but its image" in error[0] and "is 16x16" in error[0]
    assert not (tmp_path / "out").exists()


def test_flip_average_is_an_option_of_the_tool_and_is_recorded(tmp_path, generator_dir):
    _write(tmp_path / "rgb.png", (np.random.default_rng(1).random((16, 24, 3)) * 255).astype(np.uint8))
    runs = {}
    for name, extra in (("plain", []), ("flip", ["--flip-average"])):
        assert make_stack.main(["--generator", str(generator_dir), "--input", str(tmp_path / "rgb.png"),
                                "--out", str(tmp_path / name), "--steps", "1", *extra]) == 0
        row = json.loads((tmp_path / name / "stacks.jsonl").read_text().splitlines()[0])
        frames = [np.asarray(Image.open(tmp_path / name / frame), dtype=np.float32) for frame in row["stack"]]
        runs[name] = (json.loads((tmp_path / name / "run.json").read_text())["flip_average"], frames)
    assert runs["plain"][0] is False and runs["flip"][0] is True
    # the mirrored reading changed the frames (the fixture's output layer is not mirror-symmetric)
    assert max(np.abs(a - b).max() for a, b in zip(runs["plain"][1], runs["flip"][1])) > 0


def test_k_outside_the_trained_range_advises_the_k_policy_flag(tmp_path, generator_dir, capsys):
    _write(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "out"
    assert make_stack.main(_args(generator_dir, tmp_path / "rgb.png", out, "--K", "50", "--k-policy", "error")) == 2
    line = _error_line(capsys)
    assert line.endswith("; pass --K values inside the range, or --k-policy clamp to clamp them (with a warning)")
    assert "k_policy=" not in line and not out.exists()
