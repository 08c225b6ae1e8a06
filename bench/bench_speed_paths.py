"""Adapter and attention speed on a Wan-shaped block stack: one training step (forward + backward) with LoRA, DoRA,
LoHa and LoKr, and the attention backends on the same shape.

    python bench/bench_speed_paths.py                                   # 14B blocks at 81x480x832, on a GPU
    python bench/bench_speed_paths.py --model wan2.1-t2v-1.3b --layers 1 --frames 1 --height 32 --width 32 \
        --text_len 16 --device cpu --steps 1 --warmup 0                  # the CPU smoke run

Part 1, adapters: `--layers` transformer blocks of `--model` (random bf16 weights) with a rank-`--rank` adapter on
every block Linear (our engine, `algo=...`), latents of `frames` x `height` x `width` (81x480x832 -> 32,760 tokens)
and `--text_len` text tokens. A step is forward + backward of a mean-square loss under bf16 autocast, with gradient
checkpointing when `--checkpointing` (default on, like the trainer's 14B runs). Reported: the median seconds of
`--steps` timed steps after `--warmup`, the ratio to LoRA (targets: DoRA <= 1.15, LoHa / LoKr <= 1.25) and the peak
memory. `loha-plain` / `lokr-plain` force the path that builds ΔW and runs a second full-size product (the path
before the factored forward), so the gain is measured on the same card.

Part 2, attention: diffusers' `dispatch_attention_fn` on q, k, v of the model's heads x head_dim over the same
token count (self-attention), forward + backward (sage: forward only, it has no backward), for every backend whose
package is installed: SDPA as PyTorch dispatches it, SDPA restricted to cuDNN / flash / memory-efficient,
FlashAttention 2 (`flash`), FlashAttention 3 (`_flash_3`), SageAttention (`sage`). The table marks the fastest
training candidate and what the trainer's `attn_mode=auto` rule (backend/train/memory.py) picks on this card; if
they differ, reorder `AUTO_ATTENTION` there.
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

CONFIGS = ROOT / "backend" / "models" / "configs"
ALGOS = {"lora": ["algo=lora"], "dora": ["algo=dora"], "loha": ["algo=loha"], "lokr": ["algo=lokr", "factor=-1"],
         "loha-plain": ["algo=loha"], "lokr-plain": ["algo=lokr", "factor=-1"]}
ATTENTION = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage")
NO_BACKWARD = {"sage"}


def model_config(name: str) -> dict:
    path = CONFIGS / name / "config.json"
    if not path.exists():
        path = CONFIGS / name / "low_noise" / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_model(name: str, layers: int, device: torch.device, checkpointing: bool):
    from diffusers import WanTransformer3DModel

    config = model_config(name) | {"num_layers": layers}
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = WanTransformer3DModel(**config)
    torch.set_default_dtype(torch.float32)
    model.requires_grad_(False).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model, config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        function()
    sync(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def adapter_rows(args, device: torch.device) -> list[dict]:
    model, config = build_model(args.model, args.layers, device, args.checkpointing)
    frames, height, width = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    latents = torch.randn(1, config["in_channels"], frames, height, width, device=device)
    text = torch.randn(1, args.text_len, config["text_dim"], device=device)
    timestep = torch.tensor([500.0], device=device)
    tokens = frames * (height // 2) * (width // 2)
    rows = []
    for algo, network_args in ALGOS.items():
        network = AdapterNetwork.create(model, NetworkConfig.from_network_args(args.rank, args.rank / 2, network_args),
                                        algo).to(device)
        generator = torch.Generator(device="cpu").manual_seed(1)
        with torch.no_grad():
            for param in network.parameters():
                if param.dim() > 1:
                    param.add_(torch.randn(param.shape, generator=generator).to(device) * 1e-3)
        if algo.endswith("-plain"):
            for adapter in network.adapters.values():
                adapter.uses_factored_forward = lambda: False
        network.inject()
        network.train()

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            out.float().square().mean().backward()
            for param in network.parameters():
                param.grad = None

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(step, device, args.warmup, args.steps)
        rows.append({"algo": algo, "s_per_step": seconds, "peak_gib": peak_gib(device), "tokens": tokens,
                     "parameters": sum(p.numel() for p in network.parameters())})
        network.remove()
        del network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lora = rows[0]["s_per_step"]
    for row in rows:
        row["vs_lora"] = row["s_per_step"] / lora
    return rows


def attention_rows(args, device: torch.device) -> list[dict]:
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    config = model_config(args.model)
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)
    dtype = torch.bfloat16
    shape = (1, tokens, heads, head_dim)
    rows = []
    for name in ATTENTION:
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=name not in NO_BACKWARD)
                   for _ in range(3))
        backend = AttentionBackendName(name)

        def step():
            out = dispatch_attention_fn(q, k, v, backend=backend)
            if name not in NO_BACKWARD:
                out.float().square().mean().backward()
                q.grad = k.grad = v.grad = None

        try:
            seconds = timed(step, device, args.warmup, args.steps)
            rows.append({"backend": name, "s_per_call": seconds, "backward": name not in NO_BACKWARD, "error": None})
        except Exception as exc:  # noqa: BLE001 - a backend missing its package or its GPU generation
            rows.append({"backend": name, "s_per_call": None, "backward": name not in NO_BACKWARD,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"})
    return rows


def auto_choice() -> str:
    from backend.train.memory import resolve_attention
    from backend.train.settings import TrainSettings

    backend, _ = resolve_attention(TrainSettings())
    return backend or "native"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--text_len", type=int, default=512)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_attention", action="store_true")
    parser.add_argument("--json", default=None, help="also write every row here")
    args = parser.parse_args()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model}, {args.layers} blocks, {args.frames}x{args.height}x{args.width}, rank {args.rank}, "
          f"checkpointing {args.checkpointing}, bf16 autocast, on {card}, torch {torch.__version__}")

    rows = adapter_rows(args, device)
    print(f"\n{'adapter':<12}{'s/step':>10}{'x LoRA':>9}{'peak GiB':>10}   (tokens {rows[0]['tokens']:,})")
    for row in rows:
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
        print(f"{row['algo']:<12}{row['s_per_step']:>10.4f}{row['vs_lora']:>9.3f}{peak:>10}")
    result = {"adapters": rows, "card": card, "args": vars(args)}

    if not args.skip_attention:
        attention = attention_rows(args, device)
        timed_rows = [r for r in attention if r["s_per_call"] is not None and r["backward"]]
        fastest = min(timed_rows, key=lambda r: r["s_per_call"])["backend"] if timed_rows else None
        auto = auto_choice()
        print(f"\n{'attention':<20}{'s/call':>10}  (forward + backward unless noted)")
        for row in attention:
            mark = (" <- fastest for training" if row["backend"] == fastest else "") + \
                   (" <- attn_mode=auto" if row["backend"] == auto else "")
            if row["s_per_call"] is None:
                print(f"{row['backend']:<20}{'n/a':>10}  {row['error']}")
            else:
                note = "" if row["backward"] else " (forward only: no backward)"
                print(f"{row['backend']:<20}{row['s_per_call']:>10.4f}{note}{mark}")
        print(f"\nattn_mode=auto picks {auto}; the fastest with a backward here is {fastest}"
              + ("" if auto == fastest else " -> reorder AUTO_ATTENTION in backend/train/memory.py"))
        result |= {"attention": attention, "auto": auto, "fastest": fastest}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
