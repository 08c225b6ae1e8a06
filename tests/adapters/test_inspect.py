"""`python -m backend inspect FILE [--json]` on musubi's golden file and on files of ours."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from backend.__main__ import main
from backend.adapters.formats import save_lora
from backend.adapters.inspect_cli import compact_ranges
from backend.adapters.metadata import build_metadata
from backend.models.names import BLOCK_LINEARS

REPO = Path(__file__).resolve().parents[2]


def _inspect_json(capsys, path) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_json_on_the_musubi_fixture(capsys, musubi_dir):
    path = musubi_dir / "lora_full.safetensors"
    info = _inspect_json(capsys, path)
    with safe_open(str(path), "pt") as f:
        parameters = sum(f.get_tensor(k).numel() for k in f.keys() if not k.endswith(".alpha"))
        metadata = f.metadata()
    assert info["file_size"] == os.path.getsize(path) and info["parameter_count"] == parameters
    assert info["algo"] == "lora" and info["source_format"] == "musubi" and info["modules"] == 40
    assert info["flags"] == {"use_rslora": False, "use_dora": False}
    assert info["ranks"]["min"] == info["ranks"]["max"] == 4
    assert info["ranks"]["per_projection"] == {inner: [4] for inner in BLOCK_LINEARS}
    assert info["alphas"]["values"] == [2.0] and info["scales"] == {"min": 0.5, "max": 0.5}
    assert info["blocks"] == [0, 1, 2, 3] and info["blocks_compact"] == "0-3"
    assert info["top_level_modules"] == [] and info["loraid"] is None and info["allocation"] is None
    assert info["metadata"]["ss_network_module"] == "networks.lora_wan"
    assert info["metadata_keys"] == len(metadata) and info["hint"] is None


def test_inspect_shows_loraid_allocation_ranges_and_ranks(tmp_path, capsys, lora_builder):
    names = {f"blocks.{i}.self_attn.q": (8, 8) for i in (0, 1, 2, 3, 8)} | {"blocks.8.ffn.0": (8, 16),
                                                                         "head.head": (8, 4)}
    tensors = lora_builder(names, rank={**{n: 4 for n in names}, "blocks.8.ffn.0": 2}, alpha=2.0)
    allocation = {"scheme": "explicit", "blocks": [0, 1, 2, 3, 8], "expert": None}
    md = build_metadata("lora", 4, 2.0, ["use_rslora=True"], {"use_rslora": True}, "wan2.1-t2v-1.3b",
                        loraid=2, allocation=allocation, step=50)
    path = save_lora(tmp_path / "id2.safetensors", tensors, md, precision="bf16")
    info = _inspect_json(capsys, path)
    assert info["source_format"] == "loraid_studio" and info["flags"]["use_rslora"] is True
    assert info["blocks_compact"] == "0-3,8" and info["top_level_modules"] == ["head.head"]
    assert info["loraid"] == 2 and info["allocation"] == allocation
    assert info["ranks"]["per_projection"] == {"self_attn.q": [4], "ffn.0": [2], "head.head": [4]}
    assert info["scales"] == {"min": 0.5, "max": 1.0} and info["network_args"] == ["use_rslora=True"]
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for line in ("algorithm    lora", "modules      7 in blocks 0-3,8 + head.head", "LORAID       2",
                 "use_rslora=True", '"blocks": [0, 1, 2, 3, 8]'):
        assert line in text, line


@pytest.mark.parametrize("numbers,text", [([], ""), ([5], "5"), ([0, 1, 2, 3, 8], "0-3,8"),
                                          ([9, 3, 4, 1, 10, 11], "1,3-4,9-11")])
def test_compact_ranges(numbers, text):
    assert compact_ranges(numbers) == text


def test_inspect_command_line_bad_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = subprocess.run([sys.executable, "-m", "backend", "inspect", str(bad)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: bad.safetensors is not a readable .safetensors file")
    assert result.stderr.count("\n") == 1
