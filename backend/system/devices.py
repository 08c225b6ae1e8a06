"""Which devices this machine can run a job on: the choices a form offers and the checks a job's settings get,
so a `cuda` choice on a machine without a GPU is refused before the job starts, not inside it."""
from __future__ import annotations

from backend.errors import UserError

DEVICES = ("cpu", "cuda")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_choices() -> list[str]:
    """cpu, and cuda only where this machine has a GPU."""
    return ["cpu", "cuda"] if gpu_count() else ["cpu"]


def default_device() -> str:
    """The GPU where there is one, else the CPU."""
    return device_choices()[-1]


def device_problem(device: str, what: str) -> str | None:
    """A sentence when `device` cannot run here (`what` names the setting as the reader knows it), else None."""
    if device == "cuda" and not gpu_count():
        return f"{what} is cuda, but this machine has no CUDA GPU; choose cpu."
    return None


def check_processes(processes: int, what: str = "Processes") -> int:
    """One training process per GPU: more processes than GPUs cannot start."""
    if processes > 1:
        available = gpu_count()
        if processes > available:
            raise UserError(f"{what} is {processes} but this machine has {available} GPU(s); enter at most "
                            f"{max(1, available)}.")
    return processes
