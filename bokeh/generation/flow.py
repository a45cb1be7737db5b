"""Rectified flow for Stage-1: training loss and the sampler (diffusers' FlowMatchEulerDiscreteScheduler).

Convention (diffusers' flow matching): x_t = (1 - t) x0 + t eps, velocity v = eps - x0, sampling integrates from
t = 1 (noise) to t = 0. Our networks predict x0; the velocity is v = (x_t - x0) / t. The training loss is the
velocity MSE weighted by t^2, which equals the x0 MSE: it keeps the loss finite near t = 0 where the velocity target
is dominated by noise the network can read off its input.
"""

from __future__ import annotations

from typing import Callable

import torch

from diffusers import FlowMatchEulerDiscreteScheduler


def sample_t(batch: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
             distribution: str = "logit_normal", t_min: float = 1e-3) -> torch.Tensor:
    """Training times t in (0, 1): ``logit_normal`` (SD3-style, mass in the middle) or ``uniform``."""
    if distribution == "logit_normal":
        t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    elif distribution == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        raise ValueError(f"t distribution must be 'logit_normal' or 'uniform', got {distribution!r}")
    return t.clamp(t_min, 1.0)


def flow_matching_loss(predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                       noise: torch.Tensor, t: torch.Tensor, *, weight_mask: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
    """Rectified-flow loss for an x0-predicting network.

    Args:
        predict_x0: (x_t, t[B]) -> x0_hat, same shape as x0.
        x0, noise: [B, ...] clean state and Gaussian noise; t: [B] in (0, 1].
    Returns:
        dict(loss, v_mse (unweighted velocity MSE, for logging), x0_hat).
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    tt = t.reshape(shape).to(x0.dtype)
    x_t = (1.0 - tt) * x0 + tt * noise
    v_target = noise - x0
    x0_hat = predict_x0(x_t, t)
    v_hat = (x_t - x0_hat) / tt
    sq = (tt * (v_hat - v_target)) ** 2  # == (x0_hat - x0)^2
    if weight_mask is not None:
        sq = sq * weight_mask
    return {"loss": sq.mean(), "v_mse": ((v_hat - v_target) ** 2).mean().detach(), "x0_hat": x0_hat}


def make_scheduler(shift: float = 1.0, **kwargs) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, **kwargs)


@torch.no_grad()
def sample_flow(denoise_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, *,
                num_steps: int, scheduler: FlowMatchEulerDiscreteScheduler | None = None,
                correct_x0: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                set_timesteps_kwargs: dict | None = None) -> torch.Tensor:
    """Euler sampling from t = 1 to 0 with an x0 predictor; ``correct_x0`` (e.g. physics guidance) edits x0_hat.

    denoise_x0(x_t, sigma[B]) -> x0_hat. Returns the final clean state.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = scheduler or make_scheduler()
    kwargs = dict(set_timesteps_kwargs or {})
    if "sigmas" in kwargs:  # an explicit schedule (the Flux pipelines pass one)
        scheduler.set_timesteps(device=noise.device, **kwargs)
    else:
        scheduler.set_timesteps(num_inference_steps=num_steps, device=noise.device, **kwargs)
    scheduler.set_begin_index(0)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(x.device, x.dtype)
        x0 = denoise_x0(x, sigma.expand(x.shape[0]))
        if correct_x0 is not None:
            x0 = correct_x0(x0, i)
        v = (x - x0) / sigma.clamp_min(1e-6)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x
