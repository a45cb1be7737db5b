"""The project's foundations: the bokeh import guard and strict config loading."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_modules.config import ConfigError, apply_overrides, load_config, resolve_config_path, save_config
from lightning_modules.tasks import check_trainer_config


def test_wrong_bokeh_package_fails_with_clear_message(tmp_path: Path, repo_root: Path) -> None:
    fake = tmp_path / "bokeh"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '3.4.0'  # stands in for the plotting library\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(1, {str(repo_root)!r})
        import lightning_modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "WrongBokehPackageError" in result.stderr
    assert "plotting library" in result.stderr
    assert str(fake) in result.stderr


def test_our_bokeh_package_passes_the_guard() -> None:
    from bokehdepth_guard import require_bokehdepth

    assert require_bokehdepth().IS_BOKEHDEPTH is True


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_config_merge_order_and_includes(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "trainer: {max_epochs: 1, devices: 1}\nlr: 0.1\n")
    main = _write(tmp_path / "main.yaml", "includes: [base.yaml]\nlr: 0.01\nname: run\n")
    extra = _write(tmp_path / "extra.yaml", "trainer: {devices: 2}\n")
    cfg = load_config([main, extra], ["trainer.max_epochs=5"])
    assert cfg.lr == 0.01 and cfg.trainer.devices == 2 and cfg.trainer.max_epochs == 5 and cfg.name == "run"


def test_override_typo_names_the_key_and_suggests(tmp_path: Path) -> None:
    main = _write(tmp_path / "main.yaml", "trainer: {max_epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.max_epoch'.*did you mean 'max_epochs'"):
        load_config([main], ["trainer.max_epoch=3"])


def test_override_wrong_type_names_the_key(tmp_path: Path) -> None:
    main = _write(tmp_path / "main.yaml", "trainer: {max_epochs: 1, deterministic: true}\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"trainer.max_epochs.*expected an integer"):
        load_config([main], ["trainer.max_epochs=three"])
    with pytest.raises(ConfigError, match=r"lr.*expected a number"):
        load_config([main], ["lr=fast"])
    with pytest.raises(ConfigError, match=r"deterministic.*expected a boolean"):
        load_config([main], ["trainer.deterministic=1"])


def test_override_plus_adds_a_key_and_int_widens_to_float(tmp_path: Path) -> None:
    cfg = load_config([_write(tmp_path / "m.yaml", "lr: 0.1\n")], ["+note=hello", "lr=1"])
    assert cfg.note == "hello" and cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_a_boolean_override_of_a_string_key_stays_a_boolean(tmp_path: Path) -> None:
    """``parallel_variants: auto`` also takes true / false; a number given to a string key becomes its text."""
    from lightning_modules.stage2 import parallel_variants

    cfg = load_config([_write(tmp_path / "m.yaml", "mode: auto\nname: run\n")], ["mode=false", "name=2024"])
    assert cfg.mode is False and cfg.name == "2024"
    assert parallel_variants(load_config(["stage2_smoke"], ["parallel_variants=false"]), 2) is False


def test_lightning_arguments_of_several_types_keep_the_type_given():
    """trainer.devices takes 1 or "auto" or [0, 1]; val_check_interval steps (int) or a fraction of an epoch (float);
    fast_dev_run true or a number of batches: Lightning checks them, the override does not coerce them."""
    cfg = load_config(["stage1_scale"], ["trainer.devices=auto", "trainer.val_check_interval=0.5",
                                         "trainer.fast_dev_run=3"])
    assert cfg.trainer.devices == "auto" and cfg.trainer.val_check_interval == 0.5 and cfg.trainer.fast_dev_run == 3
    # the main job's side-by-side decision reads "auto" as the one CPU process it is (it crashed on int("auto"))
    from lightning_modules.stage2 import parallel_variants

    smoke = load_config(["stage2_smoke"])
    assert parallel_variants(load_config(["stage2_smoke"], ["trainer.devices=auto"]), 2) == parallel_variants(smoke, 2)
    with pytest.raises(ConfigError, match=r"trainer.max_steps.*expected an integer"):
        load_config(["stage1_scale"], ["trainer.max_steps=many"])


@pytest.mark.parametrize("override, expected", [
    ("trainer.devices=many", "a number of devices >= 1"), ("trainer.devices=0", "a number of devices >= 1"),
    ("trainer.limit_train_batches=1.5", "a fraction in \\[0, 1\\]"),
    ("trainer.limit_val_batches=-1", "a number of batches >= 0"),
    ("trainer.max_time=12min", "'DD:HH:MM:SS'"), ("trainer.fast_dev_run=maybe", "true, false or a number"),
])
def test_a_bad_lightning_argument_is_refused_before_a_run_folder_exists(tmp_path, override, expected):
    from _tools import load_tool

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0]) + ".*expected .*" + expected):
        load_tool("fit").main(["--config", "stage2_smoke", f"run.root={runs}", override])
    assert not runs.exists()


def test_every_free_typed_trainer_key_has_a_value_check():
    from lightning_modules.config import FREE_TYPED_KEYS
    from lightning_modules.tasks import TRAINER_VALUE_CHECKS

    assert {key.split(".", 1)[1] for key in FREE_TYPED_KEYS if key.startswith("trainer.")} == set(TRAINER_VALUE_CHECKS)
    accepted = check_trainer_config({"devices": [0, 1], "val_check_interval": 0.25, "limit_train_batches": 3,
                                     "max_time": {"hours": 2}, "fast_dev_run": True, "gradient_clip_val": 0})
    assert accepted["devices"] == [0, 1]


def test_float_override_accepts_exponent_without_dot(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) parses "5e-3" as a string; users type it anyway.
    cfg = load_config([_write(tmp_path / "m.yaml", "lr: 0.1\n")], ["lr=5e-3"])
    assert cfg.lr == 0.005


def test_struct_mode_rejects_unknown_attribute_access(tmp_path: Path) -> None:
    cfg = load_config([_write(tmp_path / "m.yaml", "lr: 0.1\n")])
    from omegaconf.errors import ConfigAttributeError

    with pytest.raises(ConfigAttributeError, match="not_there"):
        _ = cfg.not_there


def test_missing_config_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path("no_such_config.yaml")
    bad = _write(tmp_path / "bad.yaml", "a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config([bad])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(OmegaConf.create({"a": 1}), ["a"])


def test_save_config_is_atomic_and_round_trips(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": "${a}"})
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert OmegaConf.load(out) == OmegaConf.create({"a": 1, "b": 1})
    assert not list((tmp_path / "run").glob(".*tmp"))
