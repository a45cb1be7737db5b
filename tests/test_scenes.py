"""Procedural RGB-D scenes: determinism, ranges, occlusion structure, focus policy, highlights, Dataset."""

from __future__ import annotations

import pytest
import torch

from physics.camera import signed_coc_radius_px
from physics.scenes import SyntheticSceneDataset, make_scene


def test_same_seed_gives_identical_scene():
    a, b = make_scene(7, 48, 64), make_scene(7, 48, 64)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth_m, b.depth_m)
    assert torch.equal(a.intrinsics, b.intrinsics) and a.focus_m == b.focus_m
    assert torch.equal(a.hdr_gain, b.hdr_gain)


def test_different_seeds_differ():
    a, b = make_scene(1, 48, 64), make_scene(2, 48, 64)
    assert not torch.equal(a.image, b.image)
    assert not torch.equal(a.depth_m, b.depth_m)


@pytest.mark.parametrize("h, w", [(17, 31), (64, 40), (9, 200)])
def test_shapes_at_odd_sizes(h, w):
    s = make_scene(3, h, w)
    assert s.image.shape == (3, h, w) and s.depth_m.shape == (1, h, w) and s.hdr_gain.shape == (1, h, w)
    assert s.intrinsics.shape == (3, 3)
    assert s.intrinsics[0, 2].item() == pytest.approx(w / 2) and s.intrinsics[1, 2].item() == pytest.approx(h / 2)


def test_depth_positive_finite_within_range_and_image_in_unit_range():
    for seed in range(10):
        s = make_scene(seed, 40, 56, depth_range_m=(0.5, 10.0))
        assert torch.isfinite(s.depth_m).all()
        assert s.depth_m.min() >= 0.5 - 1e-6 and s.depth_m.max() <= 10.0 + 1e-5
        assert s.image.min() >= 0 and s.image.max() <= 1


def test_custom_depth_range_respected():
    s = make_scene(5, 32, 32, depth_range_m=(2.0, 3.0))
    assert s.depth_m.min() >= 2.0 - 1e-6 and s.depth_m.max() <= 3.0 + 1e-6


def test_occlusion_structure_has_depth_discontinuities_and_several_depths():
    counts = []
    for seed in range(8):
        d = make_scene(seed, 64, 64).depth_m[0]
        inv = 1.0 / d
        # a jump of > 10% in inverse depth between neighbours is an occlusion edge, not a plane's slope
        jumps = ((inv[:, 1:] - inv[:, :-1]).abs() / inv[:, 1:] > 0.1).sum()
        counts.append(int(jumps))
        assert len(torch.unique(torch.round(d * 20))) >= 3  # surfaces at several depths
    assert min(counts) > 0


def test_focus_policy_nearest_puts_scene_behind_focal_plane():
    for seed in range(10):
        s = make_scene(seed, 32, 48)
        assert s.focus_m == pytest.approx(s.depth_m.min().item(), rel=1e-5)
        r = signed_coc_radius_px(s.depth_m[None], 5.0, s.focus_m)
        assert r.min() >= -1e-4
        # the subject is visible and in focus (r ~ 0) somewhere
        assert (r.abs() < 1e-3).any()


def test_focus_policy_none_has_both_signs():
    front, behind = [], []
    for seed in range(6):
        s = make_scene(seed, 32, 48, focus_policy="none")
        assert s.focus_m == pytest.approx(s.depth_m.median().item())
        r = signed_coc_radius_px(s.depth_m[None], 5.0, s.focus_m)
        front.append(bool((r < -0.01).any()))
        behind.append(bool((r > 0.01).any()))
    assert all(front) and any(behind)


def test_textured_and_textureless_regions_exist():
    # local variance over 5x5 windows: some windows flat (textureless surfaces), some strongly textured
    flat_frac, textured_frac = [], []
    for seed in range(6):
        img = make_scene(seed, 64, 64, p_textureless=0.5).image.mean(0, keepdim=True)[None]
        mean = torch.nn.functional.avg_pool2d(img, 5, 1)
        var = torch.nn.functional.avg_pool2d(img**2, 5, 1) - mean**2
        flat_frac.append(float((var < 1e-4).float().mean()))
        textured_frac.append(float((var > 1e-2).float().mean()))
    assert max(flat_frac) > 0.2 and max(textured_frac) > 0.2


def test_highlights_bright_small_and_hdr():
    s = make_scene(11, 128, 128, highlights_per_mpx=1000.0)
    hl = s.hdr_gain[0] > 1
    assert 10 <= hl.sum() <= 16 * 25  # ~16 discs of radius <= 2 px
    assert s.image[:, hl].min() >= 0.95  # bright in sRGB
    assert s.image[:, ~hl].max() <= 0.9  # everything else stays below the highlights
    assert s.hdr_gain.max() <= 30.0 and s.hdr_gain.min() == 1.0


def test_texture_independent_of_depth():
    # across many scenes, image contrast (a texture cue) is uncorrelated with depth
    xs, ys = [], []
    for seed in range(20):
        s = make_scene(seed, 48, 48, p_textureless=0.3)
        gy = (s.image[:, 1:, :-1] - s.image[:, :-1, :-1]).abs().mean(0)
        d = s.depth_m[0, :-1, :-1]
        lab = s.labels[0, :-1, :-1]
        for k in lab.unique():
            m = lab == k
            if m.sum() > 50:
                xs.append(float(torch.log(d[m]).mean()))
                ys.append(float(gy[m].mean()))
    corr = torch.corrcoef(torch.tensor([xs, ys]))[0, 1]
    assert abs(float(corr)) < 0.3


def test_dataset_items_and_determinism():
    ds = SyntheticSceneDataset(5, 24, 40, seed=3)
    assert len(ds) == 5
    item = ds[2]
    assert set(item) >= {"image", "depth_m", "intrinsics", "focus_m"}
    assert item["image"].shape == (3, 24, 40) and item["focus_m"].shape == ()
    assert torch.equal(item["depth_m"], SyntheticSceneDataset(5, 24, 40, seed=3)[2]["depth_m"])
    assert not torch.equal(item["image"], ds[3]["image"])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 24, 40) and batch["focus_m"].shape == (2,)
    with pytest.raises(IndexError):
        ds[5]


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="depth_range_m"):
        make_scene(0, 16, 16, depth_range_m=(3.0, 1.0))
    with pytest.raises(ValueError, match="height and width"):
        make_scene(0, 4, 16)
    with pytest.raises(ValueError, match="focus_policy"):
        make_scene(0, 16, 16, focus_policy="middle")
    with pytest.raises(ValueError, match="num_objects"):
        make_scene(0, 16, 16, num_objects=(3, 1))
    with pytest.raises(ValueError, match="num_scenes"):
        SyntheticSceneDataset(0, 16, 16)
