"""physics.checks.check_tensor: the tensor check that physics.render, .stacks, .dfd and .focus_fit share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physics.checks import check_tensor


def test_not_a_tensor_names_the_argument_and_the_expected_shape():
    with pytest.raises(ValueError, match=r"^image must be a torch.Tensor \[B,3,H,W\] or \[3,H,W\]; got ndarray$"):
        check_tensor(np.zeros((1, 3, 4, 4), dtype=np.float32), "image", "[B,3,H,W] or [3,H,W]", (3, 4))


def test_wrong_number_of_dims():
    with pytest.raises(ValueError, match=r"^image must have shape \[B,C,H,W\]; got \(3, 8, 8\)$"):
        check_tensor(torch.rand(3, 8, 8), "image", "[B,C,H,W]", 4)


def test_dims_may_be_one_of_several():
    check_tensor(torch.rand(3, 8, 8), "image", "[B,C,H,W] or [C,H,W]", (3, 4))
    with pytest.raises(ValueError, match=r"^image must have shape \[B,C,H,W\] or \[C,H,W\]; got \(8, 8\)$"):
        check_tensor(torch.rand(8, 8), "image", "[B,C,H,W] or [C,H,W]", (3, 4))


def test_must_words_the_shape_message():
    with pytest.raises(ValueError, match=r"^image must be \[B,C,H,W\]; got \(3, 8, 8\)$"):
        check_tensor(torch.rand(3, 8, 8), "image", "[B,C,H,W]", 4, must="be")


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"^image must have shape \[B,3,H,W\]; got \(1, 4, 8, 8\)$"):
        check_tensor(torch.rand(1, 4, 8, 8), "image", "[B,3,H,W]", 4, channels=3)


def test_channels_at_another_dim():
    with pytest.raises(ValueError, match=r"^frames must be \[B,N,3,H,W\]; got \(1, 2, 1, 8, 8\)$"):
        check_tensor(torch.rand(1, 2, 1, 8, 8), "frames", "[B,N,3,H,W]", 5, channels=3, channels_dim=2, must="be")


def test_channels_unchecked_without_channels():
    check_tensor(torch.rand(1, 5, 8, 8), "image", "[B,C,H,W]", 4)


def test_empty_tensor():
    with pytest.raises(ValueError, match=r"^frames is empty \(shape \(1, 0, 3, 4, 4\)\); expected \[B,N,3,H,W\]$"):
        check_tensor(torch.rand(1, 0, 3, 4, 4), "frames", "[B,N,3,H,W]", 5, channels=3, channels_dim=2)


def test_integer_dtype():
    with pytest.raises(ValueError, match=r"^image must be a floating-point tensor; got torch.uint8$"):
        check_tensor(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "image", "[B,3,H,W]", 4)


def test_integer_dtype_with_a_hint():
    words = r"^image must be a floating-point tensor \(values in \[0,1\]\); got torch.int64$"
    with pytest.raises(ValueError, match=words):
        check_tensor(torch.zeros(1, 3, 4, 4, dtype=torch.int64), "image", "[B,3,H,W]", 4, dtype_hint="values in [0,1]")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_values(value):
    x = torch.rand(1, 3, 4, 4)
    x[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match=r"^reference contains NaN or infinite values$"):
        check_tensor(x, "reference", "[B,3,H,W]", 4, channels=3)


def test_valid_tensor_passes_unmodified():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    version, ptr = x._version, x.data_ptr()
    assert check_tensor(x, "image", "[B,3,H,W]", 4, channels=3) is None
    assert x._version == version and x.data_ptr() == ptr
    assert x.dtype == torch.float64 and x.requires_grad and x.grad_fn is None
    assert torch.equal(x.detach(), before)
