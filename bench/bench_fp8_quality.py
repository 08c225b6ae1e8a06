"""The fp8 quality guard at a real model's shape: the flow-matching loss of one fixed batch with the base weights in
bf16, in scaled fp8 (per-row scales) and in plain fp8, each computed in bf16 (backend/models/fp8_quality.py).

    python bench/bench_fp8_quality.py --model wan2.1-t2v-14b                       # 81x480x832 on a GPU
    python bench/bench_fp8_quality.py --model wan2.1-t2v-1.3b --layers 2 --frames 5 --height 64 --width 64   # CPU

Random weights from the shipped config (seeded, so the three runs hold the same weights), inputs seeded, t = 0.5;
prints the three losses and each fp8 storage's relative difference to bf16.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.models.fp8_quality import fixed_inputs, storage_loss_difference  # noqa: E402
from backend.models.registry import get_model_kind  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-14b")
    parser.add_argument("--layers", type=int, default=None, help="keep only this many blocks")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from diffusers import WanTransformer3DModel

    kind = get_model_kind(args.model)
    config = dict(kind.config(kind.experts[0] if kind.has_experts else None))
    if args.layers:
        config["num_layers"] = args.layers
    device = torch.device(args.device)

    def build():
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)
        with device:
            model = WanTransformer3DModel.from_config(config).eval().requires_grad_(False)
        torch.set_default_dtype(torch.float32)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return model

    inputs = fixed_inputs(config, args.frames, args.height, args.width, text_tokens=512, device=device)
    numbers = storage_loss_difference(build, inputs)
    print("BENCH " + json.dumps({"model": args.model, "layers": config["num_layers"],
                                 "shape": f"{args.frames}x{args.height}x{args.width}", "device": str(device), **numbers}))


if __name__ == "__main__":
    main()
