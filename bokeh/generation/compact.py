"""The embedded default Stage-1 backbone: a small pixel-space UNet2DConditionModel conditioned on the sharp image and K.

Input: the noisy state (3 channels) concatenated with the sharp image (3 channels), so ``in_channels = 6``; K enters
as cross-attention context (``encoder_hidden_states``): a K token from :class:`KEmbedding` plus a learned constant
token, so that each pixel's query decides how much of K it takes. The diffusion state is the defocus *residual*
``(bokeh - sharp) * residual_scale``: the network only learns what bokeh changes, and an all-zero prediction is
already the sharp image. The network predicts the clean state x0 (``prediction="sample"``); the flow-matching
velocity follows as v = (x_t - x0) / t, so the sampler and the loss stay those of rectified flow.

Two output heads (``head``):
- ``residual``: the UNet's 3 output channels are the x0 residual itself (a free-form image edit).
- ``layered``: a physics-structured x0. One more output channel is a per-pixel defocus map delta (1/m, in
  [0, defocus_max_inv_m]); x0 is the sharp image rendered by the physics layered renderer
  (:func:`physics.render.render_radius_map`, occlusion-aware, linear light) with the signed CoC radius
  ``side * K * delta`` px, plus the 3 residual channels. No depth goes in: delta is inferred from the image and
  learned only through the rendered frames' loss. Why: a depth-free network that must both find where blur goes and
  synthesise a disk blur wastes its capacity on the second, which physics does exactly; with delta K-independent the
  stack's radii grow linearly with K by construction (the sweep proposition). ``defocus_side`` fixes which side of
  the focal plane the blur lies on (``front``: blurrier = nearer, composited over the rest, as with a far focus;
  ``back``: blurrier = farther, as with the nearest subject in focus): the renderer's blur is symmetric in the sign,
  so a signed delta starting at 0 would get no gradient for its sign. ``defocus_residual: false`` drops the 3
  residual channels (x0 is then the render alone); ``defocus_k_free: true`` hides K from the network (null K token,
  no blur bank), so delta is the same for every K of a stack given the state and K acts through the renderer only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import KEmbedding

DEFAULT_UNET = dict(
    block_out_channels=(32, 64, 96),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=16,
    norm_num_groups=16,
)


class CompactBokehUNet(nn.Module):
    """UNet2DConditionModel in pixel space: (x_t, sharp, t, K) -> predicted clean residual state x0 [B,3,H,W].

    ``size_multiple`` is the factor H and W must be divisible by (2 ** number of down-samplings).
    """

    def __init__(self, unet: dict[str, Any] | None = None, *, k_scale: float = 30.0, residual_scale: float = 4.0,
                 num_k_tokens: int = 1, space_to_depth: int = 1,
                 blur_bank_inv_m: Sequence[float] | None = None, blur_bank_kernel: str = "gaussian",
                 head: str = "residual", defocus_side: str = "front", defocus_max_inv_m: float = 2.5,
                 defocus_init_inv_m: float = 0.5, defocus_residual: bool = True,
                 defocus_k_free: bool = False) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        cfg = dict(DEFAULT_UNET)
        cfg.update(dict(unet or {}))
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            cfg[key] = tuple(cfg[key])
        # space_to_depth > 1 folds s x s pixel blocks into channels (pixel_unshuffle) so the UNet's first level runs
        # at 1/s resolution: s^2 times fewer positions for the same receptive field, the main cost lever on a CPU.
        self.space_to_depth = int(space_to_depth)
        s2 = self.space_to_depth**2
        # Optional depth-free physics features: the sharp image disk-blurred in linear light at radii K * delta_j
        # (delta_j in 1/m, i.e. the blur of surfaces at 1/focus - 1/depth = delta_j), concatenated to the input.
        # The network then chooses, per pixel, how much of which blur to use instead of learning to blur.
        self.blur_bank_inv_m = [float(d) for d in (blur_bank_inv_m or [])]
        if blur_bank_kernel not in ("gaussian", "disk"):
            raise ValueError(f"model.compact.blur_bank_kernel must be 'gaussian' or 'disk', got {blur_bank_kernel!r}")
        self.blur_bank_kernel = blur_bank_kernel
        if head not in ("residual", "layered"):
            raise ValueError(f"model.compact.head must be 'residual' or 'layered', got {head!r}")
        if defocus_side not in ("front", "back"):
            raise ValueError(f"model.compact.defocus_side must be 'front' or 'back', got {defocus_side!r}")
        if not 0.0 < float(defocus_init_inv_m) < float(defocus_max_inv_m):
            raise ValueError(f"model.compact needs 0 < defocus_init_inv_m < defocus_max_inv_m (1/m), got "
                             f"{defocus_init_inv_m} and {defocus_max_inv_m}")
        if defocus_k_free and self.blur_bank_inv_m:
            raise ValueError("model.compact.defocus_k_free needs blur_bank_inv_m: [] (the bank's radii K * delta_j "
                             "would hand K to the network)")
        self.head = head
        self.defocus_residual = bool(defocus_residual) if head == "layered" else True
        self.defocus_k_free = bool(defocus_k_free) and head == "layered"
        self.defocus_sign = -1.0 if defocus_side == "front" else 1.0
        self.defocus_max_inv_m = float(defocus_max_inv_m)
        extra = 3 * len(self.blur_bank_inv_m)
        # layered: one defocus channel at the UNet's resolution (bilinearly upsampled: a defocus map is smooth at
        # the s x s scale, and one channel per sub-pixel would print the pixel_shuffle grid into it)
        out_channels = (3 * s2 if self.defocus_residual else 0) + (1 if head == "layered" else 0)
        cfg.update(in_channels=(6 + extra) * s2, out_channels=out_channels)
        self.unet = UNet2DConditionModel(**cfg)
        self.context_dim = int(cfg["cross_attention_dim"])
        self.k_embed = KEmbedding(self.context_dim, k_scale=k_scale, num_tokens=num_k_tokens)
        self.const_tokens = nn.Parameter(torch.randn(1, 1, self.context_dim) * 0.02)
        self.residual_scale = float(residual_scale)
        self.size_multiple = 2 ** (len(cfg["block_out_channels"]) - 1) * self.space_to_depth
        # Start as the identity (zero residual): the output conv predicts exactly zero at init.
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        if head == "layered":
            # ...and a uniform defocus map of defocus_init_inv_m (the last output channel is the defocus logit)
            p = float(defocus_init_inv_m) / self.defocus_max_inv_m
            with torch.no_grad():
                self.unet.conv_out.bias[-1] = math.log(p / (1.0 - p))

    def context(self, K_px_m: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.k_embed(K_px_m, null_mask)
        if tokens.dim() == 2:
            tokens = tokens[:, None]
        return torch.cat([tokens, self.const_tokens.expand(tokens.shape[0], -1, -1)], dim=1)

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor,
                null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t [B,3,H,W] (state space), sigma [B] in [0,1], sharp [B,3,H,W] sRGB [0,1], K [B] -> x0 [B,3,H,W]."""
        return self.predict(x_t, sigma, sharp, K_px_m, null_mask)[0]

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor,
                null_mask: torch.Tensor | None = None, flip_average: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0 [B,3,H,W], defocus map delta [B,1,H,W] in 1/m, or None for the residual head).

        ``flip_average`` (sampling): the network also reads the left-right mirrored input, and its mirrored-back
        residual and defocus map are averaged with the direct ones before the render -- two readings of the same
        scene, so the map's pixel-level guesswork partly cancels (twice the network's cost). The result is exactly
        mirror-equivariant."""
        residual, delta_inv_m = self._heads(self._unet_out(x_t, sigma, sharp, K_px_m, null_mask))
        if flip_average:
            mirrored = self._heads(self._unet_out(x_t.flip(-1), sigma, sharp.flip(-1), K_px_m, null_mask))
            residual = None if residual is None else 0.5 * (residual + mirrored[0].flip(-1))
            delta_inv_m = None if delta_inv_m is None else 0.5 * (delta_inv_m + mirrored[1].flip(-1))
        if self.head == "residual":
            return residual, None
        rendered = self.render_defocus(sharp, self._per_sample_k(K_px_m, null_mask, sharp), delta_inv_m)
        x0 = self.to_state(rendered, sharp)
        return (x0 + residual if self.defocus_residual else x0), delta_inv_m

    def _heads(self, out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The UNet output split into (residual state [B,3,H,W] or None, defocus map [B,1,H,W] (1/m) or None)."""
        s = self.space_to_depth
        residual = None
        if self.defocus_residual:
            residual = F.pixel_shuffle(out[:, :3 * s * s], s) if s > 1 else out[:, :3]
        return residual, (self._defocus_from_out(out) if self.head == "layered" else None)

    def _defocus_from_out(self, out: torch.Tensor) -> torch.Tensor:
        """The UNet output's last channel (a logit at 1/s resolution) -> defocus map [B,1,H,W] in 1/m."""
        logit = out[:, -1:]
        if self.space_to_depth > 1:
            logit = F.interpolate(logit, scale_factor=self.space_to_depth, mode="bilinear", align_corners=False)
        return self.defocus_max_inv_m * torch.sigmoid(logit)

    def defocus_map(self, x_t: torch.Tensor, sigma: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        """The layered head's defocus map [B,1,H,W] (1/m) alone, without rendering; x_t [B,3,H,W] (state), sigma [B].

        Computed with the null K token: for a ``defocus_k_free`` head that is the map rendered at every K."""
        if self.head != "layered":
            raise ValueError("defocus_map needs model.compact.head=layered (the residual head has no defocus map)")
        b = sharp.shape[0]
        null = torch.ones(b, dtype=torch.bool, device=sharp.device)
        K = torch.zeros(b, dtype=sharp.dtype, device=sharp.device)
        return self._defocus_from_out(self._unet_out(x_t, sigma, sharp, K, null))

    def render_defocus(self, image: torch.Tensor, K_px_m: torch.Tensor, defocus_inv_m: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] sRGB rendered by physics at the signed radius side * K * delta (px; K [B] in px*m at this
        width, delta [B,1,H,W] in 1/m)."""
        from physics.render import render_radius_map

        K = torch.as_tensor(K_px_m, dtype=image.dtype, device=image.device).reshape(-1, 1, 1, 1)
        return render_radius_map(image.clamp(0, 1), self.defocus_sign * K * defocus_inv_m)

    @staticmethod
    def _per_sample_k(K_px_m: torch.Tensor, null_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """K [B] (0 on null-K rows: the unconditional branch carries no blur strength)."""
        K = torch.as_tensor(K_px_m, dtype=like.dtype, device=like.device).reshape(-1).expand(like.shape[0])
        if null_mask is not None:
            K = torch.where(torch.as_tensor(null_mask, device=K.device).reshape(-1).bool(), torch.zeros_like(K), K)
        return K

    def _unet_out(self, x_t: torch.Tensor, sigma: torch.Tensor, sharp: torch.Tensor, K_px_m: torch.Tensor,
                  null_mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x_t.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"CompactBokehUNet needs H, W divisible by {self.size_multiple}, got {h}x{w}")
        parts = [x_t, sharp * 2.0 - 1.0]
        if self.blur_bank_inv_m:
            parts.append(self.blur_features(sharp, K_px_m, null_mask) * 2.0 - 1.0)
        inp = torch.cat(parts, dim=1)
        if self.space_to_depth > 1:
            inp = F.pixel_unshuffle(inp, self.space_to_depth)
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        if self.defocus_k_free:  # the network sees no K (the null token): K enters only through the renderer
            null_mask = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
        out = self.unet(inp, sigma * 1000.0, encoder_hidden_states=self.context(K_px_m, null_mask)).sample
        return out  # [B, (3 s^2) (+1), H/s, W/s]: split by :meth:`predict`

    def blur_features(self, sharp: torch.Tensor, K_px_m: torch.Tensor, null_mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """[B, 3 * len(bank), H, W]: sharp blurred in linear light at the spot size of radius r_j = K * delta_j.

        ``blur_bank_kernel`` "gaussian": a Gaussian of sigma r/2 (the disk's per-axis second moment) stands in for the
        disk, one batched separable kornia filter per level with a per-sample sigma; "disk": the physics renderer's
        soft-rimmed disk (physics.aperture.DiskAperture), one grouped convolution per level with a per-sample kernel,
        so bokeh balls and edges get the PSF the targets are rendered with.
        Null-K rows (CFG) get unblurred copies, so the bank carries no K there.
        """
        import kornia

        K = self._per_sample_k(K_px_m, null_mask, sharp)
        lin = kornia.color.rgb_to_linear_rgb(sharp.clamp(0, 1))
        h, w = sharp.shape[-2:]
        out = []
        for delta in self.blur_bank_inv_m:
            if self.blur_bank_kernel == "disk":
                out.append(kornia.color.linear_rgb_to_rgb(_disk_blur(lin, K * delta).clamp(0, 1)))
                continue
            sigma = (K * delta / 2.0).clamp_min(0.05)
            size = min(2 * int(math.ceil(3 * float(sigma.max()))) + 1, 2 * min(h, w) - 1)
            size = max(3, size if size % 2 else size - 1)
            blurred = kornia.filters.gaussian_blur2d(lin, (size, size), torch.stack([sigma, sigma], -1),
                                                     border_type="reflect" if size // 2 < min(h, w) else "replicate")
            out.append(kornia.color.linear_rgb_to_rgb(blurred.clamp(0, 1)))
        return torch.cat(out, dim=1)

    # state <-> image maps (linear, so exact in both directions)
    def to_image(self, state: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return sharp + state / self.residual_scale

    def to_state(self, image: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        return (image - sharp) * self.residual_scale


def _disk_blur(lin: torch.Tensor, radius_px: torch.Tensor) -> torch.Tensor:
    """lin [B,C,H,W] convolved with a unit-sum soft disk of radius radius_px[b] per sample (reflect padding)."""
    from physics.aperture import DiskAperture, kernel_half_size

    b, c, h, w = lin.shape
    half = min(kernel_half_size(float(radius_px.max())), min(h, w) - 1)
    offs = torch.arange(-half, half + 1, dtype=lin.dtype, device=lin.device)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    kernels = DiskAperture().weights(dx, dy, radius_px.to(lin.dtype).view(b, 1, 1))  # [B,k,k]
    kernels = kernels / kernels.sum(dim=(-2, -1), keepdim=True)
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1)  # [B*C,1,k,k] (symmetric: no flip needed)
    padded = F.pad(lin.reshape(1, b * c, h, w), (half,) * 4, mode="reflect") if half else lin.reshape(1, b * c, h, w)
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_compact(cfg: dict[str, Any] | None = None) -> CompactBokehUNet:
    cfg = dict(cfg or {})
    return CompactBokehUNet(cfg.pop("unet", None), **cfg)


__all__: Sequence[str] = ["CompactBokehUNet", "build_compact", "count_parameters", "DEFAULT_UNET"]
