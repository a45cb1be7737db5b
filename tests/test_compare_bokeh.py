"""tools/compare_bokeh.py: physics vs learned on synthetic scenes and real aperture pairs; the K-calibration fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.config import load_config
from lightning_modules.stage1 import build, export_generator
from physics.k_fit import K_MEASURABLE_RMS, k_sensitivity_rms
from _tools import error_line, load_tool

TINY = ["data.height=16", "data.width=16", "model.compact.unet.block_out_channels=[16, 32]",
        "model.compact.unet.down_block_types=[DownBlock2D, CrossAttnDownBlock2D]",
        "model.compact.unet.up_block_types=[CrossAttnUpBlock2D, UpBlock2D]",
        "model.compact.unet.cross_attention_dim=16", "model.compact.unet.attention_head_dim=8",
        "eval.num_steps=2", "k.min=1.0", "k.max=4.0", "eval.K_px_m=[2.0, 4.0]",
        "model.compact.head=residual", "train.defocus_weight=0.0"]  # the identity at init: the learned row equals the identity row


compare = load_tool("compare_bokeh", "tool_compare_bokeh")


def test_k_calibration_fit_recovers_the_physics_k():
    from physics.render import render_bokeh
    from physics.scenes import make_scene

    scene = make_scene(3, 48, 48)
    for K in (1.5, 4.0):
        observed = render_bokeh(scene.image[None], scene.depth_m[None], torch.tensor([K]),
                                torch.tensor([scene.focus_m]))[0].clamp(0, 1)
        k_fit = compare.fit_k(scene.image, scene.depth_m, scene.focus_m, observed, 0.3, 8.0)
        assert abs(k_fit - K) / K < 0.02, (K, k_fit)  # well inside the 15% the tool measures
    # the sharp input is explained by (almost) no blur: a large calibration error for the identity baseline
    assert compare.fit_k(scene.image, scene.depth_m, scene.focus_m, scene.image, 0.3, 8.0) < 0.6


def test_k_is_unmeasurable_only_where_the_blur_is_far_below_a_pixel():
    """A white-noise plane at 10 m, focus 100 m: |r| = K (1/10 - 1/100) = 0.09 K px. At K = 0.5 (0.045 px, blur
    variance r^2/4 = 5e-4 px^2) the renders at K +- 15% differ by ~0.2 8-bit codes: the row is kept out of
    k_cal_err_measurable. At K = 2 (0.18 px) a sub-pixel blur still shows on fine texture (~2 codes, measured), and at
    K = 8 (0.72 px) by ~13 codes."""
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    depth = torch.full((1, 32, 32), 10.0)
    assert k_sensitivity_rms(image, depth, 100.0, 0.5) < 0.5 * K_MEASURABLE_RMS
    assert k_sensitivity_rms(image, depth, 100.0, 2.0) > K_MEASURABLE_RMS
    assert k_sensitivity_rms(image, depth, 100.0, 8.0) > 5 * K_MEASURABLE_RMS
    assert [compare.k_measurability(image, depth, 100.0, K)[1] for K in (0.5, 2.0, 8.0)] == [False, True, True]


def test_summary_by_k_averages_each_k_over_its_own_rows():
    rows = [{"K_px_m": 1.0, "learned": {"psnr": 30.0, "k_cal_err": 0.5}},
            {"K_px_m": 1.0, "learned": {"psnr": 34.0, "k_cal_err": None}},
            {"K_px_m": 4.0, "learned": {"psnr": 40.0, "k_cal_err": 0.1}}]
    by_k = compare.summarize_by_k(rows, ["psnr", "k_cal_err"], [1.0, 4.0])
    assert by_k["1"]["learned"] == {"psnr": 32.0, "psnr_n": 2, "k_cal_err": 0.5, "k_cal_err_n": 1}
    assert by_k["4"]["learned"] == {"psnr": 40.0, "psnr_n": 1, "k_cal_err": 0.1, "k_cal_err_n": 1}


def test_population_radius_is_the_pixel_mean_of_abs_coc_over_all_samples():
    # a: 4x4 px at 1 m, focus 100 m -> |delta| = 1 - 1/100; b: 4x8 px, half at 0.5 m (in front of the 1-m focus,
    # |1 - 2| = 1) and half at 2 m (behind it, |1 - 0.5| = 0.5); pixel-weighted: b counts twice as much as a
    a = {"depth_m": torch.ones(1, 4, 4), "focus_m": torch.tensor(100.0)}
    b = {"depth_m": torch.cat([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 2.0)], dim=2), "focus_m": 1.0}
    mean_delta = (16 * 0.99 + 16 * 1.0 + 16 * 0.5) / 48
    assert compare.population_radius_px([a, b], [2.0, 5.0]) == pytest.approx([2 * mean_delta, 5 * mean_delta],
                                                                              rel=1e-6)
    with pytest.raises(ValueError, match="at least one sample"):
        compare.population_radius_px([], [2.0])


def test_scene_options_reach_the_synthetic_samples():
    assert compare.parse_scene_options(None, {}) == {}
    assert compare.parse_scene_options(None, {"scene_options": {"appearance_cues": 0.5}}) == {"appearance_cues": 0.5}
    assert compare.parse_scene_options('{"appearance_cues": 1.0}', {}) == {"appearance_cues": 1.0}
    with pytest.raises(SystemExit, match="scene-options"):
        compare.parse_scene_options("[1, 2]", {})
    with pytest.raises(SystemExit, match=r"--scene-options has unknown keys \['cues'\]"):
        compare.parse_scene_options('{"cues": 1.0}', {})
    plain = compare.synthetic_samples(1, 16, 0, 100.0)[0]
    cued = compare.synthetic_samples(1, 16, 0, 100.0, {"appearance_cues": 1.0})[0]
    assert torch.equal(plain["depth_m"], cued["depth_m"]) and not torch.equal(plain["image"], cued["image"])


def test_compare_writes_html_and_json_with_baselines(tmp_path):
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY))
    export_generator(module, tmp_path / "gen")
    rng = np.random.default_rng(0)
    pairs = tmp_path / "pairs" / "vabd"
    for sub in ("f16_input", "f2.8"):
        (pairs / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(pairs / sub / "0001.JPG")
    out = tmp_path / "out"
    results = compare.main(["--generator", str(tmp_path / "gen"), "--out", str(out), "--num-scenes", "1",
                            "--fit2d-scenes", "1", "--aperture-pairs", str(tmp_path / "pairs"), "--pair-width", "24",
                            "--steps", "1"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["K_px_m"] == [2.0, 4.0]
    syn = saved["sections"]["synthetic test split"]["summary"]
    assert set(syn) == {"learned", "learned_guided", "identity", "uniform_disk", "uniform_disk_population"}
    for key in ("psnr", "ssim", "k_cal_err"):
        assert math.isfinite(syn["uniform_disk_population"][key]), key
    # the depth-free radius: mean |K (1/focus - 1/depth)| over the evaluated scene's pixels, one per K
    depth = compare.synthetic_samples(1, 16, 0, 100.0)[0]["depth_m"].double()
    expected = [K * float((1 / 100.0 - 1 / depth).abs().mean()) for K in (2.0, 4.0)]
    assert saved["sections"]["synthetic test split"]["population_radius_px"] == pytest.approx(expected, rel=1e-6)
    assert [row["population_radius_px"] for row in saved["sections"]["synthetic test split"]["rows"]] == \
        pytest.approx(expected, rel=1e-6)
    # a fresh generator is the identity (zero-initialised residual): same numbers as the identity baseline
    assert syn["learned"]["psnr"] == pytest.approx(syn["identity"]["psnr"], abs=1e-3)
    assert syn["identity"]["k_cal_err"] > 0.5 and "k_cal_err_2d" in syn["learned"]
    rows = saved["sections"]["synthetic test split"]["rows"]
    assert all(isinstance(row["k_measurable"], bool) and row["k_sensitivity_rms"] >= 0 for row in rows)
    measurable = [row for row in rows if row["k_measurable"]]
    # this scene tells both K apart (K 2 and 4 px*m on the seed-0 synthetic scene), so the check below always runs
    assert len(measurable) == len(rows) == 2, [row["k_sensitivity_rms"] for row in rows]
    # the headline K error averages exactly the measurable rows
    assert syn["identity"]["k_cal_err_measurable_n"] == len(measurable)
    assert syn["identity"]["k_cal_err_measurable"] == pytest.approx(
        sum(row["identity"]["k_cal_err"] for row in measurable) / len(measurable))
    # the physics references are rendered at the focus the generator was trained on (the config default: 100 m)
    assert {row["focus_m"] for row in saved["sections"]["synthetic test split"]["rows"]} == {100.0}
    real = saved["sections"]["real aperture pairs"]
    from physics.camera import k_from_lens

    assert real["rows"][0]["K_px_m"] == pytest.approx(float(k_from_lens(50, 2.8, 2.0, 24, sensor_width_mm=22.5)))
    assert math.isfinite(real["summary"]["uniform_disk"]["psnr"])
    html = (out / "index.html").read_text()
    assert "uniform_disk_population" in html and "synthetic test split" in html and "grids/" in html and (out / saved["sections"]["synthetic test split"]["grids"][0][1]).is_file()
    assert results["sections"].keys() == saved["sections"].keys()


def test_a_layered_generator_gets_its_defocus_map_scored_against_the_true_one(tmp_path):
    """A fresh layered head renders a uniform map of defocus_init_inv_m = 0.5 1/m: its mean ratio to the scene's
    true |1/100 - 1/depth| is 0.5 / that mean (computed here from the scene), its correlation undefined (None)."""
    torch.manual_seed(0)
    overrides = [o for o in TINY if o != "model.compact.head=residual"] + ["model.compact.head=layered"]
    module, _ = build(load_config(["configs/stage1.yaml"], overrides))
    export_generator(module, tmp_path / "gen")
    compare.main(["--generator", str(tmp_path / "gen"), "--out", str(tmp_path / "out"), "--num-scenes", "1",
                  "--fit2d-scenes", "0", "--steps", "1", "--flux-guidance", "0", "--stack-guidance", "0",
                  "--map-oracles"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    summary = saved["sections"]["synthetic test split"]["summary"]
    assert set(compare.MAP_ORACLES) <= set(summary)
    assert summary["map_true"]["k_cal_err"] < 0.03  # the true map explains itself: the fit's floor
    row = saved["sections"]["synthetic test split"]["rows"][0]["learned"]
    depth = compare.synthetic_samples(1, 16, 0, 100.0)[0]["depth_m"].double()
    assert row["defocus_mean_ratio"] == pytest.approx(0.5 / float((1 / 100.0 - 1 / depth).abs().mean()), rel=1e-5)
    assert row["defocus_corr"] is None


def test_map_oracles_render_the_true_map_as_physics_does_and_remove_only_the_scale(tmp_path):
    """--map-oracles: the true map through the generator's head is physics.render_bokeh at the scene's depth (focus
    100 m: every surface in front, radius K (1/100 - 1/depth)); a learned map that is the true one times 0.5 becomes
    the true map at the true scale; the true map at the head's resolution is the true map when it is constant."""
    from lightning_modules.stage1 import load_generator
    from physics.render import render_bokeh

    torch.manual_seed(0)
    overrides = [o for o in TINY if o != "model.compact.head=residual"] + ["model.compact.head=layered"]
    module, _ = build(load_config(["configs/stage1.yaml"], overrides))
    export_generator(module, tmp_path / "gen")
    gen, _ = load_generator(tmp_path / "gen")
    assert gen.net.space_to_depth == 2
    sample = compare.synthetic_samples(1, 16, 0, 100.0)[0]
    image, depth, Ks = sample["image"], sample["depth_m"], [2.0, 4.0]
    true = compare.defocus_magnitude_inv_m(depth, 100.0)
    frames = compare.map_oracle_frames(gen, image, Ks, 0.5 * true[None].expand(2, -1, -1, -1), true)
    physics = render_bokeh(image[None].expand(2, -1, -1, -1), depth[None].expand(2, -1, -1, -1), torch.tensor(Ks),
                           torch.full((2,), 100.0)).clamp(0, 1)
    assert torch.allclose(frames["map_true"], physics, atol=1e-5)
    assert torch.allclose(frames["map_learned_true_scale"], frames["map_true"], atol=1e-5)
    assert not torch.allclose(frames["map_true_lowres"], frames["map_true"], atol=1e-3)  # edges are averaged
    plane = torch.full((1, 16, 16), 0.7)
    flat = compare.map_oracle_frames(gen, image, Ks, plane[None].expand(2, -1, -1, -1), plane)
    assert torch.allclose(flat["map_true_lowres"], flat["map_true"], atol=1e-6)


# ----------------------------------------------------------------------------- bad input: one error line, exit 2
@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    torch.manual_seed(0)
    module, _ = build(load_config(["configs/stage1.yaml"], TINY))
    path = tmp_path_factory.mktemp("gen")
    export_generator(module, path)
    return path


def _rgbd(folder, depth, image_hw=(16, 16)):
    """A one-row RGB-D manifest: a noise image of ``image_hw`` and ``depth`` (metres, saved as .npy)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*image_hw, 3), dtype=np.uint8)).save(folder / "rgb.png")
    np.save(folder / "depth.npy", np.asarray(depth, np.float32))
    (folder / "m.jsonl").write_text(json.dumps({"image": "rgb.png", "depth": "depth.npy"}) + "\n")
    return folder / "m.jsonl"


@pytest.mark.parametrize("case, expected", [
    ("missing_generator", "no Stage-1 generator at "),
    ("missing_rgbd", "manifest not found: "),
    ("negative_depth", "has negative values (min -1); expected metres >= 0"),
    ("wrong_shape_depth", "depth.npy is 8x8 (HxW) but its image"),
    ("all_invalid_depth", "has no valid pixel"),
    ("negative_k", "--K values must be finite strengths > 0 px*m; got -2 (in --K 2 -2)"),
    ("missing_pairs", "--aperture-pairs folder not found"),
    ("non_empty_out", "exists and is not empty; pass --overwrite"),
    ("zero_pair_width", "--pair-width must be a width in px >= 8, got 0"),
    ("nothing_to_compare", "nothing to compare: --num-scenes is 0 and neither --rgbd nor --aperture-pairs is given"),
    ("pairs_without_inputs", "has no f16_input/ folder; expected vabd/f16_input/ with the sharp inputs"),
    ("generator_config_without_k", "lacks ['k']; expected the generator.json a Stage-1 fit writes"),
    ("corrupt_generator_weights", "cannot read generator weights "),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, generator_dir, capsys, case, expected):
    gen, out, extra = generator_dir, tmp_path / "out", []
    if case == "missing_generator":
        gen = tmp_path / "no_generator"
    elif case == "missing_rgbd":
        extra = ["--rgbd", str(tmp_path / "nope.jsonl")]
    elif case == "negative_depth":
        extra = ["--rgbd", str(_rgbd(tmp_path, -np.ones((16, 16))))]
    elif case == "wrong_shape_depth":
        extra = ["--rgbd", str(_rgbd(tmp_path, np.ones((8, 8))))]
    elif case == "all_invalid_depth":
        extra = ["--rgbd", str(_rgbd(tmp_path, np.full((16, 16), np.nan)))]
    elif case == "negative_k":
        extra = ["--K", "2", "-2"]
    elif case == "missing_pairs":
        extra = ["--aperture-pairs", str(tmp_path / "no_pairs")]
    elif case == "non_empty_out":
        out.mkdir()
        (out / "results.json").write_text("previous")
    elif case == "zero_pair_width":
        (tmp_path / "pairs" / "vabd" / "f16_input").mkdir(parents=True)
        extra = ["--aperture-pairs", str(tmp_path / "pairs"), "--pair-width", "0"]
    elif case == "nothing_to_compare":
        extra = ["--num-scenes", "0"]
    elif case == "pairs_without_inputs":
        (tmp_path / "pairs" / "vabd" / "f2.8").mkdir(parents=True)
        extra = ["--aperture-pairs", str(tmp_path / "pairs")]
    elif case in ("generator_config_without_k", "corrupt_generator_weights"):
        gen = tmp_path / "broken"
        gen.mkdir()
        meta = json.loads((generator_dir / "generator.json").read_text())
        weights = (generator_dir / "generator.safetensors").read_bytes()
        if case == "generator_config_without_k":
            meta.pop("k")
        else:
            weights = weights[:40]
        (gen / "generator.json").write_text(json.dumps(meta))
        (gen / "generator.safetensors").write_bytes(weights)
    code = compare.cli(["--generator", str(gen), "--out", str(out), "--num-scenes", "1", "--steps", "1", *extra])
    assert code == 2
    line = error_line(capsys)
    assert expected in line, line
    if case == "wrong_shape_depth":
        assert "is 16x16" in line  # both shapes named
    if case == "non_empty_out":
        assert (out / "results.json").read_text() == "previous"
    else:
        assert not out.exists()


def test_cli_steps_below_one_is_a_usage_error(tmp_path, generator_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.cli(["--generator", str(generator_dir), "--out", str(tmp_path / "out"), "--steps", "0"])
    assert exit_info.value.code == 2 and "argument --steps: expected a whole number >= 1" in capsys.readouterr().err


def test_a_failed_overwrite_keeps_the_previous_output(tmp_path, generator_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    (out / "grids").mkdir(parents=True)
    (out / "results.json").write_text("previous")
    (out / "grids" / "a.png").write_bytes(b"previous grid")
    args = ["--generator", str(generator_dir), "--out", str(out), "--num-scenes", "1", "--steps", "1", "--overwrite"]
    assert compare.cli(args + ["--K", "-2"]) == 2  # refused before the folder is touched
    error_line(capsys)

    def fail(*_, **__):
        raise ValueError("failed halfway")

    monkeypatch.setattr(compare, "run_synthetic", fail)  # fails inside the output folder
    assert compare.cli(args) == 2
    assert "error: failed halfway" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "previous" and (out / "grids" / "a.png").read_bytes() == b"previous grid"
    assert sorted(p.name for p in out.iterdir()) == ["grids", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no hidden leftovers


def test_rgbd_depth_with_invalid_pixels_warns_with_their_count(tmp_path):
    depth = np.full((16, 16), 2.0)
    depth[:4] = np.nan
    depth[4, :3] = 0.0
    manifest = _rgbd(tmp_path, depth)
    with pytest.warns(UserWarning, match=r"depth.npy: 67 of 256 pixels are invalid \(0, NaN or inf"):
        samples = compare.rgbd_samples(manifest, 16, 100.0)
    assert len(samples) == 1 and bool(torch.isfinite(samples[0]["depth_m"]).all())
    _rgbd(tmp_path, np.ones((16, 8)), image_hw=(16, 16))
    with pytest.raises(ValueError, match=r"depth.npy is 16x8 \(HxW\) but its image .*rgb.png is 16x16"):
        compare.rgbd_samples(manifest, 16, 100.0)


def test_flip_average_is_recorded_and_reads_the_mirrored_scene(tmp_path):
    """A layered head whose output layer is not mirror-symmetric: --flip-average changes the learned frames (and
    only them) and is recorded in results.json and the notes."""
    torch.manual_seed(0)
    overrides = [o for o in TINY if o != "model.compact.head=residual"] + ["model.compact.head=layered"]
    module, _ = build(load_config(["configs/stage1.yaml"], overrides))
    with torch.no_grad():
        module.generator.net.unet.conv_out.weight.normal_(0, 0.05)
    export_generator(module, tmp_path / "gen")
    saved = {}
    for name, extra in (("plain", []), ("flip", ["--flip-average"])):
        compare.main(["--generator", str(tmp_path / "gen"), "--out", str(tmp_path / name), "--num-scenes", "1",
                      "--fit2d-scenes", "0", "--steps", "1", "--flux-guidance", "0", "--stack-guidance", "0", *extra])
        saved[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert saved["flip"]["flip_average"] is True and saved["plain"]["flip_average"] is False
    assert "(flip-averaged)" in saved["flip"]["notes"] and "(flip-averaged)" not in saved["plain"]["notes"]
    rows = {name: result["sections"]["synthetic test split"]["rows"][0] for name, result in saved.items()}
    assert rows["flip"]["learned"]["psnr"] != rows["plain"]["learned"]["psnr"]
    assert rows["flip"]["uniform_disk"]["psnr"] == rows["plain"]["uniform_disk"]["psnr"]
