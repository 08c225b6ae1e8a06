"""Reading transformer checkpoints from disk: safetensors headers (no weights loaded), sharded folders,
ComfyUI prefixes and ComfyUI "scaled fp8" weights (dequantized on load).

A checkpoint is one `.safetensors` file, a folder of shards (with or without an `*.index.json`), a diffusers
pipeline folder holding `transformer/`, or a `.pt`/`.pth` file read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from backend.errors import UserError
from backend.models.registry import strip_checkpoint_prefix

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth")
# ComfyUI scaled fp8: `<module>.weight` (fp8) * `<module>.scale_weight`; `scaled_fp8` is a marker tensor.
FP8_SCALE_SUFFIX = ".scale_weight"
FP8_AUX_SUFFIXES = (".scale_input",)
FP8_MARKER = "scaled_fp8"
# Newer quantized layouts (per-block scales, nvfp4, ...) that we do not dequantize.
UNSUPPORTED_QUANT_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".comfy_quant")

_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(file: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(tensor name -> {dtype, shape, data_offsets}, metadata) from a safetensors file, reading only its header."""
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("file shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is implausible")
            header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(header, dict) or any("shape" not in v for v in header.values()):
            raise ValueError("header entries lack shapes")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not a readable safetensors file ({exc}); re-download or re-save it.") from None
    return header, metadata


def weight_files(path: str | Path) -> list[Path]:
    """The weight files that make up the checkpoint at `path` (a file or a folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; check the path to the model file or folder.")
    if path.is_file():
        if path.suffix not in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES:
            raise UserError(f"{path} is not a .safetensors / .pt / .pth file; pick the transformer weights file.")
        return [path]
    if (path / "transformer").is_dir() and not list(path.glob("*.safetensors")):
        path = path / "transformer"
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{indexes[0]} is not a valid shard index ({exc}); re-download the folder.") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{path} lacks shard(s) {', '.join(missing)} named by {indexes[0].name}; "
                            f"finish downloading the folder.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path} holds no .safetensors weights; pick the folder or file with the transformer weights.")
    return files


def read_checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for the whole checkpoint, names exactly as stored; safetensors are not loaded."""
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, Path] = {}
    for file in weight_files(path):
        if file.suffix in TORCH_SUFFIXES:
            file_shapes = {k: tuple(v.shape) for k, v in _torch_load(file).items()}
        else:
            file_shapes = {k: tuple(v["shape"]) for k, v in read_safetensors_header(file)[0].items()}
        for name, shape in file_shapes.items():
            if name in shapes:
                raise UserError(f"{owner[name].name} and {file.name} both hold `{name}`, so {Path(path)} contains "
                                f"several checkpoints; pick one file.")
            shapes[name], owner[name] = shape, file
    return shapes


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors `__metadata__` of a single-file checkpoint (first shard for folders; {} for .pt)."""
    file = weight_files(path)[0]
    return {} if file.suffix in TORCH_SUFFIXES else read_safetensors_header(file)[1]


def is_scaled_fp8(names) -> bool:
    return any(n.endswith(FP8_SCALE_SUFFIX) or strip_checkpoint_prefix(n) == FP8_MARKER for n in names)


def check_quantization_supported(names, source: Path) -> None:
    unsupported = sorted({s for n in names for s in UNSUPPORTED_QUANT_SUFFIXES if n.endswith(s)})
    if unsupported:
        raise UserError(f"{source} uses a quantized layout ({', '.join(unsupported)} tensors) that LORAID Studio "
                        f"cannot dequantize; use the bf16 / fp16 / fp8_scaled release of this model instead.")


def drop_quantization_aux(named: dict) -> dict:
    """Drop fp8 scale / marker tensors: what remains are the model's own parameters."""
    return {k: v for k, v in named.items()
            if not k.endswith((FP8_SCALE_SUFFIX,) + FP8_AUX_SUFFIXES) and strip_checkpoint_prefix(k) != FP8_MARKER}


def load_checkpoint_tensors(path: str | Path, dequantize: bool = True) -> dict[str, torch.Tensor]:
    """All model tensors of the checkpoint, prefix stripped and scaled-fp8 weights dequantized to float32
    (`dequantize=False`: exactly as stored, scales and marker included)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        loaded = _torch_load(file) if file.suffix in TORCH_SUFFIXES else load_file(str(file))
        tensors.update({strip_checkpoint_prefix(k): v for k, v in loaded.items()})
    check_quantization_supported(tensors, Path(path))
    if dequantize and is_scaled_fp8(tensors):
        tensors = _dequantize_scaled_fp8(tensors, Path(path))
    return tensors


def _dequantize_scaled_fp8(tensors: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    out = drop_quantization_aux(tensors)
    for scale_name in (k for k in tensors if k.endswith(FP8_SCALE_SUFFIX)):
        weight_name = scale_name[: -len(FP8_SCALE_SUFFIX)] + ".weight"
        if weight_name not in tensors:
            raise UserError(f"{source} has `{scale_name}` without `{weight_name}`, so it is damaged; "
                            f"re-download the file.")
        weight = tensors[weight_name].to(torch.float32)
        out[weight_name] = weight * checked_scale(weight_name, weight, tensors[scale_name], source)
    return out


def checked_scale(weight_name: str, weight: torch.Tensor, scale: torch.Tensor, source: Path) -> torch.Tensor:
    """A ComfyUI `scale_weight` as float32 that broadcasts over the weight: 0-dim (per tensor) or [out, 1, ...]."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == weight.shape[0] and scale.shape in {(weight.shape[0],),
                                                            (weight.shape[0],) + (1,) * (weight.dim() - 1)}:
        return scale.reshape((weight.shape[0],) + (1,) * (weight.dim() - 1))
    raise UserError(f"{source} scales `{weight_name}` with shape {tuple(scale.shape)}, which is not a per-tensor or "
                    f"per-row scale; use the bf16 / fp16 release of this model instead.")


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for bad or unsafe pickles
        raise UserError(f"{file} could not be read as plain tensors ({type(exc).__name__}); "
                        f"convert it to .safetensors.") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"{file} does not hold a flat dictionary of tensors; convert it to .safetensors.")
    return loaded
