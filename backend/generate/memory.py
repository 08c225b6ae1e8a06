"""Memory options of a generation, each a trade of speed or precision for memory (the costs are in `--help`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from backend.errors import UserError

FP8_STORAGE = torch.float8_e4m3fn


@dataclass(frozen=True)
class MemoryOptions:
    cpu_offload: bool = False
    fp8: bool = False
    vae_tiling: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


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


def store_in_fp8(transformer: torch.nn.Module) -> None:
    """Keep the transformer's Linear/Conv weights in fp8 and upcast each layer for its forward.

    Call it after LoRAs are merged or hooked: merged ΔW is then stored in fp8 with the weight, and hooked adapters
    are not submodules of the transformer, so their own weights stay in full precision.
    """
    compute = next(transformer.parameters()).dtype
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=compute)


def apply_memory_options(pipeline, transformers: dict, options: MemoryOptions) -> None:
    if options.fp8:
        for transformer in transformers.values():
            store_in_fp8(transformer)
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload()
    elif torch.cuda.is_available():
        pipeline.to("cuda")


def adapter_device() -> torch.device:
    """Where hooked adapters live: on the GPU whenever there is one (with CPU offload, each transformer runs there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
