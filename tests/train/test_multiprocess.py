"""Data-parallel training through accelerate: two CPU processes (gloo) train the demo and state the doubled batch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from backend.adapters.formats import load_lora

from .conftest import DEMO_PRESET, REPO


def test_two_processes_train_with_a_doubled_effective_batch(demo_workspace, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate is not None, "the accelerate command is installed with the requirements"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LORAID_JOB_DIR", None)
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "backend.train", "--config", str(DEMO_PRESET), "--workspace",
         str(demo_workspace.root), "--max_train_steps", "3", "--log_every_n_steps", "1", "--output_dir", str(tmp_path),
         "--output_name", "ddp"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "effective batch 1 x 1 accumulation x 2 processes = 2" in result.stdout
    assert result.stdout.count("saved ") == 1  # only the main process writes
    lora = load_lora(tmp_path / "ddp.safetensors")
    assert lora.metadata["ss_steps"] == "3"
    assert any(t.abs().sum() > 0 for k, t in lora.tensors.items() if k.endswith("lora_up.weight"))
