"""Stage-2 training: a depth model with DSFA (or the base model without it), SILog loss, metrics, optimiser.

Batch format: see :mod:`lightning_modules.data` (image [B,3,H,W] sRGB [0,1], stack [B,N,3,H,W], K_px_m [B,N],
depth_m [B,1,H,W] metres, valid [B,1,H,W] bool). The model maps (image, stack, K) to metric depth [B,1,H,W] m.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_modules.config import ConfigError
from lightning_modules.schedules import warmup_cosine

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog")


def _container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig,)) else cfg


class Stage2Module(L.LightningModule):
    """LightningModule around ``bokeh.depth.build_depth_model(cfg.model)``.

    Config keys used (all under the task config):
        model: passed to build_depth_model.
        use_stack (bool): feed the bokeh stack and K to the model; False = the base model (image only).
        loss.silog_lambda: lambda of SILog, sqrt(mean g^2 - lambda mean(g)^2) with g = log gt - log pred.
        optim: lr.{dsfa, encoder, decoder}, weight_decay, betas, warmup_steps (int) or warmup_ratio, min_lr_ratio.
        metrics: min_depth_m, max_depth_m (caps for evaluation).
    """

    def __init__(self, cfg: Mapping[str, Any] | DictConfig) -> None:
        super().__init__()
        from bokeh.depth import build_depth_model
        from bokeh.metrics import DepthMetrics

        cfg = _container(cfg)
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        self.model = build_depth_model(cfg["model"])
        self.use_stack = bool(cfg.get("use_stack", True))
        self.silog_lambda = float(cfg.get("loss", {}).get("silog_lambda", 0.5))
        metrics_cfg = cfg.get("metrics", {})
        self.min_depth_m = float(metrics_cfg.get("min_depth_m", 1e-3))
        self.max_depth_m = float(metrics_cfg.get("max_depth_m", 100.0))
        try:  # DepthMetrics checks the caps; its error is the metrics section's, not the model's
            self.val_metrics = DepthMetrics(min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        except ValueError as error:
            raise ConfigError(f"metrics: {error}") from None
        self.test_metrics = DepthMetrics(min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        # The no-stack control: the same BokehDepth weights given the reference alone. Equal to the stacked scores means
        # the model does not use its stack (its gain, if any, is DSFA's extra capacity on the reference).
        self.control_metrics = DepthMetrics(min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        self.test_results: dict[str, float] = {}
        self.control_results: dict[str, float] = {}

    # ------------------------------------------------------------------ pickling (ddp_spawn)
    def __getstate__(self) -> dict[str, Any]:
        """Pickle the model as (config, state_dict): transformers models carry hooks that are local functions,
        which cannot be pickled, and ddp_spawn pickles the LightningModule into every worker process."""
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        model = modules.pop("model")
        state["_modules"] = modules
        state["_model_state"] = model.state_dict()  # detached views of live tensors (no temporaries: spawn shares them by fd)
        state["_model_training"] = model.training
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from bokeh.depth import build_depth_model

        model_state = state.pop("_model_state", None)
        training = state.pop("_model_training", True)
        self.__dict__.update(state)
        if model_state is not None:
            model = build_depth_model(self.cfg["model"])
            model.load_state_dict(model_state)
            model.train(training)
            self._modules["model"] = model
        # ddp_spawn hands every worker the SAME shared-memory tensors; a metric state updated in place (+=) would then
        # count every process's images in every process. Fresh, private states per process:
        for metrics in (self.val_metrics, self.test_metrics, self.control_metrics):
            metrics.reset()

    # ------------------------------------------------------------------ forward / loss
    def forward(self, image: torch.Tensor, stack: torch.Tensor | None = None, K_px_m: torch.Tensor | None = None) -> torch.Tensor:
        """image [B,3,H,W] sRGB [0,1], stack [B,N,3,H,W] | None, K_px_m [B,N] | None -> depth [B,1,H,W] metres."""
        if not self.use_stack:
            stack, K_px_m = None, None
        return self.model(image, stack, K_px_m)

    def predict_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Depth prediction [B,1,H,W] m for a data batch (the stack is dropped for the base model)."""
        return self(batch["image"], batch.get("stack"), batch.get("K_px_m"))

    def _loss(self, pred: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        from bokeh.depth.losses import silog_loss

        return silog_loss(pred, batch["depth_m"], batch["valid"], lambda_=self.silog_lambda)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        pred = self.predict_batch(batch)
        loss = self._loss(pred, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def _eval_step(self, batch: Mapping[str, Any], metrics: Any, prefix: str) -> torch.Tensor:
        pred = self.predict_batch(batch)
        loss = self._loss(pred, batch)
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=pred.shape[0])
        metrics.update(pred.float(), batch["depth_m"], batch["valid"], min_depth_m=self.min_depth_m, max_depth_m=self.max_depth_m)
        return pred

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_metrics, "val")

    @property
    def has_control(self) -> bool:
        """True when testing also scores the no-stack control (a model with DSFA that is fed stacks)."""
        return self.use_stack and self.model.dsfa_enabled

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        pred = self._eval_step(batch, self.test_metrics, "test")
        if self.has_control and batch.get("stack") is not None:
            control = self.model(batch["image"])
            self.control_metrics.update(control.float(), batch["depth_m"], batch["valid"], min_depth_m=self.min_depth_m,
                                        max_depth_m=self.max_depth_m)
        return pred

    def _log_metrics(self, metrics: Any, prefix: str) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.compute().items()}  # torchmetrics sums the states over processes
        metrics.reset()
        # Values are already global; sync_dist averages identical numbers (and silences Lightning's warning).
        for k, v in values.items():
            self.log(f"{prefix}/{k}", v, prog_bar=(k == "abs_rel"), sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics(self.test_metrics, "test")
        if self.has_control and int(self.control_metrics.num_images) > 0:
            self.control_results = self._log_metrics(self.control_metrics, "test_control")

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.cfg.get("optim", {})
        lrs = optim.get("lr", {})
        groups = self.model.param_groups()
        unknown = set(groups) - set(lrs)
        if unknown:
            raise ConfigError(f"optim.lr has no learning rate for parameter group(s) {sorted(unknown)}; groups: {sorted(groups)}")
        param_groups = []
        for name, params in groups.items():
            params = [p for p in params if p.requires_grad]
            if params and float(lrs[name]) > 0:
                param_groups.append({"params": params, "lr": float(lrs[name]), "name": name})
        if not param_groups:
            raise ConfigError("no trainable parameter group with a positive learning rate (optim.lr)")
        optimizer = torch.optim.AdamW(
            param_groups, weight_decay=float(optim.get("weight_decay", 0.01)), betas=tuple(optim.get("betas", (0.9, 0.999)))
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(optim.get("warmup_steps", 0) or round(float(optim.get("warmup_ratio", 0.0)) * total))
        min_ratio = float(optim.get("min_lr_ratio", 0.0))
        schedule = warmup_cosine(total, warmup, min_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# Keys a Stage-2 config may hold (None: anything below, checked by the builder of that section).
CONFIG_SCHEMA: dict[str, Any] = {
    "task": None, "name": None, "seed": None, "ckpt_path": None, "compare_base": None, "base_overrides": None,
    "use_stack": None, "trainer": None, "model": None, "threads": None, "parallel_variants": None,
    "run": {"root": None, "dir": None, "overwrite": None},
    "loss": {"silog_lambda": None},
    "optim": {"lr": {"dsfa": None, "encoder": None, "decoder": None}, "weight_decay": None, "betas": None,
              "warmup_steps": None, "warmup_ratio": None, "min_lr_ratio": None},
    "metrics": {"min_depth_m": None, "max_depth_m": None},
    "log": {"num_images": None},
    "checkpoint": {"monitor": None, "mode": None, "test": None},
    "data": {"kind": None, "batch_size": None, "eval_batch_size": None, "num_workers": None,
             "synthetic": None, "manifest": None, "aperture_pairs": None},
}


def check_stage2_checkpoint(path: str | Path, role: str = "checkpoint") -> None:
    """Refuse a file that is not a Stage-2 Lightning checkpoint, naming it (``role``: the option or model it was
    given as): missing, not a PyTorch checkpoint (corrupt, truncated, another format), not a Lightning checkpoint, or
    a Stage-1 generator checkpoint (its config says task: stage1, or its weights are the generator's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path}: Stage-2 checkpoint not found")
    try:  # memory-mapped: cheap even for a large checkpoint (Lightning loads it again)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 -- UnpicklingError, EOFError, RuntimeError, ... all mean the same here
        raise ValueError(f"cannot read {role} {path}: not a PyTorch checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"cannot read {role} {path}: not a Lightning checkpoint (no 'state_dict'); expected a "
                         "Stage-2 .ckpt written by tools/fit.py")
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") or {}
    task = cfg.get("task") if hasattr(cfg, "get") else None
    if task == "stage1" or any(str(k).startswith("generator.") for k in ckpt["state_dict"]):
        raise ValueError(f"{role} {path} is a Stage-1 generator checkpoint; it needs a Stage-2 (BokehDepth or base) "
                         "checkpoint; pass the generator with --generator")


def build(cfg: DictConfig) -> tuple[Stage2Module, L.LightningDataModule]:
    """Build (LightningModule, DataModule) from a task config; unknown keys raise ConfigError naming them."""
    from lightning_modules.data import build_datamodule
    from lightning_modules.config import check_number
    from lightning_modules.tasks import check_keys, checkpoint_config, config_call

    check_keys(_container(cfg), CONFIG_SCHEMA)
    checkpoint_config(cfg)
    optim = cfg.get("optim", {})
    for group, lr in (optim.get("lr") or {}).items():  # checked here, not when the fit starts
        check_number(lr, f"optim.lr.{group}", 0.0)  # 0 freezes the group
    if optim.get("weight_decay") is not None:
        check_number(optim["weight_decay"], "optim.weight_decay", 0.0)
    for key in ("warmup_ratio", "min_lr_ratio"):
        if optim.get(key) is not None:
            check_number(optim[key], f"optim.{key}", 0.0, maximum=1.0, expected="a fraction in [0, 1]")
    if optim.get("warmup_steps") is not None:
        check_number(optim["warmup_steps"], "optim.warmup_steps", 0, integer=True)
    check_number(cfg.get("loss", {}).get("silog_lambda", 0.5), "loss.silog_lambda", 0.0, maximum=1.0,
                 expected="a value in [0, 1] (SILog's variance weight)")
    kind = cfg.data.get("kind", "synthetic")
    datamodule = config_call(build_datamodule, cfg.data, f"data.{kind}")
    check_pretrained_path(cfg.get("model"))
    module = config_call(Stage2Module, cfg, "model")
    return module, datamodule


def check_pretrained_path(model_cfg: Any) -> None:
    """``model.pretrained_path``: null (weights built from config) or a local Hugging Face model folder holding
    config.json (nothing is downloaded); a ConfigError naming the key otherwise, before the model is built."""
    path = (model_cfg or {}).get("pretrained_path") if hasattr(model_cfg or {}, "get") else None
    if not path:
        return
    folder = Path(str(path)).expanduser()
    if not (folder / "config.json").is_file():
        found = ("no such folder" if not folder.exists() else "not a folder" if not folder.is_dir()
                 else "a folder without config.json")
        raise ConfigError(f"model.pretrained_path={str(path)!r} is {found}; expected null or a local Hugging Face "
                          "model folder with config.json and the weights (e.g. a downloaded "
                          "Depth-Anything-V2-Small-hf); nothing is downloaded")


# ---------------------------------------------------------------------------------------------------------------
# The main job: BokehDepth and (optionally) the base model under the same budget, then a comparison table
# ---------------------------------------------------------------------------------------------------------------

VARIANTS = ("base", "bokehdepth")


def base_config(cfg: DictConfig) -> DictConfig:
    """The base-model config: ``cfg`` with ``use_stack=false`` and ``cfg.base_overrides`` (e.g. DSFA off) applied."""
    from lightning_modules.config import apply_overrides

    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(base, True)
    apply_overrides(base, ["use_stack=false", *list(cfg.get("base_overrides", []) or [])])
    return base


def variant_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """{"bokehdepth": cfg} or, with ``compare_base``, {"base": base_config(cfg), "bokehdepth": cfg}."""
    if not cfg.get("compare_base", False):
        return {"bokehdepth": cfg}
    return {"base": base_config(cfg), "bokehdepth": cfg}


def parallel_variants(cfg: DictConfig, n_variants: int) -> bool:
    """Whether ``run`` trains the variants side by side, one process each (config ``parallel_variants``).

    "auto": yes when there are several variants, the trainer is one CPU process, the OS can fork and the machine
    has at least two cores: two single-threaded fits on two cores take the time of one (measured in BENCHMARKS.md),
    whereas a GPU or multi-process trainer is better given to one variant at a time.
    """
    import multiprocessing
    import os

    value = cfg.get("parallel_variants", "auto")
    if isinstance(value, bool):
        wanted = value
    elif value == "auto":
        t = cfg.trainer
        # devices may be 1, "1", "auto" (one process on a CPU) or a list; anything else is Lightning's to refuse
        one_device = str(t.get("devices", 1)) in ("1", "auto", "None")
        single_cpu = (str(t.get("accelerator", "cpu")) == "cpu" and one_device
                      and str(t.get("num_nodes", 1)) in ("1", "None") and str(t.get("strategy", "auto")) in ("auto", "single_device"))
        wanted = single_cpu and (os.cpu_count() or 1) >= 2
    else:
        raise ConfigError(f"parallel_variants must be true, false or 'auto', got {value!r}")
    return bool(wanted and n_variants > 1 and "fork" in multiprocessing.get_all_start_methods())


def _fit_variant_in_child(vcfg: DictConfig, sub: Any, resume: bool, built: tuple, ckpt_path: str | None, seed: int) -> None:
    """Body of a forked variant process: its output goes to ``<sub>/train.log``, its results to ``<sub>/result.json``."""
    import os
    import sys
    import traceback

    from bokeh.io import write_json
    from lightning_modules.tasks import fit_and_test

    sub.mkdir(parents=True, exist_ok=True)
    log = open(sub / "train.log", "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        L.seed_everything(seed, workers=True, verbose=False)
        write_json(sub / "result.json", fit_and_test(vcfg, sub, build, resume=resume, built=built, ckpt_path=ckpt_path))
    except BaseException:  # noqa: BLE001 - reported through the log and the exit code
        traceback.print_exc()
        log.flush()
        os._exit(1)
    log.flush()
    os._exit(0)


def run(cfg: DictConfig, prepare_run_dir: Any, *, resume: bool = False, ckpt_path: str | None = None) -> dict[str, Any]:
    """Build every variant (config errors surface before anything is written), create the run dir, fit + test.

    With ``compare_base`` the variants train in ``<run_dir>/base`` and ``<run_dir>/bokehdepth`` from the same seed
    on the same cached data; the comparison is printed and written as ``comparison.json`` / ``comparison.md``.
    With ``parallel_variants`` (see :func:`parallel_variants`) the base model trains in a forked process (its log in
    ``<run_dir>/base/train.log``) while BokehDepth trains here; the results are those of sequential fits.
    ``resume`` continues each variant from its last.ckpt (a finished one stops at once and is tested again).
    """
    import json
    import multiprocessing

    from bokeh.io import write_json, write_text

    from lightning_modules.data import SyntheticStackDataModule
    from lightning_modules.tasks import (check_epoch_settings, check_fit_splits, check_trainer_settings,
                                         find_last_checkpoint, fit_and_test)

    seed = int(cfg.get("seed", 0))
    variants = variant_configs(cfg)
    built = {}
    for name, vcfg in variants.items():
        # everything that can be checked from the config is checked here, before the run folder exists: the trainer
        # settings as Lightning resolves them, the model (built), the data and the splits a fit + test needs
        trainer_cfg = check_trainer_settings(vcfg.trainer)
        L.seed_everything(seed, workers=True, verbose=False)
        built[name] = build(vcfg)
        datamodule = built[name][1]
        if isinstance(datamodule, SyntheticStackDataModule) and datamodule.counts["train"] == 0:
            raise ConfigError("data.synthetic.num_train=0: a fit needs at least one training scene")
        check_fit_splits(datamodule, trainer_cfg, str(vcfg.data.get("kind", "synthetic")))
        check_epoch_settings(trainer_cfg, datamodule)
    parallel = parallel_variants(cfg, len(variants))  # a bad value is a config error: raised before the run dir exists
    run_dir = prepare_run_dir()
    multi = len(variants) > 1
    for _, datamodule in built.values():
        if isinstance(datamodule, SyntheticStackDataModule):
            # render every split here, once: variant processes and spawned DDP workers receive the tensors
            datamodule.setup(None)
    results: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for name, vcfg in variants.items():
        sub = run_dir / name if multi else run_dir
        resume_variant = resume and find_last_checkpoint(sub) is not None
        if parallel and name != "bokehdepth":
            (sub / "result.json").unlink(missing_ok=True)
            child = multiprocessing.get_context("fork").Process(
                target=_fit_variant_in_child, args=(vcfg, sub, resume_variant, built.pop(name), ckpt_path, seed),
                name=f"bokehdepth-variant-{name}")
            child.start()
            children[name] = (child, sub)
            print(f"[{name}] training in a parallel process, log: {sub / 'train.log'}")
            continue
        L.seed_everything(seed, workers=True, verbose=False)  # same data order for every variant
        print(f"[{name}] training in {sub}")
        results[name] = fit_and_test(vcfg, sub, build, resume=resume_variant, built=built.pop(name), ckpt_path=ckpt_path)
        write_json(sub / "result.json", results[name])
    for name, (child, sub) in children.items():
        child.join()
        if child.exitcode != 0 or not (sub / "result.json").is_file():
            raise RuntimeError(f"variant '{name}' failed in its process (exit code {child.exitcode}); see {sub / 'train.log'}")
        results[name] = json.loads((sub / "result.json").read_text())
        print(f"[{name}] done (parallel process)")
    if multi:
        results = {name: results[name] for name in variants}
        table = comparison(results)
        write_json(run_dir / "comparison.json", table)
        write_text(run_dir / "comparison.md", table["markdown"])
        print(table["markdown"])
        results["comparison"] = table
    return results


def comparison(results: Mapping[str, Any]) -> dict[str, Any]:
    """Base vs BokehDepth test metrics with ratios (BokehDepth / base) and a Markdown table.

    When BokehDepth's no-stack control was scored (``results["bokehdepth"]["test_control"]``), it gets a column: the
    same weights given the reference alone. A gain that survives without the stack is not a defocus gain.
    """
    base, ours = results["base"]["test"], results["bokehdepth"]["test"]
    control = results["bokehdepth"].get("test_control") or {}
    keys = [k for k in METRIC_KEYS if k in base and k in ours]
    ratios = {k: (ours[k] / base[k] if base[k] else math.nan) for k in keys}
    control_ratios = {k: (control[k] / base[k] if base[k] else math.nan) for k in keys if k in control}
    head = "| metric | base | BokehDepth | BokehDepth / base |"
    rule = "|---|---:|---:|---:|"
    if control:
        head += " BokehDepth without stack (control) | control / base |"
        rule += "---:|---:|"
    lines = [head, rule]
    for k in keys:
        better = "higher" if k.startswith("delta") else "lower"
        line = f"| {k} ({better} is better) | {base[k]:.4f} | {ours[k]:.4f} | {ratios[k]:.3f} |"
        if control:
            line += f" {control[k]:.4f} | {control_ratios[k]:.3f} |" if k in control else " | |"
        lines.append(line)
    times = {v: {"fit_s": results[v]["fit_s"], "test_s": results[v]["test_s"]} for v in ("base", "bokehdepth")}
    lines.append(
        f"| fit + test time (s) | {times['base']['fit_s'] + times['base']['test_s']:.0f} | "
        f"{times['bokehdepth']['fit_s'] + times['bokehdepth']['test_s']:.0f} | |" + (" | |" if control else "")
    )
    abs_rel_ratio = ratios.get("abs_rel", math.nan)
    goal = abs_rel_ratio <= 0.75
    lines.append("")
    lines.append(f"AbsRel ratio (BokehDepth / base) = {abs_rel_ratio:.3f} (goal <= 0.75: {'met' if goal else 'NOT met'})")
    if "abs_rel" in control_ratios:
        lines.append(f"AbsRel without the stack (control) / base = {control_ratios['abs_rel']:.3f}")
    if "silog" in control and "silog" in ours:
        # SILog, not AbsRel: AbsRel mostly follows each image's global scale, which a model can get right or wrong
        # by luck; SILog measures the depth structure within images, which is what defocus adds.
        uses = control["silog"] > 1.02 * ours["silog"]  # 2%: below that, run-to-run noise
        lines.append(f"SILog with / without the stack = {ours['silog']:.2f} / {control['silog']:.2f}: the model "
                     + ("uses its stack" if uses else "does NOT use its stack (no better with it than without)"))
    return {"base": base, "bokehdepth": ours, "control": control, "ratio": ratios, "control_ratio": control_ratios,
            "abs_rel_ratio": abs_rel_ratio, "goal_met": bool(goal), "times": times, "markdown": "\n".join(lines) + "\n"}
