"""`python -m backend convert IN OUT --to musubi|comfy|diffusers`: layouts, precision, folding, refusals."""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from backend.__main__ import main
from backend.adapters.formats import load_lora, save_lora
from backend.adapters.metadata import build_metadata
from backend.models.names import lora_key_prefix

SHAPES = {"blocks.0.self_attn.o": (16, 16), "blocks.1.cross_attn.v": (16, 16), "blocks.1.ffn.0": (16, 32)}


def _delta(lora_file, name) -> torch.Tensor:
    parts = lora_file.parts(name)
    return lora_file.scales[name] * (parts["lora_up.weight"].double() @ parts["lora_down.weight"].double())


def _convert(capsys, *args) -> tuple[int, str]:
    code = main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_comfy_fold_bf16_then_back_to_musubi(tmp_path, capsys, lora_builder):
    src = save_lora(tmp_path / "src.safetensors", lora_builder(SHAPES, rank=4, alpha=3.0),
                    build_metadata("lora", 4, 3.0, [], {}, None, loraid=1, allocation={"blocks": [0, 1]}))
    comfy = tmp_path / "comfy.safetensors"
    code, out = _convert(capsys, src, comfy, "--to", "comfy", "--fold-alpha", "--precision", "bf16")
    assert code == 0 and "wrote" in out
    raw = load_file(str(comfy))
    assert set(raw) == {f"diffusion_model.{n}.lora_{ab}.weight" for n in SHAPES for ab in "AB"}
    assert all(t.dtype == torch.bfloat16 for t in raw.values())
    original, exported = load_lora(src), load_lora(comfy)
    assert exported.source_format == "comfy" and exported.info["loraid"] == 1
    for name in SHAPES:
        torch.testing.assert_close(_delta(exported, name), _delta(original, name), rtol=2e-2, atol=2e-3)

    back = tmp_path / "back.safetensors"
    assert _convert(capsys, comfy, back, "--to", "musubi")[0] == 0
    with safe_open(str(back), "pt") as f:
        assert set(f.keys()) == {f"{lora_key_prefix(n)}.{s}" for n in SHAPES
                                 for s in ("lora_down.weight", "lora_up.weight", "alpha")}
        assert f.get_tensor(f"{lora_key_prefix('blocks.1.ffn.0')}.alpha").dtype == torch.float32
        assert f.metadata()["ss_loraid"] == "1"


def test_comfy_kept_alpha_and_musubi_round_trip_bit_exact(tmp_path, capsys, lora_builder):
    tensors = lora_builder(SHAPES, rank=4, alpha=3.0, dora=True)
    src = save_lora(tmp_path / "src.safetensors", tensors)
    comfy, back = tmp_path / "c.safetensors", tmp_path / "b.safetensors"
    assert _convert(capsys, src, comfy, "--to", "comfy")[0] == 0
    raw = load_file(str(comfy))
    assert float(raw["diffusion_model.blocks.1.ffn.0.alpha"]) == 3.0
    assert raw["diffusion_model.blocks.1.ffn.0.dora_scale"].shape == (32, 1)
    assert _convert(capsys, comfy, back, "--to", "musubi")[0] == 0
    again = load_file(str(back))
    assert set(again) == set(tensors) and all(torch.equal(again[k], v) for k, v in tensors.items())
    assert load_lora(back).flags["use_dora"] is True


def test_diffusers_export_does_not_reapply_a_peft_alpha(tmp_path, capsys, lora_builder):
    tensors = lora_builder({"blocks.0.self_attn.q": (16, 16)}, rank=4, alpha=4.0)
    peft = {"transformer.blocks.0.attn1.to_q.lora_A.weight": tensors["lora_unet_blocks_0_self_attn_q.lora_down.weight"],
            "transformer.blocks.0.attn1.to_q.lora_B.weight": tensors["lora_unet_blocks_0_self_attn_q.lora_up.weight"]}
    save_file(peft, str(tmp_path / "peft.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})})
    assert load_lora(tmp_path / "peft.safetensors").scales == {"blocks.0.self_attn.q": 2.0}
    out = tmp_path / "out.safetensors"
    assert _convert(capsys, tmp_path / "peft.safetensors", out, "--to", "diffusers")[0] == 0
    with safe_open(str(out), "pt") as f:
        assert "lora_adapter_metadata" not in f.metadata()
    exported = load_lora(out)
    torch.testing.assert_close(_delta(exported, "blocks.0.self_attn.q"),
                               _delta(load_lora(tmp_path / "peft.safetensors"), "blocks.0.self_attn.q"))


def test_loha_to_comfy_folds_into_the_first_factor_and_diffusers_refuses(tmp_path, capsys):
    g = torch.Generator().manual_seed(4)
    p = "lora_unet_blocks_0_ffn_2"
    loha = {f"{p}.hada_w1_a": torch.randn(16, 4, generator=g), f"{p}.hada_w1_b": torch.randn(4, 32, generator=g),
            f"{p}.hada_w2_a": torch.randn(16, 4, generator=g), f"{p}.hada_w2_b": torch.randn(4, 32, generator=g),
            f"{p}.alpha": torch.tensor(2.0)}
    src = save_lora(tmp_path / "loha.safetensors", loha)
    expected = ((loha[f"{p}.hada_w1_a"] @ loha[f"{p}.hada_w1_b"]) * (loha[f"{p}.hada_w2_a"] @ loha[f"{p}.hada_w2_b"])
                * 0.5)
    assert _convert(capsys, src, tmp_path / "c.safetensors", "--to", "comfy", "--fold-alpha")[0] == 0
    raw = load_file(str(tmp_path / "c.safetensors"))
    assert set(raw) == {f"diffusion_model.blocks.0.ffn.2.hada_w{i}_{ab}" for i in (1, 2) for ab in "ab"}
    got = ((raw["diffusion_model.blocks.0.ffn.2.hada_w1_a"] @ raw["diffusion_model.blocks.0.ffn.2.hada_w1_b"])
           * (raw["diffusion_model.blocks.0.ffn.2.hada_w2_a"] @ raw["diffusion_model.blocks.0.ffn.2.hada_w2_b"]))
    torch.testing.assert_close(got, expected)
    code, out = _convert(capsys, src, tmp_path / "d.safetensors", "--to", "diffusers")
    assert code == 2 and "diffusers cannot load LoHa adapters" in out and not (tmp_path / "d.safetensors").exists()


def test_refusals_keep_the_users_files(tmp_path, capsys, lora_builder):
    src = save_lora(tmp_path / "src.safetensors", lora_builder(SHAPES))
    before = src.read_bytes()
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    cases = [((src, src, "--to", "comfy"), "is the input file"),
             ((src, existing, "--to", "comfy"), "already exists"),
             ((src, tmp_path / "x.safetensors", "--to", "kohya"), "Unknown target layout `kohya`"),
             ((src, tmp_path / "x.safetensors", "--to", "comfy", "--precision", "fp8"), "Unknown save precision"),
             ((tmp_path / "nope.safetensors", tmp_path / "x.safetensors", "--to", "comfy"), "does not exist")]
    for args, message in cases:
        code, out = _convert(capsys, *args)
        assert code == 2 and message in out and out.count("\n") == 1, (args, out)
    assert src.read_bytes() == before and existing.read_bytes() == b"keep me"
    assert not (tmp_path / "x.safetensors").exists()
    assert _convert(capsys, src, existing, "--to", "diffusers", "--overwrite")[0] == 0
    assert "transformer.blocks.1.ffn.net.0.proj.lora_A.weight" in load_file(str(existing))
