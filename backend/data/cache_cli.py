"""`python -m backend cache latents|text --dataset_config FILE ...`: fill a dataset's caches before training.

    python -m backend cache latents --dataset_config D.toml --vae models/vae [--i2v]
    python -m backend cache latents --dataset_config D.toml --vae Wan2.2_VAE_FOLDER --model_kind wan2.2-ti2v-5b
    python -m backend cache text --dataset_config D.toml --text_encoder models/text_encoder --tokenizer models/tokenizer

With `--workspace DIR`, the model folders default to that workspace's demo VAE / text encoder / tokenizer (the
demo Wan2.2 VAE when `--model_kind` is a TI2V kind). `--model_kind` also checks that the VAE makes the latents that
model takes (48 channels for TI2V-5B, 16 for the others) before anything is encoded.
Run as a job it reports progress events and honours Stop; running it again continues where it stopped.
"""
from __future__ import annotations

import argparse

import torch

from backend.errors import UserError
from backend.models.registry import get_model_kind

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["latents", "text"], help="latents: VAE latents; text: UMT5 outputs")
    parser.add_argument("--dataset_config", required=True, help="musubi-tuner dataset TOML")
    parser.add_argument("--workspace", default=None, help="workspace whose demo models are the defaults")
    parser.add_argument("--vae", default=None, help="AutoencoderKLWan folder (latents)")
    parser.add_argument("--model_kind", default=None,
                        help="latents: the model they are for (e.g. wan2.2-ti2v-5b); checks the VAE fits it")
    parser.add_argument("--text_encoder", default=None, help="UMT5EncoderModel folder (text)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (text)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="model precision; auto: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch_size", type=int, default=1, help="items encoded together (default 1)")
    parser.add_argument("--skip_existing", action=argparse.BooleanOptionalAction, default=True,
                        help="keep cache files that are already current (default on)")
    parser.add_argument("--i2v", action="store_true", help="latents: also cache I2V first-frame conditioning")
    parser.add_argument("--vae_tiling", action="store_true", help="latents: encode in tiles (less memory)")
    parser.add_argument("--max_sequence_length", type=int, default=512, help="text: token length (default 512)")


def _model_folder(given: str | None, workspace_attr: str, args: argparse.Namespace):
    if given:
        return given
    if args.workspace:
        from backend.workspace import Workspace

        return getattr(Workspace(args.workspace), workspace_attr)
    return None


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, torch.dtype]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu.")
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    return args.device, DTYPES[name]


def run(args: argparse.Namespace) -> int:
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.jobs.protocol import JobContext

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size}).")
    if args.max_sequence_length < 1:
        raise UserError(f"--max_sequence_length must be at least 1 (got {args.max_sequence_length}).")
    config = load_dataset_config(args.dataset_config)
    device, dtype = _device_and_dtype(args)
    ctx = JobContext.from_env()
    ctx.emit("start", kind=f"cache {args.what}", dataset_config=str(args.dataset_config))
    if args.what == "latents":
        kind = get_model_kind(args.model_kind) if args.model_kind else None
        folder = _model_folder(args.vae, "vae_wan22" if kind is not None and kind.uses_wan22_vae else "vae", args)
        print(f"loading the VAE from {folder} on {device}…")
        vae = encoders.load_vae(folder, device, dtype)
        if kind is not None and int(vae.config.z_dim) != kind.latent_channels:
            raise UserError(f"the VAE in {folder} makes {vae.config.z_dim}-channel latents, but {kind.label} takes "
                            f"{kind.latent_channels}; pass the {'Wan2.2' if kind.uses_wan22_vae else 'Wan2.1'} VAE "
                            f"folder with --vae.")
        if args.vae_tiling:
            vae.enable_tiling()
        model_id = f"{encoders.model_fingerprint(folder)}:{dtype}:{'tiled' if args.vae_tiling else 'whole'}"
        summary = cache_latents(config, vae, model_id=model_id, batch_size=args.batch_size,
                                skip_existing=args.skip_existing, i2v=args.i2v, ctx=ctx)
    else:
        encoder_folder = _model_folder(args.text_encoder, "text_encoder", args)
        tokenizer_folder = _model_folder(args.tokenizer, "tokenizer", args)
        print(f"loading the text encoder from {encoder_folder} on {device}…")
        tokenizer, text_encoder = encoders.load_text_encoder(encoder_folder, tokenizer_folder, device, dtype)
        summary = cache_text(config, tokenizer, text_encoder,
                             model_id=f"{encoders.model_fingerprint(encoder_folder, tokenizer_folder)}:{dtype}",
                             batch_size=args.batch_size, skip_existing=args.skip_existing,
                             max_sequence_length=args.max_sequence_length, ctx=ctx)
    ctx.emit("end", status="stopped" if summary.stopped else "succeeded", **summary.to_dict())
    ctx.close()
    return 0
