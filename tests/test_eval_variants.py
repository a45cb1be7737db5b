"""bokeh.evaluation + tools/eval_variants.py: the variant table on tiny synthetic / aperture-pair data with
random-weight models built from configs (no downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.config import ConfigError
from _tools import load_tool


TINY_MODEL = """
model:
  family: depth_anything_v2
  size: tiny
  max_depth_m: 20.0
  arch:
    backbone: {hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 2, out_indices: [1, 2, 3, 4]}
    decoder: {neck_hidden_sizes: [8, 8, 16, 16], fusion_hidden_size: 8, head_hidden_size: 8}
  dsfa: {enabled: true, taps: [-2, -1], k_scale: 30.0}
"""
SYNTHETIC = ["data.synthetic.num_test=2", "data.synthetic.height=28", "data.synthetic.width=28",
             "data.synthetic.K_px_m=[2.0,5.0]"]


def _tool(name: str):
    return load_tool(name).main


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.yaml"
    path.write_text(TINY_MODEL)
    return path


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, model_yaml):
    out = tmp_path_factory.mktemp("variants") / "out"
    result = _tool("eval_variants")(["--base-config", str(model_yaml), "--bokehdepth-config", str(model_yaml),
                                     "--config", "data/synthetic.yaml", "--out", str(out), *SYNTHETIC])
    return out, result


def _row(result, start: str) -> dict:
    return next(r for r in result["rows"] if r["label"].startswith(start))


def test_synthetic_table_json_grids_and_oracle_label(synthetic_run):
    out, result = synthetic_run
    saved = json.loads((out / "variants.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [r["label"] for r in result["rows"]]
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == [
        "synthetic_scene_seed2000000.png", "synthetic_scene_seed2000001.png"]
    grid = np.asarray(Image.open(out / "grids" / "synthetic_scene_seed2000000.png"))
    # 3 rows (inputs, depths, errors) x 4 columns (RGB | physics stack | GT; base | BokehDepth without stack |
    # BokehDepth + physics | DfB), 28 px cells upscaled 6x (>= 160 px) for readable labels
    assert grid.shape[:2] == (3 * 168 + 4 * 2, 4 * 168 + 5 * 2)
    oracle = _row(result, "BokehDepth + physics stack")
    assert oracle["oracle"] is True and "ORACLE" in oracle["label"] and oracle["num_samples"] == 2
    md = (out / "variants.md").read_text()
    assert "ORACLE" in md and "| base |" in md
    dfd = _row(result, "depth-from-bokeh (closed form) on physics stack")
    assert dfd["oracle"] is True and all(math.isfinite(v) for v in dfd["metrics"].values())


def test_missing_inputs_are_skipped_with_reasons(synthetic_run):
    _, result = synthetic_run
    assert "no Stage-1 generator" in _row(result, "BokehDepth + Stage-1")["skipped"]
    assert "no real aperture frames" in _row(result, "BokehDepth + real")["skipped"]
    assert "metrics" not in _row(result, "BokehDepth + real")
    assert _row(result, "BokehDepth without stack (control)")["num_samples"] == 2


def test_table_numbers_are_the_models_and_baseline_outputs(synthetic_run, model_yaml):
    """Recompute the base row and the oracle depth-from-bokeh row by hand on the same split."""
    from bokeh.metrics import DepthMetrics
    from lightning_modules.config import load_config
    from lightning_modules.data import build_datamodule
    from lightning_modules.stage2 import Stage2Module
    from physics.dfd import depth_from_stack
    from omegaconf import OmegaConf

    _, result = synthetic_run
    cfg = load_config(["data/synthetic.yaml"], SYNTHETIC)
    dm = build_datamodule(cfg.data)
    dm.setup("test")
    torch.manual_seed(0)
    lo, hi = result["caps_m"]
    model_cfg = OmegaConf.to_container(load_config([model_yaml]).model, resolve=True)
    base = Stage2Module({"model": model_cfg, "use_stack": False}).eval()
    m_base, m_dfd = DepthMetrics(lo, hi), DepthMetrics(lo, hi)
    for sample in (dm.datasets["test"][i] for i in range(2)):
        with torch.no_grad():
            m_base.update(base(sample["image"][None]), sample["depth_m"][None], sample["valid"][None], lo, hi)
        d = depth_from_stack(sample["image"][None], sample["stack"][None], sample["K_px_m"][None],
                             float(sample["focus_m"]), max_depth_m=hi)["depth_m"]
        m_dfd.update(d, sample["depth_m"][None], sample["valid"][None], lo, hi)
    dfd_row = _row(result, "depth-from-bokeh (closed form) on physics stack")["metrics"]
    assert dfd_row["abs_rel"] == pytest.approx(float(m_dfd.compute()["abs_rel"]), rel=1e-5)
    # the tool's models have random weights of their own: the library with this base model gives the hand numbers
    from bokeh.evaluation import ModelSpec, evaluate_variants

    mine = evaluate_variants(dm.datasets["test"], [ModelSpec("base", base, False)], dataset_stack="physics",
                             min_depth_m=lo, max_depth_m=hi, dfd=False, progress=False)
    for key, value in m_base.compute().items():
        assert _row(mine, "base")["metrics"][key] == pytest.approx(float(value), rel=1e-6, abs=1e-9)


def test_stage1_rows_with_a_random_generator(model_yaml):
    """The library with a random-weight Stage-1 generator: its rows run and report the K actually generated."""
    from bokeh.evaluation import ModelSpec, evaluate_variants
    from bokeh.generation import KRange
    from lightning_modules.config import load_config
    from lightning_modules.data import build_datamodule
    from lightning_modules.stage1 import build_generator
    from lightning_modules.stage2 import Stage2Module
    from omegaconf import OmegaConf

    gen_cfg = OmegaConf.to_container(load_config(["stage1.yaml"]).model, resolve=True)
    generator = build_generator(gen_cfg, KRange(1.0, 6.0, "clamp"), 32).eval()
    dm = build_datamodule(load_config(["data/synthetic.yaml"], SYNTHETIC).data)
    dm.setup("test")
    model_cfg = OmegaConf.to_container(load_config([model_yaml]).model, resolve=True)
    bd = Stage2Module({"model": model_cfg, "use_stack": True}).eval()
    result = evaluate_variants(dm.datasets["test"], [ModelSpec("BD", bd, True)], generator=generator,
                               dataset_stack="physics", limit=1, max_depth_m=100.0, progress=False,
                               generator_steps=1)
    stage1 = _row(result, "BD + Stage-1")
    assert stage1["num_samples"] == 1 and math.isfinite(stage1["metrics"]["abs_rel"])
    assert "no base model" in _row(result, "base")["skipped"]


def test_rows_without_stack_strengths_are_skipped(model_yaml):
    """An RGB-D sample with no stack of its own and no K: the oracle and Stage-1 rows say why they did not run."""
    from bokeh.evaluation import ModelSpec, evaluate_variants
    from lightning_modules.config import load_config
    from lightning_modules.stage2 import Stage2Module
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(load_config([model_yaml]).model, resolve=True)
    bd = Stage2Module({"model": model_cfg, "use_stack": True}).eval()
    samples = [{"image": torch.rand(3, 28, 28), "depth_m": torch.full((1, 28, 28), 2.0), "name": "a"}]
    result = evaluate_variants(samples, [ModelSpec("BD", bd, True)], generator=object(), progress=False)
    for start in ("BD + physics", "BD + Stage-1", "depth-from-bokeh (closed form) on Stage-1"):
        assert "no stack strengths" in _row(result, start)["skipped"]
    assert _row(result, "BD without stack")["num_samples"] == 1


def _dfd_folder(root: Path, n: int = 2) -> Path:
    """A tiny DFD-indoor-style folder: f/8 reference, f/2.8 frame, depth in mm."""
    rng = np.random.default_rng(0)
    lines = ["id,rgb_f2_8,rgb_f8,depth_mm"]
    for sub in ("f2_8", "f8", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (rng.random((28, 42, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "f8" / f"s{i}.png")
        Image.fromarray(img).save(root / "f2_8" / f"s{i}.png")
        Image.fromarray(np.full((28, 42), 1500 + 500 * i, np.uint16)).save(root / "depth" / f"s{i}.png")
        lines.append(f"s{i},f2_8/s{i}.png,f8/s{i}.png,depth/s{i}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


def test_aperture_pairs_folder_real_rows(tmp_path, model_yaml):
    folder = _dfd_folder(tmp_path / "dfd")
    result = _tool("eval_variants")(["--base-config", str(model_yaml), "--bokehdepth-config", str(model_yaml),
                                     "--folder", str(folder), "--size", "14", "21", "--out", str(tmp_path / "out"),
                                     "--K", "2", "4"])
    real = _row(result, "BokehDepth + real")
    assert real["num_samples"] == 2 and math.isfinite(real["metrics"]["abs_rel"])
    assert _row(result, "depth-from-bokeh (closed form) on real")["num_samples"] == 2
    assert _row(result, "BokehDepth + physics")["num_samples"] == 2  # oracle rendered from the GT depth
    assert result["caps_m"] == [0.5, 4.0]  # the dataset's caps
    assert (tmp_path / "out" / "grids" / "s0.png").is_file()


def test_resize_sample_scales_k_and_intrinsics():
    from bokeh.evaluation import resize_sample

    k = torch.tensor([[50.0, 0, 20.5], [0, 50.0, 13.5], [0, 0, 1]])
    sample = {"image": torch.rand(3, 28, 42), "depth_m": torch.full((1, 28, 42), 2.0),
              "frames": torch.rand(1, 3, 28, 42),
              "K_px_m": torch.tensor([6.0]), "intrinsics": k}
    out = resize_sample(sample, 14, 21)
    assert out["image"].shape == (3, 14, 21) and out["frames"].shape == (1, 3, 14, 21)
    assert float(out["K_px_m"][0]) == pytest.approx(3.0) and out["fx"] == pytest.approx(25.0)
    assert out["cx"] == pytest.approx((20.5 + 0.5) / 2 - 0.5) and bool(out["valid"].all())


def test_bad_inputs(tmp_path, model_yaml, synthetic_run):
    main = _tool("eval_variants")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the layout"):
        main(["--base-config", str(model_yaml), "--folder", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")])
    out, _ = synthetic_run
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["--base-config", str(model_yaml), "--out", str(out), *SYNTHETIC])
    with pytest.raises(ConfigError, match="at least one model"):
        main(["--out", str(tmp_path / "o2")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--bokehdepth", str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "o3")])
