"""Input checks shared by the physics modules: one wording for each kind of bad argument.

Hand-written because they guard this package's own conventions (sRGB in [0, 1], sizes as ints); each raises a
ValueError naming the argument, what was given and what is expected.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

#: an sRGB image with values outside [-SRGB_TOLERANCE, 1 + SRGB_TOLERANCE] is refused: the renderers clip sRGB to
#: [0, 1], so a 0..255 or a [-1, 1] image would otherwise come out saturated without a word.
SRGB_TOLERANCE = 0.5


def check_srgb_range(x: torch.Tensor, name: str) -> None:
    """``x`` (any shape) must hold sRGB values, [0, 1] up to resampling overshoot (SRGB_TOLERANCE)."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < -SRGB_TOLERANCE or hi > 1.0 + SRGB_TOLERANCE:
        raise ValueError(f"{name} values span [{lo:.4g}, {hi:.4g}]; expected sRGB in [0, 1] (a 0..255 image? divide "
                         f"by 255; a [-1, 1] image? map it with (x + 1) / 2; HDR linear light? pass "
                         f"color_space='linear')")


def finite_float(x: Any) -> float:
    """float(x), or NaN when x is not a finite number (so that every comparison with it fails)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def is_int(value: Any) -> bool:
    """An integer (int, numpy or 0-d torch integer, or a float with an integer value), not a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
        return True
    except TypeError:
        f = finite_float(value)
        return f == f and f == int(f)


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> None:
    """A finite number > 0 (>= 0 with ``allow_zero``)."""
    f = finite_float(value)
    if not (f >= 0 if allow_zero else f > 0):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def check_broadcast(what: str, **arguments: Any) -> None:
    """The tensor ``arguments`` (floats pass) must broadcast together, as the lens formulas combine them
    element-wise; the error names each argument's shape instead of torch's "size of tensor a"."""
    shapes = {name: tuple(value.shape) for name, value in arguments.items() if isinstance(value, torch.Tensor)}
    try:
        torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        listed = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise ValueError(f"{what}: the shapes of {listed} do not broadcast; give floats, or tensors of one shape "
                         f"(or of shapes that broadcast, e.g. [B] and [])") from None


def check_tensor(x: Any, name: str, expected_shape: str, dims: int | tuple[int, ...], *, channels: int | None = None,
                 channels_dim: int = -3, must: str = "have shape", dtype_hint: str = "") -> None:
    """``x`` must be a non-empty, finite, floating-point torch.Tensor with ``dims`` dimensions (or one of ``dims``)
    and, given ``channels``, that size at ``channels_dim``.

    ``expected_shape`` is the shape as the messages write it (e.g. "[B,3,H,W] or [3,H,W]"); ``must`` the words
    between the name and that shape in the wrong-shape message ("image must have shape [B,C,H,W]", or with "be"
    "frames must be [B,N,3,H,W]"); ``dtype_hint`` says in the wrong-dtype message which values are expected. Only
    reads ``x``: nothing is converted, copied or moved.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {expected_shape}; got {type(x).__name__}")
    allowed = (dims,) if isinstance(dims, int) else tuple(dims)
    if x.dim() not in allowed or (channels is not None and x.shape[channels_dim] != channels):
        raise ValueError(f"{name} must {must} {expected_shape}; got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); expected {expected_shape}")
    if not x.is_floating_point():
        hint = f" ({dtype_hint})" if dtype_hint else ""
        raise ValueError(f"{name} must be a floating-point tensor{hint}; got {x.dtype}")
    # detached: the check must not enter the caller's autograd graph
    if not torch.isfinite(x.detach()).all():
        raise ValueError(f"{name} contains NaN or infinite values")
