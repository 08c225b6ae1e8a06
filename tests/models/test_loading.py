import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.errors import UserError
from backend.models.checkpoint import read_checkpoint_metadata
from backend.models.loading import (
    block_count,
    load_transformer,
    read_checkpoint_shapes,
    save_transformer_original,
)
from backend.models.names import wan_to_diffusers


@pytest.fixture(scope="module")
def musubi_dit(musubi_dir):
    return musubi_dir / "dit.safetensors"


@pytest.fixture(scope="module")
def musubi_tensors(musubi_dit):
    return load_file(str(musubi_dit))


def padded_context(context: torch.Tensor, length: int = 512) -> torch.Tensor:
    out = torch.zeros(1, length, context.shape[-1])
    out[0, : context.shape[0]] = context
    return out


def assert_matches_original(model, original: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert len(state) == len(original)
    for name, tensor in original.items():
        assert torch.equal(state[wan_to_diffusers(name)], tensor.to(torch.float32)), name


def test_musubi_dit_reproduces_musubi_output(musubi_dit, musubi_dir, musubi_config_dir):
    golden = load_file(str(musubi_dir / "golden.safetensors"))
    model = load_transformer(musubi_dit, musubi_config_dir)
    with torch.no_grad():
        out = model(hidden_states=golden["input_x"][None], timestep=golden["input_t"],
                    encoder_hidden_states=padded_context(golden["input_context"])).sample[0]
    expected = golden["out_base"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 5e-3
    assert expected.abs().max().item() > 1.0  # the tolerance is small against the outputs


def test_round_trip_original_diffusers_original_is_bit_identical(musubi_dit, musubi_config_dir, tmp_path):
    model = load_transformer(musubi_dit, musubi_config_dir)
    out = save_transformer_original(model, tmp_path / "again.safetensors", metadata=None)
    assert out.read_bytes() == musubi_dit.read_bytes()  # file written by musubi-tuner, byte for byte


def test_metadata_survives_the_round_trip(musubi_dit, musubi_config_dir, tmp_path):
    model = load_transformer(musubi_dit, musubi_config_dir)
    first = save_transformer_original(model, tmp_path / "a.safetensors", {"loraid_studio.note": "hello"})
    second = save_transformer_original(load_transformer(first, musubi_config_dir), tmp_path / "b.safetensors",
                                       {"loraid_studio.note": "hello"})
    assert first.read_bytes() == second.read_bytes()
    assert read_checkpoint_metadata(second) == {"loraid_studio.note": "hello"}


def test_comfyui_prefixed_bf16_file_loads_the_same_tensors(musubi_tensors, musubi_config_dir, tmp_path):
    path = tmp_path / "comfy.safetensors"
    save_file({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in musubi_tensors.items()}, str(path))
    model = load_transformer(path, musubi_config_dir)
    assert next(model.parameters()).dtype == torch.float32
    assert_matches_original(model, {k: v.to(torch.bfloat16) for k, v in musubi_tensors.items()})
    assert load_transformer(path, musubi_config_dir, dtype=torch.bfloat16).blocks[0].attn1.to_q.weight.dtype \
        == torch.bfloat16


def test_scaled_fp8_file_is_dequantized(musubi_tensors, musubi_config_dir, tmp_path):
    quantized, expected = {}, {}
    for name, tensor in musubi_tensors.items():
        if name.startswith("blocks.") and name.endswith(".weight") and tensor.dim() == 2:
            scale = tensor.abs().max() / 448.0
            fp8 = (tensor / scale).to(torch.float8_e4m3fn)
            quantized[f"model.diffusion_model.{name}"] = fp8
            quantized[f"model.diffusion_model.{name[:-len('.weight')]}.scale_weight"] = scale.reshape(1)
            expected[name] = fp8.to(torch.float32) * scale
        else:
            quantized[f"model.diffusion_model.{name}"] = tensor
            expected[name] = tensor
    quantized["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "fp8_scaled.safetensors"
    save_file(quantized, str(path))
    assert_matches_original(load_transformer(path, musubi_config_dir), expected)


def test_unsupported_quantization_is_refused(musubi_tensors, musubi_config_dir, tmp_path):
    tensors = dict(musubi_tensors)
    tensors["blocks.0.self_attn.q.weight_scale"] = torch.ones(64)
    path = tmp_path / "nvfp4.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(UserError, match="quantized layout"):
        load_transformer(path, musubi_config_dir)


def test_diffusers_folder_and_sharded_original_folder_load(musubi_dit, musubi_tensors, musubi_config_dir, tmp_path):
    model = load_transformer(musubi_dit, musubi_config_dir)
    model.save_pretrained(tmp_path / "diffusers")
    assert_matches_original(load_transformer(tmp_path / "diffusers"), musubi_tensors)

    shards = tmp_path / "sharded"
    shards.mkdir()
    names = sorted(musubi_tensors)
    halves = {"part-00001-of-00002.safetensors": names[: len(names) // 2],
              "part-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: musubi_tensors[k] for k in keys}, str(shards / file))
    index = {"weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (shards / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert_matches_original(load_transformer(shards, musubi_config_dir), musubi_tensors)


def test_wrong_model_type_is_refused_before_loading(musubi_dit):
    with pytest.raises(UserError, match=r"Wan2\.1 T2V 1\.3B was expected \(dim 1536, 30 blocks"):
        load_transformer(musubi_dit, "wan2.1-t2v-1.3b")
    with pytest.raises(UserError, match="matches no known Wan model"):
        load_transformer(musubi_dit)  # no config beside it and no shipped kind of this size


def test_incomplete_or_damaged_files_are_refused(musubi_tensors, musubi_config_dir, tmp_path):
    missing = {k: v for k, v in musubi_tensors.items() if k != "blocks.2.cross_attn.k.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match=r"1 missing tensors such as `blocks\.2\.cross_attn\.k\.weight`"):
        load_transformer(tmp_path / "missing.safetensors", musubi_config_dir)

    no_block = {k: v for k, v in musubi_tensors.items() if not k.startswith("blocks.1.")}
    save_file(no_block, str(tmp_path / "gap.safetensors"))
    with pytest.raises(UserError, match=r"lacks block\(s\) \[1\] of 4"):
        block_count(tmp_path / "gap.safetensors")

    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_checkpoint_shapes(tmp_path / "garbage.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        load_transformer(tmp_path / "nope.safetensors")


def test_block_count_from_header(musubi_dit, demo_workspace):
    from backend.models.demo import expert_file

    assert block_count(musubi_dit) == 4
    assert block_count(demo_workspace.demo_t2v / "transformer.safetensors") == 8
    assert block_count(expert_file(demo_workspace, "low")) == 8
