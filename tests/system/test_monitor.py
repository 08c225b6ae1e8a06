"""The header's machine status: RAM matches psutil, a missing GPU/driver reads plainly, GPU lines format right."""
from __future__ import annotations

import sys

import psutil
import pytest

from backend.system import monitor
from backend.system.monitor import GIB, status_line, system_status


@pytest.fixture
def fresh_nvml(monkeypatch):
    """Forget the process-wide NVML probe so each test decides what NVML looks like."""
    monkeypatch.setattr(monitor, "_nvml_state", {"tried": False, "module": None, "message": None})


def test_without_nvml_there_are_no_gpus_and_the_line_says_cpu_only(fresh_nvml, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as on a machine without nvidia-ml-py
    status = system_status()
    assert status["gpus"] == []
    line = status_line(status)
    assert line.startswith("CPU ") and "no GPU detected (CPU only)" in line
    memory = psutil.virtual_memory()
    assert status["ram_total"] == memory.total
    assert f"/{memory.total / GIB:.1f} GiB" in line
    assert 0 <= status["cpu_percent"] <= 100


def test_nvml_without_driver_never_raises(fresh_nvml, monkeypatch) -> None:
    import pynvml

    def no_library() -> None:
        raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    status = system_status()
    assert status["gpus"] == [] and status["gpu_message"] == "no GPU detected (CPU only)"


def test_this_machine_status_never_raises(fresh_nvml) -> None:
    status = system_status()
    line = status_line(status)
    assert ("VRAM" in line) == bool(status["gpus"])
    for gpu in status["gpus"]:
        assert 0 <= gpu["vram_used"] <= gpu["vram_total"]


def test_gpu_lines() -> None:
    gpu = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "vram_used": 3 * GIB, "vram_total": 80 * GIB, "utilization": 35}
    status = {"cpu_percent": 12.4, "ram_used": int(3.1 * GIB), "ram_total": int(23.4 * GIB), "gpus": [gpu],
              "gpu_message": None}
    assert status_line(status) == ("CPU 12% · RAM 3.1/23.4 GiB · GPU NVIDIA H100 80GB HBM3 · VRAM 3.0/80.0 GiB "
                                   "(35% busy)")
    second = dict(gpu, index=1, utilization=None, vram_used=0)
    line = status_line(dict(status, gpus=[gpu, second]))
    assert line.endswith("GPU0 NVIDIA H100 80GB HBM3 · VRAM 3.0/80.0 GiB (35% busy) · "
                         "GPU1 NVIDIA H100 80GB HBM3 · VRAM 0.0/80.0 GiB")
