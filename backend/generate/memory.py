"""Memory options of a generation, each a trade of speed or precision for memory (the costs are in each field's
help)."""
from __future__ import annotations

import math

import torch
from pydantic import ConfigDict

from backend.config.settings import Settings, setting
from backend.errors import UserError, refuse_first
from backend.models.block_swap import check_blocks_to_swap, enable_block_swap
from backend.models.registry import pixels_per_token, task_of_config

FP8_STORAGE = torch.float8_e4m3fn


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MEMORY_PLANS = ("auto", "manual")
WAN_SIZE = (81, 480, 832)  # what a session plans for when the caller names no size: Wan's usual clip


class MemoryOptions(Settings):
    """The memory options of a generation, declared once: the `generate` flags, the Generate tab's memory widgets and
    a job's argv come from these fields (their rules are in `check_memory_options`, one sentence each)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)  # the check words a bad number

    cpu_offload: bool = setting(False, label="CPU offload", group="Memory",
                                help="keep idle models (text encoder, transformer, VAE) on the CPU and move each to "
                                     "the GPU only while it runs; saves GPU memory, costs a transfer per model per "
                                     "prompt (needs a CUDA GPU and accelerate)")
    fp8: bool = setting(False, label="fp8 transformer storage", group="Memory",
                        help="store transformer weights in fp8 (half of bf16), upcast per layer; costs a small loss "
                             "of precision and some speed; applied after LoRAs are merged or hooked")
    blocks_to_swap: int = setting(0, label="Blocks to swap", group="Memory", metavar="N",
                                  help="keep N transformer blocks in CPU memory and copy each to the GPU just before "
                                       "it runs (the next one while the current one computes); saves their weights' "
                                       "GPU memory, costs transfer time per step")
    fp8_scaled: bool = setting(False, label="Scaled fp8 storage", group="Memory",
                               help="store the transformer's block weights in fp8 with one scale per output row (half "
                                    "of bf16, closer to it than plain fp8); a ComfyUI scaled-fp8 file loads straight "
                                    "into it")
    dtype: str = setting("bf16", label="Transformer precision", group="Memory", choices=list(DTYPES),
                         help="the transformer's weights and compute (text encoder: bf16 on a GPU; VAE: fp32)")
    memory: str = setting("auto", label="Memory plan", group="Memory", choices=list(MEMORY_PLANS),
                          help="auto: on a GPU, turn on CPU offload, scaled fp8 and block swap as the model and the "
                               "largest video need (each choice is logged); manual: only the options given")
    memory_limit_gb: float | None = setting(None, label="GPU memory limit (GB)", group="Memory", metavar="GB",
                                            help="plan for, and stay under, this much GPU memory (the whole card, "
                                                 "e.g. 24; empty: all of it)")
    vae_tiling: bool = setting(False, label="VAE tiling", group="Memory",
                               help="decode the video in tiles; saves VAE memory at large sizes, costs decode time "
                                    "and may show faint seams")
    stream_text_encoder: bool = setting(False, label="Stream the text encoder", group="Memory",
                                        help="with CPU offload: move the text encoder's layers to the GPU one at a "
                                             "time (the memory plan turns it on when the encoder does not fit)")

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: dict) -> "MemoryOptions":
        """The options a result's record names (unknown keys ignored; a record from before a field has its default)."""
        known = {name: field.default for name, field in cls.model_fields.items()}
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
    """Refuse what cannot work here before anything is loaded: the first of `memory_problems`."""
    refuse_first(memory_problems(options))


def memory_problems(options: MemoryOptions) -> dict[str, str]:
    """Every memory option that cannot work here, by name, each with one sentence naming it as the form does."""
    named, problems = MemoryOptions.named, {}
    if options.dtype not in DTYPES:
        problems["dtype"] = f"{named('dtype')} `{options.dtype}` is not offered; choose one of: {', '.join(DTYPES)}."
    if options.memory not in MEMORY_PLANS:
        problems["memory"] = f"{named('memory')} `{options.memory}` is not offered; choose auto or manual."
    if options.fp8 and options.fp8_scaled:
        problems["fp8_scaled"] = (f"{named('fp8')} and {named('fp8_scaled')} are two ways of storing the transformer "
                                  f"in fp8; turn on one of them (scaled fp8 is the more precise).")
    if options.memory_limit_gb is not None and not (math.isfinite(options.memory_limit_gb)
                                                    and options.memory_limit_gb > 0):
        problems["memory_limit_gb"] = (f"{named('memory_limit_gb')} = {options.memory_limit_gb} is not a size; give "
                                       f"the GPU memory to stay under in GB, e.g. 24, or leave it empty.")
    if options.cpu_offload:
        try:
            import accelerate  # noqa: F401  (enable_model_cpu_offload needs it)
        except ImportError:
            problems["cpu_offload"] = (f"{named('cpu_offload')} needs the `accelerate` package; install it or turn "
                                       f"the option off.")
        if "cpu_offload" not in problems and not torch.cuda.is_available():
            problems["cpu_offload"] = (f"{named('cpu_offload')} moves idle models between the GPU and the CPU, and "
                                       f"this machine has no CUDA GPU; turn it off (everything already runs on the "
                                       f"CPU).")
    if options.stream_text_encoder and not options.cpu_offload:
        problems["stream_text_encoder"] = (f"{named('stream_text_encoder')} is part of CPU offload; turn "
                                           f"{named('cpu_offload')} on as well.")
    if options.blocks_to_swap < 0:
        problems["blocks_to_swap"] = (f"{named('blocks_to_swap')} = {options.blocks_to_swap} is negative; use 0 (no "
                                      f"swap) or a number of blocks.")
    return problems


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
    return options.model_copy(update=chosen)
