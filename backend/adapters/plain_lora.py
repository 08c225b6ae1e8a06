"""DoRA / LoHa / LoKr (or any LoRA-family file) -> a plain LoRA of rank R, by truncated SVD of each module's ΔW.

musubi-tuner has no DoRA and reads no LyCORIS tensors; every loader reads `lora_down` / `lora_up` / `alpha`. Each
module's full-strength ΔW (DoRA included: W' − W on the base the file was trained for, which is why a DoRA file needs
the base DiT) is factorized with the best rank-R approximation (Eckart–Young). ComfyUI's strength rule is linear in
W' − W, so the plain LoRA equals the source at every strength up to the truncation, which is reported: per module
‖ΔW − ΔW_R‖_F / ‖ΔW‖_F and overall over all modules together, sqrt(Σ‖ΔW − ΔW_R‖²_F / Σ‖ΔW‖²_F).
The result has alpha = R (scale 1) and the musubi `lora_unet_*` layout.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from backend.adapters.formats import LoraFile
from backend.adapters.merge import delta_for_module
from backend.adapters.metadata import OURS, build_metadata
from backend.compose.lowrank import refactor
from backend.errors import UserError
from backend.models.names import lora_key_prefix

_DORA_ONLY_ARGS = ("algo", "use_dora", "dora_wd", "wd_on_out", "preset", "factor", "conv_dim", "conv_alpha",
                   "use_tucker", "use_scalar", "decompose_both", "full_matrix", "rank_dropout_scale")


@dataclass
class PlainLoraResult:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    rank: int
    module_errors: dict[str, float] = field(default_factory=dict)  # Wan name -> relative Frobenius error
    overall_error: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def report_lines(self) -> list[str]:
        lines = [f"{name:<32} relative error {error:.4%}" for name, error in self.module_errors.items()]
        worst = max(self.module_errors, key=self.module_errors.get) if self.module_errors else None
        lines.append(f"overall relative error {self.overall_error:.4%} over {len(self.module_errors)} modules at rank "
                     f"{self.rank}" + (f" (worst: {worst}, {self.module_errors[worst]:.4%})" if worst else ""))
        return lines


def needs_base(lora_file: LoraFile) -> bool:
    """DoRA's ΔW depends on the base weight; LoRA / LoHa / LoKr deltas do not (convolutions need its shape)."""
    return any("dora_scale" in lora_file.parts(name) for name in lora_file.modules)


def base_weights_from(path: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights of `names` (Wan module names) from a DiT .safetensors file or folder, any naming."""
    from backend.compose.merge_dit import open_checkpoint

    checkpoint = open_checkpoint(path)
    entries = {entry.name: entry for entry in checkpoint.entries}
    out = {}
    for name in names:
        stored = checkpoint.by_wan_param.get(f"{name}.weight")
        if stored is None:
            raise UserError(f"{Path(path).name} has no weight for `{name}`; pass the DiT the LoRA was trained on "
                            f"with --base.")
        out[name] = checkpoint.readers[stored].read(entries[stored]).float()
    return out


def _module_shape(lora_file: LoraFile, name: str, base: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    if name in base:
        return tuple(base[name].shape)
    from backend.compose.merge_loras import delta_shape

    return delta_shape(lora_file, name, lora_file.parts(name))


def _metadata(lora_file: LoraFile, rank: int, overall: float) -> dict[str, str]:
    info = lora_file.info
    args = [item for item in info["network_args"] if item.split("=", 1)[0].strip() not in _DORA_ONLY_ARGS]
    extra = {key: value for key, value in lora_file.metadata.items()
             if key.startswith("ss_") and key not in ("ss_network_module", "ss_network_dim", "ss_network_alpha",
                                                      "ss_network_args", "ss_base_model_version", "ss_steps",
                                                      "ss_epoch", "ss_loraid")}
    extra.update({OURS + "converted_from": lora_file.algo, OURS + "svd_rank": str(rank),
                  OURS + "svd_relative_error": f"{overall:.6g}"})
    if info.get("allocation") is None and "loraid_allocation" in lora_file.metadata:
        extra["loraid_allocation"] = lora_file.metadata["loraid_allocation"]
    title = lora_file.metadata.get("modelspec.title")
    return build_metadata("lora", rank, float(rank), args, {"use_rslora": False, "use_dora": False},
                          info["base_model"], loraid=info["loraid"], allocation=info["allocation"],
                          step=info["step"], epoch=info["epoch"], extra=extra,
                          title=f"{title} (rank-{rank} LoRA)" if title else None)


def to_plain_lora(lora_file: LoraFile, rank: int, base: Mapping[str, torch.Tensor] | None = None) -> PlainLoraResult:
    """Rank-`rank` LoRA factors of every module's full-strength ΔW; `base` (Wan name -> weight) is needed for DoRA."""
    if rank < 1:
        raise UserError(f"--rank must be 1 or more (got {rank}).")
    base = dict(base or {})
    if needs_base(lora_file) and not base:
        raise UserError(f"{lora_file.path.name if lora_file.path else 'The file'} is DoRA, whose ΔW depends on the "
                        f"base weights; pass the DiT it was trained on with --base.")
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    dropped_total = energy_total = 0.0
    for name in lora_file.modules:
        parts = lora_file.parts(name)
        shape = _module_shape(lora_file, name, base)
        weight = base.get(name, torch.zeros(shape))
        if tuple(weight.shape) != shape:
            raise UserError(f"`{name}` is {tuple(weight.shape)} in the base but the LoRA expects {shape}; pass the "
                            f"DiT the LoRA was trained on with --base.")
        delta = delta_for_module(parts, weight, 1.0, lora_file.flags, module_name=name).double()
        factors = refactor(delta, rank, 1.0)
        prefix = lora_key_prefix(name)
        tensors[f"{prefix}.lora_down.weight"] = factors.down.contiguous()
        tensors[f"{prefix}.lora_up.weight"] = factors.up.contiguous()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(factors.down.shape[0]), dtype=torch.float32)
        energy = float(delta.pow(2).sum())
        errors[name] = factors.relative_error
        energy_total += energy
        dropped_total += (factors.relative_error ** 2) * energy
    overall = math.sqrt(dropped_total / energy_total) if energy_total > 0 else 0.0
    result = PlainLoraResult(tensors, _metadata(lora_file, rank, overall), rank, errors, overall)
    if lora_file.flags.get("dora_convention") == "base_norm" and base:
        from backend.adapters.dora_base import base_mismatch

        label = lora_file.path.name if lora_file.path else "The file"
        warning = base_mismatch(lora_file.flags.get("dora_base"), {n: base[n] for n in base if n in errors}, label)
        if warning:
            result.warnings.append(warning)
    return result


def report_json(result: PlainLoraResult) -> str:
    return json.dumps({"rank": result.rank, "overall_relative_error": result.overall_error,
                       "module_relative_errors": result.module_errors}, indent=2)
