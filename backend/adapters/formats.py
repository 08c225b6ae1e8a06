"""Read and write LoRA-family `.safetensors` files in the canonical layout (musubi / ComfyUI `lora_unet_*`).

Canonical, per module prefix `p = lora_key_prefix(wan_name)`:
LoRA / LoCon `p.lora_down.weight` [r, in(, *k)], `p.lora_up.weight` [out, r(, 1...)], `p.alpha` 0-dim fp32;
DoRA adds `p.dora_scale` [out, 1]; LoHa `p.hada_w{1,2}_{a,b}`; LoKr `p.lokr_w{1,2}` or their `_a`/`_b` factors.
The scale is always alpha / r (an rsLoRA file stores alpha·√r and says `use_rslora` in its header metadata).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch

from backend.adapters.anatomy import check_module, group_by_prefix, module_algo, module_alpha, module_rank
from backend.adapters.deltas import is_input_axis_scale
from backend.adapters.keys import block_of, module_name_from_prefix, module_sort_key
from backend.adapters.layouts import canonicalize
from backend.adapters.metadata import parse_metadata
from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.finite import nonfinite_keys, refuse_nonfinite, refuse_nonfinite_output
from backend.models.names import lora_key_prefix

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_COMMON_RSLORA_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


@dataclass
class LoraFile:
    """A LoRA-family file read into the canonical layout, with what its keys and header say."""
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    algo: str  # lora | locon | dora | loha | lokr (or "a+b" for a file mixing families)
    flags: dict[str, Any]  # use_rslora, use_dora (bools); DoRA files: dora_convention, dora_base (its fingerprint)
    modules: list[str]  # original Wan names, blocks in order
    ranks: dict[str, int | None]  # Wan name -> r of alpha/r (None: full LoKr, scale 1)
    alphas: dict[str, float]  # Wan name -> canonical alpha (scale = alpha / r)
    source_format: str  # loraid_studio | musubi | blissful | lycoris | comfy | diffusers
    module_algos: dict[str, str] = field(default_factory=dict)
    explicit_flags: frozenset[str] = frozenset()  # the flags the file states itself (tensors or metadata)
    notes: list[str] = field(default_factory=list)  # what reading changed, in words
    path: Path | None = None
    file_size: int | None = None
    nonfinite: list[str] = field(default_factory=list)  # keys holding NaN / inf (read with allow_nonfinite)

    @property
    def scales(self) -> dict[str, float]:
        return {name: self.alphas[name] / rank if rank else 1.0 for name, rank in self.ranks.items()}

    @property
    def blocks(self) -> list[int]:
        return sorted({block for block in map(block_of, self.modules) if block is not None})

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for key, t in self.tensors.items() if not key.endswith(".alpha"))

    @cached_property
    def info(self) -> dict[str, Any]:
        """The parsed header metadata (`parse_metadata`)."""
        return parse_metadata(self.metadata)

    def parts(self, module_name: str) -> dict[str, torch.Tensor]:
        """suffix -> tensor for one module, e.g. {"lora_down.weight": ..., "lora_up.weight": ..., "alpha": ...}."""
        prefix = lora_key_prefix(module_name)
        return {key[len(prefix) + 1:]: value for key, value in self.tensors.items()
                if key.startswith(prefix + ".")}


def _file_algo(module_algos: Mapping[str, str], stated: str | None) -> str:
    algos = set(module_algos.values())
    families = {"loha" if a == "loha" else "lokr" if a == "lokr" else "lora" for a in algos}
    if len(families) > 1:
        return "+".join(sorted(families))
    family = families.pop()
    if family != "lora":
        return family
    if stated in ("lora", "locon", "dora"):
        return stated
    return "dora" if "dora" in algos else "locon" if "locon" in algos else "lora"


def _flags(canonical_flags: Mapping[str, bool], info: Mapping[str, Any], has_dora: bool,
           source: str, notes: list[str]) -> tuple[dict[str, bool], frozenset[str]]:
    flags, explicit = {}, set()
    for name in ("use_rslora", "use_dora"):
        value = canonical_flags.get(name)
        if value is None:
            value = info["flags"].get(name)
        if value is not None:
            explicit.add(name)
        flags[name] = bool(value) if value is not None else (has_dora if name == "use_dora" else False)
    if flags["use_dora"] != has_dora:
        notes.append(f"The file is marked use_dora={flags['use_dora']} but "
                     f"{'holds' if has_dora else 'holds no'} DoRA magnitudes.")
    if flags["use_rslora"] and source in ("musubi", "lycoris", "comfy", "diffusers") and not info["ours"]:
        notes.append("The header says use_rslora but no flag tensor says how alphas were stored; "
                     "read them as alpha/r like ComfyUI does.")
    return flags, frozenset(explicit)


def _dora_convention(info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], notes: list[str]) -> dict:
    """How the file's output-axis `dora_scale` tensors are read (deltas.DORA_CONVENTIONS) and the base they were
    computed on, when the header records it."""
    stated = info.get("dora_convention")
    output_axis = any(key.endswith(".dora_scale") and not is_input_axis_scale(value) for key, value in tensors.items())
    if stated in ("base_norm", "merged_norm"):
        out = {"dora_convention": stated}
        if isinstance(info.get("dora_base"), dict):
            out["dora_base"] = info["dora_base"]
        return out
    if output_axis:
        who = "this app before ComfyUI's convention was adopted" if info["ours"] else "the trainer"
        notes.append(f"DoRA scales read as magnitudes over ||W + ΔW|| (as written by {who}); ComfyUI divides them by "
                     f"||W|| instead and so applies this file differently. `python -m backend convert IN OUT --to "
                     f"musubi --base DIT` rewrites them in ComfyUI's convention.")
    return {"dora_convention": "merged_norm"}


def lora_from_state_dict(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                         path: str | Path | None = None, file_size: int | None = None) -> LoraFile:
    """Any supported layout (auto-detected) -> LoraFile in the canonical layout. Bad content is a UserError."""
    metadata = dict(metadata or {})
    canonical = canonicalize(state_dict, metadata)
    tensors = canonical.tensors
    groups = group_by_prefix(tensors)
    names: dict[str, str] = {}
    for prefix, parts in groups.items():
        names[prefix] = module_name_from_prefix(prefix)
        check_module(prefix, parts)
        tensors[f"{prefix}.alpha"] = parts["alpha"] = parts["alpha"].float().reshape(())
    info = parse_metadata(metadata)
    source = "loraid_studio" if info["ours"] and canonical.source_format == "musubi" else canonical.source_format
    modules = sorted(names.values(), key=module_sort_key)
    by_name = {names[prefix]: parts for prefix, parts in groups.items()}
    module_algos = {name: module_algo(by_name[name]) for name in modules}
    notes = list(canonical.notes)
    flags, explicit = _flags(canonical.stated_flags, info, "dora" in module_algos.values(), source, notes)
    if "dora" in module_algos.values():
        flags.update(_dora_convention(info, tensors, notes))
    return LoraFile(
        tensors=tensors, metadata=metadata, algo=_file_algo(module_algos, info["algo"] if info["ours"] else None),
        flags=flags, modules=modules, ranks={name: module_rank(by_name[name]) for name in modules},
        alphas={name: module_alpha(by_name[name]) for name in modules}, source_format=source,
        module_algos=module_algos, explicit_flags=explicit, notes=notes,
        path=Path(path) if path is not None else None, file_size=file_size)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors reports corrupt headers and truncated data with several exception types
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path.name} is not a readable .safetensors file ({reason}); "
                        f"only complete .safetensors LoRA files can be read.") from None
    return tensors, metadata


def load_lora(path: str | Path, allow_nonfinite: bool = False) -> LoraFile:
    """Read a LoRA / LoCon / DoRA / LoHa / LoKr file written by this app, musubi-tuner, blissful-tuner, ComfyUI tools
    or diffusers / PEFT, into the canonical layout. A file holding NaN / inf is refused unless `allow_nonfinite`
    (inspecting reports it in `nonfinite`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"The LoRA file {path} does not exist; check the path.")
    if not path.is_file():
        raise UserError(f"{path} is a folder, not a LoRA file; pass the .safetensors file inside it.")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path.name} is empty (0 bytes); it was not saved completely.")
    tensors, metadata = _read_safetensors(path)
    bad = nonfinite_keys(tensors)
    if not allow_nonfinite:
        refuse_nonfinite(bad, path, "LoRA file")
    lora = lora_from_state_dict(tensors, metadata, path=path, file_size=size)
    lora.nonfinite = bad
    return lora


def cast_for_save(tensors: Mapping[str, torch.Tensor], precision: str | None) -> dict[str, torch.Tensor]:
    """Weights to the save precision (None keeps them); alphas stay fp32 scalars."""
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"Unknown save precision `{precision}`; use one of {', '.join(PRECISIONS)}.")
    out = {}
    for key, value in tensors.items():
        value = value.detach().cpu()
        if key.endswith(".alpha"):
            value = value.float().reshape(())
        elif precision is not None:
            if not value.is_floating_point():
                raise ValueError(f"tensor {key} is {value.dtype}, not a floating-point adapter weight")
            value = value.to(PRECISIONS[precision])
        out[key] = value
    return out


def save_lora(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
              precision: str = "fp32") -> Path:
    """Write canonical tensors atomically; build `metadata` with `metadata.build_metadata`."""
    for prefix, parts in group_by_prefix(tensors).items():
        module_name_from_prefix(prefix)
        check_module(prefix, parts)
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise TypeError(f"metadata value for {key!r} must be a string, got {type(value).__name__}")
    cast = cast_for_save(tensors, precision)
    refuse_nonfinite_output(cast, path)
    return save_safetensors_atomic(cast, path, metadata)


def _rslora_factor(alpha: float, rank: int) -> float | None:
    ratio = alpha / math.sqrt(rank)
    for factor in _COMMON_RSLORA_FACTORS:
        if abs(ratio - factor) <= 5e-3 * factor:
            return factor
    return None


def suspicious_rslora_hint(lora_file: LoraFile) -> str | None:
    """A hint when a file that does not state use_rslora looks rsLoRA-trained: more than half of its LoRA modules
    have alpha = k·√r (k = 1, 2, 4, ... or 0.5). Ranks that are perfect squares are left out: there √r·k is an
    ordinary alpha (rank 4, alpha 2) and proves nothing."""
    if "use_rslora" in lora_file.explicit_flags:
        return None
    candidates = [(name, rank) for name, rank in lora_file.ranks.items()
                  if rank and lora_file.module_algos[name] in ("lora", "locon", "dora") and math.isqrt(rank) ** 2 != rank]
    if not candidates:
        return None
    hits = [(name, rank, factor) for name, rank in candidates
            if (factor := _rslora_factor(lora_file.alphas[name], rank)) is not None]
    if len(hits) * 2 <= len(candidates):
        return None
    name, rank, factor = hits[0]
    k = f"{factor:g}·" if factor != 1 else ""
    return (f"{len(hits)} of {len(candidates)} modules have alpha = {k}√rank (e.g. alpha "
            f"{lora_file.alphas[name]:.4g} at rank {rank} in {name}), which is what rsLoRA training writes: "
            f"the file may be an rsLoRA file saved without its use_rslora flag.")
