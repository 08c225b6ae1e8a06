"""The finiteness check every loader and writer uses: any NaN or ±inf is found in every float dtype, and finite
values whose sum would overflow are not mistaken for it."""
from __future__ import annotations

import pytest
import torch

from backend.finite import is_finite, nonfinite_keys


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_bad_value_is_found(dtype, bad):
    tensor = torch.randn(64, 32).to(dtype)
    assert is_finite(tensor)
    tensor[17, 5] = bad
    assert not is_finite(tensor)
    assert nonfinite_keys({"a": torch.zeros(3), "b": tensor}) == ["b"]


def test_large_finite_values_pass_and_integers_are_skipped():
    assert is_finite(torch.full((8,), 3e38, dtype=torch.float32))  # their sum overflows; they are still finite
    assert is_finite(torch.full((8,), 65000.0, dtype=torch.float16))
    assert is_finite(torch.arange(10))
    assert not is_finite(torch.tensor([float("inf"), float("-inf")]))  # their sum is NaN, as it should be
