"""Base depth models behind one small interface, so DSFA plugs into any ViT + DPT-style decoder.

A :class:`DepthBackbone` splits a transformers depth model into

    encode(pixels [M,3,h,w]) -> taps: list of [M, 1+P, D] token tensors (CLS first), what the decoder reads
    decode(taps, patch_h, patch_w) -> depth [M,1,h',w'] (metres for a metric head)
    blocks -> the ViT blocks (nn.ModuleList); tap_blocks[i] = index of the block whose output feeds taps[i]

and ``decode(encode(x))`` is the wrapped model's own forward, computed with the same modules in the same order.

Families:
  * ``depth_anything_v2``: DepthAnythingForDepthEstimation (DINOv2 backbone, DPT neck, relative or metric head).
    Patch 14, ImageNet mean/std. The metric head is sigmoid * max_depth (metres).
  * ``dpt``: DPTForDepthEstimation with a plain ViT (patch 16, CLS readout projection, ViT blocks without
    LayerScale, mean/std 0.5, inputs at multiples of 32 px). Its last activation (ReLU, relative inverse depth) is replaced by
    sigmoid * max_depth so that it predicts metric depth like Depth Anything's metric head.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DepthBackbone", "DepthAnythingBackbone", "DPTBackbone", "DA_PRESETS", "DPT_PRESETS", "build_backbone"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Depth Anything V2 sizes (DINOv2 backbone + DPT neck); "small" is V2-Small (24.8 M parameters).
DA_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "backbone": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4]),
        "decoder": dict(neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16),
    },
    "small": {
        "backbone": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, out_indices=[3, 6, 9, 12]),
        "decoder": dict(neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32),
    },
    "base": {
        "backbone": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, out_indices=[3, 6, 9, 12]),
        "decoder": dict(neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=128, head_hidden_size=32),
    },
    "large": {
        "backbone": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, out_indices=[5, 12, 18, 24]),
        "decoder": dict(neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256, head_hidden_size=32),
    },
}

# DPT with a plain ViT (the DPT-Large layout, and small versions of it).
DPT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "backbone": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256,
                         backbone_out_indices=[0, 1, 2, 3]),
        "decoder": dict(neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32),
    },
    "small": {
        "backbone": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                         backbone_out_indices=[2, 5, 8, 11]),
        "decoder": dict(neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64),
    },
    "large": {
        "backbone": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         backbone_out_indices=[5, 11, 17, 23]),
        "decoder": dict(neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256),
    },
}


def _read_mean_std(path: Path, default_mean, default_std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of a local HF checkpoint's preprocessor_config.json, else the family defaults."""
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        return tuple(data.get("image_mean", default_mean)), tuple(data.get("image_std", default_std))
    return tuple(default_mean), tuple(default_std)


def _check_pretrained(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"pretrained_path {str(path)!r} is not a local Hugging Face model directory (expected a folder with "
            "config.json and model weights, e.g. a downloaded Depth-Anything-V2-Small-hf)"
        )
    return p


def _preset(presets: dict, size: str, family: str) -> dict[str, dict[str, Any]]:
    if size not in presets:
        raise ValueError(f"unknown size {size!r} for family {family!r}; known: {sorted(presets)}")
    return copy.deepcopy(presets[size])


def _merge_arch(preset: dict, arch: dict | None, family: str, fields: dict[str, set[str]]) -> dict:
    """Preset updated with ``arch`` overrides; a field the transformers config does not know is an error
    (transformers configs would silently keep a misspelt keyword as an extra attribute)."""
    arch = arch or {}
    unknown = set(arch) - {"backbone", "decoder"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in arch for family {family!r}; expected 'backbone', 'decoder'")
    for part in ("backbone", "decoder"):
        given = dict(arch.get(part) or {})
        bad = sorted(set(given) - fields[part])
        if bad:
            raise ValueError(f"unknown field(s) {bad} in arch.{part} for family {family!r}; "
                             f"known: {sorted(fields[part])}")
        preset[part].update(given)
    return preset


def _config_fields(config_class) -> set[str]:
    return set(config_class().to_dict())


class DepthBackbone(nn.Module):
    """Common interface of a base depth model split into encoder taps and decoder (see the module docstring).

    Attributes:
        hf: the wrapped transformers model (its state_dict keys are the checkpoint's, under ``hf.``).
        patch_size: ViT patch size (px).
        size_multiple: input H and W must be multiples of it (the patch size, or more when the decoder halves the grid).
        hidden_size, num_heads: token width D and attention heads of the ViT.
        tap_blocks: 0-based index of the ViT block whose output feeds each decoder tap.
        is_metric: True when decode() returns metres.
        image_mean, image_std: the normalisation the model expects (sRGB in [0,1] -> (x - mean) / std).
    """

    family = "base"
    hf: nn.Module
    patch_size: int
    size_multiple: int
    hidden_size: int
    num_heads: int
    tap_blocks: list[int]
    is_metric: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def decode(self, taps: list[torch.Tensor], patch_h: int, patch_w: int) -> torch.Tensor:
        raise NotImplementedError

    def encoder_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def decoder_modules(self) -> list[nn.Module]:
        raise NotImplementedError


class DepthAnythingBackbone(DepthBackbone):
    """Depth Anything (V2 layout) through transformers' DepthAnythingForDepthEstimation."""

    family = "depth_anything_v2"

    def __init__(self, hf_model: nn.Module, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD) -> None:
        super().__init__()
        self.hf = hf_model
        cfg = hf_model.config
        bcfg = cfg.backbone_config
        if getattr(bcfg, "reshape_hidden_states", False):
            raise ValueError("Depth Anything backbone must keep token taps (backbone_config.reshape_hidden_states=False)")
        self.patch_size = int(cfg.patch_size)
        self.size_multiple = self.patch_size  # the neck resizes to explicit sizes: any grid works
        self.hidden_size = int(bcfg.hidden_size)
        self.num_heads = int(bcfg.num_attention_heads)
        stage_names = list(hf_model.backbone.stage_names)
        self.tap_blocks = [stage_names.index(name) - 1 for name in hf_model.backbone.out_features]
        self.is_metric = cfg.depth_estimation_type == "metric"
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.backbone.encoder.layer

    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return list(self.hf.backbone(pixel_values).feature_maps)

    def decode(self, taps: list[torch.Tensor], patch_h: int, patch_w: int) -> torch.Tensor:
        features = self.hf.neck(list(taps), patch_h, patch_w)
        return self.hf.head(features, patch_h, patch_w).unsqueeze(1)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.hf.backbone]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.hf.neck, self.hf.head]


class DPTBackbone(DepthBackbone):
    """DPT with a plain ViT encoder through transformers' DPTForDepthEstimation, with a metric sigmoid head."""

    family = "dpt"

    def __init__(self, hf_model: nn.Module, max_depth_m: float, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)) -> None:
        super().__init__()
        cfg = hf_model.config
        if cfg.is_hybrid or cfg.backbone_config is not None:
            raise ValueError("family 'dpt' supports the plain ViT DPT (is_hybrid=False, no backbone_config)")
        self.hf = hf_model
        # The DPT head ends in ReLU (relative inverse depth); metric depth = sigmoid * max_depth, as Depth Anything's
        # metric head. The activation has no parameters, so checkpoints load unchanged.
        self.hf.head.head[-1] = nn.Sigmoid()
        self.max_depth_m = float(max_depth_m)
        self.patch_size = int(cfg.patch_size)
        # DPT's fusion stage doubles the grid from the stride-2 (factor 0.5) tap upwards: an odd patch grid would give
        # an output of another size than the input, so inputs are kept at multiples of 2 patches.
        self.size_multiple = 2 * self.patch_size
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_attention_heads)
        self.tap_blocks = [int(i) for i in cfg.backbone_out_indices]
        self.is_metric = True
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.dpt.encoder.layer

    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.hf.dpt(pixel_values, output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
        return [hidden[1 + i] for i in self.tap_blocks]

    def decode(self, taps: list[torch.Tensor], patch_h: int, patch_w: int) -> torch.Tensor:
        features = self.hf.neck(list(taps), patch_h, patch_w)
        return self.hf.head(features).unsqueeze(1) * self.max_depth_m

    def encoder_modules(self) -> list[nn.Module]:
        return [self.hf.dpt]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.hf.neck, self.hf.head]


def _build_depth_anything(size: str, arch: dict | None, head: str, max_depth_m: float | None, pretrained_path) -> DepthBackbone:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if head not in ("metric", "relative"):
        raise ValueError(f"head must be 'metric' or 'relative', got {head!r}")
    if pretrained_path:
        path = _check_pretrained(pretrained_path)
        kwargs: dict[str, Any] = {"depth_estimation_type": head}
        hf = DepthAnythingForDepthEstimation.from_pretrained(str(path), **kwargs)
        mean, std = _read_mean_std(path, IMAGENET_MEAN, IMAGENET_STD)
    else:
        fields = {"backbone": _config_fields(Dinov2Config), "decoder": _config_fields(DepthAnythingConfig)}
        preset = _merge_arch(_preset(DA_PRESETS, size, "depth_anything_v2"), arch, "depth_anything_v2", fields)
        bb = dict(patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0, reshape_hidden_states=False,
                  apply_layernorm=True)
        bb.update(preset["backbone"])
        dec = dict(reassemble_hidden_size=bb["hidden_size"], patch_size=bb["patch_size"])
        dec.update(preset["decoder"])
        hf = DepthAnythingForDepthEstimation(
            DepthAnythingConfig(backbone_config=Dinov2Config(**bb), depth_estimation_type=head, max_depth=1, **dec)
        )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if max_depth_m is not None:
        # transformers types max_depth as int; the head reads the attribute at run time, so set the float here.
        hf.config.max_depth = int(round(max_depth_m)) if float(max_depth_m).is_integer() else hf.config.max_depth
        hf.head.max_depth = float(max_depth_m)
    return DepthAnythingBackbone(hf, mean, std)


def _build_dpt(size: str, arch: dict | None, head: str, max_depth_m: float | None, pretrained_path) -> DepthBackbone:
    from transformers import DPTConfig, DPTForDepthEstimation

    if head != "metric":
        raise ValueError(f"family 'dpt' has a metric head only, got head={head!r}")
    if pretrained_path:
        path = _check_pretrained(pretrained_path)
        hf = DPTForDepthEstimation.from_pretrained(str(path))
        mean, std = _read_mean_std(path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    else:
        dpt_fields = _config_fields(DPTConfig)
        preset = _merge_arch(_preset(DPT_PRESETS, size, "dpt"), arch, "dpt", {"backbone": dpt_fields, "decoder": dpt_fields})
        kwargs = dict(patch_size=16, image_size=384, readout_type="project", is_hybrid=False)
        kwargs.update(preset["backbone"])
        kwargs.update(preset["decoder"])
        hf = DPTForDepthEstimation(DPTConfig(**kwargs))
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return DPTBackbone(hf, 10.0 if max_depth_m is None else max_depth_m, mean, std)


def build_backbone(family: str, size: str = "tiny", arch: dict | None = None, head: str = "metric",
                   max_depth_m: float | None = None, pretrained_path: str | None = None) -> DepthBackbone:
    """Build a base depth model (random weights from a size preset, or a local HF checkpoint).

    Args:
        family: "depth_anything_v2" | "dpt".
        size: preset name (DA: tiny, small, base, large; DPT: tiny, small, large); ignored with pretrained_path.
        arch: optional overrides {"backbone": {...}, "decoder": {...}} of the preset's transformers config fields.
        head: "metric" (metres) or "relative" (Depth Anything only; relative inverse depth, not metres).
        max_depth_m: metric head range in metres (sigmoid * max_depth_m); None keeps the checkpoint's
            (random-weight models: 1 for Depth Anything, 10 for DPT).
        pretrained_path: local Hugging Face model directory (config.json + weights).
    """
    builders = {"depth_anything_v2": _build_depth_anything, "dpt": _build_dpt}
    if family not in builders:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(builders)}")
    return builders[family](size, arch, head, max_depth_m, pretrained_path)
