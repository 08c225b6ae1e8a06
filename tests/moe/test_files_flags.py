"""The LoRA-MoE file round trip, a single expert exported as a plain LoRA that our adapter loader reads back with
the same output, inspect, and the LoRA-MoE fork's flags."""
from __future__ import annotations

import json

import pytest
import torch

from backend.__main__ import main as backend_main
from backend.adapters.formats import load_lora, save_lora
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError
from backend.models import demo_parts
from backend.moe.files import export_expert, load_into, load_moe, save_moe
from backend.moe.network import MoeNetwork, MoeSpec
from backend.moe.seed_flags import translate_generate, translate_train

SPEC = MoeSpec(expert_names=("red", "blue"), rank=2, alpha=1.0,
               network_args=("exclude_patterns=['.*']", r"include_patterns=['blocks\.(6|7)\..*']", "rank_q=4"))


def _model():
    return demo_parts.build_transformer("demo-t2v", 0, part=10).requires_grad_(False).eval()


def _trained_network(model):
    torch.manual_seed(1)
    network = MoeNetwork.create(model, SPEC)
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0.0, 0.1)
    return network


def _run(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, model.config.in_channels, 1, 4, 4, generator=g)
    text = torch.randn(1, 5, model.config.text_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([400.0]), encoder_hidden_states=text,
                     return_dict=False)[0]


def test_round_trip_and_exported_expert_matches_the_hinted_mixture(tmp_path):
    model = _model()
    network = _trained_network(model)
    path = save_moe(tmp_path / "moe.safetensors", {"single": network}, model_kind="demo-t2v", step=7,
                    stage1={"single": {"dit": "x.safetensors", "fingerprint": None, "merge": None}})
    moe = load_moe(path)
    assert moe.spec == SPEC and moe.labels == ["single"] and moe.header["step"] == 7
    reloaded = MoeNetwork.create(model, moe.spec)
    load_into(reloaded, moe)
    for (name, a), b in zip(network.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name

    with torch.no_grad():
        reloaded.gate.knots.zero_()  # τ = 1: the exported expert is the expert at gate 1 and τ 1
    reloaded.eval().inject()
    reloaded.set_hint(torch.tensor([[0.0, 1.0]]))
    mixed = _run(model)
    reloaded.remove()

    exported = export_expert(load_moe(path), "blue", tmp_path / "blue.safetensors")[0]
    lora = load_lora(exported)
    assert lora.modules and all(name.startswith("blocks.6.") or name.startswith("blocks.7.") for name in lora.modules)
    assert lora.ranks["blocks.6.self_attn.q"] == 4 and lora.ranks["blocks.6.ffn.0"] == 2
    plain = AdapterNetwork.from_weights(model, lora.tensors, lora.flags).inject()
    alone = _run(model)
    plain.remove()
    base = _run(model)
    torch.testing.assert_close(alone, mixed, rtol=1e-5, atol=1e-6)
    assert (alone - base).abs().max() > 1e-4  # the expert does something


def test_inspect_shows_a_moe_file(tmp_path, capsys):
    model = _model()
    path = save_moe(tmp_path / "moe.safetensors", {"single": _trained_network(model)}, model_kind="demo-t2v",
                    step=3, stage1={})
    assert backend_main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "lora_moe" and info["experts"] == ["red", "blue"]
    assert info["transformers"]["single"]["modules"] == 20 and info["transformers"]["single"]["ranks"] == [2, 4]


def test_a_plain_lora_is_refused_as_moe(tmp_path):
    model = _model()
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(2, 1.0, []))
    path = save_lora(tmp_path / "plain.safetensors", network.state_dict_for_save())
    with pytest.raises(UserError, match="not a LoRA-MoE file"):
        load_moe(path)


def test_seed_training_flags_map_to_our_settings():
    from backend.moe.cli import parse_train

    argv = ["--training_stage", "stage_b", "--no_use_base_lora", "--num_experts", "3", "--routing_mode", "learned",
            "--train_router", "--use_teacher_guidance", "--lora_dim", "4", "--lora_alpha", "1.0", "--rank_q", "8",
            "--rank_kvo", "4", "--task", "i2v-A14B"]
    settings, _ = parse_train(argv)
    assert settings.expert_names == ["expert_1", "expert_2", "expert_3"]
    assert settings.routing_mode == "learned+hint" and settings.network_dim == 4 and settings.network_alpha == 1.0
    assert settings.network_args == ["rank_q=8", "rank_kvo=4"] and settings.model_kind == "wan2.2-i2v-a14b"


@pytest.mark.parametrize("argv, words", [
    (["--training_stage", "stage_a"], "backend.train"),
    (["--use_base_lora"], "moe merge"),
    (["--instrument_hint", "hook"], "--hint NAME"),
    (["--alpha_expert", "1.0"], "--expert_strength"),
])
def test_seed_training_flags_without_an_equivalent_are_refused_with_ours(argv, words):
    with pytest.raises(UserError, match=words.replace("-", r"\-").replace(".", r"\.")):
        translate_train(argv)


def test_seed_inference_flags_map_to_generate():
    assert translate_generate(["--lora_moe_weights", "m.safetensors", "--instrument_hint", "hook", "--alpha_expert",
                               "0.8", "--alpha_base", "0.0", "--prompt", "x"]) == \
        ["--moe", "m.safetensors", "--hint", "hook", "--expert_strength", "*=0.8", "--prompt", "x"]
    with pytest.raises(UserError, match="stage 1 is merged"):
        translate_generate(["--alpha_base", "1.0"])


@pytest.mark.parametrize("compile_choice, refused", [("on", True), ("auto", False), ("off", False)])
def test_stage2_refuses_only_a_compile_it_cannot_do(tmp_path, compile_choice, refused):
    from backend.moe.settings import MoeTrainSettings
    from backend.moe.train import train_moe

    settings = MoeTrainSettings(model_kind="demo-a14b", expert="both", output_dir=str(tmp_path),
                                compile=compile_choice, dataset_config="")
    expected = "compile='on' is not available" if refused else r"No Dataset TOML \(dataset_config\) is given"
    with pytest.raises(UserError, match=expected):
        train_moe(settings, None, log=lambda *_: None)
    assert not any(tmp_path.iterdir())
