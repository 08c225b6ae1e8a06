"""The demo workflow end to end on CPU: stage 1 -> merge into both A14B experts -> 2-expert stage 2 -> generate.

The experts specialise on held-out items (each lowers its own concept's loss more). Checks against independent
computations: the merged weights are base + ΔW of the stage-1 LoRA in both experts,
the router's held-out agreement recomputed here from the saved file, the exported expert read by our LoRA loader,
a hinted generation recording the forced routing.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from backend.__main__ import main as backend_main
from backend.adapters.formats import load_lora
from backend.data.cached_dataset import CachedDataset
from backend.models.demo import expert_file
from backend.moe.demo import EXPERTS, TAGS, run_demo
from backend.moe.files import load_moe, stage1_fingerprint
from backend.moe.labels import Labeller, held_out
from backend.moe.router import Router


def test_demo_stage1_merge_stage2_generate(moe_workspace, tmp_path, capsys):
    ws = moe_workspace
    result = run_demo(ws, tmp_path, log=lambda *_: None)

    # the experts specialise: measured on held-out items only, each expert alone lowers the flow-matching loss of
    # its own concept more than the other concept's, and on each concept its own expert beats the other one
    # (seeded; at the demo settings the smallest margin is 0.015 on the low-noise expert, 0.022 on the high-noise one)
    assert min(result["held_out_by_expert"].values()) >= 3
    for gain in (result["gain"], result["high"]["gain"]):
        for own, other in (("red", "blue"), ("blue", "red")):
            assert gain[own][own] > gain[own][other] + 0.003, gain
            assert gain[own][own] > gain[other][own] + 0.003, gain

    # merge: both experts = base + 1.0 · up @ down · alpha / r on a stage-1 module, other tensors untouched
    lora = load_lora(tmp_path / "moe-demo-stage1-low_noise.safetensors")
    name = "blocks.7.cross_attn.q"
    parts = lora.parts(name)
    rank = parts["lora_down.weight"].shape[0]
    delta = parts["lora_up.weight"] @ parts["lora_down.weight"] * (float(parts["alpha"]) / rank)
    for expert in ("high", "low"):
        base = load_file(str(expert_file(ws, expert)))
        merged = load_file(str(tmp_path / "merged" / f"moe-demo-stage1-{expert}_noise.safetensors"))
        torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + delta, rtol=1e-6, atol=1e-6)
        assert torch.equal(merged["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])

    # stage 2 file: layout, names, the stage-1 merge it was trained on
    moe = load_moe(result["moe_file"])
    assert moe.spec.expert_names == tuple(EXPERTS) and moe.labels == ["high", "low"]
    for label in ("high", "low"):
        recorded = moe.header["stage1"][label]
        assert recorded["fingerprint"] == stage1_fingerprint(
            tmp_path / "merged" / f"moe-demo-stage1-{label}_noise.safetensors")["fingerprint"]
        assert recorded["merge"]["loras"][0]["file"] == lora.path.name

    # held-out router agreement, recomputed from the saved router of the low-noise expert at t = 0.5
    dataset = CachedDataset.from_file(ws.demo_dataset / "dataset.toml")
    labeller = Labeller(EXPERTS, TAGS, dataset.datasets)
    part = moe.part("low")
    assert moe.spec.router_inputs == "text"
    text_dim = part["router.net.0.weight"].shape[1] - 16  # pooled text + 16 timestep features
    router = Router(2, "text", text_dim, 16, moe.spec.router_hidden, moe.spec.top_k)
    router.load_state_dict({k[len("router."):]: v for k, v in part.items() if k.startswith("router.")})
    agree = total = 0
    for item in dataset.items:
        if not held_out(item.key, 0.3):
            continue
        batch = dataset.load_batch([item])
        with torch.no_grad():
            logits = router(batch["latents"], torch.tensor([0.5]), batch["text_embeds"])
        agree += int(int(logits.argmax(-1)) == labeller.label(item))
        total += 1
    assert total == result["held_out"] >= 4
    assert agree / total >= 0.9 and result["router_agreement"] >= 0.9

    # one expert exported alone reads back as an ordinary LoRA of the stage-2 targets
    assert backend_main(["moe", "export", "--moe", result["moe_file"], "--expert", "blue",
                         "--out", str(tmp_path / "blue.safetensors")]) == 0
    exported = load_lora(tmp_path / "blue-low_noise.safetensors")
    assert len(exported.modules) == 80 and exported.ranks["blocks.0.self_attn.q"] == 8
    torch.testing.assert_close(exported.parts("blocks.3.ffn.2")["lora_up.weight"],
                               part["lora_unet_blocks_3_ffn_2.lora_up.weight"][1])

    # generate with a hint: the record says the hinted expert took every call
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert backend_main(["generate", "--workspace", str(ws.root), "--dit",
                         str(merged / "moe-demo-stage1-high_noise.safetensors"),
                         str(merged / "moe-demo-stage1-low_noise.safetensors"), "--model_kind", "demo-a14b", "--moe",
                         result["moe_file"], "--hint", "blue", "--prompt", "loraidA, a red ball", "--width", "32",
                         "--height", "32", "--frames", "1", "--steps", "2", "--seed", "3", "--guidance_scale", "1",
                         "--out_dir", str(tmp_path / "gen")]) == 0
    record = json.loads(next((tmp_path / "gen").glob("*.json")).read_text())
    assert record["moe"]["hint"] == "blue"
    assert record["moe"]["routing"]["high"] == {"red": 0.0, "blue": 1.0} == record["moe"]["routing"]["low"]
    assert "stage-1 merge" not in capsys.readouterr().out  # the DiTs are the ones the experts were trained on

    # the unmerged demo pair is named as not holding the stage-1 merge (the run still goes on)
    assert backend_main(["generate", "--workspace", str(ws.root), "--dit", str(expert_file(ws, "high")),
                         str(expert_file(ws, "low")), "--model_kind", "demo-a14b", "--moe", result["moe_file"],
                         "--prompt", "loraidB, a blue cube", "--width", "32", "--height", "32", "--frames", "1",
                         "--steps", "2", "--seed", "3", "--guidance_scale", "1",
                         "--out_dir", str(tmp_path / "gen2")]) == 0
    out = capsys.readouterr().out
    assert "the high DiT high_noise.safetensors does not hold the stage-1 merge" in out
    assert "the low DiT low_noise.safetensors does not hold the stage-1 merge" in out
