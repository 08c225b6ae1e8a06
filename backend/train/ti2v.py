"""Wan2.2 TI2V-5B training: its two tasks, and the checks that a dataset's latents fit the model being trained.

TI2V-5B denoises the 48-channel latents of the Wan2.2 VAE (16x spatial compression) and takes a timestep per token.

- `ti2v_mode = "t2v"`: ordinary flow matching on every latent frame (one timestep for the whole clip).
- `ti2v_mode = "i2v"`: image-to-video as diffusers' `WanImageToVideoPipeline(expand_timesteps=True)` runs it. The
  first latent frame is the clean start image: in the model input it is x0's first frame, unnoised, and its tokens
  get timestep 0; every other token gets t·1000. The loss covers only the noised frames (latent frames 1..F-1):
  the model's output on the first frame is not trained. The clean frame is the cached first latent frame: the Wan
  VAE is causal in time and encodes the first frame alone, so it equals the VAE latents of the start image by
  itself, which is what the pipeline uses as the condition at generation time.

Token order follows the transformer's patch embedding (a Conv3d with stride `PATCH`, flattened over frames, rows,
columns), so the tokens of latent frame 0 are the first (H/2)·(W/2) of the sequence.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from backend.errors import UserError
from backend.models.registry import ModelKind

PATCH = (1, 2, 2)  # Wan transformers' patch_size (frames, rows, columns)
TI2V_MODES = ("t2v", "i2v")


def first_frame_clean(s) -> bool:
    return getattr(s, "ti2v_mode", "t2v") == "i2v"


def check_ti2v_mode(s, kind: ModelKind) -> None:
    if first_frame_clean(s) and kind.task != "ti2v":
        raise UserError(f"ti2v_mode=i2v is for Wan2.2 TI2V-5B (and demo-ti2v); {kind.label} is not one, so set "
                        f"ti2v_mode to t2v.")


def token_timesteps(t: torch.Tensor, latent_shape: tuple[int, ...], clean_first_frame: bool) -> torch.Tensor:
    """Per-token timesteps [B, F·(H/2)·(W/2)] (in 0-1000, as the transformer takes them): t·1000 for every token,
    0 for the tokens of latent frame 0 when it is the clean condition."""
    batch, _, frames, height, width = latent_shape
    per_frame = (height // PATCH[1]) * (width // PATCH[2])
    timesteps = (t.view(batch, 1) * 1000.0).expand(batch, frames * per_frame).clone()
    if clean_first_frame:
        timesteps[:, :per_frame] = 0.0
    return timesteps


def keep_first_frame(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The I2V model input (x_t with latent frame 0 replaced by x0's, clean) and its per-token timesteps in the
    0-1 range the denoiser scales by 1000."""
    model_input = torch.cat([x0[:, :, :1], x_t[:, :, 1:]], dim=2)
    return model_input, token_timesteps(t, tuple(x0.shape), clean_first_frame=True) / 1000.0


# ---- do the cached latents fit the model? -------------------------------------------------------------------------

def _latent_shape(path: Path) -> tuple[int, ...] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            name = next((k for k in f.keys() if k.startswith("latents_") and not k.startswith("latents_image_")),
                        None)
            return tuple(f.get_slice(name).get_shape()) if name else None
    except Exception:  # an unreadable file is reported when the batch is loaded
        return None


def check_latents_fit(dataset, kind: ModelKind, s, rerun: str) -> None:
    """One sentence when the cached latents cannot feed this model: wrong VAE (channel count), an odd latent size
    the 2x2 patches cannot cover, or (TI2V image-to-video) an item with no frame after the first. `rerun`: the cache
    command line the sentence names."""
    expected = kind.latent_channels
    vae = "the Wan2.2 VAE (48 channels)" if kind.uses_wan22_vae else "the Wan2.1 VAE (16 channels)"
    seen: set[tuple] = set()
    for item in dataset.items:
        key = (item.bucket, item.frames)
        if key in seen:
            continue
        seen.add(key)
        shape = _latent_shape(item.latent_file)
        if shape is None:
            continue
        channels, _, height, width = shape
        if channels != expected:
            where = "--workspace DIR" if kind.name.startswith("demo-") else "--vae FOLDER"
            raise UserError(f"the cached latents of {item.key} have {channels} channels, but {kind.label} takes "
                            f"{expected}; cache the dataset again with {vae}: "
                            f"`{rerun} --model_kind {kind.name} {where}`.")
        if height % PATCH[1] or width % PATCH[2]:
            raise UserError(f"the cached latents of {item.key} are {height}x{width}, which 2x2 patches cannot cover; "
                            f"cache the dataset again with `{rerun}`, which picks fitting bucket sizes.")
    if first_frame_clean(s):
        single = next((item for item in dataset.items if item.frames < 5), None)
        if single is not None:
            raise UserError(f"ti2v_mode=i2v trains on the frames after the first, but {single.key} has "
                            f"{single.frames} frame(s); use a dataset TOML with only video items of 5 or more frames "
                            f"(target_frames 5, 9, ...), or set ti2v_mode to t2v.")
