"""The VAE and UMT5 computations whose outputs are cached, written to match diffusers' Wan pipelines exactly.

- latents: the VAE posterior's mode, normalised as the pipelines do: (z - latents_mean) / latents_std
  (`WanImageToVideoPipeline.prepare_latents`; `WanPipeline` decodes with the inverse). The Wan2.1 VAE gives 16
  channels at 8x spatial compression; the Wan2.2 VAE (TI2V-5B: z_dim 48, is_residual, patch_size 2) 48 channels
  at 16x. Frame sizes must be multiples of `bucket_step(vae)` so the transformer's 2x2 patches tile the latents.
- I2V conditioning: the first frame followed by black frames, encoded and normalised, behind the 4-channel
  first-frame mask (`WanImageToVideoPipeline.prepare_latents`, the non-`expand_timesteps` branch).
- text: `WanPipeline._get_t5_prompt_embeds`: cleaned prompt, tokenized to `max_sequence_length` with padding,
  encoded with the attention mask, each sequence trimmed to its real length. The pipeline then pads back with
  zeros; `pad_text_embeds` does that when batches are built.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from backend.errors import UserError

MAX_SEQUENCE_LENGTH = 512  # what WanPipeline.__call__ uses


def model_fingerprint(*folders: Path) -> str:
    """Identifies model folders by config and weight files (name, size, mtime): a swapped model is noticed."""
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder).resolve()
        digest.update(str(folder).encode())
        for file in sorted(folder.iterdir()) if folder.is_dir() else [folder]:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                if file.suffix == ".json" and stat.st_size < 1_000_000:
                    digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _require_folder(path: str | Path | None, what: str, flag: str, marker: str = "config.json") -> Path:
    if not path:
        raise UserError(f"no {what} given; pass {flag} DIR (a diffusers/transformers folder with {marker}).")
    folder = Path(path).expanduser()
    if folder.is_file():
        raise UserError(f"{what} {folder} is a file; pass the folder that holds it and its {marker} ({flag}).")
    if not (folder / marker).is_file():
        raise UserError(f"{what} folder {folder} has no {marker}; pass the folder that `from_pretrained` loads "
                        f"({flag}).")
    if marker == "config.json" and not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{what} folder {folder} holds its weights only as a pickle ({pickles[0]}), which this app "
                            "never loads; use the .safetensors release of the model.")
    return folder


def load_vae(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKLWan

    folder = _require_folder(path, "VAE", "--vae")
    try:
        vae = AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{folder} is not a loadable AutoencoderKLWan folder ({str(exc).splitlines()[0]}).") from None
    return vae.to(device).eval()


def load_text_encoder(text_encoder: str | Path, tokenizer: str | Path, device: str = "cpu",
                      dtype: torch.dtype = torch.float32):
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder_folder = _require_folder(text_encoder, "text encoder", "--text_encoder")
    tokenizer_folder = _require_folder(tokenizer, "tokenizer", "--tokenizer", "tokenizer_config.json")
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
        model = UMT5EncoderModel.from_pretrained(str(encoder_folder), dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"could not load the text encoder / tokenizer ({str(exc).splitlines()[0]}); pass a "
                        "UMT5EncoderModel folder and its tokenizer folder.") from None
    return tok, model.to(device).eval()


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    return mean, inverse_std


def spatial_factor(vae) -> int:
    """Pixels per latent along height and width: 8 (Wan2.1 VAE) or 16 (Wan2.2 VAE)."""
    return int(getattr(vae.config, "scale_factor_spatial", None) or 8)


def bucket_step(vae) -> int:
    """The multiple every frame size must be: the VAE's spatial factor times the transformer's 2x2 patch."""
    return 2 * spatial_factor(vae)


def is_wan22_vae(vae) -> bool:
    return int(vae.config.z_dim) == 48


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> normalised latents [B, z, (F-1)/4+1, H/s, W/s] (s = `spatial_factor`)."""
    pixels = pixels.to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode()
    mean, inverse_std = _latent_stats(vae, latents)
    return (latents - mean) * inverse_std


def temporal_factor(vae) -> int:
    return int(vae.config.scale_factor_temporal)


@torch.no_grad()
def encode_i2v_condition(vae, first_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B, 3, H, W] first frames -> [B, 4 + z, latent frames, h, w]: the first-frame mask and the normalised
    latents of (first frame + num_frames-1 black frames), as WanImageToVideoPipeline builds its condition."""
    batch, _, height, width = first_frames.shape
    image = first_frames.unsqueeze(2).to(vae.device, vae.dtype)
    video = torch.cat([image, image.new_zeros(batch, image.shape[1], num_frames - 1, height, width)], dim=2)
    condition = encode_latents(vae, video)
    stride = temporal_factor(vae)
    latent_height, latent_width = condition.shape[-2:]
    mask = torch.ones(batch, 1, num_frames, latent_height, latent_width)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=stride)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    mask = mask.view(batch, -1, stride, latent_height, latent_width).transpose(1, 2)
    return torch.cat([mask.to(condition.device, condition.dtype), condition], dim=1)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str],
                   max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> list[torch.Tensor]:
    """Each prompt -> its UMT5 hidden states trimmed to its token count, [L_i, D]."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    cleaned = [prompt_clean(p) for p in prompts]
    tokens = tokenizer(cleaned, padding="max_length", max_length=max_sequence_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    lengths = mask.gt(0).sum(dim=1).long()
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(device), mask.to(device)).last_hidden_state
    return [h[:n].cpu() for h, n in zip(hidden, lengths)]


def pad_text_embeds(embeds: list[torch.Tensor], max_sequence_length: int = MAX_SEQUENCE_LENGTH
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Trimmed [L_i, D] embeddings -> zero-padded [B, max_len, D] (what the pipeline gives the transformer) and
    the mask [B, max_len] (1 = real token)."""
    width = embeds[0].shape[-1]
    padded = torch.zeros(len(embeds), max_sequence_length, width, dtype=embeds[0].dtype)
    mask = torch.zeros(len(embeds), max_sequence_length, dtype=torch.long)
    for row, embed in enumerate(embeds):
        padded[row, : embed.shape[0]] = embed
        mask[row, : embed.shape[0]] = 1
    return padded, mask
