import subprocess
import sys

import torch
from safetensors import safe_open

import pytest

from backend.fileio import atomic_write, atomic_write_text, save_safetensors_atomic

SAVE = """
import sys, torch
from backend.fileio import save_safetensors_atomic
meta = {f"key{i}": str(i) for i in range(20)}
save_safetensors_atomic({"b": torch.arange(6.).reshape(2, 3), "a": torch.ones(3)}, sys.argv[1], meta)
"""


def test_safetensors_bytes_identical_across_processes(tmp_path):
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", SAVE, str(p)], check=True)
    blobs = {p.read_bytes() for p in paths}
    assert len(blobs) == 1
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == {f"key{i}": str(i) for i in range(20)}
        assert torch.equal(f.get_tensor("b"), torch.arange(6.).reshape(2, 3))


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")

    def crash_midway(tmp):
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, crash_midway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
