"""tools/bench_subpixel.py: the small-radius accuracy bench (supersampled reference, band-limited disk filter)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests._tools import load_tool

bench = load_tool("bench_subpixel")


def test_bandlimited_disk_scales_a_sinusoid_by_the_disk_mtf():
    n, period = 64, 4  # f = 0.25 cycles/px along x
    x = torch.arange(n, dtype=torch.float64)
    image = torch.cos(2 * math.pi * x / period).view(1, 1, n).expand(1, n, n)
    out = bench.bandlimited_disk(image, 1.0)
    # 2 J1(pi/2) / (pi/2) with J1(pi/2) = 0.566824 (tables): the disk of radius 1 px at 0.25 cycles/px
    assert float((out * image).sum() / (image * image).sum()) == pytest.approx(2 * 0.566824 / (math.pi / 2), abs=1e-5)
    assert out.shape == image.shape


def test_the_supersampled_reference_matches_a_blur_of_the_asked_radius(tmp_path):
    hi = bench.supersampled_scene(16, 8, seed=0)
    assert hi.shape == (3, 128, 128) and float(hi.min()) >= 0 and float(hi.max()) <= 1
    result = bench.main(["--out", str(tmp_path / "b"), "--size", "32", "--supersample", "8", "--radii", "0.5", "2",
                         "--scenes", "1"])
    saved = json.loads((tmp_path / "b" / "bench_subpixel.json").read_text())
    assert [row["psnr_renderer"] for row in saved["rows"]] == pytest.approx(
        [row["psnr_renderer"] for row in result["rows"]])
    small, big = saved["rows"]
    # a 2-px blur rendered either way is ~20x closer to the reference than no blur (measured 0.049 / 0.034; a
    # reference radius off by 0.3 px gives ~0.14-0.24): the reference has that radius
    assert big["rmse_ratio_renderer_vs_identity"] < 0.08 and big["rmse_ratio_bandlimited_vs_identity"] < 0.08
    # at 0.5 px the blur is sub-pixel but real: both renderings beat "no blur" clearly (measured 0.58 / 0.46)
    assert small["rmse_ratio_renderer_vs_identity"] < 0.8 and small["rmse_ratio_bandlimited_vs_identity"] < 0.8
    assert (tmp_path / "b" / "bench_subpixel.png").stat().st_size > 0


def test_radii_outside_the_benchable_range_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path / "b"), "--radii", "0", "1"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path / "b"), "--size", "64", "--radii", "9"])


@pytest.mark.parametrize("out", ["full", "file/sub"])
def test_an_unusable_out_is_a_usage_error_before_any_scene(tmp_path, capsys, out):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("previous")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--out", str(tmp_path / out), "--size", "32", "--supersample", "2", "--radii", "1", "--scenes", "1"])
    assert stop.value.code == 2
    assert "error: output" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "previous"
