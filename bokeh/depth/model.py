"""BokehDepthModel: a base depth model (any :class:`DepthBackbone`) plus DSFA blocks at chosen encoder taps.

    forward(image [B,3,H,W] sRGB in [0,1], stack [B,N,3,H,W] | None, K_px_m [B,N] | None) -> depth [B,1,H,W] metres

* The reference and the stack frames go through the SAME encoder (shared weights), batched as B*(N+1) frames in
  one pass (frame-major: rows [0, B) are the references), or, with ``stack_no_grad``, the stack in a separate pass
  under ``torch.no_grad`` (saves activation memory; the encoder then learns from the reference only).
* Placement "posthoc": DSFA refines the tapped features right before the decoder (the published Depth Anything V2
  way); "inside": DSFA refines the reference tokens at the output of the tapped ViT block, and the refined tokens
  flow through the later blocks (the paper's figure). Implemented with forward hooks (prepend=True, so that
  transformers' own output recording sees the refined tokens) registered for the duration of one forward call.
* Only the reference frame reaches the decoder.
* Stack None / N = 0: DSFA runs on the reference alone (F = 1). With DSFA disabled, or at initialisation (all
  DSFA residual paths start at zero), the output is the base model's, bit for bit.
* Input sizes that are not multiples of the patch size are resized (bilinear) to the nearest multiple and the depth
  is resized back; K is rescaled by the same width factor so that DSFA sees the blur in the pixels it looks at.
  Stack frames of another size than the reference are resized to it (bilinear, warning once), never cropped.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .defocus_cue import DefocusCue
from .dsfa import DSFA
from .encoders import DepthBackbone, build_backbone

__all__ = ["BokehDepthModel", "build_depth_model", "DEFAULT_CONFIG"]

DEFAULT_CONFIG: dict[str, Any] = {
    "family": "depth_anything_v2",  # "depth_anything_v2" | "dpt"
    "size": "tiny",  # DA: tiny|small|base|large, DPT: tiny|small|large (ignored with pretrained_path)
    "pretrained_path": None,  # local Hugging Face model directory, e.g. .../Depth-Anything-V2-Small-hf
    "head": "metric",  # "metric" (metres) | "relative" (Depth Anything only; not metres)
    "max_depth_m": 20.0,  # metric head range: depth = sigmoid(.) * max_depth_m; null keeps the checkpoint's
    "min_depth_m": 1e-3,  # output floor (metres), keeps log-depth losses finite
    "stack_no_grad": False,  # encode stack frames under torch.no_grad (separate pass)
    "arch": {},  # overrides of the size preset: {backbone: {...}, decoder: {...}} (transformers config fields)
    "dsfa": {
        "enabled": True,
        "taps": [-2, -1],  # indices into the decoder's tap list (negative from the end); V2: the last two
        "placement": "posthoc",  # "posthoc" | "inside"
        "k_scale": 30.0,  # K (px*m) mapped to k = 1
        "num_heads": None,  # null: the encoder's number of heads
        "mlp_ratio": 1.0,  # paper: 4
        "attn_ratio": 0.5,  # paper: 1
        "alpha_init": 1.0,  # initial focus-bias slope (> 0)
        "spatial": True,  # run the per-frame spatial step
        "gamma_init": 0.0,  # 0: identity at init (pretrained encoders); 1: open paths (encoders trained from scratch)
        "defocus_cue": False,  # add pixel-level log band-energy ratios (DefocusCue) to every frame's tokens
        "cue_scales": 4,  # dyadic scales of the defocus cue (4: full, 1/2, 1/4, 1/8 resolution)
    },
}


def _to_dict(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise TypeError(f"depth model config must be a mapping, got {type(cfg).__name__}")
    return copy.deepcopy(dict(cfg))


def _merge(defaults: dict, given: dict, prefix: str = "") -> dict:
    """Defaults updated with ``given``; unknown keys raise ValueError naming the key (``arch`` is free-form)."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ValueError(f"unknown depth model config key '{prefix}{key}'; known keys: {sorted(defaults)}")
        if isinstance(defaults[key], dict) and key != "arch":
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"depth model config '{prefix}{key}' must be a mapping, got {value!r}")
            out[key] = _merge(defaults[key], dict(value), f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", defaults[key], value)
            out[key] = value
    return out


_NULLABLE = {"pretrained_path", "max_depth_m", "dsfa.num_heads"}


def _check_type(key: str, default: Any, value: Any) -> None:
    """A config value must have its default's type (numbers: int or float; null only where documented)."""
    if value is None:
        if key in _NULLABLE:
            return
        raise ValueError(f"depth model config '{key}' must not be null (default {default!r})")
    if default is None:
        expected: tuple = (str,) if key == "pretrained_path" else (int,)
    elif isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, (int, float)):
        expected = (int, float)
    elif isinstance(default, str):
        expected = (str,)
    elif isinstance(default, (list, tuple)):
        expected = (list, tuple, int)
    else:
        return
    if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in expected)
        raise ValueError(f"depth model config '{key}' must be {names}, got {value!r} ({type(value).__name__})")


class BokehDepthModel(nn.Module):
    """A base depth model with DSFA blocks at chosen encoder taps (see the module docstring).

    Args:
        backbone: the base depth model split into encoder taps and decoder.
        dsfa: DSFA options (keys of ``DEFAULT_CONFIG["dsfa"]``) or None for the base model.
        stack_no_grad: encode the stack frames under torch.no_grad (separate pass).
        min_depth_m: output floor in metres (metric heads only).
    """

    def __init__(self, backbone: DepthBackbone, dsfa: Mapping[str, Any] | None = None, stack_no_grad: bool = False,
                 min_depth_m: float = 1e-3) -> None:
        super().__init__()
        self.backbone = backbone
        self.stack_no_grad = bool(stack_no_grad)
        self.min_depth_m = float(min_depth_m)
        self.register_buffer("image_mean", torch.tensor(backbone.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(backbone.image_std).view(1, 3, 1, 1), persistent=False)
        self.dsfa = nn.ModuleDict()
        self.dsfa_cue: DefocusCue | None = None  # optional pixel-level defocus cue shared by the DSFA blocks
        self.placement = "posthoc"
        self.dsfa_taps: list[int] = []
        self._ctx: dict[str, Any] | None = None
        self._warned_resize = False
        self._warned_patch = False
        if dsfa is not None and dsfa.get("enabled", True):
            self._add_dsfa(dict(dsfa))

    # ------------------------------------------------------------------ construction
    def _add_dsfa(self, cfg: dict) -> None:
        n_taps = len(self.backbone.tap_blocks)
        taps = cfg.get("taps", [-2, -1])
        if isinstance(taps, int):
            taps = [taps]
        resolved = []
        for t in taps:
            if not isinstance(t, int) or not -n_taps <= t < n_taps:
                raise ValueError(f"dsfa.taps entry {t!r} is not a decoder tap index in [-{n_taps}, {n_taps - 1}] "
                                 f"(this model's taps come from ViT blocks {self.backbone.tap_blocks})")
            resolved.append(t % n_taps)
        if len(set(resolved)) != len(resolved) or not resolved:
            raise ValueError(f"dsfa.taps must name distinct decoder taps, got {taps}")
        placement = cfg.get("placement", "posthoc")
        if placement not in ("posthoc", "inside"):
            raise ValueError(f"dsfa.placement must be 'posthoc' or 'inside', got {placement!r}")
        if placement == "inside" and any(self.backbone.tap_blocks[t] < 0 for t in resolved):
            raise ValueError("dsfa.placement='inside' needs taps after a ViT block (not the patch embedding)")
        self.placement = placement
        self.dsfa_taps = sorted(resolved)
        heads = cfg.get("num_heads") or self.backbone.num_heads
        if cfg.get("defocus_cue", False):
            self.dsfa_cue = DefocusCue(scales=int(cfg.get("cue_scales", 4)))
        cue_dim = self.dsfa_cue.out_dim if self.dsfa_cue is not None else 0
        for t in self.dsfa_taps:
            self.dsfa[str(t)] = DSFA(
                self.backbone.hidden_size,
                num_heads=int(heads),
                mlp_ratio=float(cfg.get("mlp_ratio", 1.0)),
                attn_ratio=float(cfg.get("attn_ratio", 0.5)),
                k_scale=float(cfg.get("k_scale", 30.0)),
                alpha_init=float(cfg.get("alpha_init", 1.0)),
                spatial=bool(cfg.get("spatial", True)),
                gamma_init=float(cfg.get("gamma_init", 0.0)),
                cue_dim=cue_dim,
            )

    def _make_inside_hook(self, tap: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            ctx = self._ctx
            if ctx is None:
                return None
            tokens = output[0] if isinstance(output, tuple) else output
            b, n = ctx["B"], ctx["N"]
            if ctx["mode"] == "record":  # the no-grad stack pass: keep the stack tokens for the reference pass
                ctx["cache"][tap] = tokens.view(n, b, *tokens.shape[1:]).transpose(0, 1)
                return None
            if ctx["mode"] == "joint":
                ref, rest = tokens[:b], tokens[b:]
                stack = rest.view(n, b, *rest.shape[1:]).transpose(0, 1) if n else None
                refined = torch.cat([self.dsfa[str(tap)](ref, stack, ctx["K"], ctx["cue"]), rest], dim=0)
            else:  # "reference": stack tokens come from the recorded pass
                refined = self.dsfa[str(tap)](tokens, ctx["cache"].get(tap), ctx["K"], ctx["cue"])
            return (refined, *output[1:]) if isinstance(output, tuple) else refined

        return hook

    # ------------------------------------------------------------------ helpers
    @property
    def dsfa_enabled(self) -> bool:
        return len(self.dsfa) > 0

    @property
    def is_metric(self) -> bool:
        return self.backbone.is_metric

    def dsfa_stats(self) -> dict[str, float]:
        """``{"tap<i>/<stat>": value}`` of every DSFA block (see :meth:`DSFA.stats`); empty without DSFA.

        Log it during training: gammas staying ~0 mean the stack is not being used (learning rate of the "dsfa"
        group too low?), alpha growing large means the focus step attends to the reference only."""
        return {f"tap{t}/{k}": v for t, block in self.dsfa.items() for k, v in block.stats().items()}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role for per-group learning rates: {"dsfa", "encoder", "decoder"} (lists may be empty)."""
        groups = {
            "dsfa": list(self.dsfa.parameters()),
            "encoder": [p for m in self.backbone.encoder_modules() for p in m.parameters()],
            "decoder": [p for m in self.backbone.decoder_modules() for p in m.parameters()],
        }
        seen = {id(p) for ps in groups.values() for p in ps}
        missing = [n for n, p in self.named_parameters() if id(p) not in seen]
        if missing:  # a family that forgets a module would silently freeze it
            raise RuntimeError(f"parameters in no group: {missing[:5]}")
        return groups

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """sRGB [0,1] -> the base model's input normalisation."""
        return (image - self.image_mean.to(image.dtype)) / self.image_std.to(image.dtype)

    def _check_inputs(self, image: torch.Tensor, stack: torch.Tensor | None, K_px_m: torch.Tensor | None) -> int:
        if not torch.is_tensor(image) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"image must be [B,3,H,W] sRGB in [0,1], got {shape}")
        if stack is None:
            if K_px_m is not None and K_px_m.numel() > 0:
                raise ValueError(f"K_px_m {tuple(K_px_m.shape)} given without a stack (stack is None)")
            return 0
        if stack.ndim != 5 or stack.shape[0] != image.shape[0] or stack.shape[2] != 3:
            raise ValueError(f"stack must be [B,N,3,H,W] with B={image.shape[0]} (image {tuple(image.shape)}), "
                             f"got {tuple(stack.shape)}")
        n = stack.shape[1]
        if K_px_m is None:
            if n == 0:
                return 0
            raise ValueError(f"stack {tuple(stack.shape)} given without K_px_m (expected [B,N] = [{stack.shape[0]},{n}])")
        if tuple(K_px_m.shape) != (stack.shape[0], n):
            raise ValueError(f"K_px_m {tuple(K_px_m.shape)} does not match stack {tuple(stack.shape)}: "
                             f"expected [B,N] = [{stack.shape[0]},{n}]")
        if n and (not bool(torch.isfinite(K_px_m).all()) or bool((K_px_m < 0).any())):
            raise ValueError(f"K_px_m must be finite and >= 0 (px*m), got {K_px_m.detach().cpu().tolist()}")
        return n

    def _working_size(self, h: int, w: int) -> tuple[int, int]:
        m = self.backbone.size_multiple
        return max(m, int(round(h / m)) * m), max(m, int(round(w / m)) * m)

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, stack: torch.Tensor | None = None, K_px_m: torch.Tensor | None = None) -> torch.Tensor:
        """Metric depth of the reference image.

        Args:
            image: reference [B,3,H,W], sRGB in [0,1] (normalised inside with the base model's mean/std).
            stack: bokeh frames [B,N,3,H',W'] of the same view, or None; resized to H,W if H',W' differ.
            K_px_m: blur strength of each frame [B,N] in px*m (>= 0), in the reference image's pixel grid.

        Returns:
            depth [B,1,H,W] in metres (>= min_depth_m) for a metric head; relative inverse depth for a relative head.
        """
        h, w = image.shape[-2:] if torch.is_tensor(image) and image.ndim == 4 else (0, 0)
        taps, (ph, pw) = self._features(image, stack, K_px_m)
        depth = self.backbone.decode(taps, ph, pw)
        if depth.shape[-2:] != (h, w):
            depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
        if self.backbone.is_metric:
            depth = depth.clamp_min(self.min_depth_m)
        return depth

    def tap_features(self, image: torch.Tensor, stack: torch.Tensor | None = None,
                     K_px_m: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The reference frame's decoder inputs [B,1+P,D] per tap (after DSFA), same arguments as forward."""
        return self._features(image, stack, K_px_m)[0]

    def _features(self, image, stack, K_px_m) -> tuple[list[torch.Tensor], tuple[int, int]]:
        n = self._check_inputs(image, stack, K_px_m)
        if not self.dsfa_enabled:
            n = 0  # the base model ignores the stack (after checking it, so both models reject the same input)
        b, _, h, w = image.shape
        if n and stack.shape[-2:] != image.shape[-2:]:
            if not self._warned_resize:
                warnings.warn(f"stack frames {tuple(stack.shape[-2:])} differ in size from the reference "
                              f"{(h, w)}: resized bilinearly to the reference size", stacklevel=3)
                self._warned_resize = True
            stack = F.interpolate(stack.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=True).view(b, n, 3, h, w)
        hw, ww = self._working_size(h, w)
        resize = (hw, ww) != (h, w)
        if resize and not self._warned_patch:
            warnings.warn(f"input {(h, w)} is not a multiple of {self.backbone.size_multiple} px (patch size {self.backbone.patch_size}): the model "
                          f"runs at {(hw, ww)} and the depth is resized back", stacklevel=3)
            self._warned_patch = True

        if resize:  # once, here: the encoder passes and the defocus cue all read the working-size pixels
            image = F.interpolate(image, size=(hw, ww), mode="bilinear", align_corners=False, antialias=True)
            if n:
                stack = F.interpolate(stack.flatten(0, 1), size=(hw, ww), mode="bilinear", align_corners=False,
                                      antialias=True).view(b, n, 3, hw, ww)
        prep = self.normalise

        # blur radii scale with the image width: DSFA sees K in the pixels of the grid it looks at
        K = K_px_m.to(device=image.device, dtype=image.dtype) * (ww / w) if n else None
        grid = (hw // self.backbone.patch_size, ww // self.backbone.patch_size)
        cue = None
        if self.dsfa_enabled and self.dsfa_cue is not None:
            frames = torch.cat([image.unsqueeze(1), stack], dim=1) if n else image.unsqueeze(1)  # [B,F,3,hw,ww] sRGB
            cue = self.dsfa_cue(frames, grid)
        if not self.dsfa_enabled:
            taps = self.backbone.encode(prep(image))
        elif self.placement == "posthoc":
            taps = self._posthoc(prep, image, stack, K, n, b, cue)
        else:
            taps = self._inside(prep, image, stack, K, n, b, cue)
        return taps, grid

    def _stack_pixels(self, prep, stack: torch.Tensor, n: int, b: int) -> torch.Tensor:
        # frame-major [N*B,3,h,w]: frame i of every sample, then frame i+1 ...
        return prep(stack.transpose(0, 1).reshape(n * b, *stack.shape[2:]))

    def _posthoc(self, prep, image, stack, K, n, b, cue) -> list[torch.Tensor]:
        if n and self.stack_no_grad:
            ref_taps = self.backbone.encode(prep(image))
            with torch.no_grad():
                stack_taps = self.backbone.encode(self._stack_pixels(prep, stack, n, b))
            stack_taps = [s.view(n, b, *s.shape[1:]).transpose(0, 1) for s in stack_taps]
        elif n:
            pixels = torch.cat([prep(image), self._stack_pixels(prep, stack, n, b)], dim=0)
            all_taps = self.backbone.encode(pixels)
            ref_taps = [t[:b] for t in all_taps]
            stack_taps = [t[b:].view(n, b, *t.shape[1:]).transpose(0, 1) for t in all_taps]
        else:
            ref_taps = self.backbone.encode(prep(image))
            stack_taps = [None] * len(ref_taps)
        out = list(ref_taps)
        for t in self.dsfa_taps:
            out[t] = self.dsfa[str(t)](ref_taps[t], stack_taps[t], K, cue)
        return out

    def _inside(self, prep, image, stack, K, n, b, cue) -> list[torch.Tensor]:
        checkpointed = any(getattr(block, "gradient_checkpointing", False) for block in self.backbone.blocks)
        if checkpointed and self.training and torch.is_grad_enabled():
            # checkpointed blocks re-run in backward, after the hooks' context is gone: refinement would be lost
            raise RuntimeError("dsfa.placement='inside' does not support gradient checkpointing of the encoder; "
                               "use placement='posthoc' or disable gradient checkpointing")
        # Hooks live only for this call (not in the module state), so deepcopy / pickling of the model stay correct.
        handles = [
            self.backbone.blocks[self.backbone.tap_blocks[t]].register_forward_hook(self._make_inside_hook(t), prepend=True)
            for t in self.dsfa_taps
        ]
        try:
            if n and self.stack_no_grad:
                self._ctx = {"mode": "record", "B": b, "N": n, "K": K, "cue": cue, "cache": {}}
                with torch.no_grad():
                    self.backbone.encode(self._stack_pixels(prep, stack, n, b))
                self._ctx["mode"] = "reference"
                return self.backbone.encode(prep(image))
            if n:
                self._ctx = {"mode": "joint", "B": b, "N": n, "K": K, "cue": cue, "cache": {}}
                pixels = torch.cat([prep(image), self._stack_pixels(prep, stack, n, b)], dim=0)
                return [t[:b] for t in self.backbone.encode(pixels)]
            self._ctx = {"mode": "reference", "B": b, "N": 0, "K": None, "cue": cue, "cache": {}}
            return self.backbone.encode(prep(image))
        finally:
            self._ctx = None
            for handle in handles:
                handle.remove()


def build_depth_model(cfg: Mapping[str, Any] | Any = None) -> BokehDepthModel:
    """Build a :class:`BokehDepthModel` from a config mapping or OmegaConf DictConfig (keys: ``DEFAULT_CONFIG``).

    Keys (defaults in ``DEFAULT_CONFIG``):
        family: "depth_anything_v2" | "dpt".
        size: size preset (DA: tiny|small|base|large; DPT: tiny|small|large); random weights.
        pretrained_path: local HF directory to load instead (FileNotFoundError naming it when missing).
        head: "metric" | "relative" (relative: Depth Anything only, output not in metres).
        max_depth_m: metric head range (m); null keeps the checkpoint's value.
        min_depth_m: output floor (m).
        stack_no_grad: encode stack frames without gradients.
        arch: preset overrides {backbone: {...}, decoder: {...}}.
        dsfa: {enabled, taps, placement, k_scale, num_heads, mlp_ratio, attn_ratio, alpha_init, spatial, gamma_init,
            defocus_cue, cue_scales}.
    Unknown keys raise ValueError naming the key.
    """
    cfg = _merge(DEFAULT_CONFIG, _to_dict(cfg))
    min_depth, max_depth = cfg["min_depth_m"], cfg["max_depth_m"]
    if not (isinstance(min_depth, (int, float)) and min_depth > 0) or (
            max_depth is not None and not (isinstance(max_depth, (int, float)) and max_depth > min_depth)):
        raise ValueError(f"need 0 < min_depth_m < max_depth_m (m), got min_depth_m={min_depth!r}, "
                         f"max_depth_m={max_depth!r}")
    backbone = build_backbone(cfg["family"], size=cfg["size"], arch=cfg["arch"], head=cfg["head"],
                              max_depth_m=cfg["max_depth_m"], pretrained_path=cfg["pretrained_path"])
    model = BokehDepthModel(backbone, cfg["dsfa"], stack_no_grad=bool(cfg["stack_no_grad"]),
                            min_depth_m=float(cfg["min_depth_m"]))
    model.config = cfg  # the resolved configuration (defaults filled in), e.g. to save next to a checkpoint
    return model
