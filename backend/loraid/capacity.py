"""How big a LORAID's LoRA is: modules, parameters at a rank, file size per save precision, share of the weights.

Computed from the architecture numbers of the model: per block, self_attn.{q,k,v,o} and cross_attn.{q,k,v,o} are
dim x dim (the text context is projected to dim before cross-attention), ffn.0 is dim -> ffn_dim, ffn.2 is
ffn_dim -> dim, and Wan2.1 I2V's cross_attn.k_img / v_img are added_kv_dim -> dim. A LoRA of rank r on a Linear
in -> out holds lora_down [r, in] and lora_up [out, r]: r·(in + out) parameters, plus one fp32 alpha scalar.

The file size is the safetensors layout: an 8-byte length, the JSON header (every tensor's dtype, shape and byte
offsets, plus the `__metadata__` strings), padded to 8 bytes, then the raw data. The header is computed, not
guessed, for the exact key names the file will have; the metadata is either given or built the way training
writes it. "Fraction" is LoRA parameters over the weight parameters (biases left out) of the modules they adapt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from backend.loraid.allocation import Allocation
from backend.loraid.module_names import all_block_modules, block_targets, owned_modules
from backend.models.names import lora_key_prefix

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
SAFETENSORS_DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
ALPHA_BYTES = 4  # alphas stay fp32 scalars in every precision


@dataclass(frozen=True)
class ModelDims:
    num_blocks: int
    dim: int
    ffn_dim: int
    added_kv_dim: int | None = None  # Wan2.1 I2V image cross-attention input (5120); None when absent

    @property
    def targets(self) -> tuple[str, ...]:
        return block_targets(self.added_kv_dim is not None)

    def linear_shape(self, module_name: str) -> tuple[int, int]:
        """(in_features, out_features) of a default target, e.g. `blocks.3.ffn.0` -> (dim, ffn_dim)."""
        inner = module_name.split(".", 2)[2]
        if inner == "ffn.0":
            return self.dim, self.ffn_dim
        if inner == "ffn.2":
            return self.ffn_dim, self.dim
        if inner in ("cross_attn.k_img", "cross_attn.v_img"):
            if self.added_kv_dim is None:
                raise ValueError(f"{module_name}: this model has no image cross-attention")
            return self.added_kv_dim, self.dim
        if inner.split(".")[0] in ("self_attn", "cross_attn") and inner.split(".")[-1] in ("q", "k", "v", "o"):
            return self.dim, self.dim
        raise ValueError(f"{module_name} is not a default LoRA target of a Wan block")


# Wan models by their architecture numbers (DESIGN §3); `model_facts` reads the shipped configs for the rest.
WAN_DIMS = {
    "wan2.1-t2v-1.3b": ModelDims(30, 1536, 8960),
    "wan2.2-ti2v-5b": ModelDims(30, 3072, 14336),
    "wan2.1-t2v-14b": ModelDims(40, 5120, 13824),
    "wan2.1-i2v-14b": ModelDims(40, 5120, 13824, added_kv_dim=5120),
}


@dataclass(frozen=True)
class Capacity:
    allocation: Allocation
    rank: int
    modules: int
    lora_parameters: int  # per file
    base_parameters: int  # weight parameters of the adapted modules
    model_block_parameters: int  # weight parameters of every default target of the model (one transformer)
    file_bytes: dict[str, int]  # precision -> bytes of one file
    files: int  # 2 for expert "both" (one file per expert), else 1

    @property
    def fraction_of_allocated(self) -> float:
        return self.lora_parameters / self.base_parameters if self.base_parameters else 0.0

    @property
    def fraction_of_model(self) -> float:
        return self.base_parameters / self.model_block_parameters if self.model_block_parameters else 0.0


def lora_parameters(dims: ModelDims, module_names: Sequence[str], rank: int) -> int:
    """Σ r·(in + out) over the modules (alphas not counted)."""
    return sum(rank * sum(dims.linear_shape(name)) for name in module_names)


def base_parameters(dims: ModelDims, module_names: Sequence[str]) -> int:
    total = 0
    for name in module_names:
        fan_in, fan_out = dims.linear_shape(name)
        total += fan_in * fan_out
    return total


def lora_tensor_shapes(dims: ModelDims, module_names: Sequence[str], rank: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the canonical file (`lora_unet_<module>.lora_down.weight` ...)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in module_names:
        fan_in, fan_out = dims.linear_shape(name)
        prefix = lora_key_prefix(name)
        shapes[f"{prefix}.alpha"] = ()
        shapes[f"{prefix}.lora_down.weight"] = (rank, fan_in)
        shapes[f"{prefix}.lora_up.weight"] = (fan_out, rank)
    return shapes


def safetensors_size(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str],
                     metadata: Mapping[str, str] | None) -> int:
    """Bytes of a safetensors file holding these tensors (dtypes: key -> precision name) and metadata."""
    order = sorted(shapes, key=lambda key: (-PRECISION_BYTES[dtypes[key]], key))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key in order:
        count = 1
        for size in shapes[key]:
            count *= size
        end = offset + count * PRECISION_BYTES[dtypes[key]]
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtypes[key]], "shape": list(shapes[key]),
                       "data_offsets": [offset, end]}
        offset = end
    header_bytes = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    padded = header_bytes + (-header_bytes) % 8
    return 8 + padded + offset


def lora_file_size(dims: ModelDims, module_names: Sequence[str], rank: int, precision: str,
                   metadata: Mapping[str, str] | None = None) -> int:
    shapes = lora_tensor_shapes(dims, module_names, rank)
    dtypes = {key: "fp32" if key.endswith(".alpha") else precision for key in shapes}
    return safetensors_size(shapes, dtypes, metadata)


def typical_metadata(allocation: Allocation, rank: int) -> dict[str, str]:
    """The header training writes for this allocation (rank = alpha; dates have a fixed width)."""
    from backend.adapters.metadata import build_metadata
    from backend.loraid.patterns import network_args_entries

    return build_metadata("lora", rank, float(rank), network_args_entries(allocation), {}, allocation.model,
                          loraid=allocation.loraid, allocation=allocation.to_metadata(), step=0, epoch=0)


def capacity(dims: ModelDims, allocation: Allocation, rank: int,
             metadata: Mapping[str, str] | None = None) -> Capacity:
    """The capacity of one allocation at `rank` (metadata defaults to `typical_metadata`)."""
    if rank < 1:
        raise ValueError("rank must be at least 1")
    if allocation.num_blocks != dims.num_blocks:
        raise ValueError(f"allocation for {allocation.num_blocks} blocks on a {dims.num_blocks}-block model")
    names = owned_modules(allocation, dims.targets)
    metadata = typical_metadata(allocation, rank) if metadata is None else metadata
    return Capacity(
        allocation=allocation, rank=rank, modules=len(names),
        lora_parameters=lora_parameters(dims, names, rank), base_parameters=base_parameters(dims, names),
        model_block_parameters=base_parameters(dims, all_block_modules(dims.num_blocks, dims.targets)),
        file_bytes={p: lora_file_size(dims, names, rank, p, metadata) for p in PRECISION_BYTES},
        files=len(allocation.experts))


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
