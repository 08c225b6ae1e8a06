"""Write a LoraFile in the layout another tool loads: musubi (canonical), ComfyUI `diffusion_model.*`, diffusers.

- musubi: `lora_unet_*` keys (ComfyUI reads them too); diffusers reads them only when every block has all of its
  linears, so a partial (LORAID) LoRA needs the comfy layout for diffusers.
- comfy: `diffusion_model.<Wan name>.lora_A.weight / lora_B.weight` with `.alpha` kept or folded into lora_B
  (scale·B), DoRA magnitudes as `.dora_scale`. ComfyUI reads any module in this layout; diffusers' Wan loader reads
  the block linears and ignores alpha outside the blocks, so LoRA modules outside the blocks always get alpha folded.
  LoHa / LoKr keep their LyCORIS tensor names under `diffusion_model.` (ComfyUI's LoHa / LoKr adapters read them;
  diffusers cannot load LoHa / LoKr at all); folding multiplies the first factor by the scale.
- diffusers: `transformer.<diffusers name>.lora_A.weight / lora_B.weight`, scale folded into lora_B because PEFT has
  no per-module alpha in the file; DoRA magnitudes as PEFT's `lora_magnitude_vector` [out] (PEFT divides by the
  row norm of W + ΔW; files in ComfyUI's convention, which divides by the norm of W alone, are converted on the base
  given with --base).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from backend.adapters.formats import PRECISIONS, LoraFile, cast_for_save, load_lora
from backend.adapters.keys import block_of
from backend.adapters.metadata import OURS, FORMAT_VERSION
from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.finite import refuse_nonfinite_output
from backend.models.names import wan_to_diffusers
from backend.output_guard import check_output_file

TARGETS = ("musubi", "comfy", "diffusers")
# Header keys other tools read as alpha settings: they would re-apply a scale already folded into the weights.
_FOREIGN_ALPHA_KEYS = ("lora_adapter_metadata", "lora_alpha", "r", "use_rslora")
_FIRST_FACTOR = ("hada_w1_a", "lokr_w1", "lokr_w1_a")


def _scaled(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    return (tensor.float() * scale).to(tensor.dtype)


def to_musubi(lora_file: LoraFile) -> dict[str, torch.Tensor]:
    """The canonical `lora_unet_*` tensors (flags live in the header metadata, never as tensors)."""
    return dict(lora_file.tensors)


def _comfy_lycoris(parts: dict[str, torch.Tensor], base: str, scale: float, fold: bool) -> dict[str, torch.Tensor]:
    out = {}
    for suffix, tensor in parts.items():
        if suffix == "alpha" and fold:
            continue
        out[f"{base}.{suffix}"] = _scaled(tensor, scale) if fold and suffix in _FIRST_FACTOR else tensor
    return out


def to_comfy(lora_file: LoraFile, fold_alpha: bool) -> dict[str, torch.Tensor]:
    """`diffusion_model.<Wan name>.lora_A.weight / lora_B.weight (/ .alpha / .dora_scale)`; see the module doc."""
    out: dict[str, torch.Tensor] = {}
    scales = lora_file.scales
    for name in lora_file.modules:
        parts, base = lora_file.parts(name), f"diffusion_model.{name}"
        if lora_file.module_algos[name] in ("loha", "lokr"):
            out.update(_comfy_lycoris(parts, base, scales[name], fold_alpha))
            continue
        fold = fold_alpha or block_of(name) is None
        out[f"{base}.lora_A.weight"] = parts["lora_down.weight"]
        out[f"{base}.lora_B.weight"] = (_scaled(parts["lora_up.weight"], scales[name]) if fold
                                        else parts["lora_up.weight"])
        if not fold:
            out[f"{base}.alpha"] = parts["alpha"]
        if "dora_scale" in parts:
            out[f"{base}.dora_scale"] = parts["dora_scale"]
    return out


def to_diffusers(lora_file: LoraFile) -> dict[str, torch.Tensor]:
    """`transformer.<diffusers name>.lora_A.weight / lora_B.weight` with the scale folded into lora_B."""
    lycoris = sorted({algo for algo in lora_file.module_algos.values() if algo in ("loha", "lokr")})
    if lycoris:
        names = "/".join({"loha": "LoHa", "lokr": "LoKr"}[algo] for algo in lycoris)
        raise UserError(f"diffusers cannot load {names} adapters; "
                        f"export this file with --to comfy (ComfyUI reads it) or --to musubi instead.")
    out: dict[str, torch.Tensor] = {}
    scales = lora_file.scales
    for name in lora_file.modules:
        parts, base = lora_file.parts(name), f"transformer.{wan_to_diffusers(name)}"
        out[f"{base}.lora_A.weight"] = parts["lora_down.weight"]
        out[f"{base}.lora_B.weight"] = _scaled(parts["lora_up.weight"], scales[name])
        if "dora_scale" in parts:
            out[f"{base}.lora_magnitude_vector"] = parts["dora_scale"].reshape(-1)
    return out


def export_metadata(lora_file: LoraFile, layout: str, alpha_folded: bool) -> dict[str, str]:
    """The source header minus alpha settings of other tools, plus ours: flags, algorithm, layout."""
    md = {key: value for key, value in lora_file.metadata.items() if key not in _FOREIGN_ALPHA_KEYS}
    md.setdefault(OURS + "network_args", json.dumps(lora_file.info["network_args"]))
    md.update({
        OURS + "version": FORMAT_VERSION,
        OURS + "algo": lora_file.algo,
        OURS + "use_rslora": "true" if lora_file.flags["use_rslora"] else "false",
        OURS + "use_dora": "true" if lora_file.flags["use_dora"] else "false",
        OURS + "layout": layout,
        OURS + "alpha_folded": "true" if alpha_folded else "false",
    })
    return md


def _check_paths(src: Path, dst: Path, precision: str | None, overwrite: bool) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"Unknown save precision `{precision}`; use one of {', '.join(PRECISIONS)}.")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"The output {dst} is the input file; choose a different output name so the original stays.")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; choose another output name or pass --overwrite.")
    check_output_file(dst, workspace=None, inputs=[src], overwrite=overwrite, lora_output=True)


def in_comfy_convention(lora_file: LoraFile, base: str | Path) -> LoraFile:
    """A DoRA file whose output-axis scales are magnitudes over ||W + ΔW|| rewritten in ComfyUI's convention on the
    base DiT it was trained on (m·||W||/||W + ΔW||), with that base's fingerprint; other files come back unchanged."""
    return in_dora_convention(lora_file, base, "base_norm")


def in_dora_convention(lora_file: LoraFile, base: str | Path, target: str) -> LoraFile:
    """The file's output-axis DoRA scales rewritten in `target` ("base_norm": ComfyUI's; "merged_norm": the
    magnitudes PEFT / diffusers read) on the base DiT it was trained on; other files come back unchanged."""
    from backend.adapters.deltas import convert_dora_scale, is_input_axis_scale
    from backend.adapters.dora_base import base_fingerprint
    from backend.adapters.merge import delta_for_module
    from backend.adapters.plain_lora import base_weights_from
    from backend.models.names import lora_key_prefix

    source = lora_file.flags.get("dora_convention")
    if source not in ("base_norm", "merged_norm") or source == target:
        return lora_file
    names = [name for name in lora_file.modules
             if "dora_scale" in (parts := lora_file.parts(name)) and not is_input_axis_scale(parts["dora_scale"])]
    weights = base_weights_from(base, names)
    tensors = dict(lora_file.tensors)
    for name in names:
        parts = lora_file.parts(name)
        raw = delta_for_module({k: v for k, v in parts.items() if k != "dora_scale"}, weights[name], 1.0,
                               module_name=name)
        tensors[f"{lora_key_prefix(name)}.dora_scale"] = convert_dora_scale(
            weights[name], raw, parts["dora_scale"], source, target)
    metadata = dict(lora_file.metadata)
    metadata[OURS + "dora_convention"] = target
    flags = dict(lora_file.flags, dora_convention=target)
    flags.pop("dora_base", None)
    metadata.pop(OURS + "dora_base", None)
    if target == "base_norm":
        metadata[OURS + "dora_base"] = json.dumps(base_fingerprint(weights), sort_keys=True)
        flags["dora_base"] = base_fingerprint(weights)
    return replace(lora_file, tensors=tensors, metadata=metadata, flags=flags)


def convert_lora(src: str | Path, dst: str | Path, to: str = "musubi", fold_alpha: bool = False,
                 precision: str | None = None, overwrite: bool = False, base: str | Path | None = None) -> Path:
    """Read any supported LoRA file and write it in the `to` layout; precision None keeps the weights' dtypes.
    `base` (the DiT a DoRA file was trained on) rewrites trainer-convention DoRA scales in ComfyUI's convention."""
    if to not in TARGETS:
        raise UserError(f"Unknown target layout `{to}`; use one of {', '.join(TARGETS + ('lora',))}.")
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, precision, overwrite)
    lora_file = load_lora(src)
    if to == "diffusers" and lora_file.flags.get("dora_convention") == "base_norm":
        if base is None:  # PEFT's lora_magnitude_vector is m over ||W + ΔW||
            raise UserError(f"{src.name} holds DoRA scales in ComfyUI's convention, and diffusers (PEFT) reads "
                            f"magnitudes over ||W + ΔW||; pass the DiT it was trained on with --base to convert them.")
        lora_file = in_dora_convention(lora_file, base, "merged_norm")
    elif base is not None:
        lora_file = in_comfy_convention(lora_file, base)
    if to == "musubi":
        tensors = to_musubi(lora_file)
    else:
        tensors = to_comfy(lora_file, fold_alpha) if to == "comfy" else to_diffusers(lora_file)
    folded = to == "diffusers" or (to == "comfy" and fold_alpha)
    cast = cast_for_save(tensors, precision)
    refuse_nonfinite_output(cast, dst)
    return save_safetensors_atomic(cast, dst, export_metadata(lora_file, to, folded))


def convert_to_plain_lora(src: str | Path, dst: str | Path, rank: int, base: str | Path | None = None,
                          precision: str | None = None, overwrite: bool = False):
    """`plain_lora.to_plain_lora` from file to file (musubi layout); returns (path, PlainLoraResult)."""
    from backend.adapters.plain_lora import base_weights_from, needs_base, to_plain_lora

    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, precision, overwrite)
    lora_file = load_lora(src)
    if needs_base(lora_file) and base is None:
        raise UserError(f"{src.name} is DoRA, whose ΔW depends on the base weights; pass the DiT it was trained on "
                        f"with --base.")
    weights = base_weights_from(base, lora_file.modules) if base is not None else None
    result = to_plain_lora(lora_file, rank, weights)
    path = save_safetensors_atomic(cast_for_save(result.tensors, precision), dst, result.metadata)
    return path, result
