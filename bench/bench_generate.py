"""One-denoising-step benchmark of generation with LoRAs, for the lent GPU machine: a Wan-shaped transformer with
random weights in bf16, at 81 frames x 480 x 832 (latents 21 x 60 x 104: 32,760 video tokens) and 512 text tokens.

A step here is ONE transformer forward, the conditional pass only (with classifier-free guidance a sampler step
costs two of them; the scheduler's own arithmetic is negligible beside it). Variants, in this order on one model:

    base          the model as built
    hooked        8 block-disjoint LORAIDs (rank 32, 5 blocks each of 40) as live adapters, exactly as
                  `python -m backend generate --hooked` applies them (`backend.generate.loras.hook_into`: one
                  AdapterNetwork per LoRA, fp32 adapters, multipliers changeable between steps)
    hooked-bf16   the same adapters cast to the model's dtype (what a bf16 adapter path would cost)
    merged        the same 8 merged into the weights by the generate engine's fast path
                  (`backend.generate.loras.merge_into`, from LoRA tensors on --lora_device as a loaded file has them)

Reports per variant the median seconds per step over --steps timed steps after --warmup untimed ones, and the peak
VRAM during those steps; for merged also the merge's seconds. It prints markdown table rows and writes everything as
JSON to --out. As a check it records how far the merged output is from the hooked one, relative to what the LoRAs
change (bf16 rounding of W + dW makes it non-zero).

    python bench/bench_generate.py --model wan2.1-t2v-14b --device cuda --out bench-generate-14b.json
    python bench/bench_generate.py --tiny --out /tmp/bench-generate-tiny.json      # CPU smoke run, demo shapes
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.adapters.formats import lora_from_state_dict  # noqa: E402
from backend.adapters.metadata import build_metadata  # noqa: E402
from backend.generate.loras import PickedLora, hook_into, merge_into  # noqa: E402
from backend.loraid.allocation import allocate  # noqa: E402
from backend.loraid.patterns import network_args_entries  # noqa: E402
from backend.models.names import lora_key_prefix, wan_to_diffusers  # noqa: E402
from backend.models.registry import get_model_kind  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TINY = dict(model="demo-t2v", frames=5, height=32, width=32, text_tokens=16, blocks_per_loraid=1, steps=2, warmup=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b", help="model type whose shipped config gives the shapes")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each variant's timing")
    parser.add_argument("--frames", type=int, default=81, help="video frames (4n+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--text_tokens", type=int, default=512, help="text encoder tokens (Wan pads to 512)")
    parser.add_argument("--loraids", type=int, default=8, help="how many block-disjoint LORAIDs")
    parser.add_argument("--blocks_per_loraid", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="model weights and activations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lora_device", default="cpu",
                        help="where the LoRA tensors lie before merging (cpu: as a loaded file has them)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: demo-t2v shapes, 5x32x32, 16 text tokens, 1 block per LORAID, 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        given = {a.split("=")[0].lstrip("-") for a in (argv if argv is not None else sys.argv[1:])}
        for name, value in TINY.items():
            if name not in given:
                setattr(args, name, value)
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        parser.error("--frames must be 4n+1 and --height / --width multiples of 16")
    return args


def build_model(kind_name: str, dtype: torch.dtype, device: torch.device):
    """Random weights in the shipped config's shapes, created directly on the device in `dtype`."""
    from diffusers import WanTransformer3DModel

    config = get_model_kind(kind_name).config("low" if get_model_kind(kind_name).has_experts else None)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = WanTransformer3DModel.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False), config


def build_loraids(model, kind_name: str, num_blocks: int, args) -> list[PickedLora]:
    """`args.loraids` LoRAs on consecutive disjoint slices, every target Linear of their blocks, in the canonical
    layout a loaded file has (bf16 factors, fp32 alpha), with factors sized so that dW is a few % of W."""
    kind = get_model_kind(kind_name)
    generator = torch.Generator().manual_seed(1)
    picked = []
    for loraid in range(1, args.loraids + 1):
        allocation = allocate(loraid, num_blocks, args.blocks_per_loraid, model=kind_name)
        tensors = {}
        for block in allocation.blocks:
            for linear in kind.lora_targets:
                name = f"blocks.{block}.{linear}"
                fan_out, fan_in = model.get_submodule(wan_to_diffusers(name)).weight.shape
                prefix = lora_key_prefix(name)
                down = torch.randn(args.rank, fan_in, generator=generator) / fan_in ** 0.5
                up = torch.randn(fan_out, args.rank, generator=generator) * 0.02
                tensors[f"{prefix}.lora_down.weight"] = down.to(torch.bfloat16).to(args.lora_device)
                tensors[f"{prefix}.lora_up.weight"] = up.to(torch.bfloat16).to(args.lora_device)
                tensors[f"{prefix}.alpha"] = torch.tensor(float(args.rank) / 2)
        metadata = build_metadata("lora", args.rank, args.rank / 2, network_args_entries(allocation), {}, kind_name,
                                  loraid=loraid, allocation=allocation.to_metadata())
        lora_file = lora_from_state_dict(tensors, metadata)
        picked.append(PickedLora(Path(f"bench-loraid{loraid}.safetensors"), 1.0, loraid, lora_file, sha256=""))
    return picked


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, inputs: dict, device: torch.device, steps: int, warmup: int) -> dict:
    """Median seconds of one forward over `steps` after `warmup`, the peak VRAM of the timed steps, the last output."""
    with torch.no_grad():
        for _ in range(warmup):
            model(**inputs, return_dict=False)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            output = model(**inputs, return_dict=False)[0]
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"s_per_step": statistics.median(seconds), "all_s": [round(s, 4) for s in seconds],
            "peak_vram_gib": round(peak, 2) if peak is not None else None, "output": output.float().cpu()}


def relative_gap(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> float:
    """‖a − b‖ / ‖b − base‖: how far `a` is from `b`, relative to what the LoRAs change."""
    return float((a - b).norm() / (b - base).norm().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    started = time.perf_counter()
    model, config = build_model(args.model, dtype, device)
    num_blocks = int(config["num_layers"])
    loras = build_loraids(model, args.model, num_blocks, args)
    build_s = time.perf_counter() - started

    latent_frames, latent_h, latent_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    patch = config["patch_size"]
    tokens = latent_frames // patch[0] * (latent_h // patch[1]) * (latent_w // patch[2])
    generator = torch.Generator().manual_seed(2)
    inputs = {
        "hidden_states": torch.randn(1, config["in_channels"], latent_frames, latent_h, latent_w,
                                     generator=generator).to(device, dtype),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": torch.randn(1, args.text_tokens, config["text_dim"],
                                             generator=generator).to(device, dtype),
    }
    timed = {"base": time_steps(model, inputs, device, args.steps, args.warmup)}

    networks = hook_into(model, loras)
    timed["hooked"] = time_steps(model, inputs, device, args.steps, args.warmup)
    if dtype != torch.float32:  # the engine's adapters are fp32; also time them in the model's dtype
        for network in networks:
            network.to(dtype)
        timed[f"hooked-{args.dtype}"] = time_steps(model, inputs, device, args.steps, args.warmup)
    for network in networks:
        network.remove()
    del networks
    if device.type == "cuda":
        torch.cuda.empty_cache()

    synchronize(device)
    start = time.perf_counter()
    merge_into(model, loras)
    synchronize(device)
    merge_s = time.perf_counter() - start
    timed["merged"] = time_steps(model, inputs, device, args.steps, args.warmup)

    outputs = {name: result.pop("output") for name, result in timed.items()}
    lora_params = sum(t.numel() for lora in loras for k, t in lora.file.tensors.items() if not k.endswith(".alpha"))
    result = {
        "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "torch": torch.__version__, "frames": args.frames, "height": args.height,
        "width": args.width, "latents": [latent_frames, latent_h, latent_w], "video_tokens": tokens,
        "text_tokens": args.text_tokens, "step": "one transformer forward, conditional pass only",
        "loraids": args.loraids, "blocks_per_loraid": args.blocks_per_loraid, "rank": args.rank,
        "lora_modules": sum(len(lora.file.modules) for lora in loras), "lora_params": lora_params,
        "lora_device": args.lora_device, "steps": args.steps, "warmup": args.warmup, "build_s": round(build_s, 1),
        "merge_s": round(merge_s, 3), "variants": {name: {**r, "s_per_step": round(r["s_per_step"], 4)}
                                                   for name, r in timed.items()},
        "merged_vs_hooked_gap": round(relative_gap(outputs["merged"], outputs["hooked"], outputs["base"]), 4),
        "lora_effect": round(float((outputs["hooked"] - outputs["base"]).norm() / outputs["base"].norm()), 4),
    }
    print("| model | variant | s/step (median) | vs base | peak VRAM GiB | merge s |")
    print("|---|---|---|---|---|---|")
    base = result["variants"]["base"]["s_per_step"]
    for name, row in result["variants"].items():
        vram = "-" if row["peak_vram_gib"] is None else f"{row['peak_vram_gib']:.2f}"
        merge = f"{merge_s:.2f}" if name == "merged" else ""
        print(f"| {args.model} ({tokens} tokens, {args.loraids} LORAIDs r{args.rank}) | {name} | "
              f"{row['s_per_step']:.3f} | {row['s_per_step'] / base:.2f}x | {vram} | {merge} |")
    print(f"merged vs hooked output gap: {result['merged_vs_hooked_gap']:.4f} of the LoRAs' change "
          f"(the LoRAs change the output by {result['lora_effect']:.2%})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
