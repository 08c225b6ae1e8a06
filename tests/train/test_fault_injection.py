"""kill -9 in the middle of checkpoint and state writes, at seeded random points, then resume: every checkpoint
left visible loads and is finite, debris is cleaned and never read, and the final LoRA equals an uninterrupted run's.

The trainer runs as a real process whose `os.replace` / `os.fsync` (the steps of every atomic save) are counted;
at the chosen call it sends itself SIGKILL, before or after the call. No clock is involved."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.adapters.formats import load_lora
from backend.train.debris import is_debris

from .conftest import DEMO_PRESET, REPO

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")  # CI runs it on Linux
SEED, TRIALS = 1234, 2
RUN = ["--max_train_steps", "4", "--save_every_n_steps", "1", "--save_state", "true", "--log_every_n_steps", "1"]
KILLER = """
import os, signal, sys
target, when = int(sys.argv[1]), sys.argv[2]
calls = [0]
def counted(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == target and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return call
os.replace, os.fsync = counted(os.replace), counted(os.fsync)
from backend.train.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


def trainer(workspace, out: Path, *extra: str, kill: tuple[int, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LORAID_JOB_DIR", None)
    args = ["--config", str(DEMO_PRESET), "--workspace", str(workspace.root), *RUN, "--output_dir", str(out),
            "--output_name", "run", *extra]
    argv = [sys.executable, "-c", KILLER, str(kill[0]), kill[1], *args] if kill else \
        [sys.executable, "-m", "backend.train", *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def visible_checkpoints_load(folder: Path) -> list[Path]:
    """Every LoRA and state a user (or the app) would pick up loads and is finite; returns the states."""
    states = []
    for path in sorted(folder.iterdir()):
        if is_debris(path) or path.name.startswith("."):
            continue
        if path.suffix == ".safetensors":
            lora = load_lora(path)
            assert all(torch.isfinite(t).all() for t in lora.tensors.values()), path
        elif path.name.endswith("-state"):
            doc = json.loads((path / "state.json").read_text())
            assert all(torch.isfinite(t).all() for t in load_file(path / "state.safetensors").values()
                       if t.is_floating_point()), path
            states.append((doc["step"], path))
    return [path for _, path in sorted(states)]


def test_kill_9_during_saves_then_resume_matches_an_uninterrupted_run(demo_workspace, tmp_path):
    straight = tmp_path / "straight"
    assert trainer(demo_workspace, straight).returncode == 0
    expected = load_file(straight / "run.safetensors")
    rng = random.Random(SEED)
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        kill = (rng.randint(3, 20), rng.choice(["before", "after"]))
        killed = trainer(demo_workspace, out, kill=kill)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-2000:])
        states = visible_checkpoints_load(out)
        # from the newest state; killed before any state, the run starts again over its first checkpoints
        resume = ["--resume", str(states[-1])] if states else ["--overwrite_output", "true"]
        finished = trainer(demo_workspace, out, *resume)
        assert finished.returncode == 0, (kill, finished.stderr[-2000:])
        assert not [p for p in out.iterdir() if is_debris(p)], kill  # the resumed run cleaned what the kill left
        visible_checkpoints_load(out)
        final = load_file(out / "run.safetensors")
        assert final.keys() == expected.keys()
        for key in final:
            assert torch.allclose(final[key], expected[key], rtol=0, atol=1e-6), (kill, key)
