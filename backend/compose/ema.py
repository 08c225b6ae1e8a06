"""Post-hoc EMA of a run's LoRA checkpoints (weights: `ema_weights`; inputs: `ema_inputs`).

Two averaging spaces:
- `factors`: every tensor is averaged as stored (fast; what musubi does). Note EMA(B)·EMA(A) ≠ EMA(B·A).
- `delta`: per module the exact ΔW = scale·B·A is averaged, then re-factorized by truncated SVD to the input rank
  with the input alpha; the relative truncation error ‖ΔW̄ − B'A'·scale‖ / ‖ΔW̄‖ is reported per module. LoRA /
  LoCon only (a DoRA, LoHa or LoKr average is not a rank-r LoRA of the same kind): use `factors` for those.
Inputs must agree on modules, algorithm, ranks, alphas, flags and shapes. The output holds exactly the inputs'
modules (so it stays inside their LORAID allocation) and keeps the newest checkpoint's header, plus a record of how
it was made (`loraid_studio.ema`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.adapters.formats import LoraFile, save_lora
from backend.adapters.merge import delta_for_module
from backend.compose.ema_inputs import EMA_KEY, RunCheckpoints, find_checkpoints
from backend.compose.ema_weights import beta_weights, gamma_from_sigma_rel, power_weights, uniform_weights
from backend.compose.lowrank import refactor
from backend.compose.merge_loras import delta_shape
from backend.compose.provenance import as_json, sha256_of, stored_precision
from backend.errors import UserError
from backend.models.names import lora_key_prefix

SPACES = ("factors", "delta")
PRECISIONS = ("same", "fp32", "bf16", "fp16")


@dataclass
class EmaResult:
    out: Path
    files: list[Path]
    steps: list[int]
    weights: list[float]
    method: str
    gamma: float | None
    truncation_error: dict[str, float] = field(default_factory=dict)  # delta space: per module
    notes: list[str] = field(default_factory=list)


def check_compatible(loras: Sequence[LoraFile]) -> None:
    """Same modules, algorithms, ranks, alphas, flags and tensor shapes in every checkpoint, else a UserError."""
    first = loras[0]
    for other in loras[1:]:
        pair = f"{first.path.name} and {other.path.name}"
        if set(other.modules) != set(first.modules):
            extra = sorted(set(other.modules) ^ set(first.modules))
            raise UserError(f"{pair} adapt different modules (e.g. {extra[0]}); average checkpoints of one run.")
        for attribute in ("module_algos", "ranks", "alphas"):
            mine, theirs = getattr(first, attribute), getattr(other, attribute)
            bad = next((m for m in first.modules if mine[m] != theirs[m]), None)
            if bad is not None:
                word = attribute[:-1].replace("module_algo", "algorithm")
                raise UserError(f"{pair} differ in {word} at {bad} ({mine[bad]} vs {theirs[bad]}); average "
                                f"checkpoints of one run.")
        if first.flags != other.flags:
            raise UserError(f"{pair} differ in flags ({first.flags} vs {other.flags}); average checkpoints of one run.")
        bad_key = next((k for k in first.tensors if other.tensors.get(k) is None
                        or other.tensors[k].shape != first.tensors[k].shape), None)
        if bad_key is not None or set(other.tensors) != set(first.tensors):
            raise UserError(f"{pair} differ in tensor `{bad_key or sorted(set(other.tensors) ^ set(first.tensors))[0]}`"
                            f"; average checkpoints of one run.")


Progress = Callable[[int, int], None]  # (done, total): modules or tensors averaged so far


def average_factors(loras: Sequence[LoraFile], weights: Sequence[float],
                    progress: Progress | None = None) -> dict[str, torch.Tensor]:
    out = {}
    keys = loras[0].tensors
    for done, (key, tensor) in enumerate(keys.items(), 1):
        if key.endswith(".alpha"):
            out[key] = tensor.float()
        else:
            total = torch.zeros(tensor.shape, dtype=torch.float64)
            for lora, weight in zip(loras, weights):
                total += float(weight) * lora.tensors[key].double()
            out[key] = total.float()
        if progress:
            progress(done, len(keys))
    return out


def average_deltas(loras: Sequence[LoraFile], weights: Sequence[float],
                   progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Averaged ΔW per module, refactored to the input rank and alpha; (tensors, relative error per module)."""
    first = loras[0]
    out, errors = {}, {}
    for done, module in enumerate(first.modules, 1):
        parts = first.parts(module)
        if first.module_algos[module] not in ("lora", "locon") or "dora_scale" in parts:
            from backend.compose.settings import EmaSettings  # the EMA tab shows this job's sentence

            raise UserError(f"`{module}` is {first.module_algos[module]}: the delta space re-factorizes into plain "
                            f"LoRA factors, so set {EmaSettings.named('space')} to factors for {first.algo} "
                            f"checkpoints.")
        shape = delta_shape(first, module, parts)
        total = torch.zeros(shape, dtype=torch.float64)
        for lora, weight in zip(loras, weights):
            total += delta_for_module(lora.parts(module), torch.zeros(shape), float(weight), lora.flags,
                                      module_name=module).double()
        rank, alpha = first.ranks[module], first.alphas[module]
        factors = refactor(total, rank, alpha / rank, pad=True)
        prefix = lora_key_prefix(module)
        out[f"{prefix}.lora_down.weight"], out[f"{prefix}.lora_up.weight"] = factors.down, factors.up
        out[f"{prefix}.alpha"] = torch.tensor(float(alpha))
        errors[module] = factors.relative_error
        if progress:
            progress(done, len(first.modules))
    return out, errors


def averaging_rule(sigma_rel: float | None, beta: float | None, beta2: float | None, uniform: bool) -> tuple[str, float | None]:
    """(method, γ) of the chosen averaging rule, checked before any file is read."""
    chosen = [name for name, on in (("σ_rel (sigma_rel)", sigma_rel is not None), ("β (beta)", beta is not None),
                                    ("uniform (uniform)", uniform)) if on]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} were both given; pick one averaging rule.")
    if beta2 is not None and beta is None:
        raise UserError("β2 (beta2) needs β (beta), the start of the interpolation.")
    if uniform:
        return "uniform", None
    if beta is not None:
        beta_weights(2, beta, beta2)  # checks the range
        return "beta", None
    return "power", gamma_from_sigma_rel(0.2 if sigma_rel is None else sigma_rel)


def _weights(run: RunCheckpoints, method: str, gamma: float | None, beta: float | None,
             beta2: float | None) -> list[float]:
    count = len(run.checkpoints)
    if method == "uniform":
        return uniform_weights(count)
    if method == "beta":
        return beta_weights(count, beta, beta2)
    return power_weights(run.steps, gamma)


def post_hoc_ema(inputs: Sequence[str | Path], out: str | Path, *, sigma_rel: float | None = None,
                 beta: float | None = None, beta2: float | None = None, uniform: bool = False,
                 space: str = "factors", precision: str = "same", progress: Progress | None = None) -> EmaResult:
    """Average a run's checkpoints into `out` (power EMA with σ_rel 0.2 unless another rule is given); `progress`
    hears of each tensor (factors space) or module (delta space) averaged."""
    if space not in SPACES:
        raise UserError(f"Unknown averaging space `{space}`; use factors or delta.")
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision `{precision}`; use one of {', '.join(PRECISIONS)}.")
    out = Path(out)
    method, gamma = averaging_rule(sigma_rel, beta, beta2, uniform)
    run = find_checkpoints(inputs, exclude=out)
    weights = _weights(run, method, gamma, beta, beta2)
    loras = [c.lora for c in run.checkpoints]
    check_compatible(loras)
    errors: dict[str, float] = {}
    if space == "factors":
        tensors = average_factors(loras, weights, progress)
    else:
        tensors, errors = average_deltas(loras, weights, progress)
    newest = loras[-1]
    resolved_sigma = (0.2 if sigma_rel is None else sigma_rel) if method == "power" else None
    record = {"method": method, "space": space, "sigma_rel": resolved_sigma, "gamma": gamma, "beta": beta,
              "beta2": beta2,
              "steps_from": "metadata" if run.steps_known else "modification time",
              "checkpoints": [{"file": c.path.name, "step": s, "weight": w, "sha256": sha256_of(c.path)}
                              for c, s, w in zip(run.checkpoints, run.steps, weights)]}
    if errors:
        record["truncation_error_max"] = max(errors.values())
    metadata = dict(newest.metadata)
    metadata[EMA_KEY] = as_json(record)
    metadata["modelspec.title"] = out.stem
    save_lora(out, tensors, metadata, stored_precision(newest) if precision == "same" else precision)
    return EmaResult(out, [c.path for c in run.checkpoints], run.steps, weights, method, gamma, errors, run.notes)
