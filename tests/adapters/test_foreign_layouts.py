"""LoRA files written by the trainers users come from, each built from its layout's documented key names, load through
`load_lora` (the reader behind merge, generate, the LORAID map and inspect) and give the same ΔW per module as the
same factors written in the musubi layout; ΔW is checked against B·A·alpha/rank (LoHa / LoKr: their products)
computed here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from backend.adapters.formats import load_lora
from backend.adapters.merge import delta_for_module
from backend.compose.merge_plan import recorded_expert
from backend.loraid.file_coverage import coverage_of_file
from backend.models.names import lora_key_prefix, wan_to_diffusers

# Wan name -> (out, in); cross_attn.k_img / v_img are the Wan2.1 I2V image-conditioning projections.
SHAPES = {"blocks.0.self_attn.q": (16, 16), "blocks.0.cross_attn.k_img": (16, 24), "blocks.0.cross_attn.v_img": (16, 24),
          "blocks.1.ffn.0": (32, 16), "blocks.1.ffn.2": (16, 32)}
RANK, ALPHA = 4, 2.0


def _factors(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(RANK, n_in, generator=generator), torch.randn(n_out, RANK, generator=generator))
            for name, (n_out, n_in) in SHAPES.items()}


def _expected_lora(factors, alpha: float) -> dict[str, torch.Tensor]:
    return {name: (up.double() @ down.double()) * alpha / RANK for name, (down, up) in factors.items()}


def musubi(factors, alpha: float | None = ALPHA) -> dict[str, torch.Tensor]:
    out = {}
    for name, (down, up) in factors.items():
        p = lora_key_prefix(name)  # lora_unet_blocks_0_self_attn_q
        out[f"{p}.lora_down.weight"], out[f"{p}.lora_up.weight"] = down, up
        if alpha is not None:
            out[f"{p}.alpha"] = torch.tensor(alpha)
    return out


def dotted(factors, prefix: str, down_key: str, up_key: str, alpha: float | None, diffusers_names: bool = False):
    """`<prefix><module>.<down_key>` / `.<up_key>` (/ `.alpha`): ComfyUI, diffusion-pipe, ai-toolkit, diffusers."""
    out = {}
    for name, (down, up) in factors.items():
        module = wan_to_diffusers(name) if diffusers_names else name
        out[f"{prefix}{module}.{down_key}"], out[f"{prefix}{module}.{up_key}"] = down, up
        if alpha is not None:
            out[f"{prefix}{module}.alpha"] = torch.tensor(alpha)
    return out


# layout -> (state dict builder, alpha the layout's reader must apply, inspect's layout name)
LORA_LAYOUTS = {
    # musubi-tuner networks/lora_wan.py: kohya names, alpha per module
    "musubi-tuner": (lambda f: musubi(f), ALPHA, "musubi"),
    # ComfyUI comfy/lora.py reads `diffusion_model.<name>.lora_down.weight / lora_up.weight / alpha`
    "comfyui lora_down/lora_up": (lambda f: dotted(f, "diffusion_model.", "lora_down.weight", "lora_up.weight", ALPHA),
                                  ALPHA, "comfy"),
    "comfyui lora_A/lora_B + alpha": (lambda f: dotted(f, "diffusion_model.", "lora_A.weight", "lora_B.weight", ALPHA),
                                      ALPHA, "comfy"),
    # diffusion-pipe saves PEFT keys with `base_model.model.` replaced by `diffusion_model.`, no alpha (scale 1)
    "diffusion-pipe": (lambda f: dotted(f, "diffusion_model.", "lora_A.weight", "lora_B.weight", None), RANK, "comfy"),
    # ai-toolkit: PEFT names under `diffusion_model.`, alpha folded (scale 1); it trains the diffusers transformer
    # and renames `transformer.` to `diffusion_model.` on save, so both module namings occur
    "ai-toolkit": (lambda f: dotted(f, "diffusion_model.", "lora_A.weight", "lora_B.weight", None), RANK, "comfy"),
    "ai-toolkit diffusers names": (lambda f: dotted(f, "diffusion_model.", "lora_A.weight", "lora_B.weight", None,
                                                    diffusers_names=True), RANK, "diffusers"),
    # diffusers / PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight`, k_img -> attn2.add_k_proj
    "diffusers": (lambda f: dotted(f, "transformer.", "lora_A.weight", "lora_B.weight", None, diffusers_names=True),
                  RANK, "diffusers"),
}


def _deltas(path) -> dict[str, torch.Tensor]:
    lora = load_lora(path)
    return {name: delta_for_module(lora.parts(name), torch.zeros(SHAPES[name]), 1.0, lora.flags, module_name=name)
            for name in lora.modules}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, delta in want.items():
        torch.testing.assert_close(got[name].double(), delta.double(), rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("layout", list(LORA_LAYOUTS))
def test_lora_layout_gives_the_musubi_layouts_delta(tmp_path, layout):
    build, alpha, _ = LORA_LAYOUTS[layout]
    factors = _factors()
    save_file(build(factors), str(tmp_path / "foreign.safetensors"))
    save_file(musubi(factors, alpha), str(tmp_path / "ours.safetensors"))
    foreign = _deltas(tmp_path / "foreign.safetensors")
    _assert_same(foreign, _expected_lora(factors, alpha))
    _assert_same(foreign, _deltas(tmp_path / "ours.safetensors"))
    assert coverage_of_file(tmp_path / "foreign.safetensors") == set(SHAPES)  # what the LORAID map reads


def test_diffusers_file_with_peft_alpha_metadata_uses_it(tmp_path):
    factors = _factors(1)
    state = dotted(factors, "transformer.", "lora_A.weight", "lora_B.weight", None, diffusers_names=True)
    save_file(state, str(tmp_path / "d.safetensors"),
              {"lora_adapter_metadata": json.dumps({"r": RANK, "lora_alpha": 8})})
    _assert_same(_deltas(tmp_path / "d.safetensors"), _expected_lora(factors, 8.0))


def _loha(seed: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(n_out, RANK, generator=generator), torch.randn(RANK, n_in, generator=generator),
                   torch.randn(n_out, RANK, generator=generator), torch.randn(RANK, n_in, generator=generator))
            for name, (n_out, n_in) in SHAPES.items()}


def _lokr(seed: int = 3) -> dict[str, tuple[torch.Tensor, ...]]:
    """w1 [4, 4] full, w2 = w2_a @ w2_b factorized ([out/4, r] @ [r, in/4])."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(4, 4, generator=generator), torch.randn(n_out // 4, RANK, generator=generator),
                   torch.randn(RANK, n_in // 4, generator=generator))
            for name, (n_out, n_in) in SHAPES.items()}


def _lycoris_state(kind: str, prefix_of) -> dict[str, torch.Tensor]:
    out = {}
    if kind == "loha":
        for name, parts in _loha().items():
            for key, value in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), parts):
                out[f"{prefix_of(name)}.{key}"] = value
            out[f"{prefix_of(name)}.alpha"] = torch.tensor(ALPHA)
    else:
        for name, parts in _lokr().items():
            for key, value in zip(("lokr_w1", "lokr_w2_a", "lokr_w2_b"), parts):
                out[f"{prefix_of(name)}.{key}"] = value
            out[f"{prefix_of(name)}.alpha"] = torch.tensor(ALPHA)
    return out


def _expected_lycoris(kind: str) -> dict[str, torch.Tensor]:
    if kind == "loha":
        return {name: (w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double()) * ALPHA / RANK
                for name, (w1a, w1b, w2a, w2b) in _loha().items()}
    return {name: torch.kron(w1.double(), w2a.double() @ w2b.double()) * ALPHA / RANK
            for name, (w1, w2a, w2b) in _lokr().items()}


LYCORIS_PREFIXES = {
    "musubi lycoris.kohya": lora_key_prefix,  # lora_unet_blocks_0_self_attn_q
    "comfyui dotted": lambda name: f"diffusion_model.{name}",
    "simpletuner lycoris_": lambda name: "lycoris_" + name.replace(".", "_"),
}


@pytest.mark.parametrize("kind", ["loha", "lokr"])
@pytest.mark.parametrize("layout", list(LYCORIS_PREFIXES))
def test_lycoris_layouts_give_their_documented_delta(tmp_path, kind, layout):
    save_file(_lycoris_state(kind, LYCORIS_PREFIXES[layout]), str(tmp_path / "l.safetensors"))
    save_file(_lycoris_state(kind, lora_key_prefix), str(tmp_path / "ours.safetensors"))
    got = _deltas(tmp_path / "l.safetensors")
    _assert_same(got, _expected_lycoris(kind))
    _assert_same(got, _deltas(tmp_path / "ours.safetensors"))
    lora = load_lora(tmp_path / "l.safetensors")
    assert lora.algo == kind and (lora.source_format == "lycoris") == layout.startswith("simpletuner")


@pytest.mark.parametrize("layout", list(LORA_LAYOUTS))
def test_inspect_names_the_layout(tmp_path, layout):
    build, _, name = LORA_LAYOUTS[layout]
    save_file(build(_factors()), str(tmp_path / "f.safetensors"))
    result = subprocess.run([sys.executable, "-m", "backend", "inspect", str(tmp_path / "f.safetensors"), "--json"],
                            capture_output=True, text=True, check=True)
    info = json.loads(result.stdout)
    assert info["source_format"] == name and info["modules"] == len(SHAPES)
    assert "blocks.0.cross_attn.k_img" in load_lora(tmp_path / "f.safetensors").modules


def test_ai_toolkit_expert_pair_is_one_a14b_lora(tmp_path):
    """ai-toolkit writes a Wan2.2 A14B LoRA as `NAME_high_noise.safetensors` + `NAME_low_noise.safetensors`."""
    high, low = tmp_path / "alice_high_noise.safetensors", tmp_path / "alice_low_noise.safetensors"
    for path, seed in ((high, 4), (low, 5)):
        factors = _factors(seed)
        save_file(dotted(factors, "diffusion_model.", "lora_A.weight", "lora_B.weight", None), str(path))
        _assert_same(_deltas(path), _expected_lora(factors, RANK))
    assert recorded_expert(high) == "high" and recorded_expert(low) == "low"
    result = subprocess.run([sys.executable, "-m", "backend", "inspect", str(high), "--json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["expert_pair"] == {"name": "alice", "expert": "high", "partner": str(low)}
    text = subprocess.run([sys.executable, "-m", "backend", "inspect", str(low)],
                          capture_output=True, text=True, check=True).stdout
    assert f"A14B pair    alice: the low-noise expert, with its partner {high}" in text
    assert "layout       comfy: ComfyUI / diffusion-pipe / ai-toolkit" in text


def test_file_named_for_no_expert_has_none(tmp_path):
    path = tmp_path / "high_noise.safetensors"  # a bare expert stem is no pair member
    save_file(musubi(_factors()), str(path))
    assert recorded_expert(path) is None
