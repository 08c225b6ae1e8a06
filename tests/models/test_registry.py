import pytest
import torch

from backend.errors import UserError
from backend.models.names import diffusers_to_wan
from backend.models.registry import (
    MODEL_KINDS,
    check_model_kind,
    detect_model_kind,
    get_model_kind,
    kinds_matching,
)

# Published sizes (DESIGN §3): parameters in billions, blocks per transformer.
PUBLISHED = {
    "wan2.1-t2v-1.3b": (1.42, 30), "wan2.1-t2v-14b": (14.29, 40), "wan2.1-i2v-14b": (16.39, 40),
    "wan2.2-t2v-a14b": (14.29, 40), "wan2.2-i2v-a14b": (14.29, 40), "wan2.2-ti2v-5b": (5.00, 30),
}
# Kinds that share one architecture and so cannot be told apart from shapes.
TWINS = {"wan2.1-t2v-14b": {"wan2.1-t2v-14b", "wan2.2-t2v-a14b"}, "demo-t2v": {"demo-t2v", "demo-a14b"}}


def meta_model(config: dict):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel.from_config(config)


def wan_shapes(model) -> dict[str, tuple]:
    return {diffusers_to_wan(k): tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODEL_KINDS))
def test_every_shipped_config_is_detected_from_checkpoint_shapes(name):
    kind = MODEL_KINDS[name]
    for expert in kind.experts or (None,):
        model = meta_model(kind.config(expert))
        twins = next((group for group in TWINS.values() if name in group), {name})
        original = wan_shapes(model)
        assert detect_model_kind(original) in twins
        assert set(kinds_matching(original)) == twins
        # the same shapes under diffusers names and with the ComfyUI prefix
        diffusers = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        comfy = {f"model.diffusion_model.{k}": v for k, v in original.items()}
        assert detect_model_kind(diffusers) == detect_model_kind(comfy) == detect_model_kind(original)
        check_model_kind(original, name)  # no error for the right kind


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shipped_configs_have_the_published_sizes(name):
    kind = MODEL_KINDS[name]
    params, blocks = PUBLISHED[name]
    model = meta_model(kind.config())
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == params
    assert kind.num_blocks == blocks == len(model.blocks)
    per_block = 12 if name == "wan2.1-i2v-14b" else 10
    assert len(kind.lora_targets) == per_block
    linears = {diffusers_to_wan(n).removeprefix("blocks.0.") for n, m in model.named_modules()
               if n.startswith("blocks.0.") and isinstance(m, torch.nn.Linear)}
    assert set(kind.lora_targets) == linears  # every Linear of a block, by its original Wan name


def test_experts_boundaries_and_image_conditioning():
    assert MODEL_KINDS["wan2.2-t2v-a14b"].experts == ("high", "low")
    assert MODEL_KINDS["wan2.2-t2v-a14b"].timestep_boundary == 0.875
    assert MODEL_KINDS["wan2.2-i2v-a14b"].timestep_boundary == 0.900
    assert MODEL_KINDS["wan2.1-t2v-1.3b"].experts == () and MODEL_KINDS["wan2.1-t2v-1.3b"].timestep_boundary is None
    i2v21, i2v22 = MODEL_KINDS["wan2.1-i2v-14b"].config(), MODEL_KINDS["wan2.2-i2v-a14b"].config("low")
    assert (i2v21["image_dim"], i2v21["added_kv_proj_dim"], i2v21["in_channels"]) == (1280, 5120, 36)
    assert (i2v22["image_dim"], i2v22["added_kv_proj_dim"], i2v22["in_channels"]) == (None, None, 36)
    high, low = (MODEL_KINDS["wan2.2-t2v-a14b"].config(e) for e in ("high", "low"))
    assert high == low


def test_mismatched_kind_is_refused_with_one_sentence_naming_both():
    shapes = wan_shapes(meta_model(MODEL_KINDS["wan2.1-i2v-14b"].config()))
    with pytest.raises(UserError) as info:
        check_model_kind(shapes, "wan2.1-t2v-1.3b", "my_model.safetensors")
    message = str(info.value)
    assert "Wan2.1 I2V 14B" in message and "Wan2.1 T2V 1.3B was expected" in message
    assert "36 input" in message and "30 blocks" in message and message.count(". ") == 0


def test_unknown_architecture_and_non_wan_files_are_refused():
    config = dict(MODEL_KINDS["demo-t2v"].config(), num_layers=5)
    with pytest.raises(UserError, match="matches no known Wan model"):
        detect_model_kind(wan_shapes(meta_model(config)))
    vae_like = {"encoder.conv1.weight": (96, 3, 3, 3, 3), "decoder.head.2.weight": (3, 96, 3, 3, 3)}
    with pytest.raises(UserError, match="not a Wan transformer"):
        detect_model_kind(vae_like, "vae.safetensors")


def test_unknown_kind_name_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean `wan2.1-t2v-14b`"):
        get_model_kind("wan2.1-t2v-14")
    with pytest.raises(UserError, match="single transformer"):
        MODEL_KINDS["wan2.1-t2v-1.3b"].config_dir("high")
