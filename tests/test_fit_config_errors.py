"""tools/fit.py: a bad config setting or override ends as ONE line ``config error: ...`` (naming the key, what was
given and what is expected), exit status 2, no traceback, before a run folder exists -- including the settings only
Lightning, the model builder or the data can judge. Also the '+' rule for new keys, and the configs the README's
examples use. Nothing here trains."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tools import load_tool
from lightning_modules.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
IMPORTED_AT = time.perf_counter()
STAGE1_TINY = ["trainer.max_steps=2", "data.synthetic.num_train=8", "data.synthetic.num_val=2",
               "data.synthetic.num_test=2"]


@pytest.fixture(scope="module")
def fit():
    return load_tool("fit")


def config_error(fit, capsys, runs: Path, *args: str) -> str:
    """Run fit.py's command path in-process (``with config_errors_exit(): main(argv)``); assert exit status 2, exactly
    one stderr line ``config error: ...`` and no run folder; return that line."""
    with pytest.raises(SystemExit) as stop:
        with fit.config_errors_exit():
            fit.main([*args, f"run.root={runs}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: "), err
    assert "Traceback" not in err
    assert not runs.exists(), sorted(str(p) for p in runs.rglob("*"))
    return lines[0]


# ------------------------------------------------------------------------------------- 1. Lightning's own arguments
@pytest.mark.parametrize("override, key, expected", [
    ("trainer.accelerator=gpuu", "trainer.accelerator='gpuu'", r"Available names are: .*cpu"),
    ("trainer.precision=17", "trainer.precision='17'", r"Allowed precision values: .*'32-true'"),
    ("trainer.strategy=foo", "trainer.strategy='foo'", r"Example choices: auto, ddp"),
])
def test_a_setting_lightning_refuses_is_a_config_error_before_the_run_folder(fit, capsys, tmp_path, override, key,
                                                                             expected):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", override)
    assert line.startswith(f"config error: {key} is refused by lightning.Trainer: ")
    assert re.search(expected, line)


def test_the_script_reports_a_lightning_refusal_in_one_line_with_exit_status_2(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "fit.py"), "--config", "stage2_smoke",
                           f"run.root={runs}", "trainer.accelerator=gpuu"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("config error: trainer.accelerator='gpuu' is refused")
    assert not runs.exists()


@pytest.mark.parametrize("config, override, message", [
    ("stage2_smoke", "trainer.val_check_interval=100", "config error: trainer.val_check_interval=100: expected at most "
     "the 2 training batches of an epoch"),
    ("stage1_smoke", "trainer.val_check_interval=5", "config error: trainer.val_check_interval=5: expected at most "
     "the 4 training batches of an epoch"),
    ("stage2_smoke", "trainer.limit_train_batches=0.1", "config error: trainer.limit_train_batches=0.1 is refused by "
     "lightning.Trainer: You requested to check 0.1 of the `train_dataloader` but 0.1 * 2 < 1"),
])
def test_a_setting_lightning_checks_only_when_the_fit_starts_is_checked_before_the_run_folder(fit, capsys, tmp_path,
                                                                                              config, override, message):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", config, override)
    assert line.startswith(message)


# ------------------------------------------------------------------------------------------ 2. local model weights
def test_a_missing_pretrained_path_is_a_config_error(fit, capsys, tmp_path):
    missing = tmp_path / "no_such_model"
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", f"model.pretrained_path={missing}")
    assert line.startswith(f"config error: model.pretrained_path='{missing}' is no such folder; expected null or a "
                           "local Hugging Face model folder with config.json")
    (tmp_path / "empty_model").mkdir()
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke",
                        f"model.pretrained_path={tmp_path / 'empty_model'}")
    assert "is a folder without config.json" in line


# ------------------------------------------------------------------------------------------- 3. Stage-1 K range
@pytest.mark.parametrize("overrides, message", [
    (["k.min=-1"], "config error: k.min=-1.0: expected a finite strength >= 0"),
    (["k.min=9"], "config error: k.min=9.0, k.max=8.0: expected k.min < k.max"),
    (["k.policy=wrap"], "config error: k.policy='wrap': expected 'clamp'"),
])
def test_a_bad_stage1_k_range_is_a_config_error(fit, capsys, tmp_path, overrides, message):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1", *STAGE1_TINY, *overrides)
    assert line.startswith(message)


# --------------------------------------------------------------------------------- 4. sizes the network cannot take
def test_a_stage1_image_size_the_network_cannot_take_is_a_config_error(fit, capsys, tmp_path):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1", *STAGE1_TINY, "data.width=60")
    assert line == ("config error: data.width=60: expected a multiple of 8 (the CompactBokehGenerator's down-sampling "
                    "factor), e.g. 56")


# ------------------------------------------------------------------------------------ 5. Stage-1 manifests, early
def test_a_stage1_manifest_kind_without_a_manifest_fails_before_the_run_folder(fit, capsys, tmp_path):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1_smoke", "data.kind=rgbd_manifest")
    assert line.startswith("config error: data.manifest.train is required for data.kind=rgbd_manifest (expected a "
                           "JSONL manifest path")
    missing = tmp_path / "nope.jsonl"
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1_smoke", "data.kind=rgbd_manifest",
                        f"data.manifest.train={missing}")
    assert line == f"config error: data.manifest.train={missing}: manifest not found: {missing}"


# ------------------------------------------------------------------------------ 6. the splits a fit + test reads
def _stage2_manifest(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "image.png")
    np.save(folder / "depth.npy", np.ones((28, 28), np.float32))
    row = {"image": "image.png", "depth": "depth.npy", "stack": ["image.png"], "K_px_m": [2.0]}
    (folder / "stacks.jsonl").write_text(json.dumps(row) + "\n")
    return folder / "stacks.jsonl"


def test_a_manifest_fit_without_a_test_split_is_refused_before_training(fit, capsys, tmp_path):
    manifest = _stage2_manifest(tmp_path / "data")
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_generated",
                        f"data.manifest.train={manifest}", f"data.manifest.val={manifest}")
    assert line.startswith("config error: data.manifest.test is not set: tools/fit.py tests on it after the fit, so "
                           "it needs a test split (expected a path, e.g. data.manifest.test=")
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_generated",
                        f"data.manifest.train={manifest}", f"data.manifest.test={manifest}")
    assert line.startswith("config error: data.manifest.val is not set: tools/fit.py validates on it")


# --------------------------------------------------------------------------------------------- 7. the '+' rule
@pytest.mark.parametrize("override, where", [
    ("+foo=1", "the top level"), ("+foo.bar=1", "the top level"), ("+loss.extra=1", "'loss'"),
    ("+optim.lr.extra=1", "'optim.lr'"),
])
def test_plus_in_a_closed_section_is_refused_naming_where_plus_works(fit, capsys, tmp_path, override, where):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", override)
    key = override[1:].split("=")[0]
    assert line.startswith(f"config error: override '{override}': cannot add '{key}': {where} has the fixed keys [")
    assert "New keys ('+key=value') are taken only under trainer. (lightning.Trainer arguments), model. (" in line
    advice = line.replace(f"override '{override}'", "")
    assert "Prefix with" not in advice and f"'+{key}" not in advice


def test_an_unknown_key_in_a_closed_section_gets_no_plus_advice(fit, capsys, tmp_path):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "loss.extra=1")
    assert line.startswith("config error: override 'loss.extra=1': unknown key 'loss.extra'. Keys at 'loss': "
                           "['silog_lambda'].")
    assert "'+loss" not in line and "Prefix with" not in line
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1_smoke", *STAGE1_TINY, "train.extra=1")
    assert "unknown key 'train.extra'" in line and "'+train" not in line


def test_plus_advice_is_given_only_where_following_it_works(fit, capsys, tmp_path):
    # trainer.detect_anomaly is a lightning.Trainer argument the files do not list: the advice is '+'...
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "trainer.detect_anomaly=true")
    assert "write '+trainer.detect_anomaly=...' to add it on purpose" in line
    # ...and following it works: the key is added and Lightning takes it
    from lightning_modules.tasks import check_trainer_settings

    cfg = load_config(["stage2_smoke"], ["+trainer.detect_anomaly=true"])
    assert check_trainer_settings(cfg.trainer)["detect_anomaly"] is True
    # not a Trainer argument: no '+' advice, and '+' is refused by the consumer, naming the key
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "trainer.detect_anomalie=true")
    assert "'+trainer" not in line and "is not one, so '+' would not add it either" in line
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "+trainer.detect_anomalie=true")
    assert line == "config error: config key 'trainer.detect_anomalie' is not a lightning.Trainer argument (did you " \
                   "mean 'trainer.detect_anomaly'?)"


def test_plus_adds_keys_in_open_sections_and_their_consumer_checks_them(fit, capsys, tmp_path):
    from lightning_modules.stage1 import build as build_stage1
    from lightning_modules.stage2 import build as build_stage2

    cfg = load_config(["stage2_smoke"], ["+data.synthetic.scene_options.p_slanted=0.25", "+data.synthetic.cache_dir=x"])
    _, datamodule = build_stage2(cfg)
    assert datamodule.scene_options == {"p_slanted": 0.25} and datamodule.cache_dir == "x"
    cfg = load_config(["stage1_smoke"], ["+render_options.layer_ratio=1.5", "+model.compact.num_k_tokens=2"])
    module, _ = build_stage1(cfg)
    assert module.render_options == {"layer_ratio": 1.5}
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "+data.synthetic.newkey=3")
    assert line.startswith("config error: config key 'data.synthetic.newkey' is unknown: data.synthetic takes the "
                           "keyword arguments of lightning_modules.data.SyntheticStackDataModule.__init__: [")
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1_smoke", "+render_options.layer_ratoi=1.5")
    assert line.startswith("config error: config key 'render_options.layer_ratoi' is unknown: render_options takes "
                           "the keyword arguments of physics.render.render_bokeh: [")
    assert line.endswith("(did you mean 'layer_ratio'?)")


def test_a_config_without_a_task_takes_plus_anywhere(tmp_path):
    (tmp_path / "plain.yaml").write_text("a: {b: 1}\n")
    cfg = load_config([tmp_path / "plain.yaml"], ["+c.d=2", "+a.e=3"])
    assert cfg.c.d == 2 and cfg.a.e == 3
    with pytest.raises(ConfigError, match=r"unknown key 'a\.f'.*Prefix with '\+' \('\+a\.f=\.\.\.'\)"):
        load_config([tmp_path / "plain.yaml"], ["a.f=1"])


# ------------------------------------------------------------------------------------ 8. the README's examples
@pytest.mark.parametrize("config", ["stage2", "stage2_smoke", "stage2_generated", "stage1", "stage1_smoke"])
def test_the_readme_override_examples_hold_for_every_task_config(config):
    from lightning_modules.tasks import check_trainer_settings

    cfg = load_config([config], ["trainer.val_check_interval=0.5", "trainer.devices=auto"])
    assert check_trainer_settings(cfg.trainer)["val_check_interval"] == 0.5
    assert load_config([config]).trainer.val_check_interval is None  # Lightning's default
    readme = (REPO / "README.md").read_text()
    assert "`trainer.val_check_interval=0.5`" in readme and "`trainer.devices=auto`" in readme


# ------------------------------------------------------------------------------------ 9. the override as typed
def test_a_mistyped_override_is_printed_as_typed(fit, capsys, tmp_path):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage2_smoke", "trainer.max_epochs=three")
    assert line == ("config error: override 'trainer.max_epochs=three': trainer.max_epochs='three' is a string; "
                    "expected an integer")


# --------------------------------------------------------------------------------------- 10. Stage-1 threads
@pytest.mark.parametrize("config", ["stage1", "stage1_scale", "stage1_flux_tiny", "stage1_smoke"])
def test_stage1_configs_take_threads(config):
    assert load_config([config], ["threads=1"]).threads == 1
    assert "threads: null" in (REPO / "configs" / "stage1.yaml").read_text()


def test_a_bad_threads_value_on_stage1_is_a_config_error(fit, capsys, tmp_path):
    line = config_error(fit, capsys, tmp_path / "runs", "--config", "stage1_smoke", "threads=-1")
    assert line == "config error: threads=-1: expected an integer >= 0"


# ----------------------------------------------------------------------------------- 11. the Stage-1 smoke config
def test_stage1_smoke_is_stage1s_model_on_a_tiny_budget():
    smoke, full = load_config(["stage1_smoke"]), load_config(["stage1"])
    assert smoke.task == "stage1" and smoke.name == "stage1_smoke"
    assert smoke.model == full.model and smoke.k == full.k and smoke.train == full.train
    assert (smoke.data.height, smoke.data.width, smoke.data.kind) == (full.data.height, full.data.width, "synthetic")
    steps = smoke.trainer.max_epochs * smoke.data.synthetic.num_train // smoke.data.batch_size
    assert steps <= 8 and smoke.data.synthetic.num_val + smoke.data.synthetic.num_test <= 8
    assert not smoke.calibration.enabled
    header = (REPO / "configs" / "stage1_smoke.yaml").read_text().splitlines()[0]
    assert header.startswith("# ") and "smoke" in header.lower()
    assert "stage1_smoke.yaml" in (REPO / "docs" / "stage1.md").read_text()
    assert "stage1_smoke.yaml" in (REPO / "README.md").read_text()


# ------------------------------------------------------------------------------------------ 12. the wall time
def test_the_wall_time_says_what_it_measures(fit, tmp_path, capsys, monkeypatch):
    """From the process start when run as a script (start-up included), else from the main() call; both labelled in
    the closing line and summary.json. The task is replaced by one that only makes its run folder (no training)."""
    assert fit.seconds_since_process_start() >= time.perf_counter() - IMPORTED_AT
    import lightning_modules.stage2 as stage2

    def no_training(cfg, prepare_run_dir, **_):
        prepare_run_dir()
        time.sleep(0.2)
        return {"bokehdepth": {}}

    monkeypatch.setattr(stage2, "run", no_training)
    for from_start in (True, False):
        run = tmp_path / f"run{from_start}"
        results = fit.main(["--config", "stage2_smoke", f"run.dir={run}"], from_process_start=from_start)
        out = capsys.readouterr().out
        summary = json.loads((run / "summary.json").read_text())
        assert summary["wall_s"] == pytest.approx(results["wall_s"])
        if from_start:
            assert "from the process start to here = start-up (imports)" in out
            assert summary["wall_measures"].startswith("process start")
            assert summary["wall_s"] == pytest.approx(summary["startup_s"] + summary["main_s"])
            assert summary["startup_s"] > 0 and summary["main_s"] >= 0.2
        else:
            assert "fit.main() wall time (config, build, fit and test; start-up not included)" in out
            assert summary["startup_s"] is None and summary["wall_s"] == pytest.approx(summary["main_s"])


def test_a_misspelt_key_in_a_stage1_config_file_is_named_before_the_run_folder(fit, capsys, tmp_path):
    # a typo in a YAML file, not an override: the overrides' check never sees it, the task's schema does
    config = tmp_path / "my_stage1.yaml"
    config.write_text(f"includes: [{REPO / 'configs' / 'stage1_smoke.yaml'}]\ntrain: {{defocus_wieght: 1.0}}\n")
    line = config_error(fit, capsys, tmp_path / "runs", "--config", str(config))
    assert "config key 'train.defocus_wieght' is unknown" in line
    assert "did you mean 'train.defocus_weight'" in line
