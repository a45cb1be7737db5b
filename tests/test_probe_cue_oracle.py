"""tools/probe_cue_oracle.py: how much of a scene's metric defocus scale its appearance reveals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from physics.scenes import make_scene
from tests._tools import load_tool

oracle = load_tool("probe_cue_oracle")
SMALL = ["--workers", "1", "data.height=32", "data.width=32"]


def test_features_describe_each_surface_in_its_slot():
    scene = make_scene(3, 32, 32, appearance_cues=1.0)
    feats = oracle.scene_features(scene)
    assert len(feats) == oracle.SURFACE_SLOTS * oracle.SLOT_FEATURES + oracle.HIGHLIGHT_FEATURES
    slots = torch.tensor(feats[: oracle.SURFACE_SLOTS * oracle.SLOT_FEATURES]).view(oracle.SURFACE_SLOTS, -1)
    labels = scene.labels[0]
    for label in range(oracle.SURFACE_SLOTS):
        visible = int(((labels == label) & (scene.hdr_gain[0] == 1)).sum())
        if visible == 0:
            assert torch.all(slots[label] == 0)
        else:  # present flag, then the log of the footprint's share of the frame
            assert slots[label, 0] == 1 and slots[label, 1] == pytest.approx(math.log(visible / 32**2), abs=1e-5)


def test_target_is_the_log_mean_defocus():
    scene = make_scene(5, 24, 24)
    expected = math.log(float((1 / 100.0 - 1 / scene.depth_m.double()).abs().mean()))
    assert oracle.log_mean_defocus(scene, 100.0) == pytest.approx(expected)
    own = math.log(float((1 / scene.focus_m - 1 / scene.depth_m.double()).abs().mean()))
    assert oracle.log_mean_defocus(scene, None) == pytest.approx(own)


def test_scale_errors_match_a_hand_computation():
    true = torch.tensor([0.0, 1.0])
    pred = torch.tensor([math.log(2.0), 1.0 - math.log(2.0)])  # twice, then half the true scale
    err = oracle.scale_errors(pred, true)
    assert err["mean_abs_log_s"] == pytest.approx(math.log(2.0))
    assert err["mean_abs_s_minus_1"] == pytest.approx((1.0 + 0.5) / 2)


def test_the_oracle_reads_scale_from_cues_and_not_without_them(tmp_path):
    # strong haze + perspective texture (a = 3) tell the scale: well below the prior alone; a = 0 scenes hide it
    ratios = {}
    for a in (0.0, 3.0):
        result = oracle.main(["--out", str(tmp_path / f"a{a}"), "--num-train", "300", "--sizes", "1",
                              "--num-test", "80", "--steps", "200", "--kcal-scenes", "0", *SMALL,
                              f"data.synthetic.scene_options={{appearance_cues: {a}}}"])
        ratios[a] = result["sizes"][-1]["mean_abs_s_minus_1"] / result["prior_only"]["mean_abs_s_minus_1"]
    assert ratios[3.0] < 0.8 and ratios[0.0] > 0.9, ratios


def test_outputs_are_written_with_one_row_per_training_size(tmp_path):
    out = tmp_path / "o"
    result = oracle.main(["--out", str(out), "--num-train", "64", "--sizes", "2", "--num-test", "16",
                          "--steps", "20", "--kcal-scenes", "2", *SMALL])
    saved = json.loads((out / "cue_oracle.json").read_text())
    assert [row["num_train"] for row in saved["sizes"]] == [32, 64]
    k_cal = saved["k_cal"]
    assert k_cal["num_scenes"] == 2 and len(k_cal["rows"]) == 2 * len(k_cal["K_px_m"])
    assert all(0 <= r[m] for r in k_cal["rows"] for m in oracle.MAP_NAMES)
    for row, returned in zip(saved["sizes"], result["sizes"]):
        assert row == pytest.approx(returned)
        assert 0 <= row["mean_abs_s_minus_1"] < 2  # 32-64 scenes: poor, but no scale off by orders of magnitude
    assert (out / "cue_oracle.png").stat().st_size > 0
    assert not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("bad", [["data.synthetic.scene_options={appearance_cue: 1.0}"],  # misspelt option
                                 ["data.kind=rgbd_manifest"]])
def test_bad_settings_fail_before_anything_is_written(tmp_path, bad):
    with pytest.raises(SystemExit) as exit_info:
        oracle.main(["--out", str(tmp_path / "o"), "--num-train", "32", "--sizes", "1", *SMALL, *bad])
    assert exit_info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_too_few_scenes_for_the_sizes_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        oracle.main(["--out", str(tmp_path / "o"), "--num-train", "64", "--sizes", "4"])
    assert "--sizes" in capsys.readouterr().err


def test_k_calibration_of_a_scaled_true_map_is_the_scale_error():
    # s x (1/focus - 1/depth) at K is exactly the physics render at s K, so the fit must read |s - 1|
    scene = make_scene(4, 64, 64, appearance_cues=1.0)  # measurable at both K
    true = 1.0 / 100.0 - 1.0 / scene.depth_m
    rows = oracle.k_cal_errors(scene.image, scene.depth_m, 100.0, [3.0, 6.0], (0.5, 8.0),
                               {"true": true, "times_1.3": 1.3 * true, "times_0.7": 0.7 * true})
    assert [r["K_px_m"] for r in rows] == [3.0, 6.0] and all(r["k_measurable"] for r in rows)
    for r in rows:
        assert r["true"] < 0.01
        assert r["times_1.3"] == pytest.approx(0.3, abs=0.02)
        assert r["times_0.7"] == pytest.approx(0.3, abs=0.02)
        assert r["times_1.3_K_fit_px_m"] == pytest.approx(1.3 * r["K_px_m"], rel=0.02)
    # a K calibration: the 0.7 x map rendered at K / 0.7 reads as K again
    calibrated = oracle.k_cal_errors(scene.image, scene.depth_m, 100.0, [3.0, 6.0], (0.5, 8.0),
                                     {"times_0.7": 0.7 * true, "plain": 0.7 * true},
                                     render_gains={"times_0.7": [1 / 0.7, 1 / 0.7]})
    assert all(r["times_0.7"] < 0.02 for r in calibrated)
    assert all(r["plain"] == pytest.approx(0.3, abs=0.02) for r in calibrated)  # the gains are per map


def test_surface_targets_are_the_log_mean_inverse_depth_of_each_visible_surface():
    scene = make_scene(4, 32, 32)
    targets = oracle.surface_log_inv_depth(scene)
    labels = scene.labels[0]
    for label, value in enumerate(targets):
        mask = labels == label
        if not mask.any():
            assert math.isnan(value)
        else:
            assert value == pytest.approx(math.log(float((1 / scene.depth_m[0][mask].double()).mean())))


def test_an_out_under_a_file_is_a_usage_error_before_any_scene(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        oracle.main(["--out", str(tmp_path / "file" / "o"), "--num-train", "16", "--sizes", "1", "--num-test", "4",
                     "--kcal-scenes", "0"])
    assert exit_info.value.code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
