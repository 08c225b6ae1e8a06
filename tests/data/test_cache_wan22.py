"""Caching for Wan2.2 TI2V-5B: the Wan2.2 VAE gives 48-channel latents at 16x spatial compression on buckets the
transformer's 2x2 patches tile, its first latent frame is the start image's own latent (what the TI2V image-to-video
pipeline conditions on), and a VAE that does not fit the model is refused before anything is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.__main__ import main as backend_main
from backend.data.cache_files import load_latent_file, read_manifest
from backend.data.preprocess import resize_to_bucket, to_pixels
from backend.errors import UserError

from .test_cache import all_frames, expected_latents, run_latents


@pytest.fixture(scope="module")
def wan22_vae_folder(tmp_path_factory) -> Path:
    """The demo Wan2.2 VAE: the shipped vae-wan2.2 config (z 48, is_residual, patch 2, the published latent
    statistics) with narrow layers and seeded random weights."""
    from backend.models.demo_parts import build_vae_wan22

    folder = tmp_path_factory.mktemp("vae22") / "vae"
    build_vae_wan22(seed=0).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def wan22_vae(wan22_vae_folder):
    from backend.data.encoders import load_vae

    return load_vae(wan22_vae_folder)


@pytest.fixture
def clips(tmp_path, make) -> Path:
    """Images 64x64 and 96x64, a 64x64 clip of 9 frames; resolution 64x64 with buckets."""
    make.caption(make.png(tmp_path / "images" / "square.png", 64, 64, seed=1), "a red ball")
    make.caption(make.png(tmp_path / "images" / "wide.png", 96, 64, seed=2), "a wide red ball")
    make.caption(make.mp4(tmp_path / "videos" / "clip.mp4", 9, 64, 64, seed=3), "a blue cube sliding")
    (tmp_path / "dataset.toml").write_text(
        "[general]\nresolution = [64, 64]\ncaption_extension = \".txt\"\nenable_bucket = true\n\n"
        "[[datasets]]\nimage_directory = \"images\"\ncache_directory = \"cache/images\"\n\n"
        "[[datasets]]\nvideo_directory = \"videos\"\ncache_directory = \"cache/videos\"\n"
        "target_frames = [9]\nframe_extraction = \"head\"\n", encoding="utf-8")
    return tmp_path


def test_wan22_latents_have_48_channels_at_16x_on_buckets_of_32(clips, wan22_vae, wan22_vae_folder):
    models = {"vae": wan22_vae_folder}
    summary = run_latents(clips, wan22_vae, models)
    assert (summary.written, summary.failed) == (3, [])
    for sub in ("images", "videos"):
        manifest = read_manifest(clips / "cache" / sub)
        assert manifest["latent_channels"] == 48 and manifest["bucket_step"] == 32
        for entry in manifest["entries"]:
            width, height = entry.bucket
            assert width % 32 == 0 and height % 32 == 0, entry.bucket
            cached = load_latent_file(clips / "cache" / sub / entry.latent_file)["latents"]
            assert cached.shape == (48, (entry.frames - 1) // 4 + 1, height // 16, width // 16)
            if sub == "images":
                frames = [np.asarray(Image.open(clips / "images" / f"{entry.key}.png").convert("RGB"))]
            else:
                frames = all_frames(clips / "videos" / "clip.mp4")[:entry.frames]
            # independent of the cache code: the VAE's mode, normalised with the 48 published statistics
            assert torch.allclose(cached, expected_latents(wan22_vae, frames, entry.bucket), atol=1e-5)
    buckets = {e.key: e.bucket for e in read_manifest(clips / "cache" / "images")["entries"]}
    # the 32-step buckets of 64x64 are 32x128, 64x64 and 128x32: aspect 1.5 is nearest 1 (16-step: 80x48)
    assert buckets == {"square": (64, 64), "wide": (64, 64)}


def test_first_latent_frame_is_the_start_image_condition_of_the_ti2v_pipeline(clips, wan22_vae, wan22_vae_folder):
    """What TI2V image-to-video training keeps clean (the cached first latent frame) is what
    WanImageToVideoPipeline(expand_timesteps=True) conditions on at generation time: the start image's latent."""
    from diffusers import WanImageToVideoPipeline

    run_latents(clips, wan22_vae, {"vae": wan22_vae_folder})
    entry = read_manifest(clips / "cache" / "videos")["entries"][0]
    cached = load_latent_file(clips / "cache" / "videos" / entry.latent_file)["latents"]
    first = to_pixels([resize_to_bucket(all_frames(clips / "videos" / "clip.mp4")[0], entry.bucket)])[:, 0]
    pipeline = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan22_vae, scheduler=None,
                                       transformer=None, expand_timesteps=True)
    width, height = entry.bucket
    with torch.no_grad():
        _, condition, mask = pipeline.prepare_latents(first[None], 1, 48, height, width, entry.frames, torch.float32,
                                                      torch.device("cpu"), torch.Generator().manual_seed(0))
    assert condition.shape == (1, 48, 1, height // 16, width // 16)
    assert torch.allclose(cached[:, :1], condition[0], atol=1e-5)
    assert mask[0, 0, 0].eq(0).all() and mask[0, 0, 1:].eq(1).all()  # frame 0 clean, the rest denoised


def test_i2v_conditioning_cache_is_refused_for_the_wan22_vae(clips, wan22_vae, wan22_vae_folder):
    with pytest.raises(UserError, match="TI2V-5B does not use"):
        run_latents(clips, wan22_vae, {"vae": wan22_vae_folder}, i2v=True)
    assert not (clips / "cache").exists()


def test_cache_command_refuses_a_vae_that_does_not_fit_the_model_kind(clips, models, wan22_vae_folder, capsys):
    toml = str(clips / "dataset.toml")
    assert backend_main(["cache", "latents", "--dataset_config", toml, "--vae", str(models["vae"]),
                         "--model_kind", "wan2.2-ti2v-5b"]) == 2
    err = capsys.readouterr().err
    assert "makes 4-channel latents, but Wan2.2 TI2V-5B takes 48" in err and err.count("\n") == 1
    assert backend_main(["cache", "latents", "--dataset_config", toml, "--vae", str(wan22_vae_folder),
                         "--model_kind", "wan2.1-t2v-1.3b"]) == 2
    assert "takes 16; pass the Wan2.1 VAE folder" in capsys.readouterr().err
    assert not (clips / "cache").exists()
    assert backend_main(["cache", "latents", "--dataset_config", toml, "--vae", str(wan22_vae_folder),
                         "--model_kind", "wan2.2-ti2v-5b"]) == 0
    assert read_manifest(clips / "cache" / "videos")["latent_channels"] == 48
