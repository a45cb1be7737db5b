"""tools/eval.py: re-evaluating a fit.py run reproduces its test metrics; aperture pairs; outputs and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lightning_modules.config import ConfigError
from _tools import load_tool


def _tool(name: str):
    return load_tool(name).main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    results = _tool("fit")(["--config", "stage2_smoke", f"run.dir={run}"])
    return run, results


def test_eval_reproduces_the_test_metrics_of_the_run(smoke_run, tmp_path):
    run, fit_results = smoke_run
    out = tmp_path / "eval"
    result = _tool("eval")(["--run", str(run), "--out", str(out), "--num-maps", "2"])
    for label in ("base", "bokehdepth"):
        for key in ("abs_rel", "rmse", "delta1", "silog"):
            assert result["metrics"][label][key] == pytest.approx(fit_results[label]["test"][key], rel=1e-4), (label, key)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_samples"] == 4 and set(saved["metrics"]) == {"base", "bokehdepth"}
    assert "bokehdepth / base" in (out / "metrics.md").read_text()
    assert len(list((out / "maps" / "bokehdepth").glob("*.png"))) == 2 and len(list((out / "grids").glob("*.png"))) == 2
    # an existing non-empty output folder is refused
    with pytest.raises(FileExistsError):
        _tool("eval")(["--run", str(run), "--out", str(out)])


def test_eval_on_aperture_pairs_with_k_from_the_camera(smoke_run, tmp_path):
    run, _ = smoke_run
    root = tmp_path / "pairs"
    rows = ["id,rgb_f2_8,rgb_f8,depth_mm"]
    rng = np.random.default_rng(0)
    for i in range(2):
        for sub in ("f2.8", "f8", "depth"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "f8" / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "f2.8" / f"s{i}.png")
        Image.fromarray(np.full((40, 60), 1500 + 500 * i, np.uint16)).save(root / "depth" / f"s{i}.png")
        rows.append(f"s{i},f2.8/s{i}.png,f8/s{i}.png,depth/s{i}.png")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval_pairs"
    result = _tool("eval")(["--run", str(run), "--config", "data/dfd_indoor", "--out", str(out),
                            f"data.aperture_pairs.root={root}", "data.aperture_pairs.height=28", "data.aperture_pairs.width=42"])
    assert result["num_samples"] == 2 and result["caps_m"] == [0.5, 4.0]
    for label in ("base", "bokehdepth"):
        assert 0 < result["metrics"][label]["abs_rel"] < 100
    assert (out / "maps" / "base" / "s0.png").is_file()


def test_eval_needs_a_model(tmp_path):
    with pytest.raises(ConfigError, match="name at least one model"):
        _tool("eval")(["--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _tool("eval")(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
