"""`python -m backend convert IN OUT --to lora --rank R`: DoRA / LoHa / LoKr -> a plain LoRA musubi-tuner loads.

The reported errors are checked against an independent computation: each module's full-strength ΔW from ComfyUI's
documented DoRA rule on the raw file tensors (or LoHa's Hadamard product), its singular values, and the energy the
dropped ones carry.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.__main__ import main
from backend.adapters.formats import load_lora, save_lora
from backend.adapters.inspect_cli import describe
from backend.adapters.metadata import OURS, build_metadata
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.models.names import lora_key_prefix, wan_to_diffusers


def _convert(capsys, *args) -> tuple[int, str]:
    code = main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _weights_of(model, names):
    state = model.state_dict()
    return {name: state[wan_to_diffusers(name) + ".weight"].detach().clone() for name in names}


def _dora_file(model, path, randomized):
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(8, 4.0, ["use_dora=True"]))
    randomized(network, std=0.2)
    save_lora(path, network.state_dict_for_save(),
              build_metadata("dora", 8, 4.0, ["use_dora=True"], network.flags(), "demo-t2v", loraid=3))
    return network


def _comfy_dora_delta(weight, tensors, prefix):
    """ComfyUI's DoRA rule (output-axis scale over the base row norms) at strength 1, minus the base."""
    weight = weight.double()
    down, up = tensors[f"{prefix}.lora_down.weight"].double(), tensors[f"{prefix}.lora_up.weight"].double()
    calc = weight + up @ down * (float(tensors[f"{prefix}.alpha"]) / down.shape[0])
    norm = weight.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps
    return calc * tensors[f"{prefix}.dora_scale"].double() / norm - weight


def _svd_errors(deltas: dict[str, torch.Tensor], rank: int) -> tuple[dict[str, float], float]:
    errors, dropped_sum, total_sum = {}, 0.0, 0.0
    for name, delta in deltas.items():
        sigma = torch.linalg.svdvals(delta.double())
        dropped, total = float((sigma[rank:] ** 2).sum()), float((sigma ** 2).sum())
        errors[name] = math.sqrt(dropped / total)
        dropped_sum, total_sum = dropped_sum + dropped, total_sum + total
    return errors, math.sqrt(dropped_sum / total_sum)


def _reported(out: str) -> tuple[dict[str, float], float]:
    modules = {m.group(1): float(m.group(2)) / 100 for m in re.finditer(r"^(\S+)\s+relative error ([\d.]+)%$", out,
                                                                        re.M)}
    overall = float(re.search(r"overall relative error ([\d.]+)%", out).group(1)) / 100
    return modules, overall


def test_dora_to_plain_lora_reports_the_svd_error_and_loads_as_a_musubi_lora(tiny_wan, randomized, tmp_path,
                                                                              capsys):
    src, base_file, out_file = tmp_path / "dora.safetensors", tmp_path / "dit.safetensors", tmp_path / "plain.safetensors"
    network = _dora_file(tiny_wan, src, randomized)
    save_file({key: value.contiguous() for key, value in tiny_wan.state_dict().items()}, str(base_file))
    names = list(network.modules_by_name())
    code, out = _convert(capsys, src, out_file, "--to", "lora", "--rank", 3, "--base", base_file)
    assert code == 0, out
    assert "warning:" not in out  # the base it was trained on

    raw, base = load_file(str(src)), _weights_of(tiny_wan, names)
    deltas = {name: _comfy_dora_delta(base[name], raw, lora_key_prefix(name)) for name in names}
    expected_modules, expected_overall = _svd_errors(deltas, 3)
    modules, overall = _reported(out)
    assert set(modules) == set(names)
    assert max(abs(modules[n] - expected_modules[n]) for n in names) < 1e-6  # printed to 4 decimals of a percent
    assert overall == pytest.approx(expected_overall, abs=1e-6) and 0.0 < expected_overall < 1.0
    plain = load_lora(out_file)
    assert float(plain.metadata[OURS + "svd_relative_error"]) == pytest.approx(expected_overall, rel=1e-5)

    # The file is a plain musubi-layout LoRA of rank 3 (no dora_scale) that our adapter loader applies.
    assert plain.source_format == "loraid_studio" and plain.algo == "lora" and not plain.flags["use_dora"]
    assert all(key.startswith("lora_unet_") and not key.endswith("dora_scale") for key in plain.tensors)
    assert set(plain.ranks.values()) == {3} and plain.info["loraid"] == 3
    loaded = AdapterNetwork.from_weights(tiny_wan, plain.tensors, plain.flags)
    loaded.merge_into_model(1.0)
    merged = _weights_of(tiny_wan, names)
    for name in names:  # W + the best rank-3 approximation of the DoRA ΔW
        u, s, vh = torch.linalg.svd(deltas[name], full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vh[:3]
        torch.testing.assert_close(merged[name].double(), base[name].double() + best, rtol=0, atol=1e-5)


def test_another_base_is_warned_about(tiny_wan, make_wan, randomized, tmp_path, capsys):
    src, other = tmp_path / "dora.safetensors", tmp_path / "other.safetensors"
    _dora_file(tiny_wan, src, randomized)
    save_file({key: value.contiguous() for key, value in make_wan(seed=9).state_dict().items()}, str(other))
    code, out = _convert(capsys, src, tmp_path / "plain.safetensors", "--to", "lora", "--rank", 2, "--base", other)
    assert code == 0 and "warning: dora.safetensors is a DoRA file whose scales were computed on another base" in out


def test_loha_at_full_rank_converts_exactly_without_a_base(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (fan_in, fan_out) in {"blocks.0.ffn.0": (16, 24), "blocks.0.self_attn.q": (16, 16)}.items():
        prefix = lora_key_prefix(name)
        tensors |= {f"{prefix}.hada_w1_a": torch.randn(fan_out, 2, generator=generator),
                    f"{prefix}.hada_w1_b": torch.randn(2, fan_in, generator=generator),
                    f"{prefix}.hada_w2_a": torch.randn(fan_out, 2, generator=generator),
                    f"{prefix}.hada_w2_b": torch.randn(2, fan_in, generator=generator),
                    f"{prefix}.alpha": torch.tensor(1.0)}
    src = save_lora(tmp_path / "loha.safetensors", tensors, build_metadata("loha", 2, 1.0, ["algo=loha"], {}, None))
    assert "--to lora --rank R`" in describe(load_lora(src))["musubi"]
    code, out = _convert(capsys, src, tmp_path / "plain.safetensors", "--to", "lora", "--rank", 16)
    assert code == 0, out
    plain = load_lora(tmp_path / "plain.safetensors")
    for name in ("blocks.0.ffn.0", "blocks.0.self_attn.q"):
        prefix = lora_key_prefix(name)
        loha = 0.5 * ((tensors[f"{prefix}.hada_w1_a"] @ tensors[f"{prefix}.hada_w1_b"])
                      * (tensors[f"{prefix}.hada_w2_a"] @ tensors[f"{prefix}.hada_w2_b"]))
        parts = plain.parts(name)
        torch.testing.assert_close(parts["lora_up.weight"] @ parts["lora_down.weight"] * plain.scales[name], loha,
                                   rtol=0, atol=1e-4)
    assert _reported(out)[1] < 1e-6


def test_dora_without_base_and_rank_without_lora_are_refused(tiny_wan, randomized, tmp_path, capsys):
    src = tmp_path / "dora.safetensors"
    _dora_file(tiny_wan, src, randomized)
    code, out = _convert(capsys, src, tmp_path / "x.safetensors", "--to", "lora", "--rank", 2)
    assert code == 2 and "pass the DiT it was trained on with --base" in out
    code, out = _convert(capsys, src, tmp_path / "x.safetensors", "--to", "musubi", "--rank", 2)
    assert code == 2 and "--rank applies to --to lora only" in out
    assert not (tmp_path / "x.safetensors").exists()
    assert "--base DIT" in describe(load_lora(src))["musubi"]
