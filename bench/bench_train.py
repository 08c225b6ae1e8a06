"""Training-step benchmark for the lent GPU machine: a Wan-shaped transformer with random weights, a rank-32 LoRA on
all block linears (our adapter engine), random latents of 81 frames at 480x832 (21x60x104 latents, 32,760 tokens),
batch 1, bf16 autocast, gradient checkpointing, PyTorch SDPA attention, AdamW on the LoRA parameters.

    python bench/bench_train.py --model wan2.1-t2v-1.3b --steps 5
    python bench/bench_train.py --model wan2.1-t2v-14b --steps 3

Reports s/it, tokens/s, peak VRAM and model-FLOPs utilisation. FLOPs are counted analytically per step:
matmuls of every block Linear (2·m·n·k) on the video tokens (text-side k/v projections on 512 text tokens), the
self-attention score and value products (2·2·L²·d) and the cross-attention ones (2·2·L·512·d). A LoRA step's useful
work is forward + backward-to-activations: linears 2x forward (the frozen base weights get no weight gradient),
attention 3x forward (backward computes dQ, dK, dV). Recomputation by gradient checkpointing is not counted as
useful (it is in the 'hardware' figure). Peak: 989 TFLOP/s dense bf16 (H100 SXM), 989 likewise for H200.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.train.timesteps import add_noise, flow_target

CONFIGS = Path(__file__).resolve().parents[1] / "backend" / "models" / "configs"
PEAK_TFLOPS = 989.0


def forward_flops(cfg: dict, tokens: int, text_tokens: int) -> tuple[float, float]:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f = cfg["ffn_dim"]
    linear = 2 * tokens * d * d * 4 + 2 * tokens * d * d * 2 + 2 * text_tokens * d * d * 2 + 2 * tokens * d * f * 2
    attention = 4 * tokens * tokens * d + 4 * tokens * text_tokens * d
    return linear * cfg["num_layers"], attention * cfg["num_layers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-1.3b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from diffusers import WanTransformer3DModel

    config_path = CONFIGS / args.model / "config.json"
    if not config_path.exists():
        config_path = CONFIGS / args.model / "low_noise" / "config.json"
    cfg = json.loads(config_path.read_text())
    device = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = WanTransformer3DModel.from_config(cfg)
    torch.set_default_dtype(torch.float32)
    model.requires_grad_(False)
    model.enable_gradient_checkpointing()
    model.train()
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(args.rank, args.rank / 2, []))
    network.to(device)
    with torch.no_grad():
        for p in network.trainable_params():
            if p.abs().sum() == 0:
                p.normal_(std=1e-3)
    network.inject()
    network.train()
    optimizer = torch.optim.AdamW(network.trainable_params(), lr=1e-4)
    build_s = time.perf_counter() - t0

    lat_f, lat_h, lat_w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    tokens = lat_f * (lat_h // 2) * (lat_w // 2)
    x0 = torch.randn(1, cfg["in_channels"], lat_f, lat_h, lat_w, device=device)
    text = torch.randn(1, 512, cfg["text_dim"], device=device)

    def step() -> float:
        noise = torch.randn_like(x0)
        t = torch.rand(1, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(hidden_states=add_noise(x0, noise, t), timestep=t * 1000, encoder_hidden_states=text,
                         return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), flow_target(x0, noise))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    torch.cuda.synchronize()
    s_per_it = (time.perf_counter() - start) / args.steps

    linear, attention = forward_flops(cfg, tokens, 512)
    useful = 2 * linear + 3 * attention
    hardware = useful + linear + attention
    result = {
        "model": args.model, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "tokens": tokens, "rank": args.rank, "lora_params": sum(p.numel() for p in network.trainable_params()),
        "s_per_it": round(s_per_it, 3), "tokens_per_s": round(tokens / s_per_it),
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "useful_tflop_per_step": round(useful / 1e12, 1),
        "mfu": round(useful / s_per_it / (PEAK_TFLOPS * 1e12), 3),
        "hfu_with_recompute": round(hardware / s_per_it / (PEAK_TFLOPS * 1e12), 3),
        "build_s": round(build_s, 1), "losses_finite": all(map(lambda v: v == v, losses)),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
