"""What the NaN / inf refusal costs when a base model is loaded: `backend.finite.nonfinite_keys` over tensors shaped
like one Wan transformer (default: the 14B's 40 blocks in bf16, ~28 GB; `--blocks 4` for a quick look), on the CPU
and, when there is one, on the GPU. Prints seconds and GB/s per device.

    python3 bench/bench_finite_check.py [--blocks 40] [--dtype bf16] [--devices cpu cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.finite import nonfinite_keys  # noqa: E402

DIM, FFN = 5120, 13824
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def block_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {f"{part}.{p}.weight": (DIM, DIM) for part in ("self_attn", "cross_attn") for p in "qkvo"}
    shapes.update({"ffn.0.weight": (FFN, DIM), "ffn.2.weight": (DIM, FFN)})
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    args = parser.parse_args()
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available")
            continue
        tensors = {f"blocks.{b}.{name}": torch.randn(shape, device=device).to(DTYPES[args.dtype])
                   for b in range(args.blocks) for name, shape in block_shapes().items()}
        gb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e9
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        bad = nonfinite_keys(tensors)
        seconds = time.perf_counter() - started
        print(f"{device}: {len(tensors)} tensors, {gb:.1f} GB {args.dtype}: {seconds:.2f} s "
              f"({gb / seconds:.1f} GB/s), non-finite tensors: {len(bad)}")
        del tensors


if __name__ == "__main__":
    main()
