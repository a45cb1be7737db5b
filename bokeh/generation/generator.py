"""Stage-1 generators: sharp image + strengths K -> bokeh stack, with no depth input.

:class:`BokehGenerator` holds what every backbone shares: the K range policy, aspect-preserving resizing, one batched
call over all K with the same initial noise for every frame, classifier-free guidance on K, physics guidance on the
predicted clean image, and the optional LAB colour transfer back to the reference. Two backbones:

* :class:`CompactBokehGenerator`: the embedded default (pixel-space UNet, :mod:`.compact`).
* :class:`FluxKontextBokehGenerator`: FLUX.1-Kontext (FluxTransformer2DModel + AutoencoderKL) with the K adapter of
  :mod:`.flux_adapter`; the sharp image enters as Kontext's reference tokens, the text stream gets fixed (zero)
  prompt embeddings so no text encoder is needed.

K convention: callers give K in px*m for *their* image (its full width). The working image is a resized copy, so K is
converted by the width ratio before the range check and before the network sees it (K scales with image width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import KCalibration
from .conditioning import KRange, as_k_tensor
from .flow import flow_matching_loss, make_scheduler, sample_flow
from .guidance import GuidanceConfig, PhysicsGuidance


@dataclass
class StackResult:
    """frames [B,N,3,H,W] sRGB [0,1] at the input size; K_px_m [N] as asked (input width); K_work_px_m [N] as used
    by the network (working width, after the range policy); work_size (h, w)."""

    frames: torch.Tensor
    K_px_m: torch.Tensor
    K_work_px_m: torch.Tensor
    work_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


def working_size(height: int, width: int, multiple: int, resolution: int | None) -> tuple[int, int]:
    """Aspect-preserving working size: long side ~ ``resolution`` (None: keep the size), both sides multiples."""
    scale = 1.0 if resolution is None else resolution / max(height, width)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    down = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=down)


def lab_color_transfer(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each image's per-channel LAB mean/std to the reference's (kornia rgb_to_lab / lab_to_rgb).

    images [B,3,H,W], reference [B,3,H,W] (broadcastable), sRGB [0,1].
    """
    import kornia

    lab = kornia.color.rgb_to_lab(images.clamp(0, 1))
    ref = kornia.color.rgb_to_lab(reference.clamp(0, 1))
    mu, sd = lab.mean((-2, -1), keepdim=True), lab.std((-2, -1), keepdim=True)
    mu_r, sd_r = ref.mean((-2, -1), keepdim=True), ref.std((-2, -1), keepdim=True)
    out = (lab - mu) / sd.clamp_min(1e-3) * sd_r + mu_r
    return kornia.color.lab_to_rgb(out).clamp(0, 1)


def check_image_batch(image: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(image):
        raise ValueError(f"image must be a torch.Tensor [3,H,W] or [B,3,H,W], got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be [3,H,W] or [B,3,H,W] RGB (read it with bokeh.io.read_image, which converts "
                         f"gray/RGBA), got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    return image.float().clamp(0, 1)


class BokehGenerator(nn.Module):
    """Shared sampling logic; subclasses define the state space and the network call."""

    size_multiple: int = 8
    default_steps: int = 8

    def __init__(self, k_range: KRange, resolution: int | None) -> None:
        super().__init__()
        self.k_range = k_range
        self.resolution = resolution
        # asked K -> K the backbone is run at (bokeh.generation.calibration); None = run at the asked K
        self.k_calibration: KCalibration | None = None
        # sampling default of generate_stack's flip_average (a tool's --flip-average sets it once)
        self.flip_average = False

    def use_flip_average(self, enabled: bool = True) -> None:
        """Make ``flip_average`` the sampling default (ValueError for a backbone that does not implement it)."""
        self.flip_average = self._checked_flip_average(enabled)

    def _checked_flip_average(self, enabled: bool) -> bool:
        if enabled and not self.supports_flip_average:
            raise ValueError(f"flip averaging is implemented for the compact generator, not {type(self).__name__}")
        return bool(enabled)

    def k_run_bounds(self) -> tuple[float, float]:
        """The K (px*m, working width) the backbone may be run at under a calibration: the trained range for a network
        that sees K (beyond it, it would extrapolate)."""
        return self.k_range.k_min, self.k_range.k_max

    # --- backbone-specific -------------------------------------------------------------------------------------
    def prepare(self, sharp: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def state_shape(self, cond: dict[str, Any]) -> tuple[int, ...]:
        raise NotImplementedError

    def predict_x0(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any], K: torch.Tensor,
                   null_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_x0_and_defocus(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any], K: torch.Tensor,
                               null_mask: torch.Tensor, flip_average: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x0 and, for backbones that predict one, the defocus map delta [B,1,h,w] (1/m) it was rendered from.
        ``flip_average``: average with the mirrored input's prediction (backbones with ``supports_flip_average``)."""
        return self.predict_x0(x_t, sigma, cond, K, null_mask), None

    supports_flip_average = False

    def render_defocus(self, image: torch.Tensor, K_px_m: torch.Tensor, defocus_inv_m: torch.Tensor) -> torch.Tensor:
        """Physics render of ``image`` [B,3,H,W] at K [B] (px*m at this width) with a predicted defocus map."""
        raise NotImplementedError

    def to_image(self, state: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def to_state(self, image: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def make_scheduler(self, cond: dict[str, Any], num_steps: int = 8):
        return make_scheduler(), {}

    def expand_cond(self, cond: dict[str, Any], repeats: int) -> dict[str, Any]:
        return {k: (v.repeat_interleave(repeats, 0) if torch.is_tensor(v) and k in self.batched_keys else v)
                for k, v in cond.items()}

    batched_keys: tuple[str, ...] = ("sharp",)

    # --- shared ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_stack(self, image: torch.Tensor, K_px_m: float | Sequence[float] | torch.Tensor, *,
                       num_steps: int | None = None, cfg_scale: float = 1.0,
                       guidance: GuidanceConfig | None = None, color_transfer: bool = False,
                       seed: int | None = 0, noise: torch.Tensor | None = None,
                       residual_upsample: bool = True, render_full_resolution: bool = True,
                       calibrated: bool = True, flip_average: bool | None = None) -> StackResult:
        """image [3,H,W] | [B,3,H,W] sRGB [0,1]; K_px_m [N] for the input width -> StackResult (frames [B,N,3,H,W]).

        All B*N frames go through the network in one batch per step, and every frame of an image starts from the
        same noise. With ``residual_upsample`` the output at the input size is ``input + resize(bokeh - sharp)``
        at the working size, so in-focus detail survives the working resolution. A backbone that predicts a
        defocus map (the compact layered head) is instead, with ``render_full_resolution``, re-rendered by physics
        at the input size from its upsampled map (crisp disks at any size); ``info["defocus_inv_m"]`` holds the map
        [B,N,1,h,w] (1/m, working size). With a ``k_calibration`` (and ``calibrated``), the backbone runs at the
        calibrated strength of each asked K (after the range policy; ``info["K_run_px_m"]``, working width).
        ``flip_average`` (compact generator; None = the generator's ``flip_average`` attribute): every step also reads
        the mirrored image and averages the two readings (twice the network's cost; :meth:`CompactBokehUNet.predict`).
        """
        flip_average = self._checked_flip_average(self.flip_average if flip_average is None else flip_average)
        image = check_image_batch(image)
        device = next(self.parameters()).device
        image = image.to(device)
        b, _, H, W = image.shape
        K = as_k_tensor(K_px_m)
        if K.numel() == 0:
            raise ValueError("K_px_m is empty: give at least one strength")
        h, w = working_size(H, W, self.size_multiple, self.resolution)
        K_work = self.k_range.apply(K * (w / W), what="K_px_m (converted to the working width)")
        calibration = self.k_calibration if calibrated else None
        K_run = K_work if calibration is None else calibration.apply(K_work).clamp(*self.k_run_bounds())
        n = K.numel()
        sharp = resize(image, (h, w))
        cond = self.prepare(sharp)
        flat_cond = self.expand_cond(cond, n)
        K_flat = K_run.to(device).repeat(b)
        if noise is None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed)) if seed is not None else None
            noise = torch.randn((b, *self.state_shape(cond)), generator=gen).to(device)
        if noise.shape[0] != b:
            raise ValueError(f"noise batch {noise.shape[0]} != image batch {b}")
        x_init = noise.repeat_interleave(n, 0)  # the same noise for every K of one image
        steps = int(num_steps or self.default_steps)
        guide = PhysicsGuidance(guidance) if guidance is not None and guidance.enabled else None
        start_step = int(math.floor((guidance.start_fraction if guide else 0.0) * steps))
        sharp_flat = flat_cond["sharp"]

        defocus: list[torch.Tensor | None] = [None]  # the K-conditioned defocus map of the latest step

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if cfg_scale == 1.0:
                x0, defocus[0] = self.predict_x0_and_defocus(x, sigma, flat_cond, K_flat,
                                                             torch.zeros_like(K_flat, dtype=torch.bool), flip_average)
                return x0
            both = self.expand_cond(flat_cond, 1)
            both = {k: (torch.cat([v, v]) if torch.is_tensor(v) and k in self.batched_keys else v)
                    for k, v in both.items()}
            null = torch.cat([torch.zeros_like(K_flat, dtype=torch.bool), torch.ones_like(K_flat, dtype=torch.bool)])
            x0, delta = self.predict_x0_and_defocus(torch.cat([x, x]), torch.cat([sigma, sigma]), both,
                                                    torch.cat([K_flat, K_flat]), null, flip_average)
            defocus[0] = None if delta is None else delta.chunk(2)[0]
            cond_x0, null_x0 = x0.chunk(2)
            return null_x0 + cfg_scale * (cond_x0 - null_x0)

        def correct(x0: torch.Tensor, step: int) -> torch.Tensor:
            if guide is None or step < start_step:
                return x0
            img = self.to_image(x0, flat_cond)
            img = guide.step(img, sharp_flat, K_flat, n)
            return self.to_state(img, flat_cond)

        scheduler, ts_kwargs = self.make_scheduler(cond, steps)
        state = sample_flow(denoise, x_init, num_steps=steps, scheduler=scheduler, correct_x0=correct,
                            set_timesteps_kwargs=ts_kwargs)
        frames = self.to_image(state, flat_cond).clamp(0, 1)
        if color_transfer:
            frames = lab_color_transfer(frames, sharp_flat)
        delta = defocus[0]
        rerendered = False
        if (h, w) != (H, W):
            ref = image.repeat_interleave(n, 0)
            if delta is not None and render_full_resolution:
                # physics re-renders the defocus map (1/m: resolution-free) at the input size and K; what the frame
                # holds beyond that render (residual channels, guidance, colour transfer) is upsampled onto it
                K_in = K_flat * (W / w)
                rest = frames - self.render_defocus(sharp_flat, K_flat, delta)
                up = F.interpolate(delta, size=(H, W), mode="bilinear", align_corners=False)
                frames = (self.render_defocus(ref, K_in, up) + resize(rest, (H, W))).clamp(0, 1)
                rerendered = True
            elif residual_upsample:
                frames = (ref + resize(frames - sharp_flat, (H, W))).clamp(0, 1)
            else:
                frames = resize(frames, (H, W)).clamp(0, 1)
        info = {"num_steps": steps, "cfg_scale": cfg_scale, "guidance": guidance.to_dict() if guidance else None,
                "flip_average": flip_average,
                "color_transfer": color_transfer, "rendered_at_input_size": rerendered,
                "K_run_px_m": K_run.cpu(), "k_calibration": calibration.to_dict() if calibration else None}
        if delta is not None:
            info["defocus_inv_m"] = delta.view(b, n, 1, h, w).cpu()
        return StackResult(frames=frames.view(b, n, 3, H, W).cpu(), K_px_m=K, K_work_px_m=K_work.cpu(),
                           work_size=(h, w), info=info)


class CompactBokehGenerator(BokehGenerator):
    """The embedded default: :class:`~bokeh.generation.compact.CompactBokehUNet` in pixel space."""

    default_steps = 4

    def __init__(self, net: nn.Module, k_range: KRange, resolution: int | None = 64) -> None:
        super().__init__(k_range, resolution)
        self.net = net
        self.size_multiple = net.size_multiple

    def prepare(self, sharp: torch.Tensor) -> dict[str, Any]:
        return {"sharp": sharp}

    def state_shape(self, cond: dict[str, Any]) -> tuple[int, ...]:
        return tuple(cond["sharp"].shape[1:])

    def predict_x0(self, x_t, sigma, cond, K, null_mask):
        return self.net(x_t, sigma, cond["sharp"], K, null_mask)

    supports_flip_average = True

    def predict_x0_and_defocus(self, x_t, sigma, cond, K, null_mask, flip_average=False):
        return self.net.predict(x_t, sigma, cond["sharp"], K, null_mask, flip_average)

    def render_defocus(self, image, K_px_m, defocus_inv_m):
        return self.net.render_defocus(image, K_px_m, defocus_inv_m)

    def k_run_bounds(self) -> tuple[float, float]:
        # a K-free layered head never sees K: any strength is a physics render of its one map
        if self.net.head == "layered" and self.net.defocus_k_free:
            return 0.0, math.inf
        return super().k_run_bounds()

    def to_image(self, state, cond):
        return self.net.to_image(state, cond["sharp"])

    def to_state(self, image, cond):
        return self.net.to_state(image, cond["sharp"])

    def training_loss(self, sharp: torch.Tensor, target: torch.Tensor, K_px_m: torch.Tensor, null_mask: torch.Tensor,
                      t: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rectified-flow loss on the residual state; sharp/target [B,3,H,W], K [B] (working width), t [B].

        The returned dict also holds ``defocus_inv_m``: the layered head's predicted map [B,1,H,W] (1/m) behind this
        loss's x0, or None for the residual head (the Lightning module may supervise it).
        """
        x0 = self.net.to_state(target, sharp)
        noise = torch.randn_like(x0) if noise is None else noise
        maps: list[torch.Tensor | None] = []

        def predict(x_t: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            x0_hat, defocus = self.net.predict(x_t, tt, sharp, K_px_m, null_mask)
            maps.append(defocus)
            return x0_hat

        out = flow_matching_loss(predict, x0, noise, t)
        out["defocus_inv_m"] = maps[0]
        return out


class FluxKontextBokehGenerator(BokehGenerator):
    """FLUX.1-Kontext backbone (frozen) + K adapter; sampling as FluxKontextPipeline does it, with K-CFG and guidance.

    ``prompt_embeds`` [1, L, joint_attention_dim] / ``pooled_prompt_embeds`` [1, pooled_dim]: fixed text conditioning
    (default zeros, L = 8), so the pipeline's text encoders are never needed.
    """

    default_steps = 28
    batched_keys = ("sharp", "image_latents")

    def __init__(self, transformer: nn.Module, vae: nn.Module, adapter: nn.Module, k_range: KRange,
                 resolution: int | None = 512, scheduler: Any = None, prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None, guidance_scale: float = 2.5) -> None:
        super().__init__(k_range, resolution)
        from diffusers import FluxKontextPipeline

        self.transformer, self.vae, self.adapter = transformer, vae, adapter
        self.scheduler = scheduler or make_scheduler()
        self.pipe = FluxKontextPipeline(scheduler=self.scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae_scale_factor = self.pipe.vae_scale_factor
        self.size_multiple = self.vae_scale_factor * 2
        tcfg = transformer.config
        if tcfg.in_channels != 4 * vae.config.latent_channels:
            raise ValueError(f"transformer.in_channels ({tcfg.in_channels}) must be 4 x vae.latent_channels "
                             f"({vae.config.latent_channels})")
        if prompt_embeds is None:
            prompt_embeds = torch.zeros(1, 8, tcfg.joint_attention_dim)
        if pooled_prompt_embeds is None:
            pooled_prompt_embeds = torch.zeros(1, tcfg.pooled_projection_dim)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds, persistent=False)
        self.guidance_scale = guidance_scale

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B,3,h,w] sRGB [0,1] -> scaled latents [B,C,h/f,w/f] (distribution mode, differentiable)."""
        latents = self.vae.encode((image * 2 - 1).to(self.vae.dtype)).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return (self.vae.decode(latents.to(self.vae.dtype)).sample.float() / 2 + 0.5)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def unpack(self, packed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.pipe._unpack_latents(packed, size[0], size[1], self.vae_scale_factor)

    def prepare(self, sharp: torch.Tensor) -> dict[str, Any]:
        h, w = sharp.shape[-2:]
        image_latents = self.pack(self.encode(sharp))
        lh, lw = 2 * (h // (self.vae_scale_factor * 2)), 2 * (w // (self.vae_scale_factor * 2))
        latent_ids = self.pipe._prepare_latent_image_ids(1, lh // 2, lw // 2, sharp.device, self.dtype)
        image_ids = latent_ids.clone()
        image_ids[..., 0] = 1  # Kontext: reference tokens differ from target tokens in the first rope axis
        txt_ids = torch.zeros(self.prompt_embeds.shape[1], 3, device=sharp.device, dtype=self.dtype)
        return {"sharp": sharp, "image_latents": image_latents, "ids": torch.cat([latent_ids, image_ids]),
                "txt_ids": txt_ids, "size": (h, w), "seq": latent_ids.shape[0],
                "channels": self.transformer.config.in_channels}

    def state_shape(self, cond: dict[str, Any]) -> tuple[int, ...]:
        return (cond["seq"], cond["channels"])

    def make_scheduler(self, cond: dict[str, Any], num_steps: int = 28):
        """The pipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu(sequence length) when dynamic."""
        import numpy as np

        from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift

        kwargs: dict[str, Any] = {"sigmas": np.linspace(1.0, 1.0 / num_steps, num_steps)}
        if self.scheduler.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(cond["seq"], self.scheduler.config.get("base_image_seq_len", 256),
                                           self.scheduler.config.get("max_image_seq_len", 4096),
                                           self.scheduler.config.get("base_shift", 0.5),
                                           self.scheduler.config.get("max_shift", 1.15))
        return self.scheduler, kwargs

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any], K: torch.Tensor,
                 null_mask: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=x_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=torch.cat([x_t, cond["image_latents"]], dim=1).to(self.dtype),
            timestep=sigma.to(self.dtype), guidance=guidance,
            pooled_projections=self.pooled_prompt_embeds.expand(b, -1).to(self.dtype),
            encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1).to(self.dtype),
            txt_ids=cond["txt_ids"], img_ids=cond["ids"],
            joint_attention_kwargs={"k_embedding": self.adapter.embed(K, null_mask)}, return_dict=False,
        )[0]
        return out[:, : x_t.shape[1]].float()

    def predict_x0(self, x_t, sigma, cond, K, null_mask):
        v = self.velocity(x_t, sigma, cond, K, null_mask)
        return x_t - sigma.view(-1, 1, 1).to(x_t) * v

    def to_image(self, state, cond):
        return self.decode(self.unpack(state, cond["size"]))

    def to_state(self, image, cond):
        return self.pack(self.encode(image))

    def training_loss(self, sharp: torch.Tensor, target: torch.Tensor, K_px_m: torch.Tensor, null_mask: torch.Tensor,
                      t: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Flow matching on the target tokens only (the reference tokens are context): v = eps - x0."""
        with torch.no_grad():
            cond = self.prepare(sharp)
            x0 = self.pack(self.encode(target)).float()
        noise = torch.randn_like(x0) if noise is None else noise
        tt = t.view(-1, 1, 1).to(x0)
        x_t = (1 - tt) * x0 + tt * noise
        v = self.velocity(x_t, t, cond, K_px_m, null_mask)
        loss = (v - (noise - x0)).pow(2).mean()
        return {"loss": loss, "v_mse": loss.detach(), "x0_hat": x_t - tt * v}
