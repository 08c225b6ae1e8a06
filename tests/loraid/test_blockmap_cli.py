"""`python -m backend blockmap`: the table from model types and checkpoints, patterns, registry, the report."""
from __future__ import annotations

import json


from backend.__main__ import main
from backend.loraid.allocation import allocate
from backend.loraid.module_names import owned_modules
from backend.workspace import Workspace


def run_json(capsys, *argv) -> dict:
    assert main(["blockmap", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_for_a_model_type(capsys):
    data = run_json(capsys, "--model", "wan2.1-t2v-14b", "--blocks_per_loraid", "12", "--loraid", "2", "--rank", "16")
    assert data["num_blocks"] == 40 and data["expert"] is None
    assert [row["blocks"] for row in data["ids"]][3] == [36, 37, 38, 39]
    assert data["ids"][3]["partial"] and "owns 4 blocks" in data["warnings"][0]
    assert data["ids"][0]["lora_parameters"] == 12 * (8 * 16 * 10240 + 2 * 16 * (5120 + 13824))
    assert data["patterns"]["2"]["network_args"][1] == \
        "include_patterns=[r'blocks\\.(12|13|14|15|16|17|18|19|20|21|22|23)\\..*']"


def test_refusals_are_one_sentence(capsys):
    assert main(["blockmap", "--model", "wan2.1-t2v-1.3b", "--loraid", "7"]) == 2
    assert "largest valid LORAID is 6" in capsys.readouterr().err
    assert main(["blockmap", "--model", "wan2.1-t2v-1.3b", "--expert", "high"]) == 2
    assert "single transformer" in capsys.readouterr().err
    assert main(["blockmap", "--model", "no-such-model"]) == 2
    assert "neither a model type" in capsys.readouterr().err
    # the same checks as the LORAID tab's fields, here naming the flags
    assert main(["blockmap", "--model", "wan2.1-t2v-1.3b", "--rank", "0"]) == 2
    assert "--rank is 0; it must be at least 1." in capsys.readouterr().err
    assert main(["blockmap", "--model", "wan2.1-t2v-1.3b", "--blocks_per_loraid", "31"]) == 2
    assert "--blocks_per_loraid is 31; it must be from 1 to 30 (" in capsys.readouterr().err


def test_a14b_defaults_to_both_experts_and_text_output(capsys):
    data = run_json(capsys, "--model", "wan2.2-t2v-a14b")
    assert data["expert"] == "both" and len(data["ids"]) == 8 and data["ids"][0]["files"] == 2
    assert main(["blockmap", "--model", "wan2.2-t2v-a14b", "--expert", "low", "--loraid", "1"]) == 0
    text = capsys.readouterr().out
    assert "40 blocks per expert, expert low" in text and "exclude_patterns=['.*']" in text


def test_checkpoints_and_expert_pairs_are_read_for_their_block_count(tmp_path, capsys, kit):
    model = kit.make_tiny_wan()
    checkpoint = kit.save_tiny_checkpoint(model, tmp_path / "single")
    data = run_json(capsys, "--model", str(checkpoint), "--blocks_per_loraid", "3")
    assert data["num_blocks"] == 4 and [row["blocks"] for row in data["ids"]] == [[0, 1, 2], [3]]
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "high_noise.safetensors").write_bytes(checkpoint.read_bytes())
    (pair / "low_noise.safetensors").write_bytes(checkpoint.read_bytes())
    data = run_json(capsys, "--model", str(pair))
    assert data["expert"] == "both" and data["num_blocks"] == 4


def test_workspace_owners_and_rescan(tmp_path, capsys, kit):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    one = allocate(1, 30, 5, model="wan2.1-t2v-1.3b")
    from backend.loraid.registry import LoraidRegistry

    LoraidRegistry.for_workspace(ws).register(ws.loras / "one.safetensors", one)
    data = run_json(capsys, "--model", "wan2.1-t2v-1.3b", "--workspace", str(ws.root))
    assert data["ids"][0]["owners"] == ["loras/one.safetensors"] and data["ids"][1]["owners"] == []
    tiny = allocate(2, 4, 2)
    kit.save_loraid_file(ws.loras / "two.safetensors", tiny, owned_modules(tiny))
    assert main(["blockmap", "--workspace", str(ws.root), "--rescan"]) == 0
    assert "1 LORAID file(s)" in capsys.readouterr().out  # one.safetensors never existed on disk
    assert LoraidRegistry.for_workspace(ws).taken_ids() == {2: ["loras/two.safetensors"]}


def test_report_weight_space_only_without_a_model(tmp_path, capsys, kit):
    a, b = allocate(1, 4, 2), allocate(2, 4, 2)
    files = [kit.save_loraid_file(tmp_path / "a.safetensors", a, owned_modules(a), seed=1),
             kit.save_loraid_file(tmp_path / "b.safetensors", b, owned_modules(b) + ["blocks.1.ffn.0"], seed=2)]
    report = run_json(capsys, "--report", *map(str, files))
    assert report["function_space"]["available"] is False
    pair = report["weight_space"][0]
    assert pair["shared_modules"] == 1 and pair["modules"][0]["module"] == "blocks.1.ffn.0"
    assert report["overlaps"]["module"][0]["blocks"] == [1]
    assert main(["blockmap", "--report", *map(str, files), "--model", "wan2.1-t2v-1.3b"]) == 0
    text = capsys.readouterr().out
    assert "not independent outputs" in text and "model type without weights" in text
    verdict = text.split("Verdict\n", 1)[1].split("\n\n", 1)[0]  # b changes a's blocks.1.ffn.0
    assert "1 pair(s) change the same weights (a.safetensors / b.safetensors)" in verdict
    assert "Cross-talk was not measured" in verdict


def test_report_function_space_on_a_checkpoint(tmp_path, capsys, kit):
    checkpoint = kit.save_tiny_checkpoint(kit.make_tiny_wan(), tmp_path / "model")
    a, b = allocate(1, 4, 2), allocate(2, 4, 2)
    files = [kit.save_loraid_file(tmp_path / "a.safetensors", a, owned_modules(a), seed=1),
             kit.save_loraid_file(tmp_path / "b.safetensors", b, owned_modules(b), seed=2)]
    report = run_json(capsys, "--report", *map(str, files), "--model", str(checkpoint), "--probes", "2",
                      "--multiplier", "1.0", "0.5")
    assert report["weight_space"][0]["shared_modules"] == 0
    function = report["function_space"]
    assert function["available"] and [(p["on"], p["by"]) for p in function["pairs"]] == [
        ("a.safetensors", "b.safetensors"), ("b.safetensors", "a.safetensors")]
    assert all(p["ratio"] > 0 for p in function["pairs"])
    assert main(["blockmap", "--report", *map(str, files), "--model", str(checkpoint), "--probes", "2",
                 "--multiplier", "1.0", "0.5"]) == 0
    text = capsys.readouterr().out
    worst = max(function["pairs"], key=lambda p: p["ratio"])  # the verdict names the largest, judged on 0.1 / 0.5
    level = "small" if worst["ratio"] < 0.1 else "noticeable" if worst["ratio"] < 0.5 else "large"
    verdict = text.split("Verdict\n", 1)[1].split("\n\n", 1)[0]
    assert "No two of them change the same weights" in verdict
    assert f"Largest cross-talk: {worst['by']} on {worst['on']}, {worst['ratio']:.3g}" in verdict
    assert f": {level}: " in verdict
    for pair in function["pairs"]:
        other = "small" if pair["ratio"] < 0.1 else "noticeable" if pair["ratio"] < 0.5 else "large"
        assert f"{pair['by']} on {pair['on']}: {pair['ratio']:.3g}" in text and text.count(f"): {other}") >= 1


def test_report_needs_two_files(tmp_path, capsys, kit):
    a = allocate(1, 4, 2)
    file = kit.save_loraid_file(tmp_path / "a.safetensors", a, owned_modules(a))
    assert main(["blockmap", "--report", str(file)]) == 2
    assert "at least two files" in capsys.readouterr().err
