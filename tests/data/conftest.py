"""Fixtures for tests/data: tiny Wan VAE / UMT5 / tokenizer saved as model folders, and media writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SENTENCES = ["a red ball on a table", "a blue cube sliding", "loraidA, a red ball bouncing", "a green tree",
             "loraidB, a blue cube in cold light", "a photo of a cat"]


def write_png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_mp4(path: Path, frames: int, width: int = 32, height: int = 32, fps: int = 16, seed: int = 0) -> Path:
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for index in range(frames):
            image = np.roll(base, index, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_caption(media: Path, text: str) -> None:
    media.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def make():
    """make.png(path, w, h, seed), make.mp4(path, frames, width, height, fps, seed), make.caption(media, text),
    make.small_dataset(folder) (see `small_dataset`)."""
    from types import SimpleNamespace

    return SimpleNamespace(png=write_png, mp4=write_mp4, caption=write_caption, small_dataset=build_small_dataset)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Folders `vae`, `text_encoder`, `tokenizer` with tiny random models (non-trivial latents_mean/std)."""
    from diffusers import AutoencoderKLWan
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    z_dim = 4
    vae = AutoencoderKLWan(base_dim=4, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[1.5, 0.7, 2.0, 1.1]).eval()
    vae.save_pretrained(str(root / "vae"))

    tokenizer = Tokenizer(tok_models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=120, show_progress=False,
                                                                 special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                             special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512, padding_side="right")
    fast.save_pretrained(str(root / "tokenizer"))
    config = UMT5Config(vocab_size=len(fast), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    UMT5EncoderModel(config).eval().save_pretrained(str(root / "text_encoder"))
    return {"vae": root / "vae", "text_encoder": root / "text_encoder", "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="session")
def vae(models):
    from backend.data.encoders import load_vae

    return load_vae(models["vae"])


@pytest.fixture(scope="session")
def text_models(models):
    from backend.data.encoders import load_text_encoder

    return load_text_encoder(models["text_encoder"], models["tokenizer"])


def build_small_dataset(folder: Path) -> Path:
    """images/ (3 pngs: 32x32 twice, 64x32) and videos/ (32x32 clips of 9 and 13 frames), all captioned, and
    dataset.toml at resolution 48x48 with buckets (64x32 goes to the 64x32 bucket, the rest to 48x48)."""
    images, videos = folder / "images", folder / "videos"
    for index, (w, h) in enumerate([(32, 32), (32, 32), (64, 32)]):
        write_caption(write_png(images / f"img_{index}.png", w, h, seed=index), f"a red ball {index}")
    write_caption(write_mp4(videos / "clip_0.mp4", 9, seed=10), "a blue cube sliding")
    write_caption(write_mp4(videos / "clip_1.mp4", 13, seed=11), "a green tree")
    (folder / "dataset.toml").write_text(
        "[general]\nresolution = [48, 48]\ncaption_extension = \".txt\"\nenable_bucket = true\n\n"
        "[[datasets]]\nimage_directory = \"images\"\ncache_directory = \"cache/images\"\n\n"
        "[[datasets]]\nvideo_directory = \"videos\"\ncache_directory = \"cache/videos\"\n"
        "target_frames = [1, 5]\nframe_extraction = \"head\"\n", encoding="utf-8")
    return folder


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    return build_small_dataset(tmp_path)
