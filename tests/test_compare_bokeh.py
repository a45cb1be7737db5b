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
from _tools import load_tool

TINY = ["data.height=16", "data.width=16", "model.compact.unet.block_out_channels=[16, 32]",
        "model.compact.unet.cross_attention_dim=16", "model.compact.unet.attention_head_dim=8",
        "eval.num_steps=2", "k.min=1.0", "k.max=4.0", "eval.K_px_m=[2.0, 4.0]"]


compare = load_tool("compare_bokeh", "tool_compare_bokeh")


def test_k_calibration_fit_recovers_the_physics_k():
    from physics.render import render_bokeh
    from physics.scenes import make_scene

    scene = make_scene(3, 48, 48)
    for K in (1.5, 4.0):
        observed = render_bokeh(scene.image[None], scene.depth_m[None], torch.tensor([K]),
                                torch.tensor([scene.focus_m]))[0].clamp(0, 1)
        k_fit = compare.fit_k(scene.image, scene.depth_m, scene.focus_m, observed, 0.3, 8.0)
        assert abs(k_fit - K) / K < 0.08, (K, k_fit)
    # the sharp input is explained by (almost) no blur: a large calibration error for the identity baseline
    assert compare.fit_k(scene.image, scene.depth_m, scene.focus_m, scene.image, 0.3, 8.0) < 0.6


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
    assert set(syn) == {"learned", "learned_guided", "identity", "uniform_disk"}
    # a fresh generator is the identity (zero-initialised residual): same numbers as the identity baseline
    assert syn["learned"]["psnr"] == pytest.approx(syn["identity"]["psnr"], abs=1e-3)
    assert syn["identity"]["k_cal_err"] > 0.5 and "k_cal_err_2d" in syn["learned"]
    # the physics references are rendered at the focus the generator was trained on (the config default: 100 m)
    assert {row["focus_m"] for row in saved["sections"]["synthetic test split"]["rows"]} == {100.0}
    real = saved["sections"]["real aperture pairs"]
    from physics.camera import k_from_lens

    assert real["rows"][0]["K_px_m"] == pytest.approx(float(k_from_lens(50, 2.8, 2.0, 24, sensor_width_mm=22.5)))
    assert math.isfinite(real["summary"]["uniform_disk"]["psnr"])
    html = (out / "index.html").read_text()
    assert "synthetic test split" in html and "grids/" in html and (out / saved["sections"]["synthetic test split"]["grids"][0][1]).is_file()
    assert results["sections"].keys() == saved["sections"].keys()
