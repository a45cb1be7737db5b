"""tools/probe_defocus_prior.py: the depth-free defocus-map probe (the K-calibration ceiling of the layered head)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests._tools import load_tool
from tests.test_stage1 import TINY

probe = load_tool("probe_defocus_prior")


def test_scale_figures_match_a_hand_computation():
    true = torch.tensor([[1.0, 3.0], [2.0, 2.0]]).view(2, 1, 1, 2)
    pred = torch.stack([true[0] * 0.5, true[1] * 2.0])  # scene 0 half as strong, scene 1 twice
    fig = probe.scale_figures(pred, true)
    assert fig["scale_log_err"] == pytest.approx(math.log(2.0))
    assert fig["scale_abs_err"] == pytest.approx((0.5 + 1.0) / 2)  # |0.5 - 1| and |2 - 1|
    assert fig["mean_ratio"] == pytest.approx((0.5 + 2.0) / 2)
    assert fig["mae_inv_m"] == pytest.approx((0.5 + 1.5 + 2.0 + 2.0) / 4)
    expected_r = float(torch.corrcoef(torch.stack([pred.flatten(), true.flatten()]))[0, 1])
    assert fig["corr"] == pytest.approx(expected_r)


def test_defocus_map_is_the_map_the_layered_head_renders():
    from lightning_modules.config import load_config

    cfg = load_config(["configs/stage1.yaml"], TINY)
    net, _ = probe.build_probe(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial map: perturb the zero-initialised output convolution
        net.unet.conv_out.weight.normal_(0, 0.3)
    sharp, x_t = torch.rand(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([1.0, 0.4])
    with torch.no_grad():
        _, rendered_map = net.predict(x_t, sigma, sharp, torch.tensor([0.7, 1.9]), torch.zeros(2, dtype=torch.bool))
        alone = net.defocus_map(x_t, sigma, sharp)
    assert float(alone.std()) > 1e-3
    assert torch.allclose(alone, rendered_map)


def test_the_probe_refuses_a_head_without_a_depth_free_map(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--config", "configs/stage1.yaml", "--out", str(tmp_path / "p"), *TINY,
                    "model.compact.head=residual"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit) as exit_info:  # TINY's batch is 4 scenes
        probe.main(["--config", "configs/stage1.yaml", "--out", str(tmp_path / "q"), "--num-train", "2", *TINY])
    assert exit_info.value.code == 2
    assert not (tmp_path / "q").exists()
    with pytest.raises(SystemExit) as exit_info:  # a misspelt scene option, named before anything is written
        probe.main(["--config", "configs/stage1.yaml", "--out", str(tmp_path / "r"), *TINY,
                    "data.synthetic.scene_options={appearance_cue: 1.0}"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "r").exists()


def test_a_tiny_probe_writes_its_figures_and_picture(tmp_path):
    out = tmp_path / "probe"
    result = probe.main(["--config", "configs/stage1.yaml", "--out", str(out), "--steps", "6", "--eval-every", "3",
                         "--num-train", "8", "--num-test", "4", *TINY])
    saved = json.loads((out / "probe.json").read_text())
    assert saved["steps"] == 6 and [c["step"] for c in saved["curve"]] == [0, 3, 6]
    assert saved["final"] == pytest.approx(result["final"])
    assert all(math.isfinite(saved["final"][k]) for k in ("mae_inv_m", "scale_log_err", "mean_ratio", "corr"))
    assert (out / "probe.png").stat().st_size > 0
    assert not list(out.glob("*.tmp*"))


def test_a_non_empty_out_is_a_usage_error_before_the_config_is_read(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("previous")
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--config", "missing.yaml", "--out", str(tmp_path / "p")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: output folder" in err and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "p" / "keep.txt").read_text() == "previous"
