"""The command line (`python -m backend.train --config presets/demo.json ...`), LORAID slices and A14B experts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from backend.adapters.formats import load_lora
from backend.jobs.protocol import JobContext
from backend.loraid.registry import LoraidRegistry
from backend.train.loop import train

from .conftest import DEMO_PRESET, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LORAID_JOB_DIR", None)
    return subprocess.run([sys.executable, "-m", "backend.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_loraid_2_trains_only_its_blocks_and_records_the_allocation(demo_workspace, tmp_path):
    result = run_cli("--config", str(DEMO_PRESET), "--workspace", str(demo_workspace.root), "--loraid", "2",
                     "--max_train_steps", "2", "--output_dir", str(tmp_path), "--output_name", "slice2")
    assert result.returncode == 0, result.stderr
    assert "effective batch 1 x 1 accumulation x 1 processes = 1" in result.stdout
    lora = load_lora(tmp_path / "slice2.safetensors")
    assert lora.blocks == [2, 3] and len(lora.modules) == 20  # demo: 8 blocks, 2 per LORAID
    allocation = json.loads(lora.metadata["loraid_allocation"])
    assert lora.metadata["ss_loraid"] == "2" and allocation["blocks"] == [2, 3] and allocation["num_blocks"] == 8
    assert "include_patterns" in json.loads(lora.metadata["ss_network_args"])
    entries = LoraidRegistry.for_workspace(demo_workspace).entries()
    assert any(e.loraid == 2 and e.file.endswith("slice2.safetensors") for e in entries)


def test_bad_input_is_one_line_and_exit_2(demo_workspace, tmp_path):
    result = run_cli("--config", str(DEMO_PRESET), "--workspace", str(demo_workspace.root), "--network_dimm", "4")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "did you mean `--network_dim`" in result.stderr
    result = run_cli("--config", str(DEMO_PRESET), "--workspace", str(demo_workspace.root), "--loraid", "9")
    assert result.returncode == 2 and "largest valid LORAID is 4" in result.stderr


def test_a14b_both_experts_write_one_file_each(demo_workspace, demo_settings, tmp_path):
    settings = demo_settings.with_overrides({"model_kind": "demo-a14b", "expert": "both", "max_train_steps": 4,
                                             "output_dir": str(tmp_path), "output_name": "pair", "loraid": 1})
    assert train(settings, demo_workspace, JobContext(), log=lambda *_: None) == "succeeded"
    for expert in ("high", "low"):
        lora = load_lora(tmp_path / f"pair-{expert}_noise.safetensors")
        assert lora.metadata["loraid_studio.expert"] == expert
        assert json.loads(lora.metadata["loraid_allocation"])["expert"] == expert
        ups = [t for k, t in lora.tensors.items() if k.endswith("lora_up.weight")]
        assert all(t.abs().sum() > 0 for t in ups)  # each expert was trained (steps alternate between them)
        assert lora.metadata["ss_steps"] == "4" and lora.blocks == json.loads(lora.metadata["loraid_allocation"])["blocks"]
