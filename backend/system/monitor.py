"""What the machine is doing right now: CPU, RAM (psutil) and NVIDIA GPUs (NVML). Never raises for a missing GPU.

    status = system_status()
    status_line(status)  # "CPU 12% · RAM 3.1/23.4 GiB · no GPU detected (CPU only)"
"""
from __future__ import annotations

import threading
from typing import Any

import psutil

GIB = 1024 ** 3
NO_GPU_MESSAGE = "no GPU detected (CPU only)"

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"tried": False, "module": None, "message": None}
_cpu_primed = False


def system_status() -> dict[str, Any]:
    """{cpu_percent, ram_used, ram_total (bytes), gpus: [{index, name, vram_used, vram_total, utilization}],
    gpu_message: why `gpus` is empty, else None}."""
    memory = psutil.virtual_memory()
    gpus, message = _gpu_status()
    return {"cpu_percent": _cpu_percent(), "ram_used": int(memory.total - memory.available),
            "ram_total": int(memory.total), "gpus": gpus, "gpu_message": message}


def status_line(status: dict[str, Any]) -> str:
    """One line for the app header."""
    parts = [f"CPU {status['cpu_percent']:.0f}%",
             f"RAM {status['ram_used'] / GIB:.1f}/{status['ram_total'] / GIB:.1f} GiB"]
    gpus = status.get("gpus") or []
    for gpu in gpus:
        label = "GPU" if len(gpus) == 1 else f"GPU{gpu['index']}"
        busy = f" ({gpu['utilization']}% busy)" if gpu.get("utilization") is not None else ""
        vram = f"{gpu['vram_used'] / GIB:.1f}/{gpu['vram_total'] / GIB:.1f} GiB"
        parts.append(f"{label} {gpu['name']} · VRAM {vram}{busy}")
    if not gpus:
        parts.append(status.get("gpu_message") or NO_GPU_MESSAGE)
    return " · ".join(parts)


def _cpu_percent() -> float:
    """CPU use since the previous call; the very first call measures a short interval instead of returning 0."""
    global _cpu_primed
    if not _cpu_primed:
        _cpu_primed = True
        return float(psutil.cpu_percent(interval=0.1))
    return float(psutil.cpu_percent(interval=None))


def _nvml():
    """The initialised pynvml module, or None with the reason in the state (tried once per process)."""
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_state["module"] = pynvml
            except ImportError:
                _nvml_state["message"] = f"{NO_GPU_MESSAGE}; nvidia-ml-py is not installed"
            except Exception as exc:  # NVMLError subclasses: no library, no driver, driver/library mismatch
                name = type(exc).__name__
                if name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_NoPermission"):
                    _nvml_state["message"] = NO_GPU_MESSAGE
                else:
                    _nvml_state["message"] = f"GPU status unavailable ({exc}); running on CPU unless CUDA works"
        return _nvml_state["module"]


def _gpu_status() -> tuple[list[dict[str, Any]], str | None]:
    nvml = _nvml()
    if nvml is None:
        return [], _nvml_state["message"] or NO_GPU_MESSAGE
    try:
        gpus = [_one_gpu(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    except Exception as exc:  # a GPU that fell off the bus or a driver reset: report, never crash the header
        return [], f"GPU status unavailable ({exc})"
    return gpus, (None if gpus else NO_GPU_MESSAGE)


def _one_gpu(nvml, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:  # not supported on some boards (and on MIG slices)
        utilization = None
    return {"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
            "vram_used": int(memory.used), "vram_total": int(memory.total), "utilization": utilization}
