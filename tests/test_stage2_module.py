"""Stage-2 LightningModule pieces: base-model config, stack switch, LR schedule, comparison table, synthetic splits."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.config import load_config
from lightning_modules.stage2 import Stage2Module, base_config, comparison, variant_configs, warmup_cosine


def test_base_config_switches_dsfa_and_stack_off():
    cfg = load_config(["stage2_smoke"])
    variants = variant_configs(cfg)
    assert list(variants) == ["base", "bokehdepth"]
    base = variants["base"]
    assert base.use_stack is False and base.model.dsfa.enabled is False
    assert cfg.use_stack is True and cfg.model.dsfa.enabled is True  # the original is untouched
    # everything else is the same budget and data
    for key in ("trainer", "data", "optim", "loss", "seed"):
        assert base[key] == cfg[key]


def test_base_module_ignores_the_stack_and_matches_the_fresh_bokehdepth_model():
    cfg = load_config(["stage2_smoke"])
    torch.manual_seed(0)
    ours = Stage2Module(cfg)
    torch.manual_seed(0)
    base = Stage2Module(base_config(cfg))
    assert ours.model.dsfa_enabled and not base.model.dsfa_enabled
    image, stack, K = torch.rand(2, 3, 28, 28), torch.rand(2, 2, 3, 28, 28), torch.tensor([[2.0, 5.0], [2.0, 5.0]])
    ours.eval(), base.eval()
    with torch.no_grad():
        out_base = base(image, stack, K)
        assert torch.equal(out_base, base(image))  # the stack is dropped
        # zero-initialised DSFA: before training BokehDepth is the base model, bit for bit (same seed, same weights)
        assert torch.equal(ours(image, stack, K), out_base)


def test_warmup_cosine_schedule():
    f = warmup_cosine(total=100, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_comparison_table_ratios():
    base = {"abs_rel": 0.4, "rmse": 2.0, "delta1": 0.5}
    ours = {"abs_rel": 0.2, "rmse": 1.0, "delta1": 0.8}
    table = comparison({"base": {"test": base, "fit_s": 10.0, "test_s": 1.0}, "bokehdepth": {"test": ours, "fit_s": 12.0, "test_s": 1.0}})
    assert table["abs_rel_ratio"] == pytest.approx(0.5) and table["goal_met"]
    assert table["ratio"]["delta1"] == pytest.approx(1.6)
    assert "| abs_rel (lower is better) | 0.4000 | 0.2000 | 0.500 |" in table["markdown"]
    assert "goal <= 0.75: met" in table["markdown"]


def test_synthetic_splits_are_disjoint_and_deterministic(monkeypatch):
    from lightning_modules import data
    from lightning_modules.data import SyntheticStackDataModule

    monkeypatch.setattr(data, "_SPLIT_CACHE", {})  # every split below is rendered here, not taken from another test
    settings = dict(height=28, width=28, num_train=6, num_val=3, num_test=3, K_px_m=[2.0, 5.0], batch_size=3)
    dm = SyntheticStackDataModule(**settings)
    seeds = {s: set(dm.split_seeds(s)) for s in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"]) and not (seeds["val"] & seeds["test"])
    dm.setup("test")
    sample = dm.datasets["test"][0]
    assert sample["image"].shape == (3, 28, 28) and sample["stack"].shape == (2, 3, 28, 28)
    assert sample["K_px_m"].tolist() == [2.0, 5.0] and sample["valid"].all()
    # the stack really is blurred more with larger K (energy of the Laplacian falls)
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)

    def sharpness(x: torch.Tensor) -> float:
        return torch.nn.functional.conv2d(x.mean(0, keepdim=True)[None], lap).abs().mean().item()

    s0, s1, s2 = sharpness(sample["image"]), sharpness(sample["stack"][0]), sharpness(sample["stack"][1])
    assert s0 > s1 > s2
    # deterministic: a second DataModule with the same settings renders the same split again (not the in-memory
    # copy: that cache is emptied first), bit for bit; another seed renders other scenes
    data._SPLIT_CACHE.clear()
    again = SyntheticStackDataModule(**settings)
    again.setup("test")
    assert again.datasets["test"].split is not dm.datasets["test"].split
    for i in range(3):
        a, b = dm.datasets["test"][i], again.datasets["test"][i]
        assert a["name"] == b["name"]
        for key in ("image", "stack", "depth_m", "valid", "K_px_m", "focus_m", "intrinsics"):
            assert torch.equal(a[key], b[key]), (i, key)
    other = SyntheticStackDataModule(**dict(settings, seed=1))
    other.setup("test")
    c = other.datasets["test"][0]
    assert not torch.equal(c["image"], sample["image"]) and not torch.equal(c["stack"], sample["stack"])
    assert not torch.equal(c["depth_m"], sample["depth_m"])


def test_synthetic_disk_cache_round_trip(tmp_path, monkeypatch):
    from lightning_modules import data

    kwargs = dict(height=28, width=28, num_train=2, num_val=2, num_test=2, K_px_m=[3.0], cache_dir=str(tmp_path))
    monkeypatch.setattr(data, "_SPLIT_CACHE", {})
    first = data.SyntheticStackDataModule(**kwargs).load_split("test")
    files = list(tmp_path.glob("synthetic_*.pt"))
    assert len(files) == 1
    # the second load reads the file: rendering is not possible any more, and every field comes back intact
    data._SPLIT_CACHE.clear()

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again although the split is cached on disk")

    monkeypatch.setattr(data, "render_synthetic_split", no_render)
    second = data.SyntheticStackDataModule(**kwargs).load_split("test")
    for field in ("image", "stack", "depth_m", "K_px_m", "focus_m", "intrinsics", "seeds"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
        assert getattr(first, field).dtype == getattr(second, field).dtype, field
    # ...and what it returns is the file's content: a marker written into the file comes back
    stored = torch.load(files[0], weights_only=True)
    stored["depth_m"] = torch.full_like(stored["depth_m"], 7.25)
    torch.save(stored, files[0])
    data._SPLIT_CACHE.clear()
    third = data.SyntheticStackDataModule(**kwargs).load_split("test")
    assert torch.equal(third.depth_m, torch.full_like(first.depth_m, 7.25)) and torch.equal(third.stack, first.stack)
    other = data.SyntheticStackDataModule(**dict(kwargs, K_px_m=[4.0]))
    assert other.cache_key("test") != data.SyntheticStackDataModule(**kwargs).cache_key("test")


def test_a_renderer_change_never_reuses_cached_renders(monkeypatch):
    from lightning_modules import data

    module = data.SyntheticStackDataModule(height=28, width=28, num_train=2, num_val=2, num_test=2, K_px_m=[3.0])
    before = module.cache_key("test")
    monkeypatch.setattr(data, "RENDERER_VERSION", data.RENDERER_VERSION + 1)
    assert module.cache_key("test") != before


def test_synthetic_bad_settings():
    from lightning_modules.data import DataError, SyntheticStackDataModule

    with pytest.raises(DataError, match="data.synthetic.height=30 must be a multiple of 14"):
        SyntheticStackDataModule(height=30, width=28)
    with pytest.raises(DataError, match="K_px_m must be positive"):
        SyntheticStackDataModule(K_px_m=[0.0, 3.0])
    with pytest.raises(DataError, match="at least one stack strength"):
        SyntheticStackDataModule(K_px_m=[])


def test_comparison_reports_the_no_stack_control():
    base = {"abs_rel": 0.4, "rmse": 2.0, "silog": 50.0}
    ours = {"abs_rel": 0.2, "rmse": 1.0, "silog": 40.0}
    uses = comparison({"base": {"test": base, "fit_s": 1.0, "test_s": 1.0},
                       "bokehdepth": {"test": ours, "test_control": {"abs_rel": 0.5, "rmse": 2.2, "silog": 45.0},
                                      "fit_s": 1.0, "test_s": 1.0}})
    assert uses["control_ratio"]["abs_rel"] == pytest.approx(1.25)
    assert "| abs_rel (lower is better) | 0.4000 | 0.2000 | 0.500 | 0.5000 | 1.250 |" in uses["markdown"]
    assert "uses its stack" in uses["markdown"]
    # the same scores without the stack: the gain is not a defocus gain, and the table says so
    ignores = comparison({"base": {"test": base, "fit_s": 1.0, "test_s": 1.0},
                          "bokehdepth": {"test": ours, "test_control": dict(ours), "fit_s": 1.0, "test_s": 1.0}})
    assert "does NOT use its stack" in ignores["markdown"]


def test_parallel_variants_only_for_several_single_process_cpu_fits(monkeypatch):
    from omegaconf import OmegaConf

    from lightning_modules.config import ConfigError
    from lightning_modules.stage2 import parallel_variants

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cpu = OmegaConf.create({"parallel_variants": "auto", "trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto"}})
    assert parallel_variants(cpu, 2) and not parallel_variants(cpu, 1)
    gpu = OmegaConf.create({"parallel_variants": "auto", "trainer": {"accelerator": "gpu", "devices": 4, "strategy": "ddp"}})
    assert not parallel_variants(gpu, 2)
    assert not parallel_variants(OmegaConf.create({"parallel_variants": False, "trainer": cpu.trainer}), 2)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert not parallel_variants(cpu, 2)
    with pytest.raises(ConfigError, match="parallel_variants"):
        parallel_variants(OmegaConf.create({"parallel_variants": "yes", "trainer": cpu.trainer}), 2)


@pytest.mark.parametrize("override, key", [("checkpoint.test=first", "checkpoint.test"), ("checkpoint.mode=up", "checkpoint.mode")])
def test_bad_checkpoint_settings_are_refused_before_training(override, key):
    from lightning_modules.config import ConfigError, load_config
    from lightning_modules.stage2 import build

    cfg = load_config(["stage2_smoke.yaml"], [override])
    with pytest.raises(ConfigError, match=key):
        build(cfg)


def test_bad_parallel_variants_value_leaves_no_run_dir(tmp_path):
    from lightning_modules.config import ConfigError, load_config
    from lightning_modules.stage2 import run

    cfg = load_config(["stage2_smoke.yaml"], ["parallel_variants=sometimes"])
    made = []
    with pytest.raises(ConfigError, match="parallel_variants"):
        run(cfg, lambda: made.append(tmp_path / "run") or tmp_path / "run")
    assert made == []
