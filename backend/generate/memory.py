"""Memory options of a generation, each a trade of speed or precision for memory (the costs are in `--help`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from backend.errors import UserError
from backend.models.block_swap import check_blocks_to_swap, enable_block_swap
from backend.models.registry import pixels_per_token, task_of_config

FP8_STORAGE = torch.float8_e4m3fn


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
WAN_SIZE = (81, 480, 832)  # what a session plans for when the caller names no size: Wan's usual clip


@dataclass(frozen=True)
class MemoryOptions:
    cpu_offload: bool = False
    fp8: bool = False
    vae_tiling: bool = False
    blocks_to_swap: int = 0  # per transformer: this many blocks wait in CPU memory (backend/models/block_swap.py)
    fp8_scaled: bool = False  # block Linears in fp8 + per-row scales (backend/models/fp8_scaled.py)
    dtype: str = "bf16"  # the transformer's weights and compute: bf16 | fp32
    memory: str = "auto"  # auto: the memory plan picks offload / fp8_scaled / block swap on a GPU; manual: as set
    memory_limit_gb: float | None = None  # plan for, and stay under, this much of the GPU (the whole card)
    stream_text_encoder: bool = False  # with cpu_offload: the text encoder's layers go to the GPU one at a time

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MemoryOptions":
        """The options a result's record names (unknown keys ignored; a record from before a field has its default)."""
        known = {f.name: f.default for f in fields(cls)}
        out = {}
        for name, value in values.items():
            if name not in known:
                continue
            default = known[name]
            if value is None or default is None:
                out[name] = None if value is None else float(value)
            else:
                out[name] = type(default)(value)
        return cls(**out)


def check_memory_options(options: MemoryOptions) -> None:
    """Refuse what cannot work here before anything is loaded."""
    if options.dtype not in DTYPES:
        raise UserError(f"--dtype {options.dtype} is not offered; choose one of: {', '.join(DTYPES)}.")
    if options.memory not in ("auto", "manual"):
        raise UserError(f"--memory {options.memory} is not offered; choose auto or manual.")
    if options.fp8 and options.fp8_scaled:
        raise UserError("--fp8 and --fp8_scaled are two ways of storing the transformer in fp8; pass one of them "
                        "(--fp8_scaled is the more precise).")
    if options.memory_limit_gb is not None and options.memory_limit_gb <= 0:
        raise UserError(f"--memory_limit_gb {options.memory_limit_gb} is not a size; give the GPU memory to stay "
                        f"under in GB, e.g. 24.")
    if options.cpu_offload:
        try:
            import accelerate  # noqa: F401  (enable_model_cpu_offload needs it)
        except ImportError:
            raise UserError("--cpu_offload needs the `accelerate` package; install it or leave the option out.") from None
        if not torch.cuda.is_available():
            raise UserError("--cpu_offload moves idle models between the GPU and the CPU, and this machine has no "
                            "CUDA GPU; leave the option out (everything already runs on the CPU).")
    if options.stream_text_encoder and not options.cpu_offload:
        raise UserError("Streaming the text encoder is part of CPU offload; turn --cpu_offload on as well.")
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
        from backend.generate.offload import offload_idle_parts

        offload_idle_parts(pipeline, torch.device("cuda"), options.stream_text_encoder)
    elif torch.cuda.is_available():
        pipeline.to("cuda")


def adapter_device() -> torch.device:
    """Where hooked adapters live: on the GPU whenever there is one (with CPU offload, each transformer runs there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def folder_bytes(folder, dtype_bytes: int) -> int:
    """The weights of a transformers / diffusers folder at `dtype_bytes` per value, from the safetensors headers."""
    from pathlib import Path

    from backend.models.checkpoint import read_safetensors_header

    values = 0
    for file in Path(folder).glob("*.safetensors"):
        header, _ = read_safetensors_header(file)
        for entry in header.values():
            count = 1
            for size in entry["shape"]:
                count *= int(size)
            values += count
    return values * dtype_bytes


def plan_memory(options: MemoryOptions, config: dict, experts: int, size: tuple[int, int, int],
                text_encoder_bytes: int, vae_bytes: int, log=print) -> MemoryOptions:
    """memory=auto on a GPU: the options with the plan's storage, CPU offload and block swap, one log line per
    decision; the user's own options otherwise. memory_limit_gb caps PyTorch's allocator either way."""
    from dataclasses import replace

    from backend.train.memory_plan import (GenerateRun, budget_bytes, describe_choice, gib,
                                           plan_generation, shape_from_config, tokens_for)

    if not torch.cuda.is_available():
        if options.memory == "auto":
            log("memory=auto: generating on the CPU, nothing to plan")
        return options
    from backend.train.memory import limit_memory

    device = torch.device("cuda")
    limit_memory(options.memory_limit_gb, device)
    if options.memory == "manual":
        return options
    frames, height, width = size
    spatial = pixels_per_token(task_of_config(config))
    shape = shape_from_config("transformer", config)
    run = GenerateRun(shape, tokens_for(frames, height, width, spatial), height, width, experts,
                      text_encoder_bytes, vae_bytes)
    budget = budget_bytes(torch.cuda.mem_get_info(device)[0], options.memory_limit_gb)
    plan = plan_generation(run, budget)
    for reason in plan.reasons:
        log(f"memory=auto: {reason}")
    if not plan.fits:
        raise UserError(f"This model at {frames}x{height}x{width} needs about {gib(plan.estimate)} of GPU memory even "
                        f"with {describe_choice(plan.choice)}, and {gib(budget)} is available; generate fewer frames "
                        f"or a smaller size, or use a larger GPU.")
    log(f"memory=auto: {describe_choice(plan.choice)}; estimate {gib(plan.estimate)} of {gib(budget)}")
    chosen = {"cpu_offload": plan.choice.cpu_offload or options.cpu_offload,
              "stream_text_encoder": plan.choice.stream_text_encoder or options.stream_text_encoder,
              "fp8_scaled": plan.choice.storage == "fp8_scaled" or options.fp8_scaled,
              "fp8": options.fp8 and plan.choice.storage != "fp8_scaled"}
    chosen["blocks_to_swap"] = max(plan.choice.blocks_to_swap, options.blocks_to_swap)
    return replace(options, **chosen)
