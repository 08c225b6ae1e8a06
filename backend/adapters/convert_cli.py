"""`python -m backend convert IN OUT --to musubi|comfy|diffusers|lora [--rank R] [--base DIT] [--fold-alpha]
[--precision fp32|bf16|fp16]`.

`--to lora --rank R` turns a DoRA / LoHa / LoKr file into a plain rank-R LoRA (truncated SVD of each module's ΔW;
DoRA needs the base DiT it was trained on) that musubi-tuner and every other loader reads, and prints the relative
error per module and overall.
"""
from __future__ import annotations

import argparse

from backend.adapters.exports import TARGETS, convert_lora, convert_to_plain_lora
from backend.adapters.formats import PRECISIONS
from backend.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="the LoRA file to read (any supported layout)")
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument("--to", required=True, metavar="|".join(TARGETS + ("lora",)),
                        help="musubi: lora_unet_* keys; comfy: diffusion_model.* lora_A/lora_B (ComfyUI, and "
                             "diffusers for partial LoRAs); diffusers: transformer.* names; lora: a plain LoRA of "
                             "--rank R (musubi layout) from a DoRA / LoHa / LoKr file, for musubi-tuner")
    parser.add_argument("--rank", type=int, default=None, help="--to lora: the rank of the plain LoRA")
    parser.add_argument("--base", default=None,
                        help="the DiT (.safetensors) a DoRA file was trained on: needed by --to lora for DoRA; with "
                             "the other targets it rewrites DoRA scales in ComfyUI's convention")
    parser.add_argument("--fold-alpha", action="store_true",
                        help="comfy only: multiply lora_B by alpha/rank and drop the .alpha tensors")
    parser.add_argument("--precision", default=None, metavar="|".join(PRECISIONS),
                        help="save precision of the weights (default: keep them as they are; alphas stay fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    if args.to == "lora":
        if args.rank is None:
            raise UserError("--to lora needs --rank R, the rank of the plain LoRA (e.g. --rank 32).")
        path, result = convert_to_plain_lora(args.input, args.output, args.rank, base=args.base,
                                             precision=args.precision, overwrite=args.overwrite)
        print("\n".join(result.report_lines()))
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(f"wrote {path} (plain LoRA, rank {args.rank}, musubi layout, {path.stat().st_size:,} bytes)")
        return 0
    if args.rank is not None:
        raise UserError("--rank applies to --to lora only; leave it out or use --to lora.")
    path = convert_lora(args.input, args.output, to=args.to, fold_alpha=args.fold_alpha,
                        precision=args.precision, overwrite=args.overwrite, base=args.base)
    print(f"wrote {path} ({args.to} layout, {path.stat().st_size:,} bytes)")
    return 0
