"""One denoising step of a Wan-shaped transformer with random bf16 weights: the base model, the model with 8
block-disjoint LORAIDs merged into its weights, and the same 8 LORAIDs hooked (live adapters, run-time multipliers).

    python bench/bench_generate_step.py --model wan2.1-t2v-14b                      # 81x480x832 on a GPU
    python bench/bench_generate_step.py --model wan2.1-t2v-1.3b --layers 2 --frames 5 --height 64 --width 64 --device cpu

A step is one conditional transformer forward (classifier-free guidance would run it twice) on latents of
`frames` x `height` x `width` (81x480x832 -> 21x60x104 latents, 32,760 tokens) with 512 text tokens, under
torch.no_grad in bf16. Each LORAID is a rank-32 LoRA on the 10 linears of its own slice of blocks (blocks_per_loraid
= layers / 8), made by our adapter engine with random factors; "merged" folds all 8 into the weights once (the merge
time is reported), "hooked" injects them as adapters. Reports the median seconds of `--steps` timed steps after
`--warmup`, and peak memory. Also checks that merged and hooked give the same output (relative difference).
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

from backend.adapters.network import AdapterNetwork  # noqa: E402
from backend.adapters.network_config import NetworkConfig  # noqa: E402
from backend.loraid.allocation import allocate  # noqa: E402
from backend.loraid.patterns import network_args_entries  # noqa: E402

CONFIGS = ROOT / "backend" / "models" / "configs"
LORAIDS = 8


def build_model(name: str, layers: int | None, device: torch.device):
    from diffusers import WanTransformer3DModel

    path = CONFIGS / name / "config.json"
    if not path.exists():
        path = CONFIGS / name / "low_noise" / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if layers:
        config["num_layers"] = layers
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = WanTransformer3DModel(**config)
    torch.set_default_dtype(torch.float32)
    return model.eval().requires_grad_(False), config


def loraid_networks(model, num_blocks: int, rank: int) -> list[AdapterNetwork]:
    per_id = max(1, num_blocks // LORAIDS)
    networks = []
    for loraid in range(1, LORAIDS + 1):
        args = network_args_entries(allocate(loraid, num_blocks, per_id))
        network = AdapterNetwork.create(model, NetworkConfig.from_network_args(rank, rank / 2, args), f"id{loraid}")
        network.to(next(model.parameters()).device)
        with torch.no_grad():
            for param in network.trainable_params():
                param.normal_(std=0.02)
        networks.append(network)
    return networks


def timed(device: torch.device, forward, steps: int, warmup: int) -> tuple[float, torch.Tensor]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = None
    for _ in range(warmup):
        out = forward()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = forward()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b")
    parser.add_argument("--layers", type=int, default=None, help="keep only this many blocks (smoke runs)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    model, config = build_model(args.model, args.layers, device)
    lat = (1, config["in_channels"], (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(lat, generator=generator, device=device, dtype=torch.bfloat16)
    text = torch.randn(1, 512, config["text_dim"], generator=generator, device=device, dtype=torch.bfloat16)
    timestep = torch.tensor([500.0], device=device)
    tokens = lat[2] * (lat[3] // 2) * (lat[4] // 2)

    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]

    def peak_gib() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None

    def reset_peak() -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    reset_peak()
    base_s, _ = timed(device, forward, args.steps, args.warmup)
    base_peak = peak_gib()

    networks = loraid_networks(model, config["num_layers"], args.rank)
    for network in networks:
        network.inject()
    reset_peak()
    hooked_s, hooked_out = timed(device, forward, args.steps, args.warmup)
    hooked_peak = peak_gib()

    start = time.perf_counter()
    for network in networks:
        network.merge_into_model()
    if device.type == "cuda":
        torch.cuda.synchronize()
    merge_s = time.perf_counter() - start
    reset_peak()
    merged_s, merged_out = timed(device, forward, args.steps, args.warmup)
    merged_peak = peak_gib()
    difference = ((merged_out.float() - hooked_out.float()).norm() / hooked_out.float().norm()).item()

    result = {
        "model": args.model, "layers": config["num_layers"], "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
        "tokens": tokens, "loraids": LORAIDS, "rank": args.rank,
        "adapter_modules": sum(len(n.adapters) for n in networks),
        "base_s": round(base_s, 4), "merged_s": round(merged_s, 4), "hooked_s": round(hooked_s, 4),
        "merged_vs_base": round(merged_s / base_s, 3), "hooked_vs_base": round(hooked_s / base_s, 3),
        "merge_once_s": round(merge_s, 3), "peak_gib": {"base": base_peak, "hooked": hooked_peak,
                                                        "merged": merged_peak},
        "merged_vs_hooked_relative_difference": difference,
    }
    print(json.dumps(result, indent=1))
    print(f"| {args.model} | {tokens:,} | {base_s:.3f} | {merged_s:.3f} | {hooked_s:.3f} "
          f"({hooked_s / base_s:.2f}x) | {merge_s:.2f} | {base_peak} / {merged_peak} / {hooked_peak} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
