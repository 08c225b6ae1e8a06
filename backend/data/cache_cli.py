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

from backend.config.field_checks import checked
from backend.config.settings import add_setting_arguments
from backend.data.cache_settings import CACHE_SETTINGS, CacheSettings, LatentCacheSettings, declared_fields
from backend.errors import UserError
from backend.models.registry import get_model_kind

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`what`, then one flag per cache option, from the settings models (each cache reads the ones it has)."""
    parser.add_argument("what", choices=list(CACHE_SETTINGS), help="latents: VAE latents; text: UMT5 outputs")
    for model, names in declared_fields().items():
        add_setting_arguments(parser, model, names)
    # the spellings of earlier versions, still understood
    parser.add_argument("--skip_existing", dest="skip_existing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-skip_existing", dest="skip_existing", action="store_false", help=argparse.SUPPRESS)


def settings_from(args: argparse.Namespace) -> CacheSettings:
    """The command line's values as the settings of the cache it runs; a wrong value is one sentence naming its
    flag."""
    model = CACHE_SETTINGS[args.what]
    return checked(model, {name: getattr(args, name) for name in model.model_fields})


def _model_folder(given: str | None, workspace_attr: str, settings: CacheSettings):
    if given:
        return given
    if settings.workspace:
        from backend.workspace import Workspace

        return getattr(Workspace(settings.workspace), workspace_attr)
    return None


def _dtype(settings: CacheSettings) -> torch.dtype:
    name = settings.dtype if settings.dtype != "auto" else ("bfloat16" if settings.device == "cuda" else "float32")
    return DTYPES[name]


def run(args: argparse.Namespace) -> int:
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.jobs.protocol import JobContext

    s = settings_from(args)
    config = load_dataset_config(s.dataset_config)
    device, dtype = s.device, _dtype(s)
    ctx = JobContext.from_env()
    ctx.emit("start", kind=f"cache {s.WHAT}", dataset_config=str(s.dataset_config))
    if isinstance(s, LatentCacheSettings):
        kind = get_model_kind(s.model_kind) if s.model_kind else None
        folder = _model_folder(s.vae, "vae_wan22" if kind is not None and kind.uses_wan22_vae else "vae", s)
        print(f"loading the VAE from {folder} on {device}…")
        vae = encoders.load_vae(folder, device, dtype)
        if kind is not None and int(vae.config.z_dim) != kind.latent_channels:
            raise UserError(f"the VAE in {folder} makes {vae.config.z_dim}-channel latents, but {kind.label} takes "
                            f"{kind.latent_channels}; pass the {'Wan2.2' if kind.uses_wan22_vae else 'Wan2.1'} VAE "
                            f"folder with --vae.")
        if s.vae_tiling:
            vae.enable_tiling()
        model_id = f"{encoders.model_fingerprint(folder)}:{dtype}:{'tiled' if s.vae_tiling else 'whole'}"
        summary = cache_latents(config, vae, model_id=model_id, batch_size=s.batch_size,
                                skip_existing=s.skip_existing, i2v=s.i2v, ctx=ctx)
    else:
        encoder_folder = _model_folder(s.text_encoder, "text_encoder", s)
        tokenizer_folder = _model_folder(s.tokenizer, "tokenizer", s)
        print(f"loading the text encoder from {encoder_folder} on {device}…")
        tokenizer, text_encoder = encoders.load_text_encoder(encoder_folder, tokenizer_folder, device, dtype)
        summary = cache_text(config, tokenizer, text_encoder,
                             model_id=f"{encoders.model_fingerprint(encoder_folder, tokenizer_folder)}:{dtype}",
                             batch_size=s.batch_size, skip_existing=s.skip_existing,
                             max_sequence_length=s.max_sequence_length, ctx=ctx)
    ctx.emit("end", status="stopped" if summary.stopped else "succeeded", **summary.to_dict())
    ctx.close()
    return 0
