"""The tiny, seeded parts of the demo workspace: a locally trained tokenizer, a 2-layer UMT5 text encoder,
a small AutoencoderKLWan (Wan2.1 layout, 16 latent channels), a small Wan2.2 VAE (the shipped `vae-wan2.2` config
with narrow layers: 48 latent channels, patchified input, 16x spatial compression) and Wan transformers built from
the shipped `demo-*` configs.

Each builder draws its random weights inside `torch.random.fork_rng()`, so the caller's RNG is untouched and the
same seed always gives the same tensors.
"""
from __future__ import annotations

import contextlib

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
    from diffusers import AutoencoderKLWan

    in_channels = int(get_model_kind("demo-t2v").config()["in_channels"])
    with _seeded(seed, 2):
        return AutoencoderKLWan(base_dim=VAE_BASE_DIM, z_dim=in_channels, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                attn_scales=[], temperal_downsample=[False, True, True]).eval()


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
