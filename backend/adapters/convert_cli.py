"""`python -m backend convert IN OUT --to musubi|comfy|diffusers [--fold-alpha] [--precision fp32|bf16|fp16]`."""
from __future__ import annotations

import argparse

from backend.adapters.exports import TARGETS, convert_lora
from backend.adapters.formats import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the LoRA file to read (any supported layout)")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--to", required=True, metavar="|".join(TARGETS),
                        help="musubi: lora_unet_* keys; comfy: diffusion_model.* lora_A/lora_B (ComfyUI, and "
                             "diffusers for partial LoRAs); diffusers: transformer.* names")
    parser.add_argument("--fold-alpha", action="store_true",
                        help="comfy only: multiply lora_B by alpha/rank and drop the .alpha tensors")
    parser.add_argument("--precision", default=None, metavar="|".join(PRECISIONS),
                        help="save precision of the weights (default: keep them as they are; alphas stay fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    path = convert_lora(args.input, args.output, to=args.to, fold_alpha=args.fold_alpha,
                        precision=args.precision, overwrite=args.overwrite)
    print(f"wrote {path} ({args.to} layout, {path.stat().st_size:,} bytes)")
    return 0
