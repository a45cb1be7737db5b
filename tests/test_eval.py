"""tools/eval.py: re-evaluating a fit.py run reproduces its test metrics; aperture pairs; several datasets in one
call; the no-stack control row against DSFA gates set by hand; refusals (exit code 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.config import ConfigError
from _tools import error_line, load_tool

REPO = Path(__file__).resolve().parent.parent
# A tiny Depth Anything V2 with DSFA on the last two taps. initializer_range 0.1 for the decoder: with the default
# 0.02 a random head's depth is ~10 m everywhere (sigmoid(~0) * 20 m) and no input change reaches the metrics.
TINY_MODEL = """
model:
  family: depth_anything_v2
  size: tiny
  max_depth_m: 20.0
  arch:
    backbone: {hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 2, out_indices: [1, 2, 3, 4]}
    decoder: {neck_hidden_sizes: [8, 8, 16, 16], fusion_hidden_size: 8, head_hidden_size: 8, initializer_range: 0.1}
  dsfa: {enabled: true, taps: [-2, -1], k_scale: 30.0}
"""
SYNTHETIC = ["data.synthetic.num_test=2", "data.synthetic.height=56", "data.synthetic.width=56",
             "data.synthetic.K_px_m=[2.0,5.0]"]


def _tool(name: str = "eval"):
    return load_tool(name).main


def _section(result: dict, name: str) -> dict:
    return next(s for s in result["datasets"] if s["dataset"] == name)


def _row(section: dict, start: str) -> dict:
    return next(r for r in section["rows"] if r["label"].startswith(start))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    results = _tool("fit")(["--config", "stage2_smoke", f"run.dir={run}"])
    return run, results


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.yaml"
    path.write_text(TINY_MODEL)
    return path


def _dfd_folder(root: Path, n: int = 2, height: int = 28, width: int = 42) -> Path:
    """A tiny DFD-indoor-style folder: f/8 reference, f/2.8 frame, depth in mm (1.5 m, 2 m, ...)."""
    rng = np.random.default_rng(0)
    lines = ["id,rgb_f2_8,rgb_f8,depth_mm"]
    for sub in ("f2_8", "f8", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "f8" / f"s{i}.png")
        Image.fromarray(img).save(root / "f2_8" / f"s{i}.png")
        Image.fromarray(np.full((height, width), 1500 + 500 * i, np.uint16)).save(root / "depth" / f"s{i}.png")
        lines.append(f"s{i},f2_8/s{i}.png,f8/s{i}.png,depth/s{i}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


def _synthetic_test_split():
    from lightning_modules.config import load_config
    from lightning_modules.data import build_datamodule

    dm = build_datamodule(load_config(["data/synthetic.yaml"], SYNTHETIC).data)
    dm.setup("test")
    return dm.datasets["test"]


def _abs_rel(preds: list[torch.Tensor], samples: list[dict], lo: float, hi: float) -> float:
    """AbsRel by its formula: per image mean |clamp(pred) - gt| / gt over valid GT in (lo, hi), then the mean."""
    per_image = []
    for pred, s in zip(preds, samples):
        gt, valid = s["depth_m"].double(), s["valid"].bool() & (s["depth_m"] > lo) & (s["depth_m"] < hi)
        err = (pred.double().clamp(lo, hi) - gt).abs() / gt
        per_image.append(float(err[valid].mean()))
    return sum(per_image) / len(per_image)


# ------------------------------------------------------------------------------------------------ fit.py runs


def test_eval_reproduces_the_test_metrics_of_the_run(smoke_run, tmp_path):
    run, fit_results = smoke_run
    out = tmp_path / "eval"
    result = _tool()(["--run", str(run), "--out", str(out), "--num-maps", "2"])
    section = _section(result, "synthetic_test")
    for label, row in (("base", "base"), ("bokehdepth", "bokehdepth + physics stack (ORACLE")):
        for key in ("abs_rel", "rmse", "delta1", "silog"):
            got = _row(section, row)["metrics"][key]
            assert got == pytest.approx(fit_results[label]["test"][key], rel=1e-4), (label, key)
    saved = json.loads((out / "metrics.json").read_text())
    assert [s["dataset"] for s in saved["datasets"]] == ["synthetic_test"] and saved["datasets"][0]["num_samples"] == 4
    assert set(saved["models"]) == {"base", "bokehdepth"}
    md = (out / "metrics.md").read_text()
    assert "abs_rel / base" in md and "ORACLE" in md and "bokehdepth (control: no stack)" in md and "Summary" in md
    assert len(list((out / "maps" / "synthetic_test" / "bokehdepth_physics").glob("*.png"))) == 2
    assert len(list((out / "grids" / "synthetic_test").glob("*.png"))) == 2
    with pytest.raises(FileExistsError):  # an existing non-empty output folder is refused
        _tool()(["--run", str(run), "--out", str(out)])


def test_eval_on_aperture_pairs_with_k_from_the_camera(smoke_run, tmp_path, monkeypatch, stage2_stack_calls):
    from lightning_modules.config import load_config
    from lightning_modules.data import build_datamodule
    from lightning_modules.stage2 import Stage2Module

    run, _ = smoke_run
    root = _dfd_folder(tmp_path / "pairs", height=40, width=60)
    out = tmp_path / "eval_pairs"
    overrides = [f"data.aperture_pairs.root={root}", "data.aperture_pairs.height=28", "data.aperture_pairs.width=42"]
    calls = stage2_stack_calls  # (stack, K) of every model call that is given a stack
    result = _tool()(["--run", str(run), "--config", "data/dfd_indoor", "--out", str(out), "--no-dfd", *overrides])
    monkeypatch.undo()
    section = _section(result, "dfd_indoor")
    assert section["num_samples"] == 2 and section["caps_m"] == [0.5, 4.0]
    # K of the f/2.8 frame by the thin lens with focus breathing, K = A * fx: aperture radius f / (2N) (m) times
    # fx = f * s / (s - f) / sensor width * image width (px), at the 42 px evaluation width (not the 60 px files)
    lens = load_config(["data/dfd_indoor"]).data.aperture_pairs
    f_m, n, s, sensor_m = lens.f_mm / 1000, lens.f_numbers[0], lens.focus_m, lens.sensor_width_mm / 1000
    assert (lens.f_mm, n, s, lens.sensor_width_mm) == (35.0, 2.8, 1.7, 23.6)
    k_expected = f_m / (2 * n) * (f_m * s / (s - f_m)) / sensor_m * 42
    assert k_expected == pytest.approx(0.39748, rel=1e-4)
    real = [K for stack, K in calls if stack.shape[1] == 1]  # the one-frame real stacks (physics stacks have 2)
    assert len(real) == 2  # one call per sample
    for K in real:
        assert K.shape == (1, 1) and float(K[0, 0]) == pytest.approx(k_expected, rel=1e-5)
    # the real-frame row by hand: the evaluated checkpoint on the resized pairs with that K
    dm = build_datamodule(load_config(["data/dfd_indoor"], overrides).data)
    dm.setup("test")
    samples = [dm.datasets["test"][i] for i in range(2)]
    module = Stage2Module.load_from_checkpoint(result["models"]["bokehdepth"]["source"], map_location="cpu",
                                               weights_only=False).eval()
    with torch.no_grad():
        preds = [module(s["image"][None], s["stack"][None], torch.tensor([[k_expected]]))[0] for s in samples]
    row = _row(section, "bokehdepth + real aperture frames")
    assert row["num_samples"] == 2
    assert row["metrics"]["abs_rel"] == pytest.approx(_abs_rel(preds, samples, 0.5, 4.0), rel=1e-6)
    for label in ("base", "bokehdepth (control: no stack)"):
        assert _row(section, label)["num_samples"] == 2
    assert (out / "maps" / "dfd_indoor" / "base" / "s0.png").is_file()


# ------------------------------------------------------------------------------------------------ several datasets


def test_two_datasets_in_one_call_give_two_sections(tmp_path, model_yaml):
    from physics.dfd import depth_from_stack

    folder = _dfd_folder(tmp_path / "dfd")
    out = tmp_path / "out"
    result = _tool()(["--base-config", str(model_yaml), "--bokehdepth-config", f"BD={model_yaml}",
                      "--config", "data/synthetic.yaml", "--folder", str(folder), "--size", "28", "42",
                      "--K", "2", "4", "--out", str(out), *SYNTHETIC])
    assert [s["dataset"] for s in result["datasets"]] == ["synthetic", "dfd"]
    saved = json.loads((out / "metrics.json").read_text())
    assert [s["dataset"] for s in saved["datasets"]] == ["synthetic", "dfd"]
    synthetic, dfd = result["datasets"]
    assert synthetic["num_samples"] == 2 and dfd["num_samples"] == 2 and dfd["caps_m"] == [0.5, 4.0]
    # the synthetic split's own physics stack: the closed-form baseline on it, recomputed by hand
    samples = [_synthetic_test_split()[i] for i in range(2)]
    lo, hi = synthetic["caps_m"]
    # the synthetic default focuses at 100 m = the far cap: every surface lies in front of the focal plane
    by_hand = [depth_from_stack(s["image"][None], s["stack"][None], s["K_px_m"][None], float(s["focus_m"]),
                                max_depth_m=hi, behind_focus=float(s["focus_m"]) < hi)["depth_m"][0] for s in samples]
    dfb = _row(synthetic, "depth-from-bokeh (closed form) on physics")
    assert dfb["oracle"] and dfb["metrics"]["abs_rel"] == pytest.approx(_abs_rel(by_hand, samples, lo, hi), rel=1e-6)
    # the folder: real frames, an oracle stack rendered from its GT depth at --K
    assert _row(dfd, "BD + real aperture frames")["num_samples"] == 2
    assert _row(dfd, "BD + physics stack (ORACLE")["num_samples"] == 2
    assert "no Stage-1 generator" in _row(dfd, "BD + Stage-1")["skipped"]
    md = (out / "metrics.md").read_text()
    assert md.count("ORACLE rows see a stack rendered") == 2 and synthetic["title"] in md and dfd["title"] in md
    assert "| variant | synthetic abs_rel | / base | dfd abs_rel | / base |" in result["summary"]
    assert sorted(p.name for p in (out / "grids" / "synthetic").glob("*.png")) == [
        "synthetic_scene_seed2000000.png", "synthetic_scene_seed2000001.png"]
    assert sorted(p.name for p in (out / "grids" / "dfd").glob("*.png")) == ["s0.png", "s1.png"]
    grid = np.asarray(Image.open(out / "grids" / "synthetic" / "synthetic_scene_seed2000000.png"))
    # 3 picture rows (inputs: RGB | physics stack | GT; depths and errors: base | BD control | BD + physics | DfB)
    # x 4 columns; 56 px cells upscaled 3x (>= 160 px) for readable labels
    assert grid.shape[:2] == (3 * 168 + 4 * 2, 4 * 168 + 5 * 2)


def test_no_stack_keeps_the_image_only_rows_and_commas_merge_configs(tmp_path, model_yaml):
    small = tmp_path / "small.yaml"
    small.write_text("data:\n  synthetic: {num_test: 3, height: 28, width: 28}\n")
    result = _tool()(["--base-config", str(model_yaml), "--bokehdepth-config", f"BD={model_yaml}", "--no-stack",
                      "--config", f"data/synthetic.yaml,{small}", "--out", str(tmp_path / "o"), "--num-maps", "0"])
    section = result["datasets"][0]
    assert [r["label"] for r in section["rows"]] == ["base", "BD (control: no stack)"]
    assert section["dataset"] == "small" and section["num_samples"] == 3  # the second file's num_test won


# ------------------------------------------------------------------------------------------------ the control row


def _checkpoint(path: Path, module) -> Path:
    import lightning

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_control_row_equals_the_stack_row_until_a_dsfa_gate_opens(tmp_path, model_yaml):
    """At init every DSFA residual path is zero: the model ignores its stack, so its control row (no stack) and
    its stack row are the same numbers. With one LayerScale gamma set by hand, the stack changes the depth."""
    from omegaconf import OmegaConf

    from lightning_modules.config import load_config
    from lightning_modules.stage2 import Stage2Module

    cfg = OmegaConf.to_container(load_config([model_yaml]).model, resolve=True)
    module = Stage2Module({"model": cfg, "use_stack": True}).eval()
    closed = _checkpoint(tmp_path / "closed.ckpt", module)
    with torch.no_grad():
        module.model.dsfa["3"].focus_ls1.gamma.fill_(1.0)  # the cross-frame attention of the last tap
    opened = _checkpoint(tmp_path / "open.ckpt", module)
    result = _tool()(["--checkpoint", f"closed={closed}", "--checkpoint", f"open={opened}", "--no-dfd",
                      "--num-maps", "0", "--out", str(tmp_path / "o"), "--config", "data/synthetic.yaml", *SYNTHETIC])
    section = result["datasets"][0]
    closed_control, closed_stack = _row(section, "closed (control"), _row(section, "closed + physics")
    assert closed_control["metrics"] == closed_stack["metrics"]
    open_control, open_stack = _row(section, "open (control"), _row(section, "open + physics")
    assert abs(open_stack["metrics"]["abs_rel"] - open_control["metrics"]["abs_rel"]) > 1e-6
    # the rows are the opened model's depth with and without the split's stack
    samples = [_synthetic_test_split()[i] for i in range(2)]
    lo, hi = section["caps_m"]
    with torch.no_grad():
        stacked = [module(s["image"][None], s["stack"][None], s["K_px_m"][None])[0] for s in samples]
        alone = [module(s["image"][None])[0] for s in samples]
    assert open_stack["metrics"]["abs_rel"] == pytest.approx(_abs_rel(stacked, samples, lo, hi), rel=1e-6)
    assert open_control["metrics"]["abs_rel"] == pytest.approx(_abs_rel(alone, samples, lo, hi), rel=1e-6)


# ------------------------------------------------------------------------------------------------ bad input


def test_eval_needs_a_model(tmp_path):
    with pytest.raises(ConfigError, match="name at least one model"):
        _tool()(["--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="missing.ckpt: Stage-2 checkpoint not found"):
        _tool()(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="BokehDepth model .*nothing.ckpt does not exist"):
        _tool()(["--bokehdepth", str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_unknown_folder_is_refused_with_exit_code_2_and_nothing_written(tmp_path, model_yaml, capsys):
    missing = tmp_path / "no_such_dataset"
    out = tmp_path / "out"
    code = load_tool("eval").cli(["--base-config", str(model_yaml), "--folder", str(missing), "--out", str(out)])
    assert code == 2 and f"--folder {missing} does not exist" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the layout"):
        _tool()(["--base-config", str(model_yaml), "--folder", str(tmp_path / "empty"), "--out", str(out)])
    with pytest.raises(ConfigError, match="only --folder datasets"):
        _tool()(["--base-config", str(model_yaml), "--folder", str(tmp_path / "empty"), "--out", str(out),
                 "data.synthetic.num_test=2"])
    with pytest.raises(ConfigError, match="unknown key 'data.synthetic.num_tset'"):
        _tool()(["--base-config", str(model_yaml), "--out", str(out), "data.synthetic.num_tset=2"])
    assert not out.exists()


def test_missing_generator_exits_2_naming_it(tmp_path, model_yaml):
    """As a script: the exit status and the one-line message, before any model or dataset is loaded."""
    missing, out = tmp_path / "no_generator", tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), "--base-config", str(model_yaml),
                           "--generator", str(missing), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --generator {missing} does not exist")
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_summary_ratio_is_each_datasets_base(tmp_path):
    """summary_markdown: AbsRel and AbsRel / base per dataset; skipped or absent rows are '-'."""
    from bokeh.evaluation import summary_markdown

    def row(label, abs_rel=None, control=False):
        r = {"label": label, "kind": "model", "stack": None, "control": control}
        if abs_rel is None:
            r["skipped"] = "no input"
        else:
            r["metrics"] = {"abs_rel": abs_rel}
        return r

    a = {"dataset": "a", "rows": [row("base", 0.5), row("BD (control: no stack)", 0.25, True)]}
    b = {"dataset": "b", "rows": [row("base", 0.2), row("BD (control: no stack)")]}
    lines = summary_markdown([a, b]).splitlines()
    assert lines[2] == "| base | 0.5000 | 1.000 | 0.2000 | 1.000 |"
    assert lines[3] == "| BD (control: no stack) | 0.2500 | 0.500 | - | - |"


def _stage1_checkpoint(path: Path) -> Path:
    torch.save({"state_dict": {"generator.net.conv.weight": torch.zeros(1)},
                "hyper_parameters": {"cfg": {"task": "stage1"}}}, path)
    return path


def test_corrupt_or_stage1_checkpoint_is_one_error_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    stage1 = _stage1_checkpoint(tmp_path / "stage1.ckpt")
    out = tmp_path / "out"
    for option in ("--checkpoint", "--bokehdepth", "--base"):
        for ckpt, needle in ((corrupt, f"cannot read checkpoint {corrupt}: not a PyTorch checkpoint ("),
                             (stage1, f"{stage1} is a Stage-1 generator checkpoint")):
            assert load_tool("eval").cli([option, str(ckpt), "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
            assert not out.exists()


def test_a_failed_evaluation_restores_the_previous_output(tmp_path, model_yaml, monkeypatch):
    import bokeh.evaluation

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("previous")

    def broken(*args, **kwargs):
        (kwargs["grid_dir"]).mkdir(parents=True)  # something half-written
        raise ValueError("broken on purpose")

    monkeypatch.setattr(bokeh.evaluation, "evaluate_variants", broken)
    argv = ["--base-config", str(model_yaml), "--no-stack", "--out", str(out), "--overwrite", *SYNTHETIC]
    with pytest.raises(ValueError, match="broken on purpose"):
        _tool()(argv)
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and (out / "metrics.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no hidden copy left beside it
    with pytest.raises(ValueError, match="broken on purpose"):
        _tool()(argv[:-len(SYNTHETIC) - 3] + ["--out", str(tmp_path / "new"), *SYNTHETIC])
    assert not (tmp_path / "new").exists()


def test_invalid_ground_truth_pixels_are_counted(tmp_path, model_yaml, capsys):
    """0 (or NaN) ground truth is 'no measurement': kept out of the metrics, counted in metrics.json and printed."""
    root = _dfd_folder(tmp_path / "pairs", height=28, width=42)
    depth = np.full((28, 42), 1500, np.uint16)
    depth[:3, :5] = 0
    Image.fromarray(depth).save(root / "depth" / "s0.png")
    result = _tool()(["--base-config", str(model_yaml), "--folder", str(root), "--no-stack", "--no-dfd",
                      "--num-maps", "0", "--out", str(tmp_path / "out")])
    section = result["datasets"][0]
    assert section["gt_pixels"] == {"total": 2 * 28 * 42, "invalid": 15, "samples": 2}
    assert "15 of 2352 ground-truth pixels are invalid" in capsys.readouterr().out


@pytest.mark.parametrize("option, message", [
    (["--K-at-width", "0"], "error: --K-at-width must be a width in px > 0, got 0"),
    (["--K", "2", "5", "--K-at-width", "-112"], "error: --K-at-width must be a width in px > 0, got -112"),
    (["--K", "2", "0"], "error: --K values must be finite strengths > 0 px*m; got 0"),
    (["--K", "nan"], "error: --K values must be finite strengths > 0 px*m; got nan"),
])
def test_bad_strength_options_exit_2_before_any_model_is_loaded(tmp_path, capsys, monkeypatch, option, message):
    tool, out = load_tool("eval"), tmp_path / "out"
    monkeypatch.setattr(tool, "load_models", lambda args: pytest.fail("models loaded before the check"))
    assert tool.cli(["--checkpoint", str(tmp_path / "never_loaded.ckpt"), *option, "--out", str(out)]) == 2
    assert error_line(capsys).startswith(message)
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--threads", "-1"), ("--generator-steps", "0")])
def test_counts_below_1_are_usage_errors(tmp_path, capsys, option, value):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        load_tool("eval").cli(["--checkpoint", str(tmp_path / "never_loaded.ckpt"), option, value,
                               "--out", str(out)])
    assert stop.value.code == 2
    assert f"argument {option}: expected a whole number >= 1, got {value}" in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_a_file_is_refused_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    tool, out = load_tool("eval"), tmp_path / "out.txt"
    out.write_text("not a folder")
    monkeypatch.setattr(tool, "load_models", lambda args: pytest.fail("models loaded before the check"))
    assert tool.cli(["--checkpoint", str(tmp_path / "never_loaded.ckpt"), "--out", str(out)]) == 2
    assert error_line(capsys) == f"error: output path {out} exists and is a file; expected a folder (or a new path)"
    assert out.read_text() == "not a folder"


def test_an_override_outside_data_says_what_eval_takes(tmp_path, capsys, monkeypatch):
    tool, out = load_tool("eval"), tmp_path / "out"
    monkeypatch.setattr(tool, "load_models", lambda args: pytest.fail("models loaded before the check"))
    assert tool.cli(["--checkpoint", str(tmp_path / "never_loaded.ckpt"), "trainer.max_epoch=1", "--out",
                     str(out)]) == 2
    assert error_line(capsys) == (
        "error: override 'trainer.max_epoch=1': tools/eval.py takes key=value overrides of its data configs only: "
        "keys under 'data.' that the config has, e.g. data.synthetic.num_test=5 or data.aperture_pairs.root=PATH; "
        "'trainer.max_epoch' is not one (models, training and trainer settings come from the checkpoints)")
    assert not out.exists()


def test_an_unknown_data_key_gives_no_advice_to_add_it(tmp_path, model_yaml, capsys):
    out = tmp_path / "out"
    assert load_tool("eval").cli(["--base-config", str(model_yaml), "--config", "data/synthetic.yaml",
                                  "data.synthetic.num_tset=2", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line.startswith("error: override 'data.synthetic.num_tset=2': unknown key 'data.synthetic.num_tset'.")
    assert line.endswith("(did you mean 'num_test'?); tools/eval.py overrides only keys its data configs have")
    assert "'+'" not in line and not out.exists()


def test_a_missing_aperture_pairs_root_names_the_key_to_set(tmp_path, model_yaml, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert load_tool("eval").cli(["--base-config", str(model_yaml), "--config", "data/dfd_indoor",
                                  "data.aperture_pairs.root=nowhere", "--out", str(out)]) == 2
    assert error_line(capsys) == (
        f"error: aperture-pairs index nowhere/index.csv does not exist (data.aperture_pairs.root is 'nowhere', from "
        f"data/dfd_indoor; a relative root is relative to the current directory, {tmp_path}); pass "
        "data.aperture_pairs.root=PATH, the folder holding the dataset's index.csv")
    assert not out.exists()
