"""Block swap benchmark: one LoRA training step of a Wan-shaped transformer whose first N blocks live in CPU memory.

    python3 bench/bench_block_swap.py --model wan2.1-t2v-14b --blocks_to_swap 30 --memory_cap_gb 24
    python3 bench/bench_block_swap.py --model wan2.1-t2v-14b --blocks_to_swap 40 --impl diffusers --memory_cap_gb 24
    python3 bench/bench_block_swap.py --model wan2.1-t2v-1.3b --blocks_to_swap 0          # the resident baseline
    python3 bench/bench_block_swap.py --model wan2.1-t2v-1.3b --layers 2 --frames 5 --height 64 --width 64 \\
        --blocks_to_swap 2 --offload_activations --device cpu --steps 2 --warmup 1    # the CPU smoke run

The model has random bf16 weights (built on the CPU, so a 14B fits under any cap), a rank-32 LoRA on every block
linear (our adapter engine, forward hooks), gradient checkpointing, bf16 autocast, SDPA, batch 1, AdamW on the LoRA;
the latents are 81x480x832 -> 21x60x104 (32,760 tokens) and 512 text tokens unless told otherwise. `--impl ours` is
backend/models/block_swap.py (the first N blocks swapped, the next block copied on a side stream while the current
one computes); `--impl diffusers` is diffusers' `enable_group_offload` (block level, one block per group,
use_stream=True), which offloads every block and the rest of the model, so it takes N = the block count.
`--offload_activations` keeps the checkpointed block inputs in pinned CPU memory (backend/models/activation_offload.py),
`--fp8` stores the base weights in float8_e4m3fn (diffusers layerwise casting), `--fp8_scaled` the block Linears
as fp8 with a per-row scale (backend/models/fp8_scaled.py), `--compile` compiles the blocks
(compile_repeated_blocks, after the swap's hooks are on). `--memory_cap_gb` calls
torch.cuda.set_per_process_memory_fraction so that the run behaves as on a smaller card.

`--check` runs one backward of the resident model and one with the offloads (same weights, inputs and fp8 setting)
and prints whether the loss and LoRA gradients agree (relative 1e-3): the proof that the CUDA stream path waits for
its copies. Otherwise prints one JSON line: median s/it over `--steps` timed steps after `--warmup`, peak allocated
and reserved GPU memory (GiB), the step losses (finite, or the run is reported as failed) and the settings.
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
from backend.models.activation_offload import offload_activations  # noqa: E402
from backend.models.block_swap import enable_block_swap  # noqa: E402

CONFIGS = ROOT / "backend" / "models" / "configs"
TEXT_TOKENS = 512


def build_model(name: str, layers: int | None):
    """A Wan transformer with random bf16 weights in CPU memory (uniform ±0.02: cheap to draw, no NaN)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    path = CONFIGS / name / "config.json"
    if not path.exists():
        path = CONFIGS / name / "low_noise" / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if layers:
        config["num_layers"] = layers
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: a 14B never exists in fp32 (56 GB)
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    torch.set_default_dtype(torch.float32)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.uniform_(-0.02, 0.02, generator=generator)
    c = model.config  # the rotary tables are computed, not random
    model.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len)
    return model.requires_grad_(False), config


def prepare(args, device: torch.device, swapped: bool):
    """The model with its LoRA on `device`, fp8 as asked, and (when `swapped`) block swap / activation offload."""
    cuda = device.type == "cuda"
    model, config = build_model(args.model, args.layers)
    model.enable_gradient_checkpointing()
    torch.manual_seed(0)
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(args.rank, args.rank / 2, []))
    with torch.no_grad():
        for param in network.trainable_params():
            if param.abs().sum() == 0:
                param.normal_(std=1e-3)
    network.inject()
    if args.fp8_scaled:
        from backend.models.fp8_scaled import store_scaled_fp8

        store_scaled_fp8(model, device if cuda else None)
    if args.fp8:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    blocks_to_swap = args.blocks_to_swap if swapped else 0
    enable_block_swap(model, blocks_to_swap, device, impl=args.impl)
    if args.impl == "ours" or not blocks_to_swap:
        model.to(device)  # the swapped blocks stay in CPU memory
    if args.offload_activations and swapped:
        offload_activations(model, device)
    if args.compile:
        model.compile_repeated_blocks()
    network.to(device)
    model.train()
    network.train()
    return model, network, config


def inputs(config: dict, args, device: torch.device):
    lat_f, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, config["in_channels"], lat_f, lat_h, lat_w, generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    text = torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=generator).to(device)
    return x0, noise, text, generator, lat_f * (lat_h // 2) * (lat_w // 2)


def loss_of(model, x0, noise, text, t, device) -> torch.Tensor:
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    with torch.autocast(device.type, dtype=torch.bfloat16):
        v = model(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=text, return_dict=False)[0]
    return ((v.float() - (noise - x0)) ** 2).mean()


def check(args, device: torch.device) -> None:
    """One backward without and with the offloads, from the same weights and inputs: the CUDA stream path must give
    the resident model's loss and LoRA gradients (a missed wait would read half-copied weights)."""
    results = []
    for swapped in (False, True):
        model, network, config = prepare(args, device, swapped)
        x0, noise, text, _, _ = inputs(config, args, device)
        loss = loss_of(model, x0, noise, text, torch.full((1,), 0.6, device=device), device)
        loss.backward()
        results.append((loss.item(), [p.grad.float().cpu() for p in network.trainable_params()]))
        del model, network, loss
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (loss_a, grads_a), (loss_b, grads_b) = results
    scale = max(g.abs().max().item() for g in grads_a)
    worst = max((a - b).abs().max().item() for a, b in zip(grads_a, grads_b)) / max(scale, 1e-30)
    print(json.dumps({"check": "passed" if worst <= 1e-3 and abs(loss_a - loss_b) <= 1e-4 * abs(loss_a) else "FAILED",
                      "loss_resident": loss_a, "loss_swapped": loss_b, "max_grad_difference_relative": worst,
                      "blocks_to_swap": args.blocks_to_swap, "offload_activations": args.offload_activations,
                      "fp8": args.fp8, "fp8_scaled": args.fp8_scaled, "layers": config["num_layers"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b", help="a folder of backend/models/configs, e.g. "
                        "wan2.1-t2v-14b or wan2.1-t2v-1.3b")
    parser.add_argument("--blocks_to_swap", type=int, default=0)
    parser.add_argument("--impl", choices=["ours", "diffusers"], default="ours")
    parser.add_argument("--offload_activations", action="store_true")
    parser.add_argument("--fp8", action="store_true", help="fp8 storage of the base weights (layerwise casting)")
    parser.add_argument("--fp8_scaled", action="store_true", help="scaled fp8 block Linears (fp8 + per-row scale)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks (compile_repeated_blocks)")
    parser.add_argument("--memory_cap_gb", type=float, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks (smoke runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--check", action="store_true", help="instead of timing: one backward without and with the "
                        "offloads; prints whether loss and LoRA gradients agree")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.memory_cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gb * 2**30 / total), device)

    if args.check:
        check(args, device)
        return
    t0 = time.perf_counter()
    model, network, config = prepare(args, device, swapped=True)
    optimizer = torch.optim.AdamW(network.trainable_params(), lr=1e-4)
    build_s = time.perf_counter() - t0

    x0, noise, text, generator, tokens = inputs(config, args, device)

    def step() -> float:
        loss = loss_of(model, x0, noise, text, torch.rand(1, generator=generator).to(device), device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync per step, so each timing covers the whole step

    result = {"model": args.model, "layers": config["num_layers"], "impl": args.impl,
              "blocks_to_swap": args.blocks_to_swap, "offload_activations": args.offload_activations,
              "fp8": args.fp8, "fp8_scaled": args.fp8_scaled,
              "compile": args.compile, "memory_cap_gb": args.memory_cap_gb, "tokens": tokens,
              "rank": args.rank,
              "device": torch.cuda.get_device_name(device) if cuda else "cpu", "build_s": round(build_s, 1)}
    losses, times = [], []
    try:
        for index in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize(device)
                if index == args.warmup:
                    torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            losses.append(step())
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    except Exception as exc:  # the benchmark reports what failed instead of a traceback only
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if times:
        result["s_per_it"] = round(statistics.median(times), 3)
    if cuda:
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    result["losses"] = [round(loss, 5) for loss in losses]
    if losses and not all(torch.isfinite(torch.tensor(losses))):
        result["error"] = result.get("error") or "non-finite loss"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
