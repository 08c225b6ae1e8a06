"""Memory options of a generation, each a trade of speed or precision for memory (the costs are in `--help`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from backend.errors import UserError
from backend.models.block_swap import check_blocks_to_swap, enable_block_swap

FP8_STORAGE = torch.float8_e4m3fn


@dataclass(frozen=True)
class MemoryOptions:
    cpu_offload: bool = False
    fp8: bool = False
    vae_tiling: bool = False
    blocks_to_swap: int = 0  # per transformer: this many blocks wait in CPU memory (backend/models/block_swap.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MemoryOptions":
        """The options a record names (unknown keys ignored, each value as its field's type)."""
        kinds = {f.name: type(f.default) for f in fields(cls)}
        return cls(**{name: kinds[name](value) for name, value in values.items() if name in kinds})


def check_memory_options(options: MemoryOptions) -> None:
    """Refuse what cannot work here before anything is loaded."""
    if options.cpu_offload:
        try:
            import accelerate  # noqa: F401  (enable_model_cpu_offload needs it)
        except ImportError:
            raise UserError("--cpu_offload needs the `accelerate` package; install it or leave the option out.") from None
        if not torch.cuda.is_available():
            raise UserError("--cpu_offload moves idle models between the GPU and the CPU, and this machine has no "
                            "CUDA GPU; leave the option out (everything already runs on the CPU).")
    if options.blocks_to_swap < 0:
        raise UserError(f"--blocks_to_swap {options.blocks_to_swap} is negative; use 0 (no swap) or a number of "
                        f"blocks.")


def store_in_fp8(transformer: torch.nn.Module) -> None:
    """Keep the transformer's Linear/Conv weights in fp8 and upcast each layer for its forward.

    Call it after LoRAs are merged or hooked: merged ΔW is then stored in fp8 with the weight, and hooked adapters
    are not submodules of the transformer, so their own weights stay in full precision.
    """
    compute = next(transformer.parameters()).dtype
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=compute)


def apply_memory_options(pipeline, transformers: dict, options: MemoryOptions, label: str = "model") -> None:
    if options.fp8:
        for transformer in transformers.values():
            store_in_fp8(transformer)
    for transformer in transformers.values():  # before any move: the swapped blocks never leave CPU memory
        check_blocks_to_swap(options.blocks_to_swap, len(transformer.blocks), label)
        if options.blocks_to_swap:
            transformer.requires_grad_(False)  # generation trains nothing; swap copies frozen weights only
            enable_block_swap(transformer, options.blocks_to_swap, adapter_device())
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload()
    elif torch.cuda.is_available():
        pipeline.to("cuda")


def adapter_device() -> torch.device:
    """Where hooked adapters live: on the GPU whenever there is one (with CPU offload, each transformer runs there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
