"""Depth metrics and the SILog loss against numbers computed by hand (plain Python math on small tensors)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from bokeh.depth import silog_loss
from bokeh.metrics import DEPTH_METRIC_KEYS, DepthMetrics, crop_mask, depth_errors_per_image


def _hand(pred: list[float], gt: list[float]) -> dict[str, float]:
    """Reference metrics of one image over the listed (already valid) pixels."""
    n = len(gt)
    e = [math.log(p) - math.log(g) for p, g in zip(pred, gt)]
    ratio = [max(p / g, g / p) for p, g in zip(pred, gt)]
    return {
        "abs_rel": sum(abs(p - g) / g for p, g in zip(pred, gt)) / n,
        "sq_rel": sum((p - g) ** 2 / g for p, g in zip(pred, gt)) / n,
        "rmse": math.sqrt(sum((p - g) ** 2 for p, g in zip(pred, gt)) / n),
        "rmse_log": math.sqrt(sum(x * x for x in e) / n),
        "log10": sum(abs(math.log10(p) - math.log10(g)) for p, g in zip(pred, gt)) / n,
        "delta1": sum(r < 1.25 for r in ratio) / n,
        "delta2": sum(r < 1.25**2 for r in ratio) / n,
        "delta3": sum(r < 1.25**3 for r in ratio) / n,
        "silog": 100 * math.sqrt(max(0.0, sum(x * x for x in e) / n - (sum(e) / n) ** 2)),
    }


def test_single_image_matches_hand_computation() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    gt = torch.tensor([[1.0, 1.0], [4.0, 0.0]])  # gt = 0 is invalid
    metric = DepthMetrics(min_depth_m=1e-3, max_depth_m=10.0)
    metric.update(pred, gt)
    got = metric.compute()
    want = _hand([1.0, 2.0, 3.0], [1.0, 1.0, 4.0])
    assert want["abs_rel"] == pytest.approx(5 / 12)  # (0 + 1 + 1/4) / 3
    for key in DEPTH_METRIC_KEYS:
        assert float(got[key]) == pytest.approx(want[key], rel=1e-12), key


def test_average_is_per_image_not_per_pixel() -> None:
    pred = torch.tensor([[[[2.0, 1.0], [1.0, 1.0]]], [[[1.5, 3.0], [2.0, 8.0]]]])  # [2,1,2,2]
    gt = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 2.0], [2.0, 4.0]]]])
    mask = torch.tensor([[[[True, False], [False, False]]], [[[True, True], [True, True]]]])
    metric = DepthMetrics()
    metric.update(pred, gt, mask)
    got = metric.compute()
    a, b = _hand([2.0], [1.0]), _hand([1.5, 3.0, 2.0, 8.0], [1.0, 2.0, 2.0, 4.0])
    pooled = _hand([2.0, 1.5, 3.0, 2.0, 8.0], [1.0, 1.0, 2.0, 2.0, 4.0])
    for key in DEPTH_METRIC_KEYS:
        assert float(got[key]) == pytest.approx((a[key] + b[key]) / 2, rel=1e-12, abs=1e-12), key
    assert float(got["abs_rel"]) != pytest.approx(pooled["abs_rel"])
    assert int(metric.num_images) == 2


def test_caps_clamp_predictions_and_drop_far_ground_truth() -> None:
    pred = torch.tensor([[0.0001, 50.0, 5.0]])
    gt = torch.tensor([[1.0, 8.0, 20.0]])  # 20 m is beyond the 10 m cap
    got = DepthMetrics(min_depth_m=0.5, max_depth_m=10.0)
    got.update(pred, gt)
    want = _hand([0.5, 10.0], [1.0, 8.0])  # predictions clamped to [0.5, 10]
    for key in DEPTH_METRIC_KEYS:
        assert float(got.compute()[key]) == pytest.approx(want[key], rel=1e-12), key


def test_update_overrides_caps_and_skips_empty_images() -> None:
    metric = DepthMetrics(max_depth_m=10.0)
    metric.update(torch.full((1, 1, 2, 2), 30.0), torch.full((1, 1, 2, 2), 40.0), max_depth_m=80.0)
    metric.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))  # no valid pixel: skipped
    out = metric.compute()
    assert float(out["abs_rel"]) == pytest.approx(0.25)
    assert int(metric.num_images) == 1 and int(metric.num_skipped) == 1


def test_scale_invariance_of_silog() -> None:
    gt = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    metric = DepthMetrics()
    metric.update(2 * gt, gt)
    out = metric.compute()
    assert float(out["silog"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["abs_rel"]) == pytest.approx(1.0)
    assert float(out["delta3"]) == 0.0  # ratio 2 > 1.25^3 = 1.95
    metric.reset()
    metric.update(1.9 * gt, gt)
    assert float(metric.compute()["delta2"]) == 0.0 and float(metric.compute()["delta3"]) == 1.0


def test_merged_states_equal_one_pass() -> None:
    """DDP reduces states by summation; merging two processes' states must equal one metric over all images."""
    torch.manual_seed(0)
    gt = torch.rand(4, 1, 3, 3) * 5 + 0.5
    pred = gt * (1 + 0.3 * torch.randn_like(gt)).abs()
    whole, part1, part2 = DepthMetrics(), DepthMetrics(), DepthMetrics()
    whole.update(pred, gt)
    part1.update(pred[:1], gt[:1])
    part2.update(pred[1:], gt[1:])
    part1.merge_state(part2)
    for key in DEPTH_METRIC_KEYS:
        assert float(part1.compute()[key]) == pytest.approx(float(whole.compute()[key]), rel=1e-12)


def test_compute_without_data_warns_and_returns_nan() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = DepthMetrics().compute()
    assert any("no valid image" in str(w.message) for w in caught)
    assert all(math.isnan(float(v)) for v in out.values())


def test_crops() -> None:
    nyu = crop_mask(480, 640, "eigen_nyu")
    assert int(nyu.sum()) == (471 - 45) * (601 - 41) and bool(nyu[45, 41]) and not bool(nyu[44, 41])
    garg = crop_mask(352, 1216, "garg_kitti")
    assert int(garg.sum()) == (int(0.99189189 * 352) - int(0.40810811 * 352)) * (int(0.96405229 * 1216) - int(0.03594771 * 1216))
    metric = DepthMetrics(crop="eigen_nyu")
    pred, gt = torch.ones(1, 1, 480, 640), torch.ones(1, 1, 480, 640)
    pred[..., :10, :] = 5.0  # outside the crop: ignored
    metric.update(pred, gt)
    assert float(metric.compute()["abs_rel"]) == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: depth_errors_per_image(torch.ones(2, 2), torch.ones(3, 2)), "differ in shape"),
        (lambda: depth_errors_per_image(torch.ones(2, 2), torch.ones(2, 2), max_depth_m=0.0), "min_depth_m"),
        (lambda: depth_errors_per_image(torch.full((2, 2), float("nan")), torch.ones(2, 2)), "NaN"),
        (lambda: depth_errors_per_image(torch.ones(2, 2), torch.ones(2, 2), torch.ones(1, 2, 2).bool()), "valid_mask"),
        (lambda: DepthMetrics(crop="cityscapes"), "unknown crop"),
        (lambda: depth_errors_per_image(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2)), r"\[B,1,H,W\]"),
    ],
)
def test_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- SILog loss
def test_silog_loss_matches_hand_computation() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 9.0]]]])
    gt = torch.tensor([[[[2.0, 2.0], [1.0, 3.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])
    g = [math.log(2.0 / 1.0), math.log(2.0 / 2.0), math.log(1.0 / 4.0)]
    for lam in (0.0, 0.5, 0.85):
        want = math.sqrt(sum(x * x for x in g) / 3 - lam * (sum(g) / 3) ** 2)
        assert float(silog_loss(pred, gt, mask, lambda_=lam)) == pytest.approx(want, rel=1e-6)


def test_silog_loss_is_scale_invariant_at_lambda_one_and_differentiable() -> None:
    gt = torch.tensor([1.0, 2.0, 4.0])
    pred = (3 * gt).requires_grad_(True)
    loss = silog_loss(pred, gt, None, lambda_=1.0)
    assert float(loss.detach()) < 1e-5
    loss.backward()
    assert bool(torch.isfinite(pred.grad).all())


def test_silog_loss_empty_mask() -> None:
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    gt = torch.ones(1, 1, 2, 2)
    empty = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    loss = silog_loss(pred, gt, empty)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert float(pred.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="no valid pixel"):
        silog_loss(pred, gt, empty, on_empty="raise")
    # gt <= 0 counts as invalid too
    assert float(silog_loss(pred, torch.zeros_like(gt), None).detach()) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gt_m=torch.ones(3)), "differ in shape"),
        (dict(lambda_=1.5), "lambda_"),
        (dict(mask=torch.ones(3, dtype=torch.bool)), "mask"),
        (dict(on_empty="nan"), "on_empty"),
    ],
)
def test_silog_loss_bad_input(kwargs, match: str) -> None:
    args = dict(pred_m=torch.ones(2, 2), gt_m=torch.ones(2, 2), mask=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        silog_loss(**args)


def test_silog_loss_computes_in_float32_for_bf16_predictions() -> None:
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0])
    pred = (gt * torch.tensor([1.01, 0.99, 1.02, 0.98])).to(torch.bfloat16)
    loss = silog_loss(pred, gt, None, lambda_=0.5)
    g = torch.log(gt) - torch.log(pred.float())
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(torch.sqrt((g**2).mean() - 0.5 * g.mean() ** 2)), rel=1e-6)
