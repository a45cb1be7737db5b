"""Stage-1 training: the K-conditioned bokeh generator, calibrated on physics renders.

``python tools/fit.py --config configs/stage1.yaml`` trains the embedded default (compact pixel-space UNet) on
synthetic scenes; ``configs/stage1_flux_tiny.yaml`` trains the FLUX.1-Kontext K adapter on a tiny Flux built from
config (``model.flux.pretrained_dir`` points at a user's local FLUX.1-Kontext-dev diffusers folder instead).

Data (``data.kind``: synthetic scenes, RGB-D manifests, real pairs) lives in :mod:`lightning_modules.stage1_data`.

Checkpoints hold only trainable tensors (the adapter for Flux, the whole compact network otherwise). At the end of
a fit the generator is exported to ``<run>/generator.safetensors`` (+ ``generator.json``), which
``tools/make_stack.py`` and ``tools/compare_bokeh.py`` load with :func:`load_generator`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from bokeh.generation import (CompactBokehGenerator, CompactBokehUNet, FluxKontextBokehGenerator, GuidanceConfig,
                              KCalibration, KRange, build_compact, install_k_adapter)
from bokeh.generation.flow import sample_t
from bokeh.generation.flux_adapter import load_adapter, save_adapter, tiny_flux_transformer, tiny_flux_vae
from lightning_modules.config import ConfigError, check_focus_option, check_number
from lightning_modules.schedules import warmup_cosine
from lightning_modules.stage1_data import Stage1DataModule, physics_targets


def _container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig,)) else cfg


# ------------------------------------------------------------------------------------------- training targets, losses
def true_defocus_inv_m(depth_m: torch.Tensor, focus_m: torch.Tensor, side_sign: float, max_inv_m: float
                       ) -> torch.Tensor:
    """The layered head's target map [B,1,H,W] (1/m): side_sign * (1/focus - 1/depth), clamped to the range the head
    can express, [0, max_inv_m] (surfaces on the other side of the focal plane count as in focus).

    depth_m [B,1,H,W] (m, > 0), focus_m [B] (m); side_sign -1 for blur in front of the focal plane, +1 behind it.
    """
    from physics.camera import signed_coc_radius_px

    # K = 1 px*m turns the signed CoC radius into the defocus 1/focus - 1/depth itself
    return (side_sign * signed_coc_radius_px(depth_m, 1.0, focus_m)).clamp(0.0, max_inv_m)


DEFOCUS_LOSSES = ("l1", "l2", "log_l1")


def defocus_map_error(predicted_inv_m: torch.Tensor, true_inv_m: torch.Tensor, kind: str,
                      log_floor_inv_m: float = 0.01) -> torch.Tensor:
    """Mean error between two defocus maps [B,1,H,W] (1/m), a scalar.

    ``l1``: |p - t| (1/m; its minimiser is the conditional median map, weighted towards near surfaces whose defocus
    is large). ``l2``: (p - t)^2 (the conditional mean). ``log_l1``: |log(p + f) - log(t + f)| with the floor f
    (1/m): a relative error, so a far wall at 0.1 1/m counts as much as a near object at 2 1/m -- the K-calibration
    error is relative too (a map s times too large reads as K s).
    """
    if kind == "l1":
        return (predicted_inv_m - true_inv_m).abs().mean()
    if kind == "l2":
        return (predicted_inv_m - true_inv_m).pow(2).mean()
    if kind == "log_l1":
        return (torch.log(predicted_inv_m + log_floor_inv_m) - torch.log(true_inv_m + log_floor_inv_m)).abs().mean()
    raise ValueError(f"defocus loss must be one of {DEFOCUS_LOSSES}, got {kind!r}")


def _loss_weight(cfg: Mapping[str, Any], key: str, default: float) -> float:
    """``train.<key>``, a loss weight: a finite number >= 0 (ConfigError naming the key otherwise)."""
    return float(check_number(cfg["train"].get(key, default), f"train.{key}", 0.0))


# ------------------------------------------------------------------------------------------------------- models
def _compact_keys() -> set[str]:
    """The keys ``model.compact`` may hold: CompactBokehUNet's arguments (k_scale comes from ``model.k_scale``)."""
    import inspect

    return set(inspect.signature(CompactBokehUNet).parameters) - {"k_scale"}


#: UNet2DConditionModel arguments CompactBokehUNet sets itself (``model.compact.unet`` may hold the others).
UNET_SET_BY_COMPACT = ("in_channels", "out_channels")

#: The keys ``model.flux`` may hold (:func:`load_flux_backbone` and the adapter).
FLUX_KEYS = ("pretrained_dir", "dtype", "guidance_scale", "tiny", "adapter")


def build_generator(model_cfg: Mapping[str, Any], k_range: KRange, resolution: int | None):
    """Generator from ``cfg.model``: kind compact (embedded default) or flux (adapter on FLUX.1-Kontext)."""
    from diffusers import UNet2DConditionModel

    from lightning_modules.config import check_keyword_options

    model_cfg = dict(model_cfg)
    kind = model_cfg.get("kind", "compact")
    k_scale = float(model_cfg.get("k_scale", 4.0))
    # the keys of both backbones' sections, whichever is used (a misspelt key fails in either)
    compact = dict(model_cfg.get("compact") or {})
    allowed = _compact_keys()
    unknown = sorted(set(compact) - allowed)
    if unknown:
        raise ConfigError(f"model.compact has unknown keys {unknown}; expected some of {sorted(allowed)}")
    check_keyword_options(compact.get("unet"), UNet2DConditionModel.__init__, "model.compact.unet",
                          exclude=UNET_SET_BY_COMPACT)
    flux = dict(model_cfg.get("flux") or {})
    unknown = sorted(set(flux) - set(FLUX_KEYS))
    if unknown:
        raise ConfigError(f"model.flux has unknown keys {unknown}; expected some of {list(FLUX_KEYS)}")
    if kind == "compact":
        try:
            net = build_compact(dict(compact, k_scale=k_scale))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return CompactBokehGenerator(net, k_range, resolution=resolution)
    if kind == "flux":
        adapter_cfg = dict(flux.get("adapter") or {})
        transformer, vae, scheduler = load_flux_backbone(flux)
        adapter = install_k_adapter(transformer, k_scale=k_scale, **adapter_cfg)
        vae.requires_grad_(False)
        return FluxKontextBokehGenerator(transformer, vae, adapter, k_range, resolution=resolution, scheduler=scheduler,
                                         guidance_scale=float(flux.get("guidance_scale", 2.5)))
    raise ConfigError(f"model.kind must be 'compact' or 'flux', got {kind!r}")


def load_flux_backbone(flux: Mapping[str, Any]):
    """(transformer, vae, scheduler) from a local diffusers folder (``pretrained_dir``; never downloaded) or tiny."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    path = flux.get("pretrained_dir")
    if path:
        path = Path(path)
        if not (path / "transformer").is_dir() or not (path / "vae").is_dir():
            raise ConfigError(f"model.flux.pretrained_dir={path}: expected a diffusers folder with transformer/ and vae/ "
                              "(e.g. a local copy of FLUX.1-Kontext-dev); nothing is downloaded")
        dtype = getattr(torch, str(flux.get("dtype", "bfloat16")))
        transformer = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype,
                                                             local_files_only=True).eval()
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, local_files_only=True).eval()
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        return transformer, vae, scheduler
    tiny = dict(flux.get("tiny") or {})
    return tiny_flux_transformer(int(tiny.pop("seed", 0)), **tiny), tiny_flux_vae(), None


# --------------------------------------------------------------------------------------------- lightning module
class Stage1Module(L.LightningModule):
    """Rectified-flow training of a Stage-1 generator on physics targets (or real pairs), null-K dropout for CFG."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = _container(cfg)
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        k = cfg["k"]
        self.k_range = KRange(float(k["min"]), float(k["max"]), str(k.get("policy", "clamp")))
        self.generator = build_generator(cfg["model"], self.k_range, resolution=int(cfg["data"]["width"]))
        self.render_options = dict(cfg.get("render_options") or {})
        self.p_null = float(cfg["train"].get("p_null_k", 0.1))
        self.t_dist = str(cfg["train"].get("t_distribution", "logit_normal"))
        self.defocus_weight, self.defocus_loss = self._defocus_supervision(cfg)
        self.defocus_log_floor = self._defocus_log_floor(cfg)
        self.image_weight = self._image_weight(cfg, self.defocus_weight)
        self.eval_steps = int(cfg["eval"].get("num_steps", 4))
        self.eval_k = [float(x) for x in cfg["eval"].get("K_px_m", [k["min"], k["max"]])]
        self.test_results: dict[str, float] = {}
        self._test_sums: dict[str, list[float]] = {}

    def _defocus_supervision(self, cfg: Mapping[str, Any]) -> tuple[float, str]:
        """(``train.defocus_weight``, ``train.defocus_loss``): the weight of the error between the layered head's map
        and the scene's true defocus, and its kind (:func:`defocus_map_error`). Training only (the depth behind the
        physics targets); sampling stays depth-free."""
        loss = str(cfg["train"].get("defocus_loss", "l1"))
        if loss not in DEFOCUS_LOSSES:
            raise ConfigError(f"train.defocus_loss must be 'l1' (the median map), 'l2' (the mean map) or 'log_l1' "
                              f"(the median of the map's log: relative errors); got {loss!r}")
        weight = _loss_weight(cfg, "defocus_weight", 0.0)
        if weight > 0:
            if getattr(getattr(self.generator, "net", None), "head", None) != "layered":
                raise ConfigError("train.defocus_weight > 0 needs model.kind=compact with model.compact.head=layered "
                                  "(the only generator with a defocus map); set train.defocus_weight=0")
            if cfg["data"].get("kind", "synthetic") == "pairs":
                raise ConfigError("train.defocus_weight > 0 needs depth (data.kind synthetic or rgbd_manifest); real "
                                  "pairs have none: set train.defocus_weight=0")
        return weight, loss

    @staticmethod
    def _defocus_log_floor(cfg: Mapping[str, Any]) -> float:
        """``train.defocus_log_floor_inv_m`` (1/m, > 0): log_l1 compares log(map + floor), so that the in-focus zero
        of the nearest-subject policy stays finite; far below the default scenes' smallest defocus (0.09 1/m)."""
        return float(check_number(cfg["train"].get("defocus_log_floor_inv_m", 0.01), "train.defocus_log_floor_inv_m",
                                  0.0, exclusive=True))

    @staticmethod
    def _image_weight(cfg: Mapping[str, Any], defocus_weight: float) -> float:
        """``train.image_weight``: the weight of the frames' rectified-flow loss (1 = as before the key existed).
        0 trains the layered head's defocus map alone (``train.defocus_weight`` > 0 then required): the generator
        becomes a depth-free defocus-map regressor whose frames are physics renders of that map."""
        weight = _loss_weight(cfg, "image_weight", 1.0)
        if weight == 0 and defocus_weight == 0:
            raise ConfigError("train.image_weight=0 with train.defocus_weight=0 leaves nothing to train: set one of "
                              "them > 0")
        return weight

    def defocus_target(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """True defocus map [B,1,H,W] (1/m) of a batch with depth, on the generator's side of the focal plane."""
        net = self.generator.net
        return true_defocus_inv_m(batch["depth_m"], batch["focus_m"], net.defocus_sign, net.defocus_max_inv_m)

    # trainable parameters: the adapter (flux) or the whole compact network
    def trainable_named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def targets_for(self, batch: Mapping[str, torch.Tensor], K: torch.Tensor) -> torch.Tensor:
        if "target" in batch:
            return batch["target"]
        return physics_targets(batch["image"], batch["depth_m"], K, batch["focus_m"], self.render_options)

    def draw_k(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "K_px_m" in batch:
            return batch["K_px_m"].float()
        b = batch["image"].shape[0]
        u = torch.rand(b, device=self.device)
        return self.k_range.k_min + u * (self.k_range.k_max - self.k_range.k_min)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        K = self.draw_k(batch)
        target = self.targets_for(batch, K)
        sharp = batch["image"]
        b = sharp.shape[0]
        null = torch.rand(b, device=self.device) < self.p_null
        t = sample_t(b, device=self.device, distribution=self.t_dist)
        out = self.generator.training_loss(sharp, target, K, null, t)
        loss = self.image_weight * out["loss"]
        self.log("train/v_mse", out["v_mse"], batch_size=b, sync_dist=True)
        if self.defocus_weight > 0:
            defocus_term = defocus_map_error(out["defocus_inv_m"], self.defocus_target(batch), self.defocus_loss,
                                             self.defocus_log_floor)
            loss = loss + self.defocus_weight * defocus_term
            self.log("train/image_loss", out["loss"], batch_size=b, sync_dist=True)
            self.log(f"train/defocus_{self.defocus_loss}", defocus_term, batch_size=b, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        return loss

    def _sample(self, sharp: torch.Tensor, K: float, guidance: GuidanceConfig | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(frame [B,3,H,W], the layered head's defocus map [B,1,h,w] (1/m) or None)."""
        res = self.generator.generate_stack(sharp, [K], num_steps=self.eval_steps, seed=0, guidance=guidance)
        defocus = res.info.get("defocus_inv_m")
        return res.frames[:, 0].to(sharp.device), (None if defocus is None else defocus[:, 0].to(sharp.device))

    def _eval_step(self, batch: Mapping[str, torch.Tensor], prefix: str) -> dict[str, float]:
        sharp = batch["image"]
        b = sharp.shape[0]
        out: dict[str, float] = {}
        Ks = [float(batch["K_px_m"][0])] if "K_px_m" in batch else self.eval_k
        # fixed-t flow loss (comparable across epochs)
        gen = torch.Generator(device="cpu").manual_seed(1)
        losses, psnrs, psnr_id, defocus_mae = [], [], [], []
        for K in Ks:
            Kt = torch.full((b,), K, device=self.device)
            target = self.targets_for(batch, Kt)
            t = torch.full((b,), 0.5, device=self.device)
            noise = torch.randn(target.shape, generator=gen).to(self.device) if self.cfg["model"].get("kind", "compact") == "compact" else None
            losses.append(float(self.generator.training_loss(sharp, target, Kt, torch.zeros(b, dtype=torch.bool, device=self.device), t, noise)["loss"]))
            pred, defocus = self._sample(sharp, K)
            psnrs.append(float(psnr(pred, target).mean()))
            # (a map at a working size other than the batch's is not compared: no resampling of a defocus edge)
            if defocus is not None and "depth_m" in batch and defocus.shape[-2:] == sharp.shape[-2:]:
                defocus_mae.append(float((defocus - self.defocus_target(batch)).abs().mean()))
            psnr_id.append(float(psnr(sharp, target).mean()))
        out[f"{prefix}/loss"] = sum(losses) / len(losses)
        out[f"{prefix}/psnr"] = sum(psnrs) / len(psnrs)
        out[f"{prefix}/psnr_identity"] = sum(psnr_id) / len(psnr_id)
        if defocus_mae:  # the sampled map vs the scene's true defocus (1/m): calibration, not image fidelity
            out[f"{prefix}/defocus_mae"] = sum(defocus_mae) / len(defocus_mae)
        for key, value in out.items():
            self.log(key, value, prog_bar=key.endswith("psnr"), batch_size=b, sync_dist=True)
        return out

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        out = self._eval_step(batch, "test")
        for key, value in out.items():
            self._test_sums.setdefault(key.split("/", 1)[1], []).append(value)

    def on_test_epoch_end(self) -> None:
        self.test_results = {k: sum(v) / len(v) for k, v in self._test_sums.items()}
        self._test_sums = {}

    def configure_optimizers(self):
        opt_cfg = self.cfg["optim"]
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(opt_cfg["lr"]), weight_decay=float(opt_cfg.get("weight_decay", 0.0)),
                                betas=tuple(opt_cfg.get("betas", (0.9, 0.999))))
        total = self.trainer.estimated_stepping_batches if self.trainer else 1000
        total = int(total) if math.isfinite(total) else 100_000
        schedule = warmup_cosine(total, int(opt_cfg.get("warmup_steps", 0)), float(opt_cfg.get("min_lr_ratio", 0.1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                                                    "interval": "step"}}

    # checkpoints: only trainable tensors
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_named_parameters())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["stage1_trainable_keys"] = sorted(keep)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["state_dict"]
        expected = set(self.trainable_named_parameters())
        missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
        if missing or unexpected:
            raise ValueError(f"Stage-1 checkpoint does not fit this model: missing {missing[:10]} "
                             f"(+{max(0, len(missing) - 10)}), unexpected {unexpected[:10]} (+{max(0, len(unexpected) - 10)})")
        full = {k: v for k, v in self.state_dict().items()}
        full.update(saved)
        checkpoint["state_dict"] = full


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """[B] PSNR (dB) for images in [0,1]."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


# ------------------------------------------------------------------------------------------ export / load generator
def training_focus(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The focus the training targets were rendered at, for the generator's metadata: ``focus_m`` (m, or None when
    it varied per scene) and ``focus_policy`` (words). Tools that render physics references or write stack manifests
    for a generator use ``focus_m`` so that they speak of the focus its frames were trained to show."""
    kind = data_cfg.get("kind", "synthetic")
    if kind == "pairs":
        return {"focus_m": None, "focus_policy": "real pairs (each photo's own focus)"}
    key = "synthetic" if kind == "synthetic" else "rgbd"
    focus = check_focus_option((data_cfg.get(key) or {}).get("focus_m"), f"data.{key}.focus_m")
    if focus is None:
        return {"focus_m": None, "focus_policy": "nearest subject of each scene"}
    policy = "fixed" + (" (unless a manifest row gives its own)" if key == "rgbd" else "")
    return {"focus_m": focus, "focus_policy": policy}


def generator_meta(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``generator.json``: what :func:`load_generator` and the tools need to know about a trained generator."""
    return {"model": cfg["model"], "k": cfg["k"], "resolution": int(cfg["data"]["width"]),
            "eval_steps": int(cfg["eval"].get("num_steps", 4)), "eval_K_px_m": list(cfg["eval"].get("K_px_m", [])),
            "trained_on": cfg["data"].get("kind", "synthetic"), **training_focus(cfg["data"]),
            # the scenes it learned from: compare_bokeh evaluates on the same kind (e.g. appearance_cues)
            "scene_options": dict(cfg["data"].get("synthetic", {}).get("scene_options") or {})}


def export_generator(module: Stage1Module, run_dir: str | Path) -> Path:
    """Write ``generator.safetensors`` (trainable weights only) and ``generator.json`` (config) into run_dir."""
    from safetensors.torch import save_file

    from bokeh.io import atomic_path, write_json

    run_dir = Path(run_dir)
    meta = generator_meta(module.cfg)
    gen = module.generator
    if isinstance(gen, FluxKontextBokehGenerator):
        path = save_adapter(gen.adapter, run_dir / "generator.safetensors")
    else:
        path = run_dir / "generator.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in gen.net.state_dict().items()}, str(tmp),
                      metadata={"format": "bokehdepth-compact-generator/1"})
    write_json(run_dir / "generator.json", meta)
    return path


def read_generator_meta(meta_path: Path) -> dict[str, Any]:
    """generator.json as a dict with what :func:`load_generator` needs (ValueError naming the file otherwise)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read generator config {meta_path} ({type(error).__name__}: {error})") from None
    expected = "the generator.json a Stage-1 fit writes: {model, k: {min, max}, resolution, ...}"
    if not isinstance(meta, dict):
        raise ValueError(f"generator config {meta_path} is a JSON {type(meta).__name__}; expected {expected}")
    missing = [key for key in ("model", "k", "resolution") if key not in meta]
    k = meta.get("k")
    if not missing and not (isinstance(k, dict) and all(isinstance(k.get(b), (int, float)) for b in ("min", "max"))):
        missing = ["k.min", "k.max"]
    if missing:
        raise ValueError(f"generator config {meta_path} lacks {missing}; expected {expected}")
    return meta


def load_generator(path: str | Path, *, k_policy: str | None = None, map_location: str = "cpu"):
    """A generator from an exported ``generator.safetensors`` (with ``generator.json`` beside it), a run directory,
    or a Lightning ``.ckpt`` of this module. Returns (generator in eval mode, meta dict)."""
    path = Path(path)
    if path.is_dir():
        path = path / "generator.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no Stage-1 generator at {path}")
    if path.suffix == ".ckpt":
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
            cfg = ckpt["hyper_parameters"]["cfg"]
        except Exception as error:  # noqa: BLE001 - pickle, zip and key errors alike: not a Stage-1 checkpoint
            raise ValueError(f"cannot read Stage-1 checkpoint {path} ({type(error).__name__}: {error})") from None
        if k_policy:
            cfg["k"]["policy"] = k_policy
        module = Stage1Module(cfg)
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"], strict=True)
        return module.generator.eval(), generator_meta(cfg)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} (the generator's config) is missing beside {path}")
    meta = read_generator_meta(meta_path)
    k = dict(meta["k"])
    if k_policy:
        k["policy"] = k_policy
    k_range = KRange(float(k["min"]), float(k["max"]), str(k.get("policy", "clamp")))
    model_cfg = dict(meta["model"])
    if model_cfg.get("kind", "compact") == "flux":
        flux = dict(model_cfg.get("flux") or {})
        transformer, vae, scheduler = load_flux_backbone(flux)
        adapter = load_adapter(transformer, path)
        gen = FluxKontextBokehGenerator(transformer, vae, adapter, k_range, resolution=int(meta["resolution"]),
                                        scheduler=scheduler)
    else:
        from safetensors.torch import load_file

        gen = build_generator(model_cfg, k_range, int(meta["resolution"]))
        try:
            state = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
            raise ValueError(f"cannot read generator weights {path} ({type(error).__name__}: {error})") from None
        expected = gen.net.state_dict()
        bad = sorted(set(state) ^ set(expected)) + sorted(k for k in set(state) & set(expected)
                                                          if state[k].shape != expected[k].shape)
        if bad:
            raise ValueError(f"generator weights {path} do not fit the configured network; mismatching keys: {bad[:12]}")
        gen.net.load_state_dict(state, strict=True)
    gen.default_steps = int(meta.get("eval_steps", gen.default_steps))
    if meta.get("k_calibration") is not None:  # written by tools/calibrate_k.py (or the fit's calibration step)
        try:
            gen.k_calibration = KCalibration.from_dict(meta["k_calibration"])
        except ValueError as error:
            raise ValueError(f"{meta_path}: k_calibration: {error}") from None
        from physics.render import RENDERER_VERSION

        measured = meta["k_calibration"].get("renderer_version")
        if measured != RENDERER_VERSION:  # the K_fit it was fitted to came from other physics
            warnings.warn(f"{meta_path}: the K calibration was fitted against physics renderer version {measured}, "
                          f"this is version {RENDERER_VERSION}: refit it with tools/calibrate_k.py --generator "
                          f"{meta_path.parent}", stacklevel=2)
    return gen.eval(), meta


# ------------------------------------------------------------------------------------------------------- build/run
# Keys a Stage-1 config may hold (None: anything below, checked by the builder of that section: model.compact and
# model.flux by build_generator, render_options and scene_options by their functions' signatures, trainer by
# lightning.Trainer), so that a misspelt key in a config FILE fails too, not only a misspelt override.
CONFIG_SCHEMA: dict[str, Any] = {
    "task": None, "name": None, "seed": None, "ckpt_path": None, "threads": None, "trainer": None,
    "render_options": None,
    "run": {"root": None, "dir": None, "overwrite": None},
    "k": {"min": None, "max": None, "policy": None},
    "model": {"kind": None, "k_scale": None, "compact": None, "flux": None},
    "data": {"kind": None, "height": None, "width": None, "batch_size": None, "eval_batch_size": None,
             "num_workers": None, "seed": None, "manifest": {"train": None, "val": None, "test": None},
             "synthetic": {"num_train": None, "num_val": None, "num_test": None, "render_in_loader": None,
                           "focus_m": None, "scene_options": None},
             "rgbd": {"focus_m": None}},
    "train": {"p_null_k": None, "t_distribution": None, "defocus_weight": None, "defocus_loss": None,
              "defocus_log_floor_inv_m": None, "image_weight": None, "ema_decay": None},
    "eval": {"num_steps": None, "K_px_m": None},
    "optim": {"lr": None, "weight_decay": None, "betas": None, "warmup_steps": None, "min_lr_ratio": None},
    "calibration": {"enabled": None, "num_scenes": None, "knots": None, "iterations": None, "min_scenes": None},
}


def build(cfg: DictConfig) -> tuple[Stage1Module, Stage1DataModule]:
    from lightning_modules.tasks import check_keys

    container = _container(cfg)
    check_keys(container, CONFIG_SCHEMA)
    for key in ("model", "data", "k", "train", "eval", "optim", "trainer"):
        if key not in container:
            raise ConfigError(f"stage1 config needs a '{key}' section")
    # checked here, before a run folder exists, not when the loaders or the optimiser are first made
    check_number(container["optim"]["lr"], "optim.lr", 0.0, exclusive=True)
    k_range_config(container["k"])
    data = container["data"]
    check_number(data["batch_size"], "data.batch_size", 1, integer=True)
    check_number(data.get("eval_batch_size") or data["batch_size"], "data.eval_batch_size", 1, integer=True)
    check_number(data.get("num_workers", 0), "data.num_workers", 0, integer=True)
    check_number(data["height"], "data.height", 8, integer=True)
    check_number(data["width"], "data.width", 8, integer=True)
    if data.get("kind", "synthetic") == "synthetic":
        check_number((data.get("synthetic") or {}).get("num_train", 0), "data.synthetic.num_train", 1, integer=True)
    from lightning_modules.config import check_keyword_options
    from lightning_modules.data import check_synthetic_options
    from physics.render import render_bokeh

    check_keyword_options(container.get("render_options"), render_bokeh, "render_options",
                          exclude=("image", "depth_m", "K_px_m", "focus_m", "return_radius"))
    check_synthetic_options((data.get("synthetic") or {}).get("scene_options"), None, "data.synthetic")
    check_number(container["train"].get("p_null_k", 0.1), "train.p_null_k", 0.0, maximum=1.0,
                 expected="a probability in [0, 1]")
    ema_decay(container)
    eval_k = container["eval"].get("K_px_m")
    if eval_k is not None:
        if not isinstance(eval_k, list) or not eval_k:
            raise ConfigError(f"eval.K_px_m={eval_k!r}: expected a non-empty list of strengths (px*m), e.g. [1.14, 2.86]")
        for i, value in enumerate(eval_k):
            check_number(value, f"eval.K_px_m[{i}]", 0.0, exclusive=True)
    calibration = dict(container.get("calibration") or {})
    if calibration.get("enabled", False):
        if container["data"].get("kind", "synthetic") != "synthetic":
            raise ConfigError(f"calibration.enabled needs data.kind=synthetic (it calibrates on scenes of the training "
                              f"kind); got {container['data'].get('kind')!r}: set calibration.enabled=false (and run "
                              f"tools/calibrate_k.py on the exported generator if you want one)")
        from lightning_modules.calibration import check_calibration_settings

        try:  # here, not after a fit of many minutes
            check_calibration_settings(float(container["k"]["min"]), float(container["k"]["max"]),
                                       **_calibration_settings(calibration))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"calibration section: {error}") from None
    module = Stage1Module(container)
    multiple = int(module.generator.size_multiple)
    for key in ("height", "width"):  # the network would refuse the first batch, after the run folder exists
        if int(data[key]) % multiple:
            raise ConfigError(f"data.{key}={data[key]}: expected a multiple of {multiple} (the {type(module.generator).__name__}'s "
                              f"down-sampling factor), e.g. {max(multiple, int(data[key]) // multiple * multiple)}")
    datamodule = Stage1DataModule(container["data"], (float(container["k"]["min"]), float(container["k"]["max"])),
                                  container.get("render_options") or {})
    return module, datamodule


def k_range_config(k: Mapping[str, Any]) -> KRange:
    """``cfg.k`` as a KRange: k.min >= 0, k.max > k.min (finite, px*m at data.width), k.policy clamp | error;
    a ConfigError naming the key otherwise."""
    k_min = check_number(k.get("min"), "k.min", 0.0, expected="a finite strength >= 0 (px*m at data.width)")
    k_max = check_number(k.get("max"), "k.max", 0.0, exclusive=True, expected="a finite strength > 0 (px*m at data.width)")
    if not k_min < k_max:
        raise ConfigError(f"k.min={k_min!r}, k.max={k_max!r}: expected k.min < k.max (the trained range of K, px*m)")
    policy = k.get("policy", "clamp")
    if policy not in ("clamp", "error"):
        raise ConfigError(f"k.policy={policy!r}: expected 'clamp' (clamp K outside [k.min, k.max] with a warning) "
                          "or 'error' (refuse it)")
    return KRange(float(k_min), float(k_max), str(policy))


def ema_decay(cfg: Mapping[str, Any]) -> float | None:
    """``train.ema_decay``: None (the fit's own weights are tested and exported) or the decay in (0, 1) of an
    exponential moving average of the trainable weights (:class:`lightning_modules.callbacks.TrainableEMA`), which
    then are what validation measures, the checkpoints hold and the export writes."""
    decay = cfg["train"].get("ema_decay")
    if decay is None:
        return None
    expected = "null (no average) or a decay in (0, 1), e.g. 0.99"
    check_number(decay, "train.ema_decay", 0.0, exclusive=True, maximum=1.0, expected=expected)
    if decay == 1.0:
        raise ConfigError(f"train.ema_decay={decay!r}: expected {expected}")
    return float(decay)


def run(cfg: DictConfig, prepare_run_dir: Any, *, resume: bool = False, ckpt_path: str | None = None) -> dict[str, Any]:
    """fit + test, export the generator, write result.json."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from bokeh.io import write_json
    from lightning_modules.callbacks import TrainableEMA, TrainingRate, ValidationTime
    from lightning_modules.tasks import check_epoch_settings, check_trainer_settings, find_last_checkpoint

    # everything that can be checked from the config is checked before the run folder exists: the trainer settings as
    # Lightning resolves them, the model (built), the data settings and the manifests a fit reads
    trainer_cfg = check_trainer_settings(cfg.trainer)
    module, datamodule = build(cfg)
    datamodule.check()
    check_epoch_settings(trainer_cfg, datamodule)
    run_dir = Path(prepare_run_dir())
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-step{step}", monitor="val/psnr",
                                 mode="max", save_last=True, save_top_k=1, auto_insert_metric_name=False)
    validation_time = ValidationTime()
    max_steps = int(trainer_cfg.get("max_steps") or -1)
    # the steady rate skips the start-up: the first 10% of a step-bounded fit (at most 50 steps), else 50 steps
    rate = TrainingRate(skip_steps=max(1, min(50, max_steps // 10)) if max_steps > 0 else 50)
    callbacks: list[L.Callback] = [checkpoint, validation_time, rate]
    decay = ema_decay(_container(cfg))
    if decay is not None:
        callbacks.append(TrainableEMA(decay))
    trainer = L.Trainer(default_root_dir=str(run_dir), logger=[CSVLogger(run_dir, name="logs", version="")],
                        callbacks=callbacks, **trainer_cfg)
    ckpt = ckpt_path or (str(find_last_checkpoint(run_dir)) if resume and find_last_checkpoint(run_dir) else None)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
    fit_s = time.perf_counter() - t0
    best = checkpoint.best_model_path or None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(state)
        module.load_state_dict(state["state_dict"], strict=True)
    t1 = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    results = {"test": dict(module.test_results), "fit_s": fit_s, "test_s": time.perf_counter() - t1,
               "steps": int(trainer.global_step), "fit_validation_s": validation_time.seconds,
               "fit_validations": validation_time.count, "train_steps_per_s": rate.steps_per_s,
               "best_checkpoint": best or "", "run_dir": str(run_dir),
               "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad)}
    if trainer.is_global_zero:
        results["generator"] = str(export_generator(module, run_dir))
        calibration = calibrate_exported(cfg, run_dir)
        if calibration is not None:
            results["k_calibration"] = calibration
        write_json(run_dir / "result.json", results)
        print(json.dumps(results["test"], indent=2))
    return results


def _calibration_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``calibration`` section as keyword arguments of lightning_modules.calibration (defaults as configs/stage1)."""
    knots = section.get("knots")
    return {"knots": None if knots is None else [float(k) for k in knots],
            "num_scenes": int(section.get("num_scenes", 32)), "iterations": int(section.get("iterations", 3)),
            "min_scenes": int(section.get("min_scenes", 5))}


def calibrate_exported(cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The ``calibration`` section's post-fit step: fit the exported generator's K calibration on validation scenes
    (lightning_modules.calibration, as tools/calibrate_k.py) and write it into generator.json (:func:`build` refuses
    it for non-synthetic data). Returns the summary for result.json, or None when ``calibration.enabled`` is false."""
    section = dict(_container(cfg).get("calibration") or {})
    if not section.get("enabled", False):
        return None
    from lightning_modules.calibration import calibrate_generator, summary_line, write_calibration

    t0 = time.perf_counter()
    gen, meta = load_generator(run_dir)
    if torch.cuda.is_available():  # the generator's passes on the GPU; frames come back to the CPU for the fits
        gen = gen.cuda()
    calibration, report = calibrate_generator(gen, meta, seed=int(cfg["data"].get("seed", 0)),
                                              **_calibration_settings(section))
    report["generator"] = str(run_dir)
    write_calibration(run_dir / "generator.json", calibration, report, run_dir / "calibration")
    print(summary_line(calibration, report))
    after = report["iterates"][report["chosen_iterate"]]
    return {**calibration.to_dict(), "val_k_cal_err_before": report["iterates"][0]["mean_k_cal_err"],
            "val_k_cal_err_after": after["mean_k_cal_err"], "seconds": time.perf_counter() - t0}
