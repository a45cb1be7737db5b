"""Procedural RGB-D scenes: determinism, ranges, occlusion structure, focus policy, highlights, Dataset,
appearance cues (haze, perspective texture scale)."""

from __future__ import annotations

import math

import pytest
import torch

from physics.camera import signed_coc_radius_px
from physics.scenes import SyntheticSceneDataset, _Rng, _texture, make_scene


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
    # the principal point is the image centre in the integer-pixel-centre convention (pixel x at column x), the
    # mean pixel coordinate, as for every other camera in the project: (w - 1) / 2, not w / 2
    assert s.intrinsics[0, 2].item() == pytest.approx(float(torch.arange(w).float().mean()))
    assert s.intrinsics[1, 2].item() == pytest.approx(float(torch.arange(h).float().mean()))


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


# ------------------------------------------------------------------------------------------------ appearance cues


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 decoding, written out here so the haze check does not reuse the code under test."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("seed, h, w, options", [(0, 48, 64, {}), (7, 33, 17, {"p_textureless": 0.0}),
                                                 (2_000_001, 64, 40, {"focus_policy": "none"})])
def test_appearance_cues_default_is_bit_identical(seed, h, w, options):
    a, b = make_scene(seed, h, w, **options), make_scene(seed, h, w, appearance_cues=0.0, **options)
    for name in ("image", "depth_m", "intrinsics", "hdr_gain", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.focus_m == b.focus_m and a.info["appearance_cues"] == 0.0


def test_appearance_cues_change_appearance_not_geometry():
    for seed in range(4):
        plain, cued = make_scene(seed, 48, 64, p_textureless=0.0), make_scene(seed, 48, 64, p_textureless=0.0,
                                                                              appearance_cues=0.5)
        assert torch.equal(plain.depth_m, cued.depth_m) and torch.equal(plain.labels, cued.labels)
        assert torch.equal(plain.intrinsics, cued.intrinsics) and plain.focus_m == cued.focus_m
        assert torch.equal(plain.hdr_gain > 1, cued.hdr_gain > 1)  # highlights at the same pixels
        assert not torch.equal(plain.image, cued.image) and cued.info["appearance_cues"] == 0.5


def test_haze_follows_the_transmittance_formula_on_flat_surfaces():
    # all surfaces textureless: the perspective scale changes nothing, so the a = 0 scene of the same seed is the
    # haze-free radiance, and every pixel must be t * radiance + (1 - t) * haze in linear light
    a, far = 0.8, 10.0
    haze = torch.tensor([0.70, 0.75, 0.80])[:, None, None]
    for seed in range(3):
        clear = make_scene(seed, 40, 56, p_textureless=1.0, depth_range_m=(0.5, far))
        hazy = make_scene(seed, 40, 56, p_textureless=1.0, depth_range_m=(0.5, far), appearance_cues=a)
        t = torch.exp(-a * hazy.depth_m / far)
        expected_linear = t * _srgb_to_linear(clear.image) * clear.hdr_gain + (1 - t) * haze
        # highlights included: the stored pixel times the stored gain is the hazed radiance (gain on the surface term)
        assert torch.allclose(_srgb_to_linear(hazy.image) * hazy.hdr_gain, expected_linear, rtol=1e-4, atol=1e-5)
        off = hazy.hdr_gain[0] == 1
        assert torch.allclose(hazy.image[:, off], _linear_to_srgb(expected_linear)[:, off], atol=2e-5)
        # the fronto-parallel subject (label 2) has one depth, so one transmittance: exp(-a * subject_z / far)
        subject = hazy.labels[0] == 2
        t_subject = math.exp(-a * hazy.info["subject_depth_m"] / far)
        assert torch.allclose(t[0][subject], torch.tensor(t_subject), rtol=1e-5)
        lin = t_subject * _srgb_to_linear(clear.image[:, subject & off]) + (1 - t_subject) * haze[:, 0]
        assert torch.allclose(hazy.image[:, subject & off], _linear_to_srgb(lin), atol=2e-5)
        assert (hazy.image - clear.image).abs().max() > 0.05  # the haze is visible, not a rounding effect


def _mean_abs_gradient(texture: torch.Tensor) -> float:
    lum = texture.mean(0)
    return float((lum[1:] - lum[:-1]).abs().mean() + (lum[:, 1:] - lum[:, :-1]).abs().mean())


@pytest.mark.parametrize("kind, tolerance", [("stripes", 0.05), ("checker", 0.08), ("noise", 0.15)])
def test_texture_features_shrink_with_depth(kind, tolerance):
    # the same surface twice as far (scale 1 vs 2 = z_ref / z) must show features half as large: edges / gradient
    # per pixel double. Measured on a 257-px frame (>= 6 periods of the coarsest texture), median over 12 draws;
    # noise lands below 2 because its finest octaves are floored at 1.5 px
    n = 257
    ys = (torch.arange(n, dtype=torch.float32) + 0.5 - n / 2) / n
    Y, X = torch.meshgrid(ys, ys, indexing="ij")
    ratios = [_mean_abs_gradient(_texture(_Rng(seed), kind, X, Y, n, scale=1.0)[0])
              / _mean_abs_gradient(_texture(_Rng(seed), kind, X, Y, n, scale=2.0)[0]) for seed in range(12)]
    assert abs(float(torch.tensor(ratios).median()) - 2.0) < 2.0 * tolerance, ratios


def test_scene_textures_get_finer_with_depth_only_with_cues():
    # per textured surface: gradient per unit contrast (1/px, a frequency) against depth over many scenes; the
    # slope of log frequency on log depth is ~0 without cues and clearly positive with them (1 before the 2-px
    # floor and finite surfaces bend it); a = 1e-3 leaves the haze negligible, so this isolates the texture scale
    slopes = {}
    for a in (0.0, 1e-3):
        xs, ys = [], []
        for seed in range(30):
            s = make_scene(seed, 96, 96, p_textureless=0.0, appearance_cues=a)
            lum, lab = s.image.mean(0), s.labels[0]
            interior = s.hdr_gain[0] == 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    interior &= torch.roll(lab, (dy, dx), (0, 1)) == lab
            interior = interior[:-1, :-1]
            grad = (lum[1:, :-1] - lum[:-1, :-1]).abs() + (lum[:-1, 1:] - lum[:-1, :-1]).abs()
            for surf in s.info["surfaces"]:
                m = interior & (lab[:-1, :-1] == surf["label"])
                if surf["texture"] in ("flat", "speckle") or m.sum() < 200 or lum[:-1, :-1][m].std() < 1e-3:
                    continue
                xs.append(math.log(float(s.depth_m[0, :-1, :-1][m].mean())))
                ys.append(math.log(float(grad[m].mean() / lum[:-1, :-1][m].std())))
                if a > 0:
                    assert surf["texture_scale"] == pytest.approx(s.info["texture_reference_depth_m"] / surf["depth_m"])
        x, y = torch.tensor(xs), torch.tensor(ys)
        slopes[a] = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert abs(slopes[0.0]) < 0.2 and slopes[1e-3] > 0.4, slopes


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "strong"])
def test_bad_appearance_cues_rejected(bad):
    with pytest.raises(ValueError, match="appearance_cues"):
        make_scene(0, 16, 16, appearance_cues=bad)
    with pytest.raises(ValueError, match="appearance_cues"):
        SyntheticSceneDataset(2, 16, 16, appearance_cues=bad)


def test_appearance_cues_reach_the_dataset():
    ds = SyntheticSceneDataset(2, 24, 32, seed=1, appearance_cues=0.6)
    assert torch.equal(ds[1]["image"], make_scene(1_000_003 + 1, 24, 32, appearance_cues=0.6).image)


def test_recorded_period_is_the_drawn_period_times_the_perspective_scale():
    # same seed, same draws: with cues the period as seen is the cue-free one times z_ref / z (floored at 2 px)
    checked = 0
    for seed in range(12):
        plain = make_scene(seed, 48, 48, appearance_cues=0.0).info["surfaces"]
        cued = make_scene(seed, 48, 48, appearance_cues=1.0).info["surfaces"]
        for p, c in zip(plain, cued):
            assert p["texture"] == c["texture"]
            if p["texture"] == "flat":
                assert p["period_px"] is None and c["period_px"] is None
                continue
            assert 3.0 <= p["period_px"] <= 40.0
            assert c["period_px"] == pytest.approx(max(p["period_px"] * c["texture_scale"], 2.0))
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("kwargs, words", [
    ({"height": math.nan}, "height must be an int number of px"),
    ({"height": 16.5}, "height must be an int number of px"),
    ({"seed": 0.5}, "seed must be an int"),
    ({"p_textureless": 2.0}, r"p_textureless must be a probability in \[0, 1\], got 2.0"),
    ({"p_slanted": math.nan}, r"p_slanted must be a probability in \[0, 1\]"),
    ({"highlights_per_mpx": -5.0}, "highlights_per_mpx must be a finite number >= 0, got -5.0"),
    ({"hfov_deg": (0.0, 0.0)}, r"hfov_deg must be \(lo, hi\) degrees, each in \(0, 180\)"),
    ({"hfov_deg": (170.0, 200.0)}, r"hfov_deg must be \(lo, hi\) degrees, each in \(0, 180\)"),
    ({"num_objects": 3}, r"num_objects must be a pair \(lo, hi\), got 3"),
    ({"num_objects": (1.5, 3)}, r"num_objects must be \(lo, hi\) of ints"),
    ({"depth_range_m": (1.0,)}, r"depth_range_m must be a pair \(near, far\)"),
])
def test_make_scene_refuses_bad_options(kwargs, words):
    args = {"seed": 0, "height": 16, "width": 16, **kwargs}
    with pytest.raises(ValueError, match=words):
        make_scene(**args)
