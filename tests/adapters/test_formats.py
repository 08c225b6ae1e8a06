"""LoRA file formats: canonical save/load, musubi / blissful / ComfyUI / diffusers layouts, flags, bad files."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backend.adapters.exports import to_comfy, to_diffusers
from backend.adapters.formats import load_lora, lora_from_state_dict, save_lora, suspicious_rslora_hint
from backend.adapters.keys import module_name_from_prefix
from backend.adapters.metadata import build_metadata, parse_metadata
from backend.errors import UserError
from backend.models.names import BLOCK_LINEARS, I2V_EXTRA_LINEARS, lora_key_prefix

SHAPES = {"blocks.0.self_attn.q": (16, 16), "blocks.0.cross_attn.k_img": (16, 16), "blocks.0.ffn.0": (16, 32),
          "blocks.1.ffn.2": (32, 16), "blocks.2.cross_attn.o": (16, 16)}


def _delta(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """scale·B@A computed straight from canonical tensors."""
    p = lora_key_prefix(name)
    down, up = tensors[f"{p}.lora_down.weight"].double(), tensors[f"{p}.lora_up.weight"].double()
    return float(tensors[f"{p}.alpha"]) / down.shape[0] * (up @ down)


# --- key names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [f"blocks.{i}.{inner}" for i in (0, 7, 39) for inner in BLOCK_LINEARS + I2V_EXTRA_LINEARS]
                         + ["patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                            "time_embedding.2", "time_projection.1", "head.head", "img_emb.proj.1"])
def test_prefix_decodes_back_to_the_wan_name(name):
    assert module_name_from_prefix(lora_key_prefix(name)) == name


@pytest.mark.parametrize("prefix", ["lora_unet_blocks_0_self_attn_x", "lora_unet_blocks_0_norm3", "lora_unet_foo",
                                    "lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_unet_blocks_a_ffn_0"])
def test_unknown_prefix_is_a_user_error_naming_it(prefix):
    with pytest.raises(UserError, match=prefix):
        module_name_from_prefix(prefix)


# --- canonical save / load -------------------------------------------------------------------------------------

def test_save_load_round_trip_is_bit_exact_with_musubi_key_names(tmp_path, lora_builder):
    tensors = lora_builder(SHAPES, rank={**{n: 4 for n in SHAPES}, "blocks.0.ffn.0": 8}, alpha=3.0, seed=1)
    md = build_metadata("lora", 4, 3.0, ["loraplus_lr_ratio=8"], {"use_rslora": False}, "wan2.1-t2v-1.3b",
                        step=120, epoch=3)
    path = save_lora(tmp_path / "a.safetensors", tensors, md)
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(tensors)
        assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in f.keys()
        assert f.metadata() == md
    lf = load_lora(path)
    assert set(lf.tensors) == set(tensors)
    for key, value in tensors.items():
        assert lf.tensors[key].dtype == torch.float32 and torch.equal(lf.tensors[key], value), key
    assert lf.source_format == "loraid_studio" and lf.algo == "lora"
    assert lf.modules == ["blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.0.cross_attn.k_img", "blocks.1.ffn.2",
                          "blocks.2.cross_attn.o"]
    assert lf.ranks["blocks.0.ffn.0"] == 8 and lf.scales["blocks.0.ffn.0"] == 3.0 / 8
    assert lf.scales["blocks.1.ffn.2"] == 0.75 and lf.blocks == [0, 1, 2]
    assert lf.info["step"] == 120 and lf.info["epoch"] == 3


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_save_precision_casts_weights_but_keeps_alpha_fp32(tmp_path, lora_builder, precision, dtype):
    tensors = lora_builder(SHAPES, alpha=1.5, dora=True)
    lf = load_lora(save_lora(tmp_path / "p.safetensors", tensors, precision=precision))
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            assert lf.tensors[key].dtype == torch.float32 and lf.tensors[key].dim() == 0
            assert float(lf.tensors[key]) == 1.5
        else:
            assert lf.tensors[key].dtype == dtype and torch.equal(lf.tensors[key], value.to(dtype)), key
    assert lf.algo == "dora" and lf.flags["use_dora"]


def test_save_refuses_an_incomplete_module_and_an_unknown_precision(tmp_path, lora_builder):
    tensors = lora_builder(SHAPES)
    del tensors["lora_unet_blocks_0_ffn_0.lora_up.weight"]
    with pytest.raises(UserError, match="lora_unet_blocks_0_ffn_0.*lora_up.weight"):
        save_lora(tmp_path / "x.safetensors", tensors)
    with pytest.raises(UserError, match="fp8"):
        save_lora(tmp_path / "x.safetensors", lora_builder(SHAPES), precision="fp8")
    assert not (tmp_path / "x.safetensors").exists()


def test_loha_and_lokr_round_trip_with_their_ranks(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {
        "lora_unet_blocks_0_ffn_0.hada_w1_a": torch.randn(32, 4, generator=g),
        "lora_unet_blocks_0_ffn_0.hada_w1_b": torch.randn(4, 16, generator=g),
        "lora_unet_blocks_0_ffn_0.hada_w2_a": torch.randn(32, 4, generator=g),
        "lora_unet_blocks_0_ffn_0.hada_w2_b": torch.randn(4, 16, generator=g),
        "lora_unet_blocks_0_ffn_0.alpha": torch.tensor(2.0),
    }
    lf = load_lora(save_lora(tmp_path / "loha.safetensors", tensors))
    assert lf.algo == "loha" and lf.ranks == {"blocks.0.ffn.0": 4} and lf.scales == {"blocks.0.ffn.0": 0.5}
    lokr = {
        "lora_unet_blocks_1_self_attn_q.lokr_w1": torch.randn(4, 4, generator=g),
        "lora_unet_blocks_1_self_attn_q.lokr_w2_a": torch.randn(4, 2, generator=g),
        "lora_unet_blocks_1_self_attn_q.lokr_w2_b": torch.randn(2, 4, generator=g),
        "lora_unet_blocks_1_self_attn_q.alpha": torch.tensor(1.0),
        "lora_unet_blocks_1_self_attn_k.lokr_w1": torch.randn(4, 4, generator=g),
        "lora_unet_blocks_1_self_attn_k.lokr_w2": torch.randn(4, 4, generator=g),
        "lora_unet_blocks_1_self_attn_k.alpha": torch.tensor(7.0),
    }
    lf = load_lora(save_lora(tmp_path / "lokr.safetensors", lokr))
    assert lf.algo == "lokr"
    assert lf.ranks == {"blocks.1.self_attn.q": 2, "blocks.1.self_attn.k": None}
    assert lf.scales == {"blocks.1.self_attn.q": 0.5, "blocks.1.self_attn.k": 1.0}  # full Kronecker factors: scale 1


# --- musubi-tuner files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,count,blocks", [("lora_full", 40, [0, 1, 2, 3]), ("lora_blocks_0_1", 20, [0, 1])])
def test_musubi_golden_files_load(musubi_dir, name, count, blocks):
    path = musubi_dir / f"{name}.safetensors"
    lf = load_lora(path)
    assert lf.source_format == "musubi" and lf.algo == "lora"
    assert len(lf.modules) == count and lf.blocks == blocks
    assert set(lf.ranks.values()) == {4} and set(lf.alphas.values()) == {2.0}
    assert set(lf.scales.values()) == {0.5}
    assert lf.flags == {"use_rslora": False, "use_dora": False} and suspicious_rslora_hint(lf) is None
    with safe_open(str(path), "pt") as f:  # the canonical tensors are the file's tensors, untouched
        for key in f.keys():
            assert torch.equal(lf.tensors[key], f.get_tensor(key).reshape(lf.tensors[key].shape))
        assert lf.info["network_module"] == "networks.lora_wan" and lf.info["rank"] == 4


def test_musubi_style_file_from_its_documented_layout(tmp_path, lora_builder):
    tensors = lora_builder(SHAPES, rank=8, alpha=4.0, seed=5)
    del tensors["lora_unet_blocks_1_ffn_2.alpha"]  # kohya / musubi: no alpha means alpha = rank
    md = {"ss_network_module": "networks.lora_wan", "ss_network_dim": "8", "ss_network_alpha": "4.0",
          "ss_network_args": json.dumps({"exclude_patterns": "['.*modulation.*']"}), "ss_seed": "42"}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata=md)
    lf = load_lora(tmp_path / "m.safetensors")
    assert lf.source_format == "musubi"
    assert lf.scales["blocks.0.self_attn.q"] == 0.5 and lf.scales["blocks.1.ffn.2"] == 1.0
    assert lf.tensors["lora_unet_blocks_1_ffn_2.alpha"].dtype == torch.float32
    assert lf.info["network_args"] == ["exclude_patterns=['.*modulation.*']"] and lf.info["seed"] == 42
    assert any("no alpha" in note for note in lf.notes)


# --- blissful-tuner files --------------------------------------------------------------------------------------

def _blissful_file(path, lora_builder, rslora: bool, dora: bool, alpha: float):
    tensors = lora_builder(SHAPES, rank=8, alpha=alpha, seed=9)
    magnitudes = {}
    if dora:
        for name, (_, fan_out) in SHAPES.items():
            magnitudes[name] = torch.rand(fan_out) + 0.5  # blissful: per-module [out] magnitude
            tensors[f"{lora_key_prefix(name)}.dora_layer.weight"] = magnitudes[name]
    tensors["use_dora_flag"] = torch.tensor(dora, dtype=torch.bool)
    tensors["use_rslora_flag"] = torch.tensor(rslora, dtype=torch.bool)
    args = {"use_rslora": str(rslora), "use_dora": str(dora)}
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora_wan", "ss_network_dim": "8",
                                            "ss_network_alpha": str(alpha), "ss_network_args": json.dumps(args)})
    return tensors, magnitudes


def test_blissful_rslora_dora_file_loads_with_its_scale_and_flags(tmp_path, lora_builder):
    path = tmp_path / "b.safetensors"
    raw, magnitudes = _blissful_file(path, lora_builder, rslora=True, dora=True, alpha=4.0)
    lf = load_lora(path)
    assert lf.source_format == "blissful" and lf.algo == "dora"
    assert lf.flags == {"use_rslora": True, "use_dora": True, "dora_convention": "merged_norm"}
    assert lf.explicit_flags == {"use_rslora", "use_dora"}
    for name in SHAPES:  # blissful's rsLoRA scale is alpha/√r; the canonical alpha/r must give the same number
        assert lf.scales[name] == pytest.approx(4.0 / math.sqrt(8), rel=1e-6)
        p = lora_key_prefix(name)
        assert torch.equal(lf.tensors[f"{p}.dora_scale"], magnitudes[name].reshape(-1, 1))
        assert torch.equal(lf.tensors[f"{p}.lora_up.weight"], raw[f"{p}.lora_up.weight"])
    assert "use_dora_flag" not in lf.tensors and "use_rslora_flag" not in lf.tensors
    assert not any(key.endswith("dora_layer.weight") for key in lf.tensors)
    assert suspicious_rslora_hint(lf) is None


def test_blissful_plain_file_keeps_alpha_over_rank(tmp_path, lora_builder):
    path = tmp_path / "b.safetensors"
    _blissful_file(path, lora_builder, rslora=False, dora=False, alpha=4.0)
    lf = load_lora(path)
    assert lf.source_format == "blissful" and lf.algo == "lora"
    assert lf.flags == {"use_rslora": False, "use_dora": False} and set(lf.scales.values()) == {0.5}


def test_saving_a_blissful_file_writes_flags_as_metadata_not_tensors(tmp_path, lora_builder):
    path = tmp_path / "b.safetensors"
    _blissful_file(path, lora_builder, rslora=True, dora=True, alpha=4.0)
    lf = load_lora(path)
    md = build_metadata(lf.algo, 8, 4.0 * math.sqrt(8), [], lf.flags, None)
    again = load_lora(save_lora(tmp_path / "ours.safetensors", lf.tensors, md))
    assert again.flags == lf.flags and again.scales == lf.scales
    with safe_open(str(tmp_path / "ours.safetensors"), "pt") as f:
        assert not any("flag" in key for key in f.keys())
        assert any(key.endswith(".dora_scale") for key in f.keys())


# --- ComfyUI and diffusers layouts -----------------------------------------------------------------------------

def test_comfy_layout_round_trips_to_canonical(lora_builder):
    tensors = lora_builder(SHAPES, rank=4, alpha=3.0, dora=True)
    lf = lora_from_state_dict(tensors)
    kept = to_comfy(lf, fold_alpha=False)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in kept
    assert "diffusion_model.blocks.0.self_attn.q.dora_scale" in kept
    back = lora_from_state_dict(kept)
    assert back.source_format == "comfy"
    assert set(back.tensors) == set(tensors) and all(torch.equal(back.tensors[k], v) for k, v in tensors.items())
    folded = lora_from_state_dict(to_comfy(lf, fold_alpha=True))
    assert not any(k.endswith(".alpha") for k in to_comfy(lf, fold_alpha=True))
    for name in SHAPES:
        assert folded.scales[name] == 1.0
        torch.testing.assert_close(_delta(folded.tensors, name), _delta(tensors, name), rtol=1e-6, atol=1e-7)


def test_comfy_variants_model_prefix_and_down_up_names(lora_builder):
    tensors = lora_builder({"blocks.3.ffn.0": (8, 16)}, rank=2, alpha=1.0)
    variant = {"model.diffusion_model.blocks.3.ffn.0.lora_down.weight": tensors["lora_unet_blocks_3_ffn_0.lora_down.weight"],
               "model.diffusion_model.blocks.3.ffn.0.lora_up.weight": tensors["lora_unet_blocks_3_ffn_0.lora_up.weight"],
               "model.diffusion_model.blocks.3.ffn.0.alpha": tensors["lora_unet_blocks_3_ffn_0.alpha"]}
    lf = lora_from_state_dict(variant)
    assert lf.modules == ["blocks.3.ffn.0"] and lf.scales == {"blocks.3.ffn.0": 0.5}


def test_diffusers_layout_round_trips_with_scale_folded(lora_builder):
    tensors = lora_builder(SHAPES, rank=4, alpha=6.0, seed=2)
    exported = to_diffusers(lora_from_state_dict(tensors))
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in exported
    assert "transformer.blocks.0.attn2.add_k_proj.lora_B.weight" in exported
    assert "transformer.blocks.0.ffn.net.0.proj.lora_A.weight" in exported
    back = lora_from_state_dict(exported)
    assert back.source_format == "diffusers" and back.modules == lora_from_state_dict(tensors).modules
    for name in SHAPES:
        torch.testing.assert_close(_delta(back.tensors, name), _delta(tensors, name), rtol=1e-6, atol=1e-7)


def test_peft_alpha_from_diffusers_adapter_metadata(lora_builder):
    tensors = lora_builder({"blocks.0.self_attn.q": (16, 16), "blocks.0.ffn.2": (32, 16)}, rank=4, alpha=4.0)
    peft = {k.replace("lora_unet_blocks_0_self_attn_q", "transformer.blocks.0.attn1.to_q")
             .replace("lora_unet_blocks_0_ffn_2", "transformer.blocks.0.ffn.net.2")
             .replace("lora_down", "lora_A").replace("lora_up", "lora_B"): v
            for k, v in tensors.items() if not k.endswith(".alpha")}
    assert lora_from_state_dict(peft).scales == {"blocks.0.self_attn.q": 1.0, "blocks.0.ffn.2": 1.0}
    config = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"ffn.net.2": 2}}
    lf = lora_from_state_dict(peft, {"lora_adapter_metadata": json.dumps(config)})
    assert lf.scales == {"blocks.0.self_attn.q": 2.0, "blocks.0.ffn.2": 0.5}
    config["transformer.use_rslora"] = True
    lf = lora_from_state_dict(peft, {"lora_adapter_metadata": json.dumps(config)})
    assert lf.scales["blocks.0.self_attn.q"] == pytest.approx(8 / 2)  # rsLoRA: alpha / √r


# --- rsLoRA hint -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank,alpha,metadata,hinted", [
    (8, math.sqrt(8), {}, True),
    (32, 4 * math.sqrt(32), {}, True),
    (8, float(torch.tensor(math.sqrt(8)).bfloat16()), {}, True),  # alpha written in bf16
    (8, math.sqrt(8), {"loraid_studio.version": "1", "loraid_studio.use_rslora": "false"}, False),
    (8, 4.0, {}, False),
    (8, 8.0, {}, False),
    (4, 2.0, {}, False),  # perfect-square rank: √r·k is an ordinary alpha
    (16, 4.0, {}, False),
])
def test_suspicious_rslora_hint(lora_builder, rank, alpha, metadata, hinted):
    lf = lora_from_state_dict(lora_builder(SHAPES, rank=rank, alpha=alpha), metadata)
    hint = suspicious_rslora_hint(lf)
    assert (hint is not None) == hinted
    if hinted:
        assert "rsLoRA" in hint and f"rank {rank}" in hint


def test_hint_needs_a_majority(lora_builder):
    alphas = {name: (math.sqrt(8) if i < 2 else 4.0) for i, name in enumerate(SHAPES)}  # 2 of 5
    assert suspicious_rslora_hint(lora_from_state_dict(lora_builder(SHAPES, rank=8, alpha=alphas))) is None


# --- bad files -------------------------------------------------------------------------------------------------

def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.rstrip().endswith(".")


def test_bad_files_are_one_sentence_user_errors(tmp_path, musubi_dir, lora_builder):
    valid = save_lora(tmp_path / "valid.safetensors", lora_builder(SHAPES)).read_bytes()
    cases = {
        "random.safetensors": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
        .to(torch.uint8).numpy().tobytes(),
        "empty.safetensors": b"",
        "cut_header.safetensors": valid[:40],
        "cut_data.safetensors": valid[:-100],
        "notes.txt": b"just some text, not tensors",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as err:
            load_lora(tmp_path / name)
        assert _one_sentence(str(err.value)) and name in str(err.value), (name, str(err.value))
    for path, fragment in [(tmp_path / "missing.safetensors", "does not exist"), (tmp_path, "folder"),
                           (musubi_dir / "dit.safetensors", "blocks.0.cross_attn.k.bias")]:
        with pytest.raises(UserError, match=fragment) as err:
            load_lora(path)
        assert _one_sentence(str(err.value))


def test_unknown_keys_and_incomplete_modules_name_the_key(tmp_path, lora_builder):
    tensors = lora_builder(SHAPES)
    save_file({**tensors, "lora_unet_blocks_0_mystery.lora_down.weight": torch.zeros(2, 2)},
              str(tmp_path / "u.safetensors"))
    with pytest.raises(UserError, match="lora_unet_blocks_0_mystery"):
        load_lora(tmp_path / "u.safetensors")
    save_file({"lora_unet_blocks_0_ffn_0.lora_down.weight": torch.zeros(2, 4)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(UserError, match="lora_unet_blocks_0_ffn_0` lacks lora_up.weight"):
        load_lora(tmp_path / "i.safetensors")
    save_file({"diffusion_model.blocks.0.ffn.0.diff": torch.zeros(2, 4)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(UserError, match="full-weight difference"):
        load_lora(tmp_path / "d.safetensors")
    with pytest.raises(UserError, match="contains no tensors"):
        lora_from_state_dict({})


# --- metadata --------------------------------------------------------------------------------------------------

def test_metadata_round_trip_with_loraid_allocation():
    allocation = {"scheme": "blocks_per_loraid", "blocks": [8, 9, 10, 11], "expert": "high_noise"}
    args = ["use_rslora=True", "exclude_patterns=['.*(a=b).*']"]
    md = build_metadata("dora", 16, 8.0, args, {"use_rslora": True, "use_dora": True}, "wan2.2-t2v-a14b",
                        loraid=3, allocation=allocation, step=500, epoch=2,
                        extra={"ss_learning_rate": "0.0001", "ss_seed": 42}, title="cats")
    assert all(isinstance(v, str) for v in md.values())
    assert md["ss_network_module"] == "networks.lora_wan" and md["ss_network_dim"] == "16"
    assert md["ss_network_alpha"] == "8.0" and md["ss_loraid"] == "3"
    assert json.loads(md["ss_network_args"]) == {"use_rslora": "True", "exclude_patterns": "['.*(a=b).*']"}
    assert md["modelspec.sai_model_spec"] == "1.0.0" and md["modelspec.architecture"] == "wan2.2-t2v-a14b/lora"
    info = parse_metadata(md)
    assert info["ours"] and info["algo"] == "dora" and info["flags"] == {"use_rslora": True, "use_dora": True}
    assert info["loraid"] == 3 and info["allocation"] == allocation and info["network_args"] == args
    assert (info["step"], info["epoch"], info["learning_rate"], info["seed"]) == (500, 2, 1e-4, 42)
    assert info["base_model"] == "wan2.2-t2v-a14b" and info["title"] == "cats"


def test_lycoris_metadata_names_the_algorithm():
    md = build_metadata("loha", 8, 4, {"factor": 4}, {}, None)
    assert md["ss_network_module"] == "lycoris.kohya"
    assert json.loads(md["ss_network_args"]) == {"factor": "4", "algo": "loha"}
    with pytest.raises(UserError, match="use_dora"):
        build_metadata("lora", 4, 4, ["use_dora"], {}, None)
