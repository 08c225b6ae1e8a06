"""NaN / inf in weights: found once, refused where they would be passed on, reported where files are inspected."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from backend.errors import UserError

CHECKED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_finite(tensor: torch.Tensor) -> bool:
    """True unless a floating-point tensor holds NaN or ±inf (fp8 and integer tensors are read as float first)."""
    if not tensor.is_floating_point():
        return True
    if tensor.dtype not in CHECKED_DTYPES:
        tensor = tensor.float()
    # Fast path: NaN and ±inf survive a sum, so a finite sum means a finite tensor (one pass, no mask is made).
    # A non-finite sum is checked exactly, so finite values whose sum overflows are never refused.
    if bool(torch.isfinite(tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(key for key, tensor in tensors.items() if not is_finite(tensor))


def refuse_nonfinite(keys: list[str], source: str | Path, what: str = "file") -> None:
    """One sentence when some tensors of `source` are not finite (a diverged run or a damaged file)."""
    if keys:
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise UserError(f"The {what} {Path(source).name} holds NaN or infinite values (in `{keys[0]}`{more}), so it "
                        "would spread them; use an earlier checkpoint or retrain with a lower learning rate.")


def refuse_nonfinite_output(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Nothing non-finite is written: one sentence, and the file is left as it was."""
    keys = nonfinite_keys(tensors)
    if keys:
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        raise UserError(f"The result for {Path(path).name} came out with NaN or infinite values (in `{keys[0]}`{more}), "
                        "so it was not written; check the inputs' multipliers and files.")


def check_tensor(name: str, tensor: torch.Tensor, source: str | Path, what: str = "base model") -> torch.Tensor:
    if not is_finite(tensor):
        refuse_nonfinite([name], source, what)
    return tensor
