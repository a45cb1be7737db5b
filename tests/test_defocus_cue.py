"""DefocusCue: token-pooled log band-energy ratios measure blur as the physics says, independent of texture."""

from __future__ import annotations

import math

import pytest
import torch

from bokeh.depth.defocus_cue import DefocusCue

H = W = 56
GRID = (4, 4)


def _grating(period_px: float, amplitude: float, phase: float = 0.3, mean: float = 0.5) -> torch.Tensor:
    """A vertical sinusoid [3,H,W] (grey): under a Gaussian PSF of std sigma its amplitude scales by the OTF
    exp(-2 pi^2 sigma^2 / period^2), so a blurred grating is the same grating with a smaller amplitude."""
    x = torch.arange(W, dtype=torch.float64)
    row = mean + amplitude * torch.sin(2 * math.pi * x / period_px + phase)
    return row.expand(3, H, W).float()


def test_ratio_equals_the_squared_otf_of_a_gaussian_blur() -> None:
    cue = DefocusCue(scales=2, eps=1e-10)  # eps: the noise floor, negligible here
    period, sigma = 8.0, 1.2
    otf = math.exp(-2 * math.pi**2 * sigma**2 / period**2)
    frames = torch.stack([_grating(period, 0.3), _grating(period, 0.3 * otf)])[None]  # [1,2,3,H,W]
    with torch.no_grad():
        out = cue(frames, GRID)
    assert out.shape == (1, 2, GRID[0] * GRID[1], cue.out_dim)
    ratios = out[0, 1, :, : cue.out_dim // 2]
    # every band, every token: log(E_blurred / E_sharp) = log OTF^2, whatever the (linear, zero-sum) filter is
    torch.testing.assert_close(ratios, torch.full_like(ratios, 2 * math.log(otf)), atol=2e-3, rtol=0)
    assert torch.equal(out[0, 0, :, : cue.out_dim // 2], torch.zeros_like(ratios))  # the reference against itself


def test_ratio_does_not_depend_on_texture_contrast_or_brightness() -> None:
    """Band-pass filters (zero DC): a frame that only differs by a constant offset reads as no blur, and the same
    blur on a low- and a high-contrast texture gives the same ratio."""
    cue = DefocusCue(scales=1, eps=1e-10)
    otf = 0.5
    low = torch.stack([_grating(6.0, 0.05), _grating(6.0, 0.05 * otf)])
    high = torch.stack([_grating(6.0, 0.4), _grating(6.0, 0.4 * otf)])
    shifted = torch.stack([_grating(6.0, 0.2), _grating(6.0, 0.2, mean=0.6)])
    with torch.no_grad():
        out = cue(torch.stack([low, high, shifted]), GRID)
    half = cue.out_dim // 2
    torch.testing.assert_close(out[0, 1, :, :half], out[1, 1, :, :half], atol=2e-3, rtol=0)
    torch.testing.assert_close(out[2, 1, :, :half], torch.zeros_like(out[2, 1, :, :half]), atol=1e-4, rtol=0)
    # the confidence half does see the contrast: 8x the amplitude is 64x the energy
    diff = out[1, 0, :, half:] - out[0, 0, :, half:]
    torch.testing.assert_close(diff, torch.full_like(diff, math.log(64.0)), atol=0.05, rtol=0)


def test_bad_shapes_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B,F,3,H,W\]"):
        DefocusCue()(torch.rand(2, 3, 8, 8), (2, 2))
    with pytest.raises(ValueError, match="scales"):
        DefocusCue(scales=0)


def test_larger_blur_reads_as_a_lower_ratio_in_every_band_on_random_texture() -> None:
    """Monotone in the radius on broadband texture (disk PSFs from physics.aperture), so the cue orders depths."""
    import torch.nn.functional as F

    from physics.aperture import disk_kernel

    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 1, H, W, generator=g).expand(1, 3, H, W)

    def disk_blur(radius_px: float) -> torch.Tensor:
        kernel = disk_kernel(radius_px)
        half = kernel.shape[-1] // 2
        padded = F.pad(sharp, (half,) * 4, mode="circular")
        return F.conv2d(padded, kernel.expand(3, 1, *kernel.shape), groups=3)

    frames = torch.stack([sharp[0], disk_blur(1.0)[0], disk_blur(2.0)[0], disk_blur(4.0)[0]])[None]
    cue = DefocusCue(scales=3)
    out = cue(frames, GRID)[0, 1:, :, : cue.out_dim // 2].mean(1)  # [3 radii, bands]
    assert bool((out < 0).all())
    assert bool((out[1] < out[0]).all()) and bool((out[2] < out[1]).all())
