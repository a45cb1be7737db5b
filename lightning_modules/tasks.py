"""Task registry and the shared fit/test driver used by ``tools/fit.py``.

A task is a module exposing ``build(cfg) -> (LightningModule, LightningDataModule)`` and, optionally,
``run(cfg, run_dir) -> dict`` when it needs more than one fit (Stage-2 trains the base model beside BokehDepth).
Registering a task is one line in :data:`TASKS`.
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lightning_modules.config import ConfigError

TASKS: dict[str, str] = {
    "stage1": "lightning_modules.stage1",
    "stage2": "lightning_modules.stage2",
}


def get_task(name: str) -> ModuleType:
    """The module implementing task ``name`` (ConfigError naming the known tasks otherwise)."""
    if name not in TASKS:
        raise ConfigError(f"task='{name}' is unknown; known tasks: {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])


def config_call(fn: Callable[..., Any], cfg: Any, prefix: str) -> Any:
    """Call ``fn(cfg)``; an unknown key inside a config section becomes a ConfigError naming ``<prefix>.<key>``, and
    a value the builder refuses (its ValueError, e.g. "DSFA k_scale must be a positive finite K") a ConfigError
    ``<prefix>: <message>``. A DataError (lightning_modules.data) stays one.

    Recognised unknown keys: ``TypeError: ... unexpected keyword argument 'x'`` (a section passed as **kwargs) and
    ``ValueError: unknown ... key 'x'`` (builders that check their own keys, e.g. bokeh.depth.build_depth_model).
    """
    from lightning_modules.data import DataError

    try:
        return fn(cfg)
    except (TypeError, ValueError) as error:
        text = str(error)
        match = re.search(r"unexpected keyword argument '([\w.]+)'", text) or re.search(r"unknown [\w -]*key '([\w.]+)'", text)
        if match:
            raise ConfigError(f"config key '{prefix}.{match.group(1)}' is unknown ({text})") from error
        if isinstance(error, ValueError) and not isinstance(error, (ConfigError, DataError)):
            raise ConfigError(f"{prefix}: {text}") from error
        raise


def check_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    """Every key of ``cfg`` must be in ``schema`` (a nested dict; a value None means "anything below")."""
    import difflib

    for key in cfg:
        if key not in schema:
            hint = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            raise ConfigError(
                f"config key '{prefix}{key}' is unknown; expected one of {sorted(schema)}" + (f" (did you mean '{prefix}{hint[0]}'?)" if hint else "")
            )
        sub = schema[key]
        if isinstance(sub, Mapping) and isinstance(cfg[key], Mapping):
            check_keys(cfg[key], sub, f"{prefix}{key}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: Any, low_open: bool) -> bool:
    return isinstance(value, float) and (0.0 < value if low_open else 0.0 <= value) and value <= 1.0


_BATCH_LIMIT = (lambda v: (_is_int(v) and v >= 0) or _is_fraction(v, False),
                "a number of batches >= 0 or a fraction in [0, 1]")

#: What each of config.FREE_TYPED_KEYS may hold (null is always allowed): (test, what is expected). Overrides keep
#: these keys' YAML types, so they are checked here, before a run folder exists, with the key named.
TRAINER_VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "devices": (lambda v: (_is_int(v) and (v >= 1 or v == -1)) or v == "auto"
                or (isinstance(v, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", v) is not None)
                or (isinstance(v, list) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)),
                "a number of devices >= 1 (-1: all), 'auto', or device indices like [0, 1]"),
    "val_check_interval": (lambda v: (_is_int(v) and v >= 1) or _is_fraction(v, True),
                           "a number of training steps >= 1 or a fraction of an epoch in (0, 1]"),
    "check_val_every_n_epoch": (lambda v: _is_int(v) and v >= 1, "a number of epochs >= 1"),
    "limit_train_batches": _BATCH_LIMIT,
    "limit_val_batches": _BATCH_LIMIT,
    "limit_test_batches": _BATCH_LIMIT,
    "gradient_clip_val": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                          "a number >= 0"),
    "max_time": (lambda v: (isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None)
                 or (isinstance(v, dict) and len(v) > 0 and set(v) <= {"days", "hours", "minutes", "seconds"}),
                 "'DD:HH:MM:SS' (e.g. '00:00:12:30') or a mapping like {hours: 1}"),
    "fast_dev_run": (lambda v: isinstance(v, bool) or (_is_int(v) and v >= 0), "true, false or a number of batches"),
}


def check_trainer_config(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg.trainer`` as a dict, every key checked against ``lightning.Trainer``'s arguments, and the values of the
    keys that may take several types (:data:`TRAINER_VALUE_CHECKS`) checked against what Lightning accepts."""
    trainer_cfg = dict(OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else trainer_cfg)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks", "default_root_dir"}
    for key in trainer_cfg:
        if key not in allowed:
            import difflib

            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise ConfigError(f"config key 'trainer.{key}' is not a lightning.Trainer argument" + (f" (did you mean 'trainer.{hint[0]}'?)" if hint else ""))
    for key, (accepts, expected) in TRAINER_VALUE_CHECKS.items():
        value = trainer_cfg.get(key)
        if value is not None and not accepts(value):
            raise ConfigError(f"trainer.{key}={value!r}: expected {expected}")
    return trainer_cfg


def checkpoint_config(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``cfg.checkpoint`` with defaults {monitor: val/abs_rel, mode: min, test: best}, values checked (ConfigError)."""
    given = cfg.get("checkpoint", {}) or {}
    out = {"monitor": str(given.get("monitor") or "val/abs_rel"), "mode": str(given.get("mode") or "min"),
           "test": str(given.get("test") or "best")}
    if out["mode"] not in ("min", "max"):
        raise ConfigError(f"checkpoint.mode must be 'min' or 'max', got {out['mode']!r}")
    if out["test"] not in ("best", "last"):
        raise ConfigError(f"checkpoint.test must be 'best' (the monitored best) or 'last' (final weights), got {out['test']!r}")
    return out


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """Trainer(**cfg.trainer) writing into ``run_dir``: CSV + TensorBoard logs, last + best checkpoints (best of
    ``checkpoint.monitor`` / ``checkpoint.mode``), image grids."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lightning_modules.callbacks import DepthImageLogger

    trainer_cfg = check_trainer_config(cfg.trainer)
    log_cfg = cfg.get("log", {}) or {}
    ckpt_cfg = checkpoint_config(cfg)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}-step{step}", monitor=ckpt_cfg["monitor"],
        mode=ckpt_cfg["mode"],
        save_last=True, save_top_k=1, auto_insert_metric_name=False,
    )
    callbacks: list[Any] = [checkpoint, LearningRateMonitor(logging_interval="step")]
    if log_cfg.get("num_images", 4) > 0:
        callbacks.append(DepthImageLogger(run_dir / "images", num_images=int(log_cfg.get("num_images", 4))))
    loggers = [CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tensorboard", version="")]
    return L.Trainer(default_root_dir=str(run_dir), logger=loggers, callbacks=callbacks, **trainer_cfg)


def find_last_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def fit_and_test(cfg: DictConfig, run_dir: Path, build: Callable[[DictConfig], tuple[L.LightningModule, L.LightningDataModule]], *, resume: bool = False, built: tuple | None = None, ckpt_path: str | None = None) -> dict[str, Any]:
    """Build, fit (from ``ckpt_path``, or from ``run_dir/checkpoints/last.ckpt`` when ``resume``), test.

    Returns {"test": metrics, "fit_s", "test_s", "best_checkpoint", "run_dir"} (+ "test_control": the metrics of the
    module's control, e.g. Stage-2's no-stack control, when it has one). Testing uses, with ``checkpoint.test``
    "best" (default), the best checkpoint (``checkpoint.monitor``, e.g. val/silog) when one exists, else the final
    weights; with "last", the final weights (the same training budget for every model compared).
    """
    ckpt = Path(ckpt_path) if ckpt_path else (find_last_checkpoint(run_dir) if resume else None)
    if ckpt is not None and not ckpt.is_file():  # checked before the trainer (its loggers, checkpoint folders)
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    if resume and ckpt is None:
        raise ConfigError(f"ckpt_path=last: no checkpoint to resume from in {run_dir / 'checkpoints'}")
    module, datamodule = built if built is not None else build(cfg)
    trainer = make_trainer(cfg, run_dir)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=False)
    fit_s = time.perf_counter() - t0
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    t1 = time.perf_counter()
    # Test metrics go to their own CSV: Lightning's CSVLogger rewrites metrics.csv when new columns appear, which
    # dropped the training rows.
    from lightning.pytorch.loggers import CSVLogger

    trainer.loggers = [CSVLogger(run_dir, name="logs", version="test") if isinstance(lg, CSVLogger) else lg for lg in trainer.loggers]
    tested = best if checkpoint_config(cfg)["test"] == "best" and best else None
    trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=False)
    test_s = time.perf_counter() - t1
    results = {k: float(v) for k, v in getattr(module, "test_results", {}).items()}
    if not results:
        results = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    out = {"test": results, "fit_s": fit_s, "test_s": test_s, "best_checkpoint": best, "tested": tested or "final weights",
           "run_dir": str(run_dir)}
    control = {k: float(v) for k, v in getattr(module, "control_results", {}).items()}
    if control:
        out["test_control"] = control
    return out
