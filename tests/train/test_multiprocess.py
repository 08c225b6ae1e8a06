"""Data-parallel training through accelerate: two CPU processes (gloo) train exactly what one process trains with
the doubled batch (gradient accumulation 2), and a state saved by two processes resumes exactly in one.

Tolerance: 1e-5 absolute on every LoRA tensor (float32; the two runs sum the same gradients in another order).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from PIL import Image
from safetensors.torch import load_file

from backend.adapters.formats import load_lora
from backend.jobs.protocol import JobContext
from backend.train.loop import train

from .conftest import DEMO_PRESET, REPO

TOLERANCE = 1e-5
SHORT = {"max_train_steps": 3, "log_every_n_steps": 1, "network_args": ["dropout=0.1"], "save_state": True}


def _free_port() -> int:
    """A port no other test run on this machine holds (two launches on the default 29500 would collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _same_lora(path_a, path_b) -> None:
    a, b = load_file(path_a), load_file(path_b)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= TOLERANCE, key


def test_two_processes_equal_one_process_with_the_doubled_batch(demo_workspace, demo_settings, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate is not None, "the accelerate command is installed with the requirements"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LORAID_JOB_DIR", None)
    ddp = tmp_path / "ddp"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball --w 32 --h 32 --f 1 --s 2 --d 7\na blue cube --w 32 --h 32 --f 1 --s 2 --d 8\n")
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
         str(_free_port()), "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "backend.train", "--config", str(DEMO_PRESET), "--workspace",
         str(demo_workspace.root), "--max_train_steps", "3", "--log_every_n_steps", "1", "--output_dir", str(ddp),
         "--output_name", "ddp", "--network_args", "dropout=0.1", "--save_state", "true", "--save_every_n_steps",
         "2", "--sample_prompts", str(prompts), "--sample_every_n_steps", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "effective batch 1 x 1 accumulation x 2 processes = 2" in result.stdout
    assert "not scaled by the process count" in result.stdout
    assert result.stdout.count("saved ") == 2  # only the main process writes (step 2 and the final file)
    announced = [line for line in result.stdout.splitlines() if line.startswith("sample ")]
    assert len(announced) == 2  # the main process announces both samples
    made_by = {json.loads(Image.open(ddp / "samples" / f"ddp-step000003-0{index}.png").text["parameters"])["process"]
               for index in (0, 1)}
    assert made_by == {0, 1}  # the two prompts were split over the two processes
    lora = load_lora(ddp / "ddp.safetensors")
    assert lora.metadata["ss_steps"] == "3"
    assert any(t.abs().sum() > 0 for k, t in lora.tensors.items() if k.endswith("lora_up.weight"))

    doubled = demo_settings.with_overrides({**SHORT, "gradient_accumulation_steps": 2,
                                            "output_dir": str(tmp_path / "one"), "output_name": "one"})
    assert train(doubled, demo_workspace, JobContext(), log=lambda *_: None) == "succeeded"
    _same_lora(ddp / "ddp.safetensors", tmp_path / "one" / "one.safetensors")

    # the state written by two processes at step 2 resumes in one process (accumulation 2) to the same step 3
    resumed = doubled.with_overrides({"output_dir": str(tmp_path / "resumed"), "output_name": "ddp",
                                      "resume": str(ddp / "ddp-step000002-state")})
    assert train(resumed, demo_workspace, JobContext(), log=lambda *_: None) == "succeeded"
    _same_lora(ddp / "ddp.safetensors", tmp_path / "resumed" / "ddp.safetensors")
