"""The sidecar names a LoRA's LORAID (its header's `ss_loraid`) also when the file was picked by path, as the
Generate tab does; a file without one says null."""
from __future__ import annotations

from safetensors import safe_open

from backend.generate.loras import pick_loras


def _header_loraid(path) -> int | None:
    with safe_open(str(path), "pt") as handle:
        value = (handle.metadata() or {}).get("ss_loraid")
    return int(value) if value else None


def test_a_file_picked_by_path_keeps_its_loraid_in_the_sidecar(demo_ws, lora_files):
    paths = [str(lora_files.by_id[2]), str(lora_files.by_id[1]), str(lora_files.full)]
    described = [lora.describe() for lora in pick_loras(paths, [], [0.5], None)]
    assert [d["loraid"] for d in described] == [_header_loraid(p) for p in paths] == [2, 1, None]
    assert [d["picked_by"] for d in described] == ["file"] * 3
    by_id = [lora.describe() for lora in pick_loras([], [2], None, demo_ws.root)]
    assert [(d["loraid"], d["picked_by"]) for d in by_id] == [(2, "loraid")]
