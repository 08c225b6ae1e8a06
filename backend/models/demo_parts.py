"""The tiny, seeded parts of the demo workspace: a locally trained tokenizer, a 2-layer UMT5 text encoder,
a small AutoencoderKLWan (Wan2.1 layout, 16 latent channels), a small Wan2.2 VAE (the shipped `vae-wan2.2` config
with narrow layers: 48 latent channels, patchified input, 16x spatial compression) and Wan transformers built from
the shipped `demo-*` configs.

Each builder draws its random weights inside `torch.random.fork_rng()`, so the caller's RNG is untouched and the
same seed always gives the same tensors.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from backend.models.registry import WAN22_VAE_CONFIG_DIR, get_model_kind

TOKENIZER_VOCAB_SIZE = 256
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in UMT5's own tokenizer
TEXT_ENCODER_LAYERS = 2
VAE_BASE_DIM = 4  # 1 or 2 also run, but RMS-normalising 1-2 channels keeps little more than the sign
WAN22_VAE_BASE_DIM = 8  # its residual down-blocks regroup channels, which needs a width divisible this way
# Besides the dataset captions, a few general sentences so sample prompts tokenize into words, not letters.
EXTRA_SENTENCES = (
    "a video of a ball and a cube", "a photo of a red ball", "a photo of a blue cube",
    "a cat walking on a green field", "a dog running in the park at sunset",
    "blurry, low quality, static, overexposed, worst quality, jpeg artifacts, watermark, text",
)


def demo_text_dim() -> int:
    """The UMT5 width: the demo transformers' `text_dim`, so encoder output feeds them directly."""
    return int(get_model_kind("demo-t2v").config()["text_dim"])


@contextlib.contextmanager
def _seeded(seed: int, part: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + part)
        yield


def train_tokenizer(sentences: list[str]):
    """A byte-pair tokenizer trained on `sentences`, wrapped for transformers (pads to the right, appends `</s>`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-()")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(sorted(set(sentences)), trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512, padding_side="right")


def build_text_encoder(vocab_size: int, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    d_model = demo_text_dim()
    config = UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                        num_layers=TEXT_ENCODER_LAYERS, num_heads=4, relative_attention_num_buckets=8,
                        relative_attention_max_distance=32, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)
    with _seeded(seed, 1):
        return UMT5EncoderModel(config).eval()


def build_vae(seed: int):
    """The Wan2.1-layout demo VAE whose latents follow its input, so the two demo concepts differ in latent space.

    At PyTorch's default init each conv's bias is about as large as its weighted input, so after a few layers a
    random encoder's output hardly depends on the image: with those biases and Wan's latents_mean / latents_std the
    two concepts' latents differed by 2 % of their norm (mean latents 0.028 apart against a norm of 1.40) and a model
    had nothing concept-specific to learn (LoRA-MoE experts could not specialise). The encoder's convs therefore have
    zero biases, and latents_mean / latents_std are measured on the demo concepts (`measure_latent_stats`), as Wan's
    own constants are statistics of its VAE over real data. The decoder is untouched.
    """
    from diffusers import AutoencoderKLWan

    in_channels = int(get_model_kind("demo-t2v").config()["in_channels"])
    with _seeded(seed, 2):
        vae = AutoencoderKLWan(base_dim=VAE_BASE_DIM, z_dim=in_channels, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                               attn_scales=[], temperal_downsample=[False, True, True]).eval()
    with torch.no_grad():
        for module in vae.encoder.modules():
            if isinstance(module, torch.nn.Conv3d) and module.bias is not None:
                module.bias.zero_()
    mean, std = measure_latent_stats(vae, seed)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return vae


@torch.no_grad()
def measure_latent_stats(vae, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's raw latents over renders of both demo concepts (images and clips).

    Normalised with them, the demo's latents are centred with unit spread, as real latents are with Wan's shipped
    constants (the raw latents of this small encoder have a spread of about 0.1 per channel, far from Wan's). The
    renders are drawn from their own seed, not the dataset's items. Rounded to 4 decimals so the config file is
    byte-identical from build to build.
    """
    from backend.data.sample_dataset import CONCEPTS, render_clip, render_image

    rng = np.random.default_rng([seed, 2])
    images = [render_image(c, rng, 64, 64)[None] for c in CONCEPTS for _ in range(4)]
    clips = [np.stack(render_clip(c, rng, 9, 64, 64)) for c in CONCEPTS for _ in range(2)]
    latents = []
    for frames in (np.stack(images), np.stack(clips)):
        pixels = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3)
        raw = vae.encode(pixels).latent_dist.mode()
        latents.append(raw.transpose(0, 1).reshape(raw.shape[1], -1))
    flat = torch.cat(latents, dim=1)
    return ([round(float(v), 4) for v in flat.mean(dim=1)],
            [round(max(float(v), 1e-3), 4) for v in flat.std(dim=1)])


def build_vae_wan22(seed: int):
    """The shipped Wan2.2 VAE config (z_dim 48, is_residual, patch_size 2, 16x spatial) with narrow layers."""
    from diffusers import AutoencoderKLWan

    config = dict(AutoencoderKLWan.load_config(str(WAN22_VAE_CONFIG_DIR)))
    config.update(base_dim=WAN22_VAE_BASE_DIM, decoder_base_dim=WAN22_VAE_BASE_DIM, num_res_blocks=1)
    with _seeded(seed, 3):
        return AutoencoderKLWan.from_config(config).eval()


def build_transformer(kind_name: str, seed: int, part: int, expert: str | None = None):
    """A randomly initialised transformer with the shipped config of `kind_name` (a small `demo-*` kind)."""
    from diffusers import WanTransformer3DModel

    with _seeded(seed, part):
        return WanTransformer3DModel.from_config(get_model_kind(kind_name).config(expert)).eval()


def demo_scheduler():
    """Wan's flow-matching UniPC sampler (shift 3.0), as the Wan pipelines use it."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=3.0)
