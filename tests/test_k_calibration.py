"""K calibration of a Stage-1 generator (bokeh.generation.calibration, tools/calibrate_k.py, physics.k_fit)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from bokeh.generation import KCalibration, fit_k_calibration
from lightning_modules.config import load_config
from lightning_modules.stage1 import build, export_generator, load_generator
from physics.k_fit import K_MEASURABLE_RMS, fit_k, k_sensitivity_rms
from physics.render import RENDERER_VERSION, render_bokeh
from physics.scenes import make_scene
from _tools import load_tool

TINY_LAYERED = [
    "data.height=16", "data.width=16", "model.compact.unet.block_out_channels=[16, 32]",
    "model.compact.unet.down_block_types=[DownBlock2D, CrossAttnDownBlock2D]",
    "model.compact.unet.up_block_types=[CrossAttnUpBlock2D, UpBlock2D]", "model.compact.unet.norm_num_groups=8",
    "model.compact.unet.cross_attention_dim=16", "model.compact.unet.attention_head_dim=8", "eval.num_steps=1",
    "k.min=1.0", "k.max=4.0", "eval.K_px_m=[2.0]",
]


def test_calibration_is_log_linear_between_knots_and_constant_beyond():
    cal = KCalibration((1.0, 4.0), (2.0, 0.75))
    K = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    # at sqrt(1 * 4) = 2 the log-gain is halfway: sqrt(2 * 0.75)
    expected = torch.tensor([0.0, 0.5 * 2.0, 2.0, 2.0 * math.sqrt(1.5), 4.0 * 0.75, 8.0 * 0.75])
    torch.testing.assert_close(cal.apply(K), expected)
    assert cal.apply(torch.tensor([3.0], dtype=torch.float64)).dtype == torch.float64
    assert KCalibration((2.0,), (1.5,)).apply(torch.tensor([1.0, 9.0])).tolist() == pytest.approx([1.5, 13.5])
    assert KCalibration.from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize("knots, gains, match", [
    ((1.0, 2.0), (1.0,), "as many gains as knots"),
    ((2.0, 1.0), (1.0, 1.0), "strictly ascending"),
    ((0.0, 1.0), (1.0, 1.0), "> 0"),
    ((1.0, 2.0), (1.0, -1.0), "gains must be finite and > 0"),
    ((1.0, 2.0), (3.0, 1.0), "keep K ordered"),  # K_run 3 at K 1, 2 at K 2: more K asked, less blur
])
def test_a_bad_calibration_is_refused_naming_what_is_wrong(knots, gains, match):
    with pytest.raises(ValueError, match=match):
        KCalibration(knots, gains)
    with pytest.raises(ValueError, match="knots_px_m"):
        KCalibration.from_dict({"gains": [1.0]})


def test_fit_recovers_the_gain_of_a_generator_that_blurs_half_as_much_as_asked():
    """A 'generator' whose frames are physics renders at K_run / 2: K_fit = K_run / 2 exactly, so the gain that
    makes K_fit = K is 2 at every knot, and the calibrated error falls to the fit's own precision."""
    scenes = [make_scene(seed, 32, 32) for seed in (3, 4, 5)]
    samples = [{"image": s.image, "depth_m": s.depth_m, "focus_m": 100.0} for s in scenes]
    knots = [2.0, 5.0]

    def generate(index, image, calibration):
        K_run = calibration.apply(torch.tensor(calibration.knots_px_m))
        s = samples[index]
        return render_bokeh(image[None].expand(2, -1, -1, -1), s["depth_m"][None].expand(2, -1, -1, -1),
                            0.5 * K_run, torch.full((2,), 100.0)).clamp(0, 1)

    def fit(image, depth, focus, frame):
        return fit_k(image, depth, focus, frame, 0.2, 16.0)

    def measurable(sample, K):
        return k_sensitivity_rms(sample["image"], sample["depth_m"], 100.0, K) >= K_MEASURABLE_RMS

    calibration, report = fit_k_calibration(generate, samples, knots, fit, measurable, iterations=1, min_samples=3)
    assert report["measurable_samples"] == [3, 3]
    assert calibration.gains == pytest.approx((2.0, 2.0), rel=0.03)
    assert report["iterates"][0]["median_ratio"] == pytest.approx([0.5, 0.5], rel=0.03)
    assert report["iterates"][report["chosen_iterate"]]["mean_k_cal_err"] < 0.03
    with pytest.raises(ValueError, match="measurable samples per knot"):
        fit_k_calibration(generate, samples, knots, fit, lambda s, K: False, min_samples=1)


def test_a_knot_too_few_scenes_can_measure_is_dropped_not_fitted_to_noise():
    samples = [{"image": torch.zeros(3, 8, 8), "depth_m": torch.ones(1, 8, 8), "focus_m": 100.0}] * 4
    calls = []

    def generate(index, image, calibration):  # each frame carries its K_run; it shows half of it
        calls.append(calibration.knots_px_m)
        K_run = calibration.apply(torch.tensor(calibration.knots_px_m))
        return K_run.view(-1, 1, 1, 1).expand(-1, 3, 8, 8)

    def fit(image, depth, focus, frame):
        return 0.5 * float(frame.mean())

    calibration, report = fit_k_calibration(generate, samples, [0.5, 1.0, 2.0], fit,
                                            lambda s, K: K >= 1.0, iterations=1, min_samples=3)
    assert calibration.knots_px_m == (1.0, 2.0) and report["dropped_knots_px_m"] == [0.5]
    assert report["measurable_samples_dropped"] == [0]
    assert calibration.gains == pytest.approx((2.0, 2.0))
    assert set(calls) == {(1.0, 2.0)}


def _tiny_generator(tmp_path, extra=()):
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY_LAYERED + list(extra)))
    export_generator(module, tmp_path / "gen")
    return load_generator(tmp_path / "gen")[0]


def test_a_calibrated_generator_runs_at_the_calibrated_k(tmp_path):
    gen = _tiny_generator(tmp_path)  # the default head: layered, K-free
    image = make_scene(4, 16, 16).image
    plain = gen.generate_stack(image, [1.5, 3.0], seed=0)
    gen.k_calibration = KCalibration((1.5, 3.0), (2.0, 1.2))
    calibrated = gen.generate_stack(image, [1.5, 3.0], seed=0)
    assert calibrated.info["K_run_px_m"].tolist() == pytest.approx([3.0, 3.6])
    asked_at_run_k = gen.generate_stack(image, [3.0, 3.6], seed=0, calibrated=False)
    torch.testing.assert_close(calibrated.frames, asked_at_run_k.frames)
    assert not torch.allclose(calibrated.frames, plain.frames)
    # the K-free head never sees K: a calibrated K beyond the trained range is rendered, not clamped
    gen.k_calibration = KCalibration((4.0,), (1.5,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4.0 asked is in range: no clamping warning either
        assert gen.generate_stack(image, [4.0], seed=0).info["K_run_px_m"].tolist() == pytest.approx([6.0])


def test_a_k_conditioned_generator_is_run_inside_its_trained_range(tmp_path):
    gen = _tiny_generator(tmp_path, ["model.compact.head=residual", "train.defocus_weight=0.0"])
    gen.k_calibration = KCalibration((4.0,), (1.5,))
    assert gen.generate_stack(torch.rand(3, 16, 16), [4.0], seed=0).info["K_run_px_m"].tolist() == [4.0]


def test_load_generator_reads_the_calibration_and_refuses_a_broken_one(tmp_path):
    _tiny_generator(tmp_path)
    meta_path = tmp_path / "gen" / "generator.json"
    meta = json.loads(meta_path.read_text())
    meta["k_calibration"] = {"knots_px_m": [1.0, 4.0], "gains": [1.3, 0.9], "fitted_on": "test",
                             "renderer_version": RENDERER_VERSION}
    meta_path.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_generator(tmp_path / "gen")[0].k_calibration == KCalibration((1.0, 4.0), (1.3, 0.9))
    meta["k_calibration"]["renderer_version"] = RENDERER_VERSION - 1  # fitted against other physics: refit it
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="refit it with tools/calibrate_k.py"):
        load_generator(tmp_path / "gen")
    meta["k_calibration"]["gains"] = [1.3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="generator.json: k_calibration: .*as many gains as knots"):
        load_generator(tmp_path / "gen")


def test_calibrate_tool_writes_the_calibration_report_and_plot_and_removes_it(tmp_path):
    tool = load_tool("calibrate_k")
    _tiny_generator(tmp_path)
    report = tool.main(["--generator", str(tmp_path / "gen"), "--num-scenes", "3", "--knots", "2", "4",
                        "--iterations", "1", "--min-scenes", "1"])
    meta = json.loads((tmp_path / "gen" / "generator.json").read_text())
    assert meta["k_calibration"]["knots_px_m"] == [2.0, 4.0]
    assert meta["k_calibration"]["renderer_version"] == RENDERER_VERSION
    assert meta["k_calibration"]["gains"] == report["calibration"]["gains"]
    assert all(math.isfinite(g) and g > 0 for g in meta["k_calibration"]["gains"])
    saved = json.loads((tmp_path / "gen" / "calibration" / "calibration.json").read_text())
    assert saved["split"] == "val" and len(saved["iterates"]) == 2
    assert (tmp_path / "gen" / "calibration" / "calibration.png").stat().st_size > 1000
    assert load_generator(tmp_path / "gen")[0].k_calibration is not None
    tool.main(["--generator", str(tmp_path / "gen"), "--remove"])
    assert "k_calibration" not in json.loads((tmp_path / "gen" / "generator.json").read_text())
    with pytest.raises(SystemExit) as info:
        tool.main(["--generator", str(tmp_path / "gen"), "--knots", "0.5", "2"])
    assert info.value.code == 2
    from lightning_modules.calibration import default_knots

    assert default_knots(0.5, 8.0) == [0.5, 1.0, 2.0, 4.0, 8.0]


# ------------------------------------------------------------------------------ tools/calibrate_k.py bad input


def _fake_generator(folder, meta="{\"k\": {\"min\": 1.0, \"max\": 4.0}, \"model\": {}, \"resolution\": 16}",
                    weights=b"not safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generator.json").write_text(meta)
    (folder / "generator.safetensors").write_bytes(weights)
    return folder


def _fails(capsys, argv):
    """Run the tool expecting the bad-input exit: status 2 and one ``error:`` line; returns that line."""
    with pytest.raises(SystemExit) as info:
        load_tool("calibrate_k").main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_corrupt_generator_is_a_one_line_error_with_exit_2(tmp_path, capsys):
    _tiny_generator(tmp_path)
    gen = tmp_path / "gen"
    (gen / "generator.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    err = _fails(capsys, ["--generator", str(gen)])
    assert f"cannot read generator weights {gen / 'generator.safetensors'} (SafetensorError" in err
    (gen / "generator.json").write_text('{"k": {"min": 1')  # truncated
    for extra in ([], ["--remove"]):
        err = _fails(capsys, ["--generator", str(gen), *extra])
        assert f"cannot read generator config {gen / 'generator.json'} (JSONDecodeError" in err


def test_generator_config_without_a_k_range_is_named_before_anything_is_written(tmp_path, capsys):
    _tiny_generator(tmp_path)
    gen = tmp_path / "gen"
    meta = json.loads((gen / "generator.json").read_text())
    del meta["k"]
    (gen / "generator.json").write_text(json.dumps(meta))
    err = _fails(capsys, ["--generator", str(gen), "--out", str(tmp_path / "cal")])
    assert f"generator config {gen / 'generator.json'} lacks ['k']" in err
    assert not (tmp_path / "cal").exists()


def test_missing_generator_names_the_folder_and_the_expected_file(tmp_path, capsys):
    err = _fails(capsys, ["--generator", str(tmp_path / "nogen")])
    assert f"--generator {tmp_path / 'nogen'} not found" in err and "generator.json" in err
    assert "nogen.json" not in err
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, ["--generator", str(tmp_path / "empty")])
    assert f"folder {tmp_path / 'empty'} holds no generator.json" in err


def test_a_bad_out_is_refused_before_the_generator_is_loaded(tmp_path, capsys):
    gen = _fake_generator(tmp_path / "gen")  # unreadable weights: reaching them would be another error
    (tmp_path / "file").write_text("x")
    assert "is a file" in _fails(capsys, ["--generator", str(gen), "--out", str(tmp_path / "file")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("keep")
    assert "pass --overwrite" in _fails(capsys, ["--generator", str(gen), "--out", str(busy)])
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert "holds the generator" in _fails(capsys, ["--generator", str(gen), "--out", str(gen), "--overwrite"])
    assert "trained range" in _fails(capsys, ["--generator", str(gen), "--knots", "0.5"])
    # NaN passes every range comparison: it is refused by name, not found later by the renderer
    assert "knots [nan] must be finite" in _fails(capsys, ["--generator", str(gen), "--knots", "nan"])
    assert "cannot read generator" in _fails(capsys, ["--generator", str(gen), "--out", str(busy), "--overwrite"])
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
