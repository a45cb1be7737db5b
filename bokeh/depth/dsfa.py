"""DSFA: defocus-aware aggregation of a bokeh stack into the reference tokens of a ViT depth encoder.

One block (METHOD.md section 3, with our fixes):

    k      = K_px_m / k_scale, the reference frame at k = 0                        [B,F]   (F = N + 1 frames)
    kappa  = MLP(k): 1 -> D/4 -> D                                                  [B,F,D]
    (s, b) = Linear(D -> 2D)(kappa)                                                 FiLM parameters, [B,F,D] each
    spatial step (per frame): prepend kappa as a token, pre-norm self-attention, drop the token, pre-norm MLP
    FiLM:  X <- X * (1 + tanh(s)) + b
    focus step (per token position, across frames): pre-norm attention with the additive bias
           -alpha * |k_i - k_j| (alpha = softplus(raw) > 0, learnable), then a pre-norm MLP
    output: frame 0 (the reference) only                                            [B,P,D]

Every residual path starts at zero (LayerScale gamma = 0, FiLM linear weight and bias = 0), so a fresh block returns
its reference input bit for bit: plugging DSFA into a pretrained model changes nothing before training. The gammas
still receive gradients at init (their inputs are non-zero), so the first optimiser step opens the paths.

``gamma_init`` > 0 starts the paths open instead. Use it when the encoder itself trains from random weights: there is
no pretrained output to preserve, and with closed gates the encoder gets (almost) no gradient through the stack
frames, so it never learns defocus-sensitive features (measured: the no-stack control of such a model scores like the
stacked model, see BENCHMARKS.md "Stage-2 main job").

Because only frame 0 leaves the block, the focus step computes queries, the attention output and its MLP for the
reference frame only (keys and values come from every frame): the same result as full cross-frame self-attention
followed by taking frame 0, at a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DSFA", "normalise_k"]


def normalise_k(K_px_m: torch.Tensor, k_scale: float) -> torch.Tensor:
    """Blur strengths in px*m -> the network's dimensionless k = K / k_scale (same shape)."""
    return K_px_m / k_scale


def _inner_dim(dim: int, ratio: float, num_heads: int) -> int:
    """Attention width: ``dim * ratio`` rounded to a multiple of ``num_heads`` (at least one channel per head)."""
    per_head = max(1, int(round(dim * ratio / num_heads)))
    return per_head * num_heads


class _LayerScale(nn.Module):
    """Per-channel scale ``gamma`` on a residual branch; ``init`` 0 (default) starts the branch switched off."""

    def __init__(self, dim: int, init: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs, through ``F.scaled_dot_product_attention``.

    Queries: [M, Lq, D]; keys/values: [M, Lk, D]; optional additive float mask broadcastable to [M, heads, Lq, Lk].
    The inner width may be smaller than D (cheaper), the output is projected back to D.
    """

    def __init__(self, dim: int, inner_dim: int, num_heads: int) -> None:
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"attention width {inner_dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = inner_dim // num_heads
        self.q = nn.Linear(dim, inner_dim)
        self.kv = nn.Linear(dim, 2 * inner_dim)
        self.proj = nn.Linear(inner_dim, dim)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        m, lq, _ = x_q.shape
        lk = x_kv.shape[1]
        q = self.q(x_q).view(m, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x_kv).view(m, lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(m, lq, -1))


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class DSFA(nn.Module):
    """Defocus-aware stack aggregation for ViT tokens (one block).

    Args:
        dim: token width D of the encoder layer it refines.
        num_heads: attention heads of both steps (must divide the attention width).
        mlp_ratio: MLP hidden width / D in both steps (the paper: 4; ours by default: 1, see BENCHMARKS.md).
        attn_ratio: attention inner width / D (the paper: 1; ours by default 0.5).
        k_scale: K (px*m) that maps to k = 1; K values of typical stacks (10-30 px*m) then give k ~ 0.3-1, so the focus
            bias -alpha*|k_i - k_j| is O(alpha), neither negligible nor saturating the softmax.
        alpha_init: initial focus-bias slope alpha (> 0); alpha = softplus(raw) stays positive during training.
        spatial: run the per-frame spatial step (kappa token + self-attention + MLP); False skips it (cheaper).
        gamma_init: initial LayerScale gamma of every residual path. 0 (default): the block is the identity at init
            (plug-and-play on a pretrained model); > 0 (e.g. 1): open from the start, for encoders trained from scratch.
        cue_dim: width of optional pixel-level defocus-cue features per patch token (:class:`DefocusCue`), added to
            every frame's tokens through a zero-initialised Linear(cue_dim -> D) before the spatial step; 0: none.
        eps: LayerNorm epsilon.

    Shapes: ``forward(R [B,P,D], S [B,N,P,D] | None, K_px_m [B,N] | None, cue [B,F,G,cue_dim] | None) -> [B,P,D]``;
    P counts every token the caller passes (a CLS token included), the cue covers the last G (patch) tokens of each
    frame. N = 0 (or S None) runs the block on the reference alone (F = 1).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mlp_ratio: float = 1.0,
        attn_ratio: float = 0.5,
        k_scale: float = 30.0,
        alpha_init: float = 1.0,
        spatial: bool = True,
        gamma_init: float = 0.0,
        cue_dim: int = 0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim < 4:
            raise ValueError(f"DSFA dim must be >= 4, got {dim}")
        if num_heads < 1:
            raise ValueError(f"DSFA num_heads must be >= 1, got {num_heads}")
        if not (k_scale > 0 and math.isfinite(k_scale)):
            raise ValueError(f"DSFA k_scale must be a positive finite K in px*m, got {k_scale}")
        if not (alpha_init > 0 and math.isfinite(alpha_init)):
            raise ValueError(f"DSFA alpha_init must be > 0 (alpha = softplus(raw) is positive), got {alpha_init}")
        if not (gamma_init >= 0 and math.isfinite(gamma_init)):
            raise ValueError(f"DSFA gamma_init must be finite and >= 0 (0: identity at init), got {gamma_init}")
        if not (mlp_ratio > 0 and attn_ratio > 0):
            raise ValueError(f"DSFA mlp_ratio and attn_ratio must be > 0, got {mlp_ratio}, {attn_ratio}")
        self.dim = dim
        self.k_scale = float(k_scale)
        self.spatial = bool(spatial)
        inner = _inner_dim(dim, attn_ratio, num_heads)
        hidden = max(1, int(round(dim * mlp_ratio)))

        self.k_embed = nn.Sequential(nn.Linear(1, max(1, dim // 4)), nn.GELU(), nn.Linear(max(1, dim // 4), dim))
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        if cue_dim < 0:
            raise ValueError(f"DSFA cue_dim must be >= 0 (0: no defocus cue), got {cue_dim}")
        self.cue_dim = int(cue_dim)
        if self.cue_dim:
            self.cue_proj = nn.Linear(self.cue_dim, dim)
            nn.init.zeros_(self.cue_proj.weight)  # zero: the block stays the identity at init (gamma_init 0)
            nn.init.zeros_(self.cue_proj.bias)

        if self.spatial:
            self.spatial_norm1 = nn.LayerNorm(dim, eps=eps)
            self.spatial_attn = _Attention(dim, inner, num_heads)
            self.spatial_ls1 = _LayerScale(dim, gamma_init)
            self.spatial_norm2 = nn.LayerNorm(dim, eps=eps)
            self.spatial_mlp = _MLP(dim, hidden)
            self.spatial_ls2 = _LayerScale(dim, gamma_init)

        self.focus_norm1 = nn.LayerNorm(dim, eps=eps)
        self.focus_attn = _Attention(dim, inner, num_heads)
        self.focus_ls1 = _LayerScale(dim, gamma_init)
        self.focus_norm2 = nn.LayerNorm(dim, eps=eps)
        self.focus_mlp = _MLP(dim, hidden)
        self.focus_ls2 = _LayerScale(dim, gamma_init)
        # alpha = softplus(alpha_raw) > 0; inverse softplus of alpha_init
        self.alpha_raw = nn.Parameter(torch.tensor(math.log(math.expm1(alpha_init))))

    @property
    def alpha(self) -> torch.Tensor:
        """Focus-bias slope (> 0), on the normalised k axis."""
        return F.softplus(self.alpha_raw)

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """How far the block has opened (all 0 at init, alpha = alpha_init): for logging during training.

        alpha: focus-bias slope; gamma_*: mean |LayerScale gamma| of each residual path; film: mean |FiLM weight|.
        """
        out = {"alpha": float(self.alpha)}
        for name in ("spatial_ls1", "spatial_ls2", "focus_ls1", "focus_ls2"):
            if hasattr(self, name):
                out[f"gamma_{name.replace('_ls', '')}"] = float(getattr(self, name).gamma.abs().mean())
        out["film"] = float(self.film.weight.abs().mean())
        return out

    def _check(self, R: torch.Tensor, S: torch.Tensor | None, K_px_m: torch.Tensor | None) -> int:
        if R.ndim != 3 or R.shape[-1] != self.dim:
            raise ValueError(f"DSFA reference tokens must be [B,P,{self.dim}], got {tuple(R.shape)}")
        if S is None:
            if K_px_m is not None and K_px_m.numel() > 0:
                raise ValueError(f"DSFA got K_px_m {tuple(K_px_m.shape)} but no stack tokens")
            return 0
        if S.ndim != 4 or S.shape[0] != R.shape[0] or S.shape[2:] != R.shape[1:]:
            raise ValueError(
                f"DSFA stack tokens must be [B,N,P,D] = [{R.shape[0]},N,{R.shape[1]},{R.shape[2]}] to match the "
                f"reference {tuple(R.shape)}, got {tuple(S.shape)}"
            )
        n = S.shape[1]
        if n == 0:
            return 0
        if K_px_m is None or tuple(K_px_m.shape) != (R.shape[0], n):
            got = None if K_px_m is None else tuple(K_px_m.shape)
            raise ValueError(f"DSFA K_px_m must be [B,N] = [{R.shape[0]},{n}] for stack tokens {tuple(S.shape)}, got {got}")
        if not bool(torch.isfinite(K_px_m).all()) or bool((K_px_m < 0).any()):
            raise ValueError(f"DSFA K_px_m must be finite and >= 0 (px*m), got {K_px_m.detach().cpu().tolist()}")
        return n

    def forward(self, R: torch.Tensor, S: torch.Tensor | None = None, K_px_m: torch.Tensor | None = None,
                cue: torch.Tensor | None = None) -> torch.Tensor:
        """Refine the reference tokens with the stack.

        Args:
            R: reference tokens [B,P,D].
            S: stack tokens [B,N,P,D] (the bokeh frames through the same encoder layer) or None.
            K_px_m: blur strengths K of the stack frames [B,N] in px*m (>= 0, in the pixel grid of the tokens' image).
            cue: defocus-cue features [B,F,G,cue_dim] of the reference and the N frames (G <= P patch tokens, the
                last G of each frame), or None; required when the block was built with cue_dim > 0.

        Returns:
            Refined reference tokens [B,P,D]; equal to R bit for bit at initialisation.
        """
        n = self._check(R, S, K_px_m)
        b, p, d = R.shape
        zero = torch.zeros(b, 1, dtype=R.dtype, device=R.device)
        if n:
            x = torch.cat([R.unsqueeze(1), S], dim=1)  # [B,F,P,D]
            k = torch.cat([zero, normalise_k(K_px_m.to(R.dtype), self.k_scale)], dim=1)  # [B,F]
        else:
            x, k = R.unsqueeze(1), zero
        f = x.shape[1]
        kappa = self.k_embed(k.unsqueeze(-1))  # [B,F,D]
        if self.cue_dim:
            if cue is None or cue.ndim != 4 or cue.shape[:2] != (b, f) or cue.shape[2] > p or cue.shape[3] != self.cue_dim:
                got = None if cue is None else tuple(cue.shape)
                raise ValueError(f"DSFA cue must be [B,F,G,{self.cue_dim}] with B={b}, F={f}, G <= {p}, got {got}")
            prefix = p - cue.shape[2]  # CLS / register tokens carry no pixel cue
            x = torch.cat([x[:, :, :prefix], x[:, :, prefix:] + self.cue_proj(cue.to(x.dtype))], dim=2)

        if self.spatial:
            xs = x.reshape(b * f, p, d)
            tokens = torch.cat([kappa.reshape(b * f, 1, d), xs], dim=1)
            tokens = self.spatial_norm1(tokens)
            xs = xs + self.spatial_ls1(self.spatial_attn(tokens[:, 1:], tokens))  # the kappa token is dropped here
            xs = xs + self.spatial_ls2(self.spatial_mlp(self.spatial_norm2(xs)))
            x = xs.view(b, f, p, d)

        scale, shift = self.film(kappa).unsqueeze(2).chunk(2, dim=-1)  # [B,F,1,D] each
        x = x * (1 + torch.tanh(scale)) + shift

        # focus step: one sequence of F frames per token position; only the reference (frame 0) queries.
        xt = x.transpose(1, 2).reshape(b * p, f, d)
        normed = self.focus_norm1(xt)
        bias = -self.alpha * (k[:, :1] - k).abs()  # [B,F]: row 0 of -alpha*|k_i - k_j|
        bias = bias[:, None, None, None, :].expand(b, p, 1, 1, f).reshape(b * p, 1, 1, f)
        ref = xt[:, 0:1]
        ref = ref + self.focus_ls1(self.focus_attn(normed[:, 0:1], normed, attn_mask=bias))
        ref = ref + self.focus_ls2(self.focus_mlp(self.focus_norm2(ref)))
        return ref.view(b, p, d)
