"""Fold LoRA-family files into a DiT checkpoint, streaming tensor by tensor (the whole model is never in memory).

Each adapted weight is read, moved to the compute device in float32, given every LoRA that targets it in the order
the LoRAs were listed (`merge.merged_weight_for_module`: W + m·ΔW, DoRA normalised against the weight it is merged
into), and cast once to the output dtype; every other tensor is copied (cast only when an output dtype is asked).
Linear weights are merged in chunks of output rows (exact: every supported algorithm but LoKr is row-separable),
written back into the buffer read from disk, so the memory above the interpreter is about one stored tensor plus a
few 4 MB temporaries (CPU), whatever the model size.
Checkpoint keys keep their names: original Wan names, a ComfyUI prefix (`model.diffusion_model.`) or diffusers names
are all mapped to the LoRA's module names. Every module of every LoRA must find its weight, else nothing is written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.adapters.formats import LoraFile, load_lora
from backend.adapters.deltas import is_input_axis_scale
from backend.adapters.merge import merged_weight_for_module
from backend.compose.provenance import MERGE_KEY, MERGED_LORAIDS_KEY, as_json, lora_record, loraids_of
from backend.compose.memory import release_freed_memory
from backend.compose.stream import TensorEntry, TensorReader, write_streaming
from backend.errors import UserError
from backend.finite import check_tensor
from backend.loraid.overlap import guard_files, overlap_message
from backend.models.checkpoint import (TORCH_SUFFIXES, check_quantization_supported, is_scaled_fp8, weight_files)
from backend.models.names import diffusers_to_wan, lora_key_prefix
from backend.models.registry import strip_checkpoint_prefix, uses_diffusers_names

OUTPUT_DTYPES = {"same": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CHUNK_ELEMENTS = 1 << 20  # rows merged at once on the CPU: about 4 MB of float32 per temporary
CHUNK_ELEMENTS_GPU = 1 << 24  # on a GPU the temporaries live in GPU memory: fewer, larger chunks
_ROW_PARTS = ("lora_up.weight", "dora_scale", "hada_w1_a", "hada_w2_a")


@dataclass
class MergeResult:
    out: Path
    tensors: int
    adapted_weights: int
    seconds: float
    loras: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Checkpoint:
    entries: list[TensorEntry]
    readers: dict[str, TensorReader]  # tensor name -> the shard holding it
    metadata: dict[str, str]
    by_wan_param: dict[str, str]  # `blocks.0.self_attn.q.weight` -> the name stored in the file


def open_checkpoint(path: str | Path) -> _Checkpoint:
    """The checkpoint's tensor list and name map from its headers (a .safetensors file or a folder of shards)."""
    files = weight_files(path)
    if any(file.suffix in TORCH_SUFFIXES for file in files):
        raise UserError(f"{Path(path).name} is a .pt/.pth checkpoint; merging streams .safetensors files only, so "
                        f"convert it to .safetensors first.")
    entries, readers = [], {}
    for file in files:
        reader = TensorReader(file)
        for entry in reader.entries:
            if entry.name in readers:
                raise UserError(f"`{entry.name}` appears in two shards of {path}; pick one checkpoint.")
            readers[entry.name] = reader
            entries.append(entry)
    names = [entry.name for entry in entries]
    check_quantization_supported(names, Path(path))
    if is_scaled_fp8(names):
        raise UserError(f"{Path(path).name} is a scaled-fp8 checkpoint; merging into it would need re-quantizing, "
                        f"so merge into the bf16 / fp16 release and quantize afterwards.")
    stripped = {name: strip_checkpoint_prefix(name) for name in names}
    diffusers = uses_diffusers_names(stripped.values())
    by_wan = {diffusers_to_wan(short) if diffusers else short: name for name, short in stripped.items()}
    return _Checkpoint(entries, readers, dict(readers[names[0]].metadata) if names else {}, by_wan)


def _check_expert(lora: LoraFile, expert: str | None) -> None:
    recorded = (lora.info["allocation"] or {}).get("expert")
    if expert and recorded in ("high", "low") and recorded != expert:
        raise UserError(f"{lora.path.name} was trained for the {recorded}-noise expert but is listed for the "
                        f"{expert}-noise one; move it to the other LoRA list.")


def _plan(checkpoint: _Checkpoint, loras: Sequence[LoraFile], multipliers: Sequence[float], device: torch.device,
          dit_name: str) -> dict[str, list[tuple[dict, float, dict, str]]]:
    """checkpoint tensor name -> [(parts on device, multiplier, flags, module name)] in LoRA order."""
    plan: dict[str, list] = {}
    for lora, multiplier in zip(loras, multipliers):
        for module in lora.modules:
            target = checkpoint.by_wan_param.get(f"{module}.weight")
            if target is None:
                raise UserError(f"{lora.path.name}: `{lora_key_prefix(module)}` targets `{module}.weight`, which "
                                f"{dit_name} does not have; the LoRA was trained for another model.")
            parts = {suffix: tensor.to(device) for suffix, tensor in lora.parts(module).items()}
            plan.setdefault(target, []).append((parts, float(multiplier), lora.flags, module))
    return plan


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked but no CUDA GPU is available; use --device cpu.")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UserError(f"Unknown device `{name}`; use cpu or cuda.")
    return torch.device(name)


def _out_dtype(dtype: torch.dtype, wanted: torch.dtype | None) -> torch.dtype:
    return wanted if wanted is not None and dtype in _FLOAT_DTYPES else dtype


def _rows_separable(parts: dict) -> bool:
    """LoRA / LoCon / DoRA and LoHa weights: output row i of the merged weight needs only row i of the base and
    of the output-side factors (DoRA normalises per output row), so a Linear can be merged in row chunks. An
    input-axis DoRA scale (LyCORIS) normalises columns over every row, so it is merged whole."""
    if "dora_scale" in parts and is_input_axis_scale(parts["dora_scale"]):
        return False
    return not any(key.startswith("lokr_") for key in parts)


def _slice_rows(parts: dict, rows: slice) -> dict:
    return {key: value[rows] if key in _ROW_PARTS else value for key, value in parts.items()}


def _merge_rows(base: torch.Tensor, steps: Sequence[tuple], compute: torch.device) -> torch.Tensor:
    weight = base.to(compute, torch.float32)
    for parts, multiplier, flags, module in steps:
        weight = merged_weight_for_module(parts, weight, multiplier, flags, module_name=module)
    return weight


def merge_into_dit(dit: str | Path, lora_paths: Sequence[str | Path], multipliers: Sequence[float],
                   out: str | Path, *, device: str = "cpu", dtype: str = "same", allow_overlap: bool = False,
                   expert: str | None = None, progress: Callable[[int, int], None] | None = None) -> MergeResult:
    """Write `out` = the checkpoint `dit` with every LoRA folded in at its multiplier; see the module docstring."""
    started = time.perf_counter()
    dit, out = Path(dit), Path(out)
    if dtype not in OUTPUT_DTYPES:
        raise UserError(f"Unknown output dtype `{dtype}`; use one of {', '.join(OUTPUT_DTYPES)}.")
    if not lora_paths:
        raise UserError("No LoRA was given; pass at least one file with --lora.")
    if len(multipliers) != len(lora_paths):
        raise UserError(f"{len(multipliers)} multipliers for {len(lora_paths)} LoRAs; give one per LoRA.")
    if out.exists() and dit.exists() and out.resolve() == dit.resolve():
        raise UserError(f"--out is the base checkpoint {dit.name}; write the merged model to a new file.")
    conflicts = guard_files(lora_paths, allow_overlap=allow_overlap)
    warnings = [f"Merging overlapping LoRAs as asked: {overlap_message(conflicts, 'their deltas add up')}"] \
        if conflicts else []
    loras = [load_lora(path) for path in lora_paths]
    for lora in loras:
        _check_expert(lora, expert)
    checkpoint = open_checkpoint(dit)
    compute = _device(device)
    plan = _plan(checkpoint, loras, multipliers, compute, dit.name)
    wanted = OUTPUT_DTYPES[dtype]
    out_entries = [TensorEntry(e.name, _out_dtype(e.dtype, wanted), e.shape) for e in checkpoint.entries]
    source = {entry.name: entry for entry in checkpoint.entries}

    def produce(entry: TensorEntry) -> torch.Tensor:
        tensor = check_tensor(entry.name, checkpoint.readers[entry.name].read(source[entry.name]), dit)
        steps = plan.get(entry.name)
        if not steps:
            return tensor.to(entry.dtype)
        if tensor.dim() != 2 or not all(_rows_separable(parts) for parts, *_ in steps):
            return _merge_rows(tensor, steps, compute).to(entry.dtype).cpu()
        merged = tensor if tensor.dtype == entry.dtype else torch.empty(entry.shape, dtype=entry.dtype)
        budget = CHUNK_ELEMENTS if compute.type == "cpu" else CHUNK_ELEMENTS_GPU
        chunk = max(1, budget // max(1, tensor.shape[1]))
        for start in range(0, tensor.shape[0], chunk):
            rows = slice(start, start + chunk)
            sliced = [(_slice_rows(parts, rows), *rest) for parts, *rest in steps]
            merged[rows] = _merge_rows(tensor[rows], sliced, compute).to(entry.dtype).cpu()
        return merged

    def checked(entry: TensorEntry) -> torch.Tensor:
        return check_tensor(entry.name, produce(entry), out, "merged model")

    def on_tensor(done: int, total: int) -> None:
        release_freed_memory()
        if progress is not None:
            progress(done, total)

    records = [lora_record(lora, m) for lora, m in zip(loras, multipliers)]
    metadata = dict(checkpoint.metadata)
    metadata[MERGE_KEY] = as_json({"base": dit.name, "loras": records, "dtype": dtype, "expert": expert,
                                   "allow_overlap": bool(conflicts)})
    metadata[MERGED_LORAIDS_KEY] = as_json(loraids_of(records))
    write_streaming(out, out_entries, checked, metadata, on_tensor)
    return MergeResult(out, len(out_entries), len(plan), time.perf_counter() - started, records, warnings)
