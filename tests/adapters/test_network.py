"""AdapterNetwork: targets by Wan names, several networks at once, dropout modes, LoRA+, logs, save/load flag rules."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn as nn

from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError
from backend.models.names import BLOCK_LINEARS, I2V_EXTRA_LINEARS, lora_key_prefix


def _network(model, args=(), rank=4, alpha=2.0, name="network"):
    return AdapterNetwork.create(model, NetworkConfig.from_network_args(rank, alpha, list(args)), name=name)


def _weights(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


# --- targets -----------------------------------------------------------------------------------------------------
def test_default_targets_are_the_ten_block_linears_by_wan_name(tiny_wan):
    network = _network(tiny_wan)
    assert list(network.modules_by_name()) == [f"blocks.{i}.{inner}" for i in range(2) for inner in BLOCK_LINEARS]
    adapter = network.modules_by_name()["blocks.1.self_attn.o"]
    assert adapter.target is tiny_wan.blocks[1].attn1.to_out[0]


def test_wan21_i2v_blocks_have_twelve_targets(make_wan):
    model = make_wan(num_layers=1, added_kv_proj_dim=32, image_dim=16)
    names = list(_network(model).modules_by_name())
    assert len(names) == 12
    assert sorted(names) == sorted(f"blocks.0.{inner}" for inner in BLOCK_LINEARS + I2V_EXTRA_LINEARS)
    assert network_prefixes(model) >= {"lora_unet_blocks_0_cross_attn_k_img", "lora_unet_blocks_0_cross_attn_v_img"}


def network_prefixes(model) -> set[str]:
    return {key.split(".")[0] for key in _network(model).state_dict_for_save()}


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_out = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.ModuleDict({"to_q": nn.Linear(4, 4), "act": nn.GELU()})])


def test_plain_modules_keep_their_own_names():
    plain = _Plain()
    assert list(_network(plain).modules_by_name()) == ["blocks.0.to_q"]  # Linear layers inside blocks
    flat = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    network = _network(flat, rank=2)
    assert list(network.modules_by_name()) == ["0", "2"]
    assert sorted(network.state_dict_for_save())[0] == "lora_unet_0.alpha"


@pytest.mark.parametrize("args,expected", [
    ([r"exclude_patterns=['.*']", r"include_patterns=['blocks\.0\..*']"], [f"blocks.0.{n}" for n in BLOCK_LINEARS]),
    ([r"include_patterns=['blocks\.0\..*']"], [f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_LINEARS]),
    ([r"exclude_patterns=['.*ffn.*', '.*cross_attn.*']"], [f"blocks.{i}.self_attn.{p}" for i in range(2)
                                                          for p in "qkvo"]),
    ([r"exclude_patterns=['.*attn.*']", r"include_patterns=['.*self_attn\.q']"],
     [f"blocks.{i}.{n}" for i in range(2) for n in ("self_attn.q", "ffn.0", "ffn.2")]),
])
def test_musubi_include_exclude_rule(tiny_wan, args, expected):
    assert list(_network(tiny_wan, args).modules_by_name()) == expected


@pytest.mark.parametrize("args,match", [
    ([r"exclude_patterns=['.*modulation.*']"], r"exclude_patterns: `\.\*modulation\.\*` matches none.*closest"),
    ([r"exclude_patterns=['.*']", r"include_patterns=['blocks\.7\..*']"], "include_patterns.*blocks"),
    ([r"exclude_patterns=['.*']"], "leave no module"),
    ([r"exclude_patterns=['blocks.0.attn1.to_q']"], "matches none"),  # diffusers names are not the addressing
])
def test_patterns_that_select_nothing_are_errors(tiny_wan, args, match):
    with pytest.raises(UserError, match=match):
        _network(tiny_wan, args)


def test_per_projection_ranks(tiny_wan):
    args = ["rank_q=2", "rank_kvo=3", "rank_v=5", "rank_ffn=6"]
    ranks = {name: adapter.rank for name, adapter in _network(tiny_wan, args, rank=4).modules_by_name().items()}
    assert ranks["blocks.0.self_attn.q"] == 2 and ranks["blocks.1.cross_attn.q"] == 2
    assert ranks["blocks.0.self_attn.k"] == 3 and ranks["blocks.0.cross_attn.o"] == 3
    assert ranks["blocks.0.self_attn.v"] == 5 and ranks["blocks.1.cross_attn.v"] == 5
    assert ranks["blocks.0.ffn.0"] == 6 and ranks["blocks.1.ffn.2"] == 6


# --- several networks --------------------------------------------------------------------------------------------
def test_two_networks_on_one_model_add_up(tiny_wan, inputs, run, randomized):
    base = run(tiny_wan, inputs)
    saved = _weights(tiny_wan)
    lora = _network(tiny_wan, name="a").inject()
    loha = _network(tiny_wan, ["algo=loha", r"exclude_patterns=['blocks\.1\..*']"], name="b").inject()
    randomized(lora, seed=1)
    randomized(loha, seed=2)
    lora.multiplier, loha.multiplier = 0.6, 1.3
    layer = tiny_wan.blocks[0].attn1.to_q
    x = torch.randn(2, 7, 32)
    expected = (layer.weight + 0.6 * lora.modules_by_name()["blocks.0.self_attn.q"].delta_weight()
                + 1.3 * loha.modules_by_name()["blocks.0.self_attn.q"].delta_weight())
    torch.testing.assert_close(layer(x), nn.functional.linear(x, expected, layer.bias), atol=1e-5, rtol=0)

    both = run(tiny_wan, inputs)
    lora.merge_into_model()
    loha.merge_into_model()
    torch.testing.assert_close(run(tiny_wan, inputs), both, atol=1e-5, rtol=0)
    lora.unmerge()  # out of merge order: loha stays merged, exactly as if merged alone
    loha_alone = _weights(tiny_wan)
    loha.unmerge()
    assert all(torch.equal(saved[k], v) for k, v in tiny_wan.state_dict().items())
    loha.merge_into_model()
    assert all(torch.equal(loha_alone[k], v) for k, v in tiny_wan.state_dict().items())
    loha.unmerge()

    lora.enabled = False
    only_loha = run(tiny_wan, inputs)
    lora.enabled = True
    lora.remove()
    assert torch.equal(run(tiny_wan, inputs), only_loha)
    loha.remove()
    assert torch.equal(run(tiny_wan, inputs), base) and not lora.injected and not loha.injected
    assert not any(hook for module in tiny_wan.modules() for hook in module._forward_hooks.values())


# --- training behaviour ------------------------------------------------------------------------------------------
def test_dropouts_act_only_in_training_mode(tiny_wan, inputs, run, randomized):
    network = _network(tiny_wan, ["dropout=0.3", "rank_dropout=0.3", "module_dropout=0.3"]).inject()
    randomized(network)
    tiny_wan.eval()
    first, second = run(tiny_wan, inputs), run(tiny_wan, inputs)
    assert torch.equal(first, second)
    network.merge_into_model()
    torch.testing.assert_close(run(tiny_wan, inputs), first, atol=1e-5, rtol=0)  # eval mode is the exact adapter
    network.unmerge()
    tiny_wan.train()
    assert not torch.equal(run(tiny_wan, inputs), run(tiny_wan, inputs))
    network.eval()  # either side in eval mode switches dropouts off
    assert torch.equal(run(tiny_wan, inputs), first)


def test_module_dropout_skips_whole_adapters_at_its_rate():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4).train()
    network = _network(nn.Sequential(layer), ["module_dropout=0.25"]).inject()
    randomized_up = network.modules_by_name()["0"].lora_up
    with torch.no_grad():
        randomized_up.normal_()
    x = torch.randn(1, 4)
    base = nn.functional.linear(x, layer.weight, layer.bias)
    skipped = sum(torch.equal(layer(x), base) for _ in range(2000))
    assert 0.21 < skipped / 2000 < 0.29


def test_loraplus_param_groups(tiny_wan):
    lora = _network(tiny_wan, ["loraplus_lr_ratio=8", "use_dora=True"])
    groups = lora.optimizer_param_groups(lr=1e-4)
    assert [group["lr"] for group in groups] == [1e-4, pytest.approx(8e-4)]
    ups = {id(adapter.lora_up) for adapter in lora.adapters.values()}
    assert {id(p) for p in groups[1]["params"]} == ups
    downs_and_magnitudes = {id(p) for adapter in lora.adapters.values() for p in (adapter.lora_down, adapter.magnitude)}
    assert {id(p) for p in groups[0]["params"]} == downs_and_magnitudes
    assert lora.optimizer_param_groups(lr=1e-4, loraplus_lr_ratio=16)[1]["lr"] == pytest.approx(1.6e-3)
    torch.optim.AdamW(groups)  # a real optimizer accepts them

    loha = _network(tiny_wan, ["algo=loha"])
    assert len(loha.optimizer_param_groups(2e-4)) == 1  # no ratio: one group, every parameter
    assert len(loha.optimizer_param_groups(2e-4)[0]["params"]) == 4 * 20
    plus = loha.optimizer_param_groups(2e-4, loraplus_lr_ratio=4)[1]
    assert plus["lr"] == pytest.approx(8e-4)
    assert {id(p) for p in plus["params"]} == {id(getattr(a, n)) for a in loha.adapters.values()
                                               for n in ("hada_w1_a", "hada_w2_a")}


def test_dora_summary_is_one_log_line(tiny_wan, caplog):
    caplog.set_level(logging.INFO, logger="backend.adapters")
    network = _network(tiny_wan, ["algo=locon", "use_dora=True", "conv_dim=2"])
    assert "DoRA enabled on 20 modules, disabled on: 1 non-Linear" in caplog.messages
    assert not network.modules_by_name()["patch_embedding"].use_dora
    caplog.clear()
    _network(tiny_wan, ["use_dora=True", "rank_dropout=0.1"])
    assert caplog.messages == ["DoRA enabled on 0 modules, disabled on: 20 dropout"]
    caplog.clear()
    _network(tiny_wan, ["use_dora=True", "module_dropout=0.1", "dropout=0.0"])
    assert caplog.messages == ["DoRA enabled on 20 modules"]


def test_verbose_lists_modules_and_exclude_mod_warns(tiny_wan, caplog):
    caplog.set_level(logging.INFO, logger="backend.adapters")
    _network(tiny_wan, ["verbose=True", "exclude_mod=False"])
    assert sum(message.startswith("adapter blocks.") for message in caplog.messages) == 20
    assert any("20 adapted modules" in message for message in caplog.messages)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["network_args exclude_mod applies to Qwen-Image's img_mod/txt_mod layers; Wan has none, "
                        "so it changes nothing here."]


# --- saving and loading ------------------------------------------------------------------------------------------
def test_state_dict_for_save_uses_the_musubi_key_layout(tiny_wan, randomized):
    network = _network(tiny_wan, ["use_dora=True"], rank=4, alpha=3.0)
    state = network.state_dict_for_save()
    expected = {f"{lora_key_prefix(f'blocks.{i}.{inner}')}.{suffix}" for i in range(2) for inner in BLOCK_LINEARS
                for suffix in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale")}
    assert set(state) == expected
    assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in state
    assert state["lora_unet_blocks_1_ffn_0.lora_down.weight"].shape == (4, 32)
    assert state["lora_unet_blocks_1_ffn_0.lora_up.weight"].shape == (64, 4)
    assert state["lora_unet_blocks_1_ffn_0.dora_scale"].shape == (64, 1)
    alpha = state["lora_unet_blocks_0_cross_attn_v.alpha"]
    assert alpha.dim() == 0 and alpha.dtype == torch.float32 and float(alpha) == 3.0
    flags = network.flags()
    assert {key: flags[key] for key in ("algo", "use_dora", "use_rslora", "dora_convention")} == {
        "algo": "lora", "use_dora": True, "use_rslora": False, "dora_convention": "base_norm"}
    assert len(flags["dora_base"]["modules"]) == len(network.adapters)
    assert _network(tiny_wan, [], rank=4, alpha=3.0).flags() == {"algo": "lora", "use_dora": False, "use_rslora": False}
    rs = _network(tiny_wan, ["use_rslora=True"], rank=8, alpha=4.0).state_dict_for_save()
    assert float(rs["lora_unet_blocks_0_ffn_2.alpha"]) == pytest.approx(4.0 * math.sqrt(8))  # alpha/r = 4/√8


def _same_outputs(dora: bool):
    if not dora:
        return lambda actual, expected: torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    return lambda actual, expected: torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("args", [["use_dora=True"], ["algo=locon", "use_rslora=True"], ["algo=loha"],
                                  ["algo=locon", "use_dora=True", "conv_dim=2"],
                                  ["algo=lokr", "factor=4"]])
def test_save_then_load_reproduces_the_network(tiny_wan, inputs, run, randomized, args):
    network = _network(tiny_wan, args, rank=2, alpha=3.0).inject()
    randomized(network)
    expected = run(tiny_wan, inputs)
    state, flags = network.state_dict_for_save(), network.flags()
    network.remove()
    resumed = _network(tiny_wan, args, rank=2, alpha=3.0)
    resumed.load_weights(state, flags)
    resumed.inject()
    same = _same_outputs("use_dora=True" in args)  # DoRA files hold ComfyUI's scale: a float round trip away
    same(run(tiny_wan, inputs), expected)
    resumed.remove()
    loaded = AdapterNetwork.from_weights(tiny_wan, state, flags).inject()
    same(run(tiny_wan, inputs), expected)
    assert loaded.flags()["use_dora"] == flags["use_dora"]
    assert {k: v for k, v in loaded.state_dict_for_save().items()}.keys() == state.keys()


def _suspicious_state(tiny_wan):
    """A plain-looking rank-8 LoRA whose alphas are 2·√8 (what an rsLoRA alpha 2 is stored as)."""
    return _network(tiny_wan, ["use_rslora=True"], rank=8, alpha=2.0).state_dict_for_save()


@pytest.mark.parametrize("network_args,flags,match", [
    (["use_rslora=False"], {"use_rslora": True}, "RS-LoRA flag mismatch.*use_rslora=True"),
    (["use_rslora=True"], {"use_rslora": "false"}, "RS-LoRA flag mismatch"),
    (["use_rslora=True"], {}, r"RS-LoRA flag mismatch.*no use_rslora flag \(most alphas equal k·√rank"),
    (["use_dora=True"], {"use_dora": False}, "DoRA flag mismatch: network expects DoRA but weights lack it"),
    (["algo=loha"], {"algo": "lora"}, "algo=lora but this network is algo=loha"),
    ([r"exclude_patterns=['.*ffn.*']"], {}, "the weights hold 4 modules the network lacks"),
])
def test_load_flag_rules_from_the_troubleshooting_table(tiny_wan, network_args, flags, match):
    state = _suspicious_state(tiny_wan)
    with pytest.raises(UserError, match=match):
        _network(tiny_wan, network_args, rank=8).load_weights(state, flags)


def test_unflagged_rslora_looking_file_loads_with_a_hint(tiny_wan, caplog):
    network = _network(tiny_wan, rank=8)
    network.load_weights(_suspicious_state(tiny_wan), {})
    assert any("suggests the file was trained with use_rslora=True" in message for message in caplog.messages)
    assert network.modules_by_name()["blocks.0.ffn.0"].scale == pytest.approx(2 / math.sqrt(8))


def test_dora_weights_on_a_plain_network_warn_and_ignore_magnitudes(tiny_wan, inputs, run, randomized, caplog):
    dora = _network(tiny_wan, ["use_dora=True"])
    randomized(dora)
    state = dora.state_dict_for_save()
    plain = _network(tiny_wan)
    plain.load_weights(state, dora.flags())
    assert any("weights contain DoRA but network doesn't expect it" in m for m in caplog.messages)
    lora_only = {key: value for key, value in state.items() if not key.endswith("dora_scale")}
    reference = AdapterNetwork.from_weights(tiny_wan, lora_only).inject()
    expected = run(tiny_wan, inputs)
    reference.remove()
    plain.inject()
    assert torch.equal(run(tiny_wan, inputs), expected)


def test_bad_weights_are_user_errors(tiny_wan):
    state = _network(tiny_wan, rank=4).state_dict_for_save()
    with pytest.raises(UserError, match="shape"):
        _network(tiny_wan, rank=2).load_weights(state, {})
    with pytest.raises(UserError, match="lora_unet_blocks_9_ffn_0.*another model"):
        AdapterNetwork.from_weights(tiny_wan, state | {"lora_unet_blocks_9_ffn_0.alpha": torch.tensor(1.0)})
    with pytest.raises(UserError, match="marked use_dora but `blocks.0.self_attn.q` has no dora_scale"):
        AdapterNetwork.from_weights(tiny_wan, state, {"use_dora": True})
    with pytest.raises(UserError, match="Tucker"):
        AdapterNetwork.from_weights(tiny_wan, {"lora_unet_blocks_0_ffn_0.hada_t1": torch.zeros(1)})
