"""configs/stage1_scale.yaml and scripts/device_stage1_scale.sh: Stage-1's default recipe at GPU scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_modules.config import load_config

REPO = Path(__file__).resolve().parent.parent

# what a budget is: the batch, the loader processes, how many scenes an epoch draws, the trainer, the warm-up
BUDGET_KEYS = {"name", "data.batch_size", "data.eval_batch_size", "data.num_workers", "data.synthetic.num_train",
               "optim.warmup_steps"}


def _flat(cfg) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def test_the_scale_config_changes_only_the_budget():
    """Its figures answer "does compute take the default under 15% K error" only if scenes, model, losses and eval
    are the default's."""
    default, scale = _flat(load_config(["stage1"])), _flat(load_config(["stage1_scale"]))
    assert set(default) == set(scale)
    changed = {key for key in default if default[key] != scale[key]}
    assert changed - BUDGET_KEYS == {key for key in changed if key.startswith("trainer.")}
    assert {"data.batch_size", "data.synthetic.num_train", "trainer.max_steps"} <= changed
    assert scale["data.synthetic.scene_options.appearance_cues"] == default["data.synthetic.scene_options.appearance_cues"]
    assert scale["trainer.max_epochs"] == -1 and scale["trainer.max_time"] is None  # max_steps lays out the schedule


@pytest.mark.slow
def test_the_device_script_sizes_the_fit_from_the_measured_rate(tmp_path):
    """The script measures the step rate with a short fit, sizes trainer.max_steps to TRAIN_S seconds (capped), fits
    that many steps (with CALIBRATE=1 also the K calibration) and compares the generator on test scenes, uncalibrated
    and calibrated (tiny, on the CPU)."""
    tiny = ("data.height=32 data.width=32 data.batch_size=2 data.eval_batch_size=2 data.num_workers=0 "
            "data.synthetic.num_val=2 data.synthetic.num_test=2 trainer.accelerator=cpu "
            "calibration.num_scenes=2 calibration.min_scenes=1 calibration.iterations=1 "
            f"run.root={tmp_path / 'runs'}")
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), WORK_DIR=str(work), OVERRIDES=tiny,
               PROBE_STEPS="3", TRAIN_S="1000", MAX_STEPS_CAP="5", COMPARE_SCENES="1", CALIBRATE="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_stage1_scale.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = json.loads((out / "probe.json").read_text())
    assert probe["probe_steps"] == 3 and probe["steps_per_s"] > 0
    assert probe["overall_steps_per_s"] == pytest.approx(3 / probe["probe_train_s"])
    # the steady rate, timed after the first step, leaves the loader's start-up out: faster than the overall one
    assert probe["steps_per_s"] > probe["overall_steps_per_s"]
    assert probe["max_steps"] == min(int(probe["steps_per_s"] * 1000), 5)
    fit = json.loads((out / "result.json").read_text())
    assert fit["train_steps_per_s"] > 0
    assert fit["steps"] == probe["max_steps"]
    compare = json.loads((out / "compare.json").read_text())
    summary = (out / "summary.txt").read_text()
    assert "learned" in summary and "uniform_disk" in summary
    learned = compare["sections"]["synthetic test split"]["summary"]["learned"]
    assert learned["psnr_n"] == 3 and learned["psnr"] > 10  # one scene x the three eval K, a finite PSNR
    assert "k_calibration" in fit  # calibration.enabled=true reached the fit
    calibrated = json.loads((out / "compare_calibrated.json").read_text())
    assert calibrated["k_calibration"] and not compare["k_calibration"]  # each comparison used what it says
    assert "calibrated   learned" in summary
    assert "== K-calibrated generator" in (out / "compare.log").read_text()
    # 7 files: with device_smoke.sh's cuda_tests.log, the device tool's limit of 8
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.log", "compare_calibrated.json",
                                                     "fit.log", "probe.json", "result.json", "summary.txt"]


def test_the_nearest_focus_config_changes_only_the_focus_policy():
    """configs/stage1_nearest.yaml is the session-14 real-pair recipe: stage1.yaml with the nearest subject in focus,
    blur behind it and the defocus loss off -- nothing else, so its figures compare with the default's."""
    default, nearest = _flat(load_config(["stage1"])), _flat(load_config(["stage1_nearest"]))
    changed = {key for key in default.keys() | nearest.keys() if default.get(key) != nearest.get(key)}
    assert changed == {"name", "model.compact.defocus_side", "data.synthetic.focus_m", "train.defocus_weight"}
    assert (nearest["model.compact.defocus_side"], nearest["data.synthetic.focus_m"],
            nearest["train.defocus_weight"]) == ("back", None, 0.0)
