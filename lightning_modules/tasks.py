"""Task registry and the shared fit/test driver used by ``tools/fit.py``.

A task is a module exposing ``build(cfg) -> (LightningModule, LightningDataModule)`` and, optionally,
``run(cfg, run_dir) -> dict`` when it needs more than one fit (Stage-2 trains the base model beside BokehDepth).
Registering a task is one line in :data:`TASKS`.
"""

from __future__ import annotations

import importlib
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import lightning as L
from omegaconf import DictConfig, OmegaConf

from lightning_modules.config import ConfigError, keyword_names

TASKS: dict[str, str] = {
    "stage1": "lightning_modules.stage1",
    "stage2": "lightning_modules.stage2",
}

#: Per task, the config sections that take keys the config files need not list (``+section.key=value`` adds one),
#: and what they accept: each is handed to a consumer that checks its keys when the run is built, before a run folder
#: exists (lightning_modules.config.apply_overrides). Every other section has the fixed keys of the task's configs.
OPEN_SECTIONS: dict[str, dict[str, str]] = {
    "stage1": {
        "trainer": "lightning.Trainer arguments",
        "model.compact": "CompactBokehUNet arguments; under unet, UNet2DConditionModel's",
        "model.flux": "pretrained_dir, dtype, guidance_scale, tiny, adapter",
        "render_options": "physics.render.render_bokeh keyword arguments",
        "data.synthetic.scene_options": "physics.scenes.make_scene keyword arguments",
    },
    "stage2": {
        "trainer": "lightning.Trainer arguments",
        "model": "bokeh.depth.build_depth_model keys",
        "data.synthetic": "SyntheticStackDataModule arguments",
        "data.manifest": "ManifestDataset arguments and train/val/test",
        "data.aperture_pairs": "AperturePairsDataset arguments",
    },
}


def _names(fn: Callable[..., Any], exclude: tuple[str, ...] = (), **below: Any) -> dict[str, Any]:
    """The keyword names ``fn`` takes (less ``exclude``) as a schema: {name: None}, ``below`` giving the schema of
    some of them (None: not known below)."""
    return {**dict.fromkeys(keyword_names(fn, exclude)), **below}


def _open_section_schema(task: str, section: str) -> Any:
    """What the consumer of an open section takes: a nested mapping of names (a value None = not known below;
    a non-mapping value = a plain setting with nothing below), or None when it is not known."""
    from physics.render import render_bokeh
    from physics.scenes import make_scene

    render = _names(render_bokeh, ("image", "depth_m", "K_px_m", "focus_m", "return_radius"))
    scene = _names(make_scene, ("seed", "height", "width"))
    if section == "trainer":
        return _names(L.Trainer.__init__, ("logger", "callbacks", "default_root_dir"))
    if section == "render_options":
        return render
    if section == "data.synthetic.scene_options":
        return scene
    if (task, section) == ("stage1", "model.compact"):
        from diffusers import UNet2DConditionModel

        from bokeh.generation import CompactBokehUNet
        from lightning_modules.stage1 import UNET_SET_BY_COMPACT

        return _names(CompactBokehUNet, ("k_scale",), unet=_names(UNet2DConditionModel.__init__, UNET_SET_BY_COMPACT))
    if (task, section) == ("stage1", "model.flux"):
        from lightning_modules.stage1 import FLUX_KEYS

        return {key: None if key in ("tiny", "adapter") else 0 for key in FLUX_KEYS}  # tiny, adapter: mappings
    if (task, section) == ("stage2", "model"):
        from bokeh.depth.model import DEFAULT_CONFIG

        def plain(tree: Mapping[str, Any]) -> dict[str, Any]:  # build_depth_model checks its keys at every level
            return {k: plain(v) if isinstance(v, Mapping) else 0 for k, v in tree.items()}

        return dict(plain(DEFAULT_CONFIG), arch={"backbone": None, "decoder": None})  # transformers fields below
    if (task, section) == ("stage2", "data.synthetic"):
        from lightning_modules.data import SyntheticStackDataModule

        return _names(SyntheticStackDataModule.__init__, ("batch_size", "eval_batch_size", "num_workers"),
                      scene_options=scene, render_options=render)
    if (task, section) == ("stage2", "data.manifest"):
        from lightning_modules.data import ManifestDataset

        return _names(ManifestDataset.__init__, ("manifest", "random_crop"), train=0, val=0, test=0)
    if (task, section) == ("stage2", "data.aperture_pairs"):
        from lightning_modules.data import AperturePairsDataset

        return _names(AperturePairsDataset.__init__)
    return None


def open_section_takes(task: str, section: str, key: str) -> bool | None:
    """Whether the consumer of ``task``'s open ``section`` takes dotted ``key`` (a key below that section): True,
    False, or None when it cannot be told from here."""
    node = _open_section_schema(task, section)
    for part in key[len(section) + 1:].split("."):
        if node is None:
            return None
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


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
    A missing file or folder the section names (FileNotFoundError, e.g. a model's ``pretrained_path``) is a ConfigError
    ``<prefix>: <message>`` too; a ConfigError or DataError raised inside passes unchanged (it names its key).
    """
    from lightning_modules.data import DataError

    try:
        return fn(cfg)
    except (ConfigError, DataError):
        raise
    except (TypeError, ValueError, FileNotFoundError) as error:
        text = str(error)
        match = re.search(r"unexpected keyword argument '([\w.]+)'", text) or re.search(r"unknown [\w -]*key '([\w.]+)'", text)
        if match and not isinstance(error, FileNotFoundError):
            raise ConfigError(f"config key '{prefix}.{match.group(1)}' is unknown ({text})") from error
        if isinstance(error, (ValueError, FileNotFoundError)):
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
    allowed = set(keyword_names(L.Trainer.__init__, ("logger", "callbacks", "default_root_dir")))
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


def check_trainer_settings(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_trainer_config`, then the settings as ``lightning.Trainer`` itself resolves them (accelerator,
    strategy, precision, devices, num_nodes, plugins, ...): a throwaway Trainer (no logger, no checkpoints, its root in
    a temporary folder, its log lines and warnings silenced) is built, and what it refuses becomes a ConfigError
    naming the key, the value given and Lightning's words on what it accepts. Cheap (no process, no data); called
    before a run folder exists. Returns the checked dict."""
    import logging
    import tempfile
    import warnings

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    trainer_cfg = check_trainer_config(trainer_cfg)
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="bokehdepth_trainer_check_") as tmp:
            warnings.simplefilter("ignore")
            kwargs = {**trainer_cfg, "logger": False, "default_root_dir": tmp}
            kwargs.setdefault("enable_checkpointing", False)
            L.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as error:
        raise ConfigError(_trainer_refusal(trainer_cfg, error)) from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return trainer_cfg


def _trainer_refusal(trainer_cfg: Mapping[str, Any], error: BaseException) -> str:
    """One line: the trainer key Lightning's message names first (its name, singular or with spaces, else its value,
    e.g. 'gpu' in "No supported gpu backend found"), that key's value, and the message."""
    text = " ".join(str(error).split())

    def first_mention(words: list[str]) -> dict[str, int]:
        found = {}
        for key, word in words:
            match = re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text, re.IGNORECASE)
            if match and match.start() < found.get(key, len(text)):
                found[key] = match.start()
        return found

    names = [(k, w) for k in trainer_cfg for w in {str(k), str(k).rstrip("s"), str(k).replace("_", " ")}]
    named = first_mention(names) or first_mention(
        [(k, v) for k, v in trainer_cfg.items() if isinstance(v, str) and len(v) >= 3 and v not in ("auto", "true")])
    if named:
        key = min(named, key=named.get)
        return f"trainer.{key}={trainer_cfg[key]!r} is refused by lightning.Trainer: {text}"
    given = ", ".join(f"{k}={v!r}" for k, v in trainer_cfg.items()
                      if k in ("accelerator", "strategy", "precision", "devices", "num_nodes", "plugins"))
    return f"trainer ({given}) is refused by lightning.Trainer: {text}"


def check_fit_splits(datamodule: L.LightningDataModule, trainer_cfg: Mapping[str, Any], kind: str) -> None:
    """A fit followed by a test needs a train split, a val split (unless ``trainer.limit_val_batches`` is 0) and a
    test split (unless ``trainer.limit_test_batches`` is 0): a file-backed data config (``data.<kind>`` with train /
    val / test paths) lacking one is a ConfigError naming ``data.<kind>.<split>``, raised before anything trains
    (the loader would only fail when Lightning first asks for that split, e.g. after the whole fit for test)."""
    from lightning_modules.data import FileDataModule

    if not isinstance(datamodule, FileDataModule):
        return
    datasets = datamodule.datasets
    uses = {"train": "trains on it", "val": "validates on it during the fit (checkpoint.monitor)",
            "test": "tests on it after the fit"}
    for split, limit in (("train", None), ("val", trainer_cfg.get("limit_val_batches")),
                         ("test", trainer_cfg.get("limit_test_batches"))):
        if split not in datasets and not (limit is not None and limit == 0):
            skip = "" if split == "train" else f", or set trainer.limit_{split}_batches=0 to skip it"
            raise ConfigError(f"data.{kind}.{split} is not set: tools/fit.py {uses[split]}, so it needs a {split} "
                              f"split (expected a path, e.g. data.{kind}.{split}=/path/{split}.jsonl{skip})")


def train_batches_per_epoch(datamodule: L.LightningDataModule) -> int | None:
    """The training batches of one epoch (one process), from the data settings alone (no rendering, no loading);
    None where that is not known before the data is set up."""
    from lightning_modules.data import FileDataModule, SyntheticStackDataModule, training_batches
    from lightning_modules.stage1_data import Stage1DataModule

    if isinstance(datamodule, SyntheticStackDataModule):
        return training_batches(datamodule.counts["train"], datamodule.batch_size)
    if isinstance(datamodule, FileDataModule) and "train" in datamodule.datasets:  # its loader keeps partial batches
        return training_batches(len(datamodule.datasets["train"]), datamodule.batch_size, drop_last=False)
    if isinstance(datamodule, Stage1DataModule) and datamodule.kind == "synthetic":
        return training_batches(int(datamodule.cfg["synthetic"]["num_train"]), int(datamodule.cfg["batch_size"]))
    return None


def check_epoch_settings(trainer_cfg: Mapping[str, Any], datamodule: L.LightningDataModule) -> None:
    """The trainer settings Lightning checks only when the fit starts, against the training batches of an epoch: a
    ``limit_train_batches`` fraction that leaves no batch (Lightning's own parser) and an integer
    ``val_check_interval`` larger than the epoch (unless ``check_val_every_n_epoch`` is null). A ConfigError naming
    the key, before the run folder exists."""
    n = train_batches_per_epoch(datamodule)
    if n is None or n == 0 or trainer_cfg.get("fast_dev_run"):
        return
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
    from lightning.pytorch.trainer.states import RunningStage

    limit = trainer_cfg.get("limit_train_batches")
    try:
        batches = _parse_num_batches(RunningStage.TRAINING, n, 1.0 if limit is None else limit)
    except MisconfigurationException as error:
        raise ConfigError(f"trainer.limit_train_batches={limit!r} is refused by lightning.Trainer: "
                          f"{' '.join(str(error).split())}") from None
    interval = trainer_cfg.get("val_check_interval")
    every_n_epoch = trainer_cfg.get("check_val_every_n_epoch", 1)
    if _is_int(interval) and every_n_epoch is not None and interval > batches:
        raise ConfigError(f"trainer.val_check_interval={interval}: expected at most the {batches} training batches of "
                          f"an epoch (an int counts batches within an epoch); use a fraction in (0, 1], or set "
                          f"trainer.check_val_every_n_epoch=null to count steps across epochs")


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
