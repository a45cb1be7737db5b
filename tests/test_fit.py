"""tools/fit.py: a fast_dev_run, a real one-epoch run with its run dir, resume from last.ckpt, config errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.config import ConfigError
from _tools import load_tool

REPO = Path(__file__).resolve().parent.parent


def _fit_main():
    return load_tool("fit").main


def test_fast_dev_run_compares_base_and_bokehdepth(tmp_path, capsys):
    results = _fit_main()(["--config", "stage2_smoke", f"run.root={tmp_path}", "trainer.fast_dev_run=true"])
    run_dir = Path(results["bokehdepth"]["run_dir"]).parent
    assert run_dir.parent == tmp_path / "stage2_smoke"
    table = json.loads((run_dir / "comparison.json").read_text())
    assert set(table["base"]) >= {"abs_rel", "rmse", "delta1", "silog"}
    assert table["abs_rel_ratio"] == pytest.approx(table["bokehdepth"]["abs_rel"] / table["base"]["abs_rel"])
    assert "AbsRel ratio" in (run_dir / "comparison.md").read_text()
    assert "| abs_rel" in capsys.readouterr().out


def test_run_dir_checkpoints_and_resume(tmp_path, monkeypatch):
    from lightning_modules.stage2 import Stage2Module

    # spy on every optimiser step: the global step it runs at, and the weights the first step of a run starts from
    steps: list[int] = []
    start_weights: dict[str, torch.Tensor] = {}
    training_step = Stage2Module.training_step

    def spy(self, batch, batch_idx):
        if not steps:
            start_weights.update({k: v.detach().clone() for k, v in self.state_dict().items()})
        steps.append(self.global_step)
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(Stage2Module, "training_step", spy)
    main = _fit_main()
    run = tmp_path / "run"
    first = main(["--config", "stage2_smoke", f"run.dir={run}", "compare_base=false", "optim.lr.encoder=0.0003"])
    # the resolved config is saved (includes merged, override applied), loggers and checkpoints are there
    saved = (run / "config.yaml").read_text()
    assert "encoder: 0.0003" in saved and "task: stage2" in saved and "accelerator: cpu" in saved
    assert (run / "logs" / "metrics.csv").is_file() and any((run / "tensorboard").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file() and list((run / "checkpoints").glob("best*.ckpt"))
    assert list((run / "images").glob("val_epoch000.png")) and (run / "images" / "test.png").is_file()
    steps_per_epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert steps_per_epoch == 2  # 8 scenes / batch 4
    # per-group learning rates reached the optimiser
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert sorted(g["name"] for g in state["param_groups"]) == ["decoder", "dsfa", "encoder"]
    assert {g["name"]: g["initial_lr"] for g in state["param_groups"]}["encoder"] == pytest.approx(3e-4)
    assert set(first["bokehdepth"]["test"]) >= {"abs_rel", "delta1"}
    assert steps == [0, 1]
    saved_weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    # resume: the same run dir, training continues from epoch 1 to 2
    steps.clear()
    start_weights.clear()
    second = main(["--config", "stage2_smoke", f"run.dir={run}", "compare_base=false", "ckpt_path=last", "trainer.max_epochs=2"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 * steps_per_epoch and ckpt["epoch"] == 1
    # ...really from last.ckpt: only epoch 2's steps ran (a fresh start would run steps 0..3), and its first step
    # started from the saved weights bit for bit (a fresh start begins from the random initialisation)
    assert steps == [2, 3]
    assert start_weights.keys() == saved_weights.keys()
    assert all(torch.equal(start_weights[k], saved_weights[k]) for k in saved_weights)
    assert not all(torch.equal(ckpt["state_dict"][k], saved_weights[k]) for k in saved_weights)  # and it trained on
    assert (run / "config_resume.yaml").is_file()
    assert second["bokehdepth"]["run_dir"] == str(run)


def test_ckpt_path_last_without_a_run_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=last: no earlier run"):
        _fit_main()(["--config", "stage2_smoke", f"run.root={tmp_path}", "ckpt_path=last"])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr.encodr=1e-3", r"unknown key 'optim.lr.encodr'.*did you mean 'encoder'"),
        ("trainer.max_epochs=two", r"trainer.max_epochs=.two.*expected an integer"),
        ("data.synthetic.num_train=1.5", r"data.synthetic.num_train.*expected an integer"),
        ("task=stage9", r"task='stage9' is unknown"),
    ],
)
def test_override_errors_name_the_key_and_write_nothing(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _fit_main()(["--config", "stage2_smoke", f"run.root={tmp_path}", override])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "config, override, error, message",
    [
        ("stage2_smoke", "optim.lr.dsfa=-1", ConfigError, r"optim.lr.dsfa=-1.0: expected a number >= 0"),
        ("stage2_smoke", "optim.warmup_ratio=2", ConfigError, r"optim.warmup_ratio=2.0: expected a fraction"),
        ("stage2_smoke", "loss.silog_lambda=2", ConfigError, r"loss.silog_lambda=2.0: expected a value in \[0, 1\]"),
        ("stage2_smoke", "metrics.max_depth_m=-1", ConfigError, r"metrics: need 0 < min_depth_m < max_depth_m"),
        ("stage2_smoke", "model.max_depth_m=0", ConfigError, r"model: need 0 < min_depth_m < max_depth_m"),
        ("stage2_smoke", "model.dsfa.k_scale=0", ConfigError, r"model: DSFA k_scale must be a positive"),
        ("stage2_smoke", "data.synthetic.num_train=0", ConfigError, r"num_train=0: a fit needs at least one"),
        ("stage2_smoke", "threads=-1", ConfigError, r"threads=-1: expected an integer >= 0"),
        ("stage2_smoke", "data.batch_size=0", ConfigError, r"data.batch_size=0: expected an integer >= 1"),
        ("stage2_smoke", "data.synthetic.focus_m=-1", ConfigError, r"data.synthetic.focus_m must be null .* got -1.0"),
        ("stage1", "optim.lr=-1", ConfigError, r"optim.lr=-1.0: expected a number > 0"),
        ("stage1", "data.batch_size=0", ConfigError, r"data.batch_size=0: expected an integer >= 1"),
        ("stage1", "data.height=7", ConfigError, r"data.height=7: expected an integer >= 8"),
        ("stage1", "data.synthetic.num_train=0", ConfigError, r"data.synthetic.num_train=0: expected an integer >= 1"),
        ("stage1", "train.p_null_k=1.5", ConfigError, r"train.p_null_k=1.5: expected a probability"),
        ("stage1", "eval.K_px_m=[]", ConfigError, r"eval.K_px_m=\[\]: expected a non-empty list"),
    ],
)
def test_out_of_range_settings_are_refused_before_a_run_folder_exists(tmp_path, config, override, error, message):
    """Each used to fail after the run folder was made (a traceback from the loader, the optimiser or the renderer)
    or to run with a meaningless value (a negative learning rate, a warm-up longer than the run)."""
    with pytest.raises(error, match=message):
        _fit_main()(["--config", config, f"run.root={tmp_path}", override])
    assert not any(tmp_path.iterdir())


def test_cli_reports_a_data_error_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "fit.py"), "--config", "stage2_smoke", f"run.root={tmp_path}",
         "data.synthetic.K_px_m=[]"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("data error: data.synthetic.K_px_m must list")


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("optim:\n  lr: {dsfa: 1.0e-3, encoder: 1.0e-3, decoder: 1.0e-3, dfsa: 1.0}\n", r"'optim.lr.dfsa' is unknown"),
        ("trainer:\n  max_epoch: 3\n", r"'trainer.max_epoch' is not a lightning.Trainer argument.*max_epochs"),
        ("model:\n  dsfa: {k_scal: 3.0}\n", r"'model.dsfa.k_scal' is unknown"),
        ("data:\n  synthetic: {num_trian: 3}\n", r"'data.synthetic.num_trian' is unknown"),
        ("data:\n  batch_sise: 3\n", r"'data.batch_sise' is unknown.*did you mean 'data.batch_size'"),
    ],
)
def test_typos_in_config_files_name_the_key_and_write_nothing(tmp_path, yaml_text, message):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml_text)
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=message):
        _fit_main()(["--config", "stage2_smoke", "--config", str(extra), f"run.root={runs}"])
    assert not runs.exists()


def test_cli_reports_config_errors_with_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "fit.py"), "--config", "stage2_smoke", f"run.root={tmp_path}", "optim.lr.dsfa=fast"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "config error" in proc.stderr and "optim.lr.dsfa" in proc.stderr and "expected a number" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_missing_ckpt_path_leaves_no_run_folder(tmp_path):
    """Checked before the run folder is created or the parallel base process is started."""
    run = tmp_path / "x"
    for missing, message in ((tmp_path / "nope.ckpt", "no such checkpoint file"), (tmp_path, "is a folder")):
        with pytest.raises(ConfigError, match=re.escape(f"ckpt_path={missing}: {message}")):
            _fit_main()(["--config", "stage2_smoke", f"run.dir={run}", f"ckpt_path={missing}"])
        assert not run.exists()
    assert not run.exists() and [p.name for p in tmp_path.iterdir()] == []
