"""K adapter for FluxTransformer2DModel (the FLUX.1-Kontext architecture), installed as attention processors.

Every attention block (double- and single-stream) gets a :class:`KAdapterAttnProcessor`, an ``nn.Module`` processor
that does what diffusers' ``FluxAttnProcessor`` does plus two K-dependent paths:

* a K token: the K embedding goes through the block's own key/value projections; every query attends to it next to a
  learned sink key with a zero value (with one key alone the softmax is 1 and the query would be ignored: METHOD.md
  section 2), and the result is added to the attention output before the block's output projection;
* low-rank updates (rank configurable) of the projected queries and keys: q += B_q A_q x, k += B_k A_k x.

The K value projection and the low-rank up-projections start at zero, so at init the backbone's output is unchanged.
Only adapter weights train (:func:`freeze_backbone`) and only they are saved (:func:`save_adapter`, safetensors with
the adapter config in the metadata). :func:`load_adapter` rebuilds the adapter for a given backbone and refuses a
file that does not fit it, naming the mismatching keys (never a partial load). The processors are written here
because diffusers has no K-token processor; the attention itself goes through diffusers' dispatch function.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from .conditioning import KEmbedding

ADAPTER_FORMAT = "bokehdepth-flux-k-adapter/1"


class AdapterMismatchError(ValueError):
    """An adapter checkpoint does not fit the backbone it is loaded onto (the message names the keys)."""


class KAdapterAttnProcessor(nn.Module):
    """Flux attention + a K token (own key/value projections, learned sink) + low-rank q/k updates.

    Shapes: hidden_states [B, S, query_dim]; ``k_embedding`` [B, k_dim] reaches the processor through the
    transformer's ``joint_attention_kwargs``. Without ``k_embedding`` the K-token path is skipped (the low-rank
    q/k updates still apply).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, query_dim: int, inner_dim: int, heads: int, head_dim: int, k_dim: int, rank: int,
                 has_context: bool = False, context_dim: int | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {rank}")
        self.heads, self.head_dim = heads, head_dim
        self.k_key = nn.Linear(k_dim, inner_dim)
        self.k_value = nn.Linear(k_dim, inner_dim)
        self.sink_key = nn.Parameter(torch.zeros(heads, head_dim))
        self.q_down = nn.Linear(query_dim, rank, bias=False)
        self.q_up = nn.Linear(rank, inner_dim, bias=False)
        self.k_down = nn.Linear(query_dim, rank, bias=False)
        self.k_up = nn.Linear(rank, inner_dim, bias=False)
        if has_context:  # double-stream blocks: the text stream has its own projections, so its own low-rank terms
            self.cq_down = nn.Linear(context_dim, rank, bias=False)
            self.cq_up = nn.Linear(rank, inner_dim, bias=False)
            self.ck_down = nn.Linear(context_dim, rank, bias=False)
            self.ck_up = nn.Linear(rank, inner_dim, bias=False)
        self.has_context = has_context
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero output paths (value projection, low-rank ups): the backbone is unchanged at init."""
        for name, module in self.named_children():
            if name.endswith("_down"):
                nn.init.normal_(module.weight, std=1.0 / module.in_features**0.5)
            elif name.endswith("_up"):
                nn.init.zeros_(module.weight)
        nn.init.normal_(self.k_key.weight, std=1.0 / self.k_key.in_features**0.5)
        nn.init.zeros_(self.k_key.bias)
        nn.init.zeros_(self.k_value.weight)
        nn.init.zeros_(self.k_value.bias)
        nn.init.zeros_(self.sink_key)

    def _k_token_output(self, query: torch.Tensor, k_embedding: torch.Tensor) -> torch.Tensor:
        """query [B, S, H, D] (normed, rotated) -> attention over {K token, sink}: [B, S, H, D]."""
        b = query.shape[0]
        emb = k_embedding.to(dtype=self.k_key.weight.dtype, device=query.device)
        if emb.shape[0] != b:
            if b % emb.shape[0]:
                raise ValueError(f"k_embedding batch {emb.shape[0]} does not divide the hidden-state batch {b}")
            emb = emb.repeat_interleave(b // emb.shape[0], dim=0)
        key = self.k_key(emb).view(b, 1, self.heads, self.head_dim).to(query.dtype)
        value = self.k_value(emb).view(b, 1, self.heads, self.head_dim).to(query.dtype)
        scale = 1.0 / math.sqrt(self.head_dim)
        logit_k = (query * key).sum(-1, keepdim=True) * scale  # [B, S, H, 1]
        logit_sink = (query * self.sink_key.to(query.dtype)).sum(-1, keepdim=True) * scale
        weight = torch.sigmoid(logit_k - logit_sink)  # softmax over two keys; the sink's value is zero
        return weight * value

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None,
                 k_embedding: torch.Tensor | None = None) -> Any:
        return self.forward(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, k_embedding)

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None,
                k_embedding: torch.Tensor | None = None) -> Any:
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        x = hidden_states.to(self.q_down.weight.dtype)
        query = query + self.q_up(self.q_down(x)).to(query.dtype)
        key = key + self.k_up(self.k_down(x)).to(key.dtype)

        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))

        if attn.added_kv_proj_dim is not None and encoder_hidden_states is not None:
            c = encoder_hidden_states.to(self.q_down.weight.dtype)
            if self.has_context:
                encoder_query = encoder_query + self.cq_up(self.cq_down(c)).to(encoder_query.dtype)
                encoder_key = encoder_key + self.ck_up(self.ck_down(c)).to(encoder_key.dtype)
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        if k_embedding is not None:
            out = out + self._k_token_output(query, k_embedding).to(out.dtype)
        out = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            n_ctx = encoder_hidden_states.shape[1]
            encoder_out, out = out.split_with_sizes([n_ctx, out.shape[1] - n_ctx], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            encoder_out = attn.to_add_out(encoder_out.contiguous())
            return out, encoder_out
        return out


def backbone_signature(transformer: nn.Module) -> dict[str, Any]:
    """The backbone facts an adapter depends on (stored with the adapter, checked on load)."""
    cfg = transformer.config
    return {
        "num_layers": int(cfg.num_layers),
        "num_single_layers": int(cfg.num_single_layers),
        "num_attention_heads": int(cfg.num_attention_heads),
        "attention_head_dim": int(cfg.attention_head_dim),
        "joint_attention_dim": int(cfg.joint_attention_dim),
    }


class FluxKAdapter(nn.Module):
    """All adapter weights of one Flux backbone: the K embedding and one processor per attention block.

    ``config``: rank, k_dim, k_scale, mlp_dim (and optionally k_min / k_max, the trained range, kept for users).
    Build with :meth:`for_transformer`; :meth:`install` puts the processors into the transformer.
    """

    def __init__(self, processors: dict[str, KAdapterAttnProcessor], config: dict[str, Any],
                 signature: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.signature = dict(signature)
        self.k_embed = KEmbedding(int(config["k_dim"]), k_scale=float(config["k_scale"]),
                                  mlp_dim=int(config.get("mlp_dim", 64)))
        self.processors = nn.ModuleDict({name.replace(".", "__"): proc for name, proc in processors.items()})

    @classmethod
    def for_transformer(cls, transformer: nn.Module, *, rank: int = 128, k_dim: int = 768, k_scale: float = 30.0,
                        mlp_dim: int = 64, **extra: Any) -> "FluxKAdapter":
        """Create a fresh (zero-output) adapter shaped for ``transformer`` (not yet installed)."""
        config = {"rank": int(rank), "k_dim": int(k_dim), "k_scale": float(k_scale), "mlp_dim": int(mlp_dim), **extra}
        processors = {}
        modules = dict(transformer.named_modules())
        ref = next(transformer.parameters())
        for name in transformer.attn_processors:
            attn = modules[name.rsplit(".processor", 1)[0]]
            has_context = getattr(attn, "added_kv_proj_dim", None) is not None
            proc = KAdapterAttnProcessor(
                query_dim=attn.to_q.in_features, inner_dim=attn.to_q.out_features, heads=attn.heads,
                head_dim=attn.head_dim, k_dim=int(k_dim), rank=int(rank), has_context=has_context,
                context_dim=attn.add_q_proj.in_features if has_context else None,
            )
            processors[name] = proc.to(device=ref.device)
        adapter = cls(processors, config, backbone_signature(transformer))
        return adapter.to(device=ref.device)

    def install(self, transformer: nn.Module) -> "FluxKAdapter":
        """Set this adapter's processors on ``transformer`` (they become its submodules)."""
        expected = set(transformer.attn_processors)
        names = {key.replace("__", ".") for key in self.processors}
        if names != expected:
            raise AdapterMismatchError(_mismatch_message(sorted(names - expected), sorted(expected - names), []))
        transformer.set_attn_processor({key.replace("__", "."): proc for key, proc in self.processors.items()})
        return self

    def embed(self, K_px_m: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """K [B] -> k_embedding [B, k_dim] for ``joint_attention_kwargs={"k_embedding": ...}``."""
        return self.k_embed(K_px_m, null_mask)


def freeze_backbone(transformer: nn.Module, adapter: FluxKAdapter) -> None:
    """Backbone frozen, adapter trainable (the processors are shared modules, so order matters)."""
    transformer.requires_grad_(False)
    adapter.requires_grad_(True)


def install_k_adapter(transformer: nn.Module, **config: Any) -> FluxKAdapter:
    """Create a zero-output adapter for ``transformer``, install it and freeze the backbone."""
    adapter = FluxKAdapter.for_transformer(transformer, **config)
    adapter.install(transformer)
    freeze_backbone(transformer, adapter)
    return adapter


def adapter_state_dict(adapter: FluxKAdapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}


def save_adapter(adapter: FluxKAdapter, path: str | Path) -> Path:
    """Write only the adapter weights (safetensors) with its config and backbone signature in the metadata."""
    from safetensors.torch import save_file

    from bokeh.io import atomic_path

    metadata = {"format": ADAPTER_FORMAT, "config": json.dumps(adapter.config),
                "signature": json.dumps(adapter.signature)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(adapter_state_dict(adapter), str(tmp), metadata=metadata)
    return path


def _mismatch_message(unexpected: list[str], missing: list[str], shapes: list[str], *, limit: int = 12) -> str:
    parts = []
    for label, keys in (("keys in the checkpoint that the backbone has no place for", unexpected),
                        ("keys the backbone needs that the checkpoint lacks", missing),
                        ("shape mismatches", shapes)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    return "adapter checkpoint does not fit this backbone; " + "; ".join(parts)


def check_adapter_state(adapter: FluxKAdapter, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`AdapterMismatchError` naming every key that differs (missing, unexpected, wrong shape)."""
    expected = adapter.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    shapes = sorted(f"{k} (checkpoint {tuple(state[k].shape)} vs backbone {tuple(expected[k].shape)})"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or missing or shapes:
        raise AdapterMismatchError(_mismatch_message(unexpected, missing, shapes))


def load_adapter(transformer: nn.Module, path: str | Path, *, install: bool = True, freeze: bool = True) -> FluxKAdapter:
    """Rebuild an adapter from ``path`` for ``transformer``; all keys must fit (else AdapterMismatchError)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read adapter checkpoint {path}: {error}") from error
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a BokehDepth Flux K-adapter (metadata format {metadata.get('format')!r}, "
                         f"expected {ADAPTER_FORMAT!r})")
    config = json.loads(metadata["config"])
    adapter = FluxKAdapter.for_transformer(transformer, **config)
    check_adapter_state(adapter, state)
    adapter.load_state_dict(state, strict=True)
    if install:
        adapter.install(transformer)
    if freeze:
        freeze_backbone(transformer, adapter)
    return adapter


def tiny_flux_transformer(seed: int = 0, **overrides: Any) -> nn.Module:
    """A few-thousand-parameter FluxTransformer2DModel built from config (tests, smoke runs), in eval mode."""
    from diffusers import FluxTransformer2DModel

    config = dict(patch_size=1, in_channels=16, out_channels=None, num_layers=1, num_single_layers=1,
                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                  axes_dims_rope=(4, 6, 6))
    config.update(overrides)
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**config).eval()


def tiny_flux_vae(seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny AutoencoderKL (4 latent channels, 2x down) matching :func:`tiny_flux_transformer` (16 = 4 x 4)."""
    from diffusers import AutoencoderKL

    config = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                  latent_channels=4, norm_num_groups=4, layers_per_block=1, shift_factor=0.0, scaling_factor=1.0,
                  use_quant_conv=False, use_post_quant_conv=False)
    config.update(overrides)
    torch.manual_seed(seed)
    return AutoencoderKL(**config).eval()


__all__ = [
    "AdapterMismatchError", "KAdapterAttnProcessor", "FluxKAdapter", "install_k_adapter", "freeze_backbone",
    "save_adapter", "load_adapter", "check_adapter_state", "adapter_state_dict", "backbone_signature",
    "tiny_flux_transformer", "tiny_flux_vae",
]
