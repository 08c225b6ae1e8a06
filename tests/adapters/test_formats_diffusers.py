"""Our files load through diffusers' own Wan LoRA loader and change the transformer exactly as W + (alpha/r)·B@A.

(a) a full-coverage LoRA saved by us in the musubi layout, (b) our comfy export of a partial LoRA (alpha kept and
folded), (c) our diffusers export of the partial LoRA, (d) a DoRA file exported for diffusers; each loaded with
`WanPipeline.load_lora_weights` from the file, compared with an independent merge into a copy of the weights.
"""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from backend.adapters.exports import convert_lora, to_comfy
from backend.adapters.formats import load_lora, save_lora
from backend.adapters.metadata import build_metadata
from backend.models.names import BLOCK_LINEARS, lora_key_prefix, wan_to_diffusers

LAYERS = 3


@pytest.fixture(scope="module")
def base_model() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=LAYERS,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                 rope_max_seq_len=32).eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(1, 4, 2, 8, 8, generator=g), "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn(1, 7, 32, generator=g)}


def _shapes(model: torch.nn.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    linears = {name: model.get_submodule(wan_to_diffusers(name)) for name in names}
    return {name: (layer.in_features, layer.out_features) for name, layer in linears.items()}


def _lora(model, names, lora_builder, seed):
    ranks = {name: 8 if ".ffn." in name else 4 for name in names}  # per-projection ranks
    alphas = {name: (1.0 + i % 3) for i, name in enumerate(names)}  # a different scale per module
    return lora_builder(_shapes(model, names), rank=ranks, alpha=alphas, seed=seed, up_std=0.3)


def _forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _manual(model, tensors, inputs) -> torch.Tensor:
    """W' = W + (alpha/r)·B@A on a copy of the weights, straight from the tensors we wrote."""
    merged = copy.deepcopy(model)
    prefixes = {key.split(".", 1)[0] for key in tensors}
    by_prefix = {lora_key_prefix(f"blocks.{i}.{inner}"): f"blocks.{i}.{inner}"
                 for i in range(LAYERS) for inner in BLOCK_LINEARS}
    with torch.no_grad():
        for prefix in prefixes:
            down, up = tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"]
            scale = float(tensors[f"{prefix}.alpha"]) / down.shape[0]
            merged.get_submodule(wan_to_diffusers(by_prefix[prefix])).weight += scale * (up @ down)
    return _forward(merged, inputs)


def _through_diffusers(model, path, inputs) -> torch.Tensor:
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=copy.deepcopy(model),
                       scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.load_lora_weights(str(path))
    assert pipe.transformer.peft_config, "diffusers loaded no adapter"
    return _forward(pipe.transformer, inputs)


def test_full_lora_saved_by_us_loads_in_diffusers(tmp_path, base_model, inputs, lora_builder):
    names = [f"blocks.{i}.{inner}" for i in range(LAYERS) for inner in BLOCK_LINEARS]
    tensors = _lora(base_model, names, lora_builder, seed=11)
    md = build_metadata("lora", 4, 1.0, [], {}, "wan2.1-t2v-1.3b")
    path = save_lora(tmp_path / "full.safetensors", {k: v.clone() for k, v in tensors.items()}, md)
    expected = _manual(base_model, tensors, inputs)
    assert (expected - _forward(base_model, inputs)).abs().max() > 1e-2  # the LoRA really changes the output
    torch.testing.assert_close(_through_diffusers(base_model, path, inputs), expected, atol=1e-4, rtol=0)


def test_partial_lora_exports_load_in_diffusers(tmp_path, base_model, inputs, lora_builder):
    names = [f"blocks.{i}.{inner}" for i in (1, 2) for inner in BLOCK_LINEARS if inner != "self_attn.v"]
    names.remove("blocks.2.ffn.2")
    tensors = _lora(base_model, names, lora_builder, seed=12)
    ours = save_lora(tmp_path / "partial.safetensors", tensors, build_metadata("lora", 4, 1.0, [], {}, None))
    expected = _manual(base_model, tensors, inputs)
    assert (expected - _forward(base_model, inputs)).abs().max() > 1e-2

    with pytest.raises(KeyError):  # why the comfy export exists: diffusers refuses partial lora_unet_* files
        _through_diffusers(base_model, ours, inputs)

    for fold in (False, True):
        comfy = tmp_path / f"comfy_{fold}.safetensors"
        convert_lora(ours, comfy, to="comfy", fold_alpha=fold)
        keys = set(to_comfy(load_lora(ours), fold_alpha=fold))
        assert ("diffusion_model.blocks.1.self_attn.q.alpha" in keys) != fold
        torch.testing.assert_close(_through_diffusers(base_model, comfy, inputs), expected, atol=1e-4, rtol=0)

    exported = convert_lora(ours, tmp_path / "diffusers.safetensors", to="diffusers")
    torch.testing.assert_close(_through_diffusers(base_model, exported, inputs), expected, atol=1e-4, rtol=0)


def test_dora_diffusers_export_loads_as_peft_dora(tmp_path, base_model, inputs, lora_builder):
    """`dora_scale` exported as PEFT's `lora_magnitude_vector`: W' = m · (W + s·B@A) / ‖W + s·B@A‖_row."""
    names = ["blocks.0.self_attn.q", "blocks.2.ffn.0"]
    tensors = lora_builder(_shapes(base_model, names), rank=4, alpha=2.0, seed=13, dora=True, up_std=0.3)
    ours = save_lora(tmp_path / "dora.safetensors", tensors)
    exported = convert_lora(ours, tmp_path / "dora_diffusers.safetensors", to="diffusers")
    merged = copy.deepcopy(base_model)
    with torch.no_grad():
        for name in names:
            p = lora_key_prefix(name)
            weight = merged.get_submodule(wan_to_diffusers(name)).weight
            combined = weight + 0.5 * tensors[f"{p}.lora_up.weight"] @ tensors[f"{p}.lora_down.weight"]
            weight.copy_(tensors[f"{p}.dora_scale"] * combined / combined.norm(dim=1, keepdim=True))
    expected = _forward(merged, inputs)
    assert (expected - _forward(base_model, inputs)).abs().max() > 1e-2
    torch.testing.assert_close(_through_diffusers(base_model, exported, inputs), expected, atol=1e-4, rtol=0)
