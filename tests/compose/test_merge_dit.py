"""Streaming merge into a DiT: the merged checkpoint without adapters computes what base + injected adapters compute,
for every algorithm and for two LoRAs at 1.0 / 0.7; prefixes, isolation, every key used, overlap guard, metadata."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from backend.__main__ import main
from backend.adapters.formats import load_lora
from backend.compose.merge_dit import merge_into_dit
from backend.compose.provenance import sha256_of
from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.models.loading import original_state_dict, save_transformer_original

ALGOS = {"lora": [], "dora": ["use_dora=True"], "locon": ["algo=locon"], "loha": ["algo=loha"],
         "lokr": ["algo=lokr", "factor=4"]}
FIRST_HALF = [r"exclude_patterns=['blocks\.[23]\..*']"]
SECOND_HALF = [r"exclude_patterns=['blocks\.[01]\..*']"]


@pytest.fixture
def base(tmp_path, kit):
    model = kit.make_tiny_wan()
    return model, save_transformer_original(model, tmp_path / "base.safetensors")


@pytest.fixture
def small_chunks(monkeypatch):
    """Merge Linear weights 3 rows at a time, so the row-chunked path is what the equality tests check."""
    import backend.compose.merge_dit as merge_dit
    monkeypatch.setattr(merge_dit, "CHUNK_ELEMENTS", 3 * 64)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_merged_dit_equals_injected_adapter(algo, base, tmp_path, kit, small_chunks):
    model, base_path = base
    network = kit.make_network(model, ALGOS[algo]).inject()
    network.multiplier = 0.8
    expected = kit.run(model)
    lora_path = kit.save_network(network, tmp_path / f"{algo}.safetensors", ALGOS[algo])
    network.remove()
    assert (expected - kit.run(model)).abs().max() > 1e-2  # the adapter really changes the output
    if algo == "locon":
        assert "patch_embedding" in load_lora(lora_path).modules
    out = tmp_path / "merged.safetensors"
    result = merge_into_dit(base_path, [lora_path], [0.8], out)
    assert result.adapted_weights == len(network.adapters)
    torch.testing.assert_close(kit.run(kit.load_merged(out)), expected, atol=1e-5, rtol=0)


def test_two_loras_comfy_prefix_and_metadata(base, tmp_path, kit, small_chunks):
    model, _ = base
    prefixed = save_safetensors_atomic({f"model.diffusion_model.{k}": v for k, v in original_state_dict(model).items()},
                                       tmp_path / "comfy.safetensors", {"note": "kept"})
    first = kit.make_network(model, FIRST_HALF, seed=5, name="a").inject()
    second = kit.make_network(model, ["use_dora=True"] + SECOND_HALF, seed=6, name="b").inject()
    first.multiplier, second.multiplier = 1.0, 0.7
    expected = kit.run(model)
    paths = [kit.save_network(first, tmp_path / "a.safetensors", FIRST_HALF, loraid=1),
             kit.save_network(second, tmp_path / "b.safetensors", SECOND_HALF, loraid=2)]
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--dit", str(prefixed), "--lora", *map(str, paths), "--multiplier", "1.0", "0.7",
                 "--out", str(out)]) == 0
    merged = load_file(out)
    assert all(key.startswith("model.diffusion_model.") for key in merged)
    torch.testing.assert_close(kit.run(kit.load_merged(out)), expected, atol=1e-5, rtol=0)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    record = json.loads(metadata["loraid_studio.merge"])
    assert metadata["note"] == "kept" and json.loads(metadata["loraid_studio.merged_loraids"]) == [1, 2]
    assert [(r["file"], r["multiplier"], r["loraid"]) for r in record["loras"]] == [("a.safetensors", 1.0, 1),
                                                                                    ("b.safetensors", 0.7, 2)]
    assert [r["sha256"] for r in record["loras"]] == [sha256_of(p) for p in paths]


def test_isolation_order_and_untouched_tensors(base, tmp_path, kit):
    model, base_path = base
    paths = [kit.save_network(kit.make_network(model, FIRST_HALF, seed=7), tmp_path / "a.safetensors"),
             kit.save_network(kit.make_network(model, SECOND_HALF, seed=8), tmp_path / "b.safetensors")]
    merge_into_dit(base_path, paths, [0.9, 0.6], tmp_path / "ab.safetensors")
    merge_into_dit(base_path, paths[::-1], [0.6, 0.9], tmp_path / "ba.safetensors")
    merge_into_dit(base_path, paths[:1], [0.9], tmp_path / "a_only.safetensors")
    ab, ba, a_only = (load_file(tmp_path / f"{n}.safetensors") for n in ("ab", "ba", "a_only"))
    original = load_file(base_path)
    touched = {f"{m}.weight" for p in paths for m in load_lora(p).modules}
    a_weights = {f"{m}.weight" for m in load_lora(paths[0]).modules}
    assert ab.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(ab[name], ba[name]), name
        if name in a_weights:
            assert torch.equal(ab[name], a_only[name]), name
        assert torch.equal(ab[name], tensor) == (name not in touched), name


def test_every_lora_key_must_find_its_weight(base, tmp_path, kit):
    _, base_path = base
    tensors = {"lora_unet_blocks_7_self_attn_q.lora_down.weight": torch.randn(2, 32),
               "lora_unet_blocks_7_self_attn_q.lora_up.weight": torch.randn(32, 2),
               "lora_unet_blocks_7_self_attn_q.alpha": torch.tensor(2.0)}
    from backend.adapters.formats import save_lora
    bad = save_lora(tmp_path / "other_model.safetensors", tensors)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(UserError, match="lora_unet_blocks_7_self_attn_q"):
        merge_into_dit(base_path, [bad], [1.0], out)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_overlap_refused_unless_allowed(base, tmp_path, kit):
    model, base_path = base
    first = kit.make_network(model, seed=1, name="a").inject()
    second = kit.make_network(model, seed=2, name="b").inject()
    expected = kit.run(model)
    paths = [kit.save_network(first, tmp_path / "a.safetensors"), kit.save_network(second, tmp_path / "b.safetensors")]
    out = tmp_path / "merged.safetensors"
    with pytest.raises(UserError, match="allow_overlap"):
        merge_into_dit(base_path, paths, [1.0, 1.0], out)
    assert not out.exists()
    result = merge_into_dit(base_path, paths, [1.0, 1.0], out, allow_overlap=True)
    assert result.warnings
    torch.testing.assert_close(kit.run(kit.load_merged(out)), expected, atol=1e-5, rtol=0)


def test_multiplier_zero_is_exact_and_dtype_cast(base, tmp_path, kit):
    model, base_path = base
    lora = kit.save_network(kit.make_network(model, ["use_dora=True"]), tmp_path / "d.safetensors")
    merge_into_dit(base_path, [lora], [0.0], tmp_path / "zero.safetensors")
    original = load_file(base_path)
    zero = load_file(tmp_path / "zero.safetensors")
    assert all(torch.equal(zero[k], v) for k, v in original.items())
    merge_into_dit(base_path, [lora], [1.0], tmp_path / "bf16.safetensors", dtype="bf16")
    assert {t.dtype for t in load_file(tmp_path / "bf16.safetensors").values()} == {torch.bfloat16}
    with pytest.raises(UserError, match="new file"):
        merge_into_dit(base_path, [lora], [1.0], base_path)
