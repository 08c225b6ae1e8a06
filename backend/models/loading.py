"""Load Wan transformers from what users have on disk, offline, and save them back with the original Wan names.

Accepted: an original-release single file (`blocks.0.self_attn.q.weight`), a ComfyUI file (`model.diffusion_model.`
prefix, plain or "scaled fp8"), a sharded original-release folder, or a diffusers folder. The config always comes
from a local folder (a shipped one in `configs/`, a `config.json` beside the file, or one the caller names), and
every tensor name and shape is checked against it before any weight is read, so a wrong file is refused with one
sentence instead of loading half a model.
"""
from __future__ import annotations

import contextlib
import json
import logging
from functools import lru_cache
from pathlib import Path

import torch

from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.finite import nonfinite_keys, refuse_nonfinite
from backend.models.checkpoint import (
    FP8_SCALE_SUFFIX,
    check_quantization_supported,
    checked_scale,
    drop_quantization_aux,
    is_scaled_fp8,
    load_checkpoint_tensors,
    read_checkpoint_shapes,
    weight_files,
)
from backend.models.fp8_scaled import FP8, SCALE_NAME, block_linears, convert_linear, quantize_weight, store_scaled_fp8
from backend.models.names import block_index, diffusers_to_wan, wan_to_diffusers
from backend.models.registry import (
    MODEL_KINDS,
    check_model_kind,
    detect_model_kind,
    get_model_kind,
    to_wan_names,
    uses_diffusers_names,
)

__all__ = ["read_checkpoint_shapes", "load_transformer", "block_count", "save_transformer_original",
           "original_state_dict", "resolve_config_dir", "expected_wan_shapes"]

TRANSFORMER_CLASS = "WanTransformer3DModel"


def _is_transformer_config(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name") == TRANSFORMER_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def resolve_config_dir(path: str | Path, config_dir_or_kind: str | Path | None = None,
                       expert: str | None = None) -> tuple[Path, str]:
    """(folder holding the diffusers config.json, a label for messages) for the checkpoint at `path`.

    Explicit model type or config folder first; else the checkpoint's own folder config (a diffusers folder, or a
    `config.json` beside a single file); else the shipped config of the kind detected from the tensor shapes.
    """
    path = Path(path).expanduser()
    if config_dir_or_kind is not None:
        if str(config_dir_or_kind) in MODEL_KINDS:
            kind = get_model_kind(str(config_dir_or_kind))
            check_model_kind(read_checkpoint_shapes(path), kind.name, str(path))
            return kind.config_dir(expert), kind.label
        folder = Path(config_dir_or_kind).expanduser()
        if not _is_transformer_config(folder):
            raise UserError(f"`{config_dir_or_kind}` is neither a model type ({', '.join(MODEL_KINDS)}) nor a folder "
                            f"holding a {TRANSFORMER_CLASS} config.json; pass one of those.")
        return folder, f"config in {folder}"
    own = path if path.is_dir() else path.parent
    for folder in (own, own / "transformer"):
        if _is_transformer_config(folder):
            return folder, f"config in {folder}"
    kind = get_model_kind(detect_model_kind(read_checkpoint_shapes(path), str(path)))
    return kind.config_dir(expert), kind.label


@lru_cache(maxsize=16)
def _expected_shapes_for(config_text: str) -> dict[str, tuple[int, ...]]:
    from diffusers import WanTransformer3DModel

    config = json.loads(config_text)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return {diffusers_to_wan(k): tuple(v.shape) for k, v in model.state_dict().items()}


def expected_wan_shapes(config_dir: Path) -> dict[str, tuple[int, ...]]:
    """Original Wan name -> shape of every tensor a checkpoint for this config must hold (built on `meta`)."""
    return dict(_expected_shapes_for((Path(config_dir) / "config.json").read_text(encoding="utf-8")))


def _check_fits(shapes: dict[str, tuple], config_dir: Path, label: str, source: str) -> None:
    found = to_wan_names(drop_quantization_aux(shapes))
    expected = expected_wan_shapes(config_dir)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    different = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != expected[k])
    if not (missing or unexpected or different):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors such as `{missing[0]}`")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors such as `{unexpected[0]}`")
    if different:
        name = different[0]
        parts.append(f"{len(different)} tensors of another shape such as `{name}` "
                     f"{list(found[name])} instead of {list(expected[name])}")
    raise UserError(f"{source} does not fit the {label} ({'; '.join(parts)}); pick the matching model type, "
                    f"config folder or file.")


@contextlib.contextmanager
def _quiet_cast_warning():
    """diffusers warns on every dtype cast of a Wan model, even a float32 one; we chose the dtype on purpose."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


STORAGES = (None, "fp8_scaled")


def load_transformer(path: str | Path, config_dir_or_kind: str | Path | None = None,
                     dtype: torch.dtype = torch.float32, expert: str | None = None, storage: str | None = None,
                     work_device: torch.device | str | None = None):
    """A `WanTransformer3DModel` (eval mode) from a checkpoint on disk, every tensor cast to `dtype`.

    `config_dir_or_kind` is a MODEL_KINDS name or a folder with a diffusers config.json; `expert` picks the
    config of an A14B-style kind (both experts share one shape). Never touches the network.
    `storage="fp8_scaled"` keeps the block Linears in scaled fp8 (backend/models/fp8_scaled.py): a ComfyUI scaled
    fp8 file fills it directly (its fp8 weights and scales are kept, no bf16 copy is made); any other file is loaded
    in `dtype` and quantised layer by layer (on `work_device` when given).
    """
    if storage not in STORAGES:
        raise ValueError(f"unknown weight storage {storage!r}")
    from diffusers import WanTransformer3DModel

    path = Path(path).expanduser()
    files = weight_files(path)
    shapes = read_checkpoint_shapes(path)
    check_quantization_supported(shapes, path)
    config_dir, label = resolve_config_dir(path, config_dir_or_kind, expert)
    _check_fits(shapes, config_dir, label, str(path))
    if storage == "fp8_scaled" and is_scaled_fp8(shapes):
        model = _load_scaled_fp8_direct(load_checkpoint_tensors(path, dequantize=False), config_dir, dtype, path)
    else:
        plain_single_file = len(files) == 1 and files[0].suffix == ".safetensors" and not is_scaled_fp8(shapes)
        source = str(files[0]) if plain_single_file else load_checkpoint_tensors(path)
        with _quiet_cast_warning():
            model = WanTransformer3DModel.from_single_file(source, config=str(config_dir), local_files_only=True,
                                                           torch_dtype=dtype)
        if storage == "fp8_scaled":
            store_scaled_fp8(model, work_device)
    unloaded = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if unloaded:
        raise RuntimeError(f"{path}: diffusers left {len(unloaded)} tensors unloaded, e.g. {unloaded[0]}")
    refuse_nonfinite(nonfinite_keys(model.state_dict()), path, "checkpoint")
    return model


def _keeps_fp32(name: str, model, dtype: torch.dtype) -> bool:
    """diffusers keeps some modules (norms, time embedder, modulation tables) in float32 at half precision."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return dtype in (torch.float16, torch.bfloat16) and any(part in name.split(".") for part in keep)


def _load_scaled_fp8_direct(raw: dict[str, torch.Tensor], config_dir: Path, dtype: torch.dtype, source: Path):
    """A model whose block Linears hold the file's own fp8 weights and scales; every other tensor in `dtype`."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    kept = {**drop_quantization_aux(raw), **{k: v for k, v in raw.items() if k.endswith(FP8_SCALE_SUFFIX)}}
    rename = (lambda k: k) if uses_diffusers_names(kept) else wan_to_diffusers
    named = {rename(k): v for k, v in kept.items()}
    config = json.loads((Path(config_dir) / "config.json").read_text(encoding="utf-8"))
    with init_empty_weights():
        model = WanTransformer3DModel.from_config(config)
    converted = set()
    for name, layer in block_linears(model).items():
        weight = named.pop(f"{name}.weight")
        scale = named.pop(f"{name}.{SCALE_NAME}", None)
        if weight.dtype == FP8:
            scale = checked_scale(f"{name}.weight", weight, torch.ones(()) if scale is None else scale, source)
            q, scale = weight, scale.expand(weight.shape[0], 1).clone() if scale.dim() == 0 else scale
        else:  # a layer the file left in full precision
            q, scale = quantize_weight(weight)
        convert_linear(layer, q, scale)
        converted |= {f"{name}.weight", f"{name}.{SCALE_NAME}"}
    state = {}
    for key in model.state_dict():
        if key in converted:
            continue
        tensor = named.pop(key)
        scale_key = key.rsplit(".", 1)[0] + f".{SCALE_NAME}"
        if tensor.dtype == FP8 and scale_key in named:  # a quantised layer outside the blocks
            tensor = tensor.to(torch.float32) * checked_scale(key, tensor, named.pop(scale_key), source)
        state[key] = tensor.to(torch.float32 if _keeps_fp32(key, model, dtype) else dtype)
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval()


def block_count(path: str | Path) -> int:
    """The number of transformer blocks in a checkpoint, read from its header alone."""
    shapes = to_wan_names(read_checkpoint_shapes(path))
    indices = {block_index(name) for name in shapes} - {None}
    if not indices:
        raise UserError(f"{path} has no `blocks.N.` tensors, so it is not a Wan transformer; pick the DiT file.")
    count = max(indices) + 1
    if len(indices) != count:
        gaps = sorted(set(range(count)) - indices)
        raise UserError(f"{path} lacks block(s) {gaps[:5]} of {count}, so it is incomplete; re-download or re-save it.")
    return count


def original_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors keyed by original Wan names (musubi-tuner / ComfyUI / original release layout)."""
    state = {diffusers_to_wan(name): tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if len(state) != len(model.state_dict()) or uses_diffusers_names(state):
        raise RuntimeError("the diffusers -> Wan name map does not cover this model's tensors")
    return state


def save_transformer_original(model, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model as one safetensors file with original Wan names, atomically."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata keys and values must be strings")
    return save_safetensors_atomic(original_state_dict(model), Path(path), metadata)
