"""What the GPU benchmarks share: the random-weight real-size files they write once into their work folder, and the
GPU memory a process held at its peak as nvidia-smi sees it (allocator and CUDA context together).

Only shapes matter for speed and memory, so every model here has random weights; the DiT is written in the original
Wan layout (`dit-<model>.safetensors`, the file a user's checkpoint would be), the VAE as a diffusers folder.
"""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU path is a smoke test of the scripts only


def write_tokenizer(folder: Path, caption: str) -> Path:
    from backend.models.demo_parts import EXTRA_SENTENCES, train_tokenizer

    if not folder.exists():
        train_tokenizer([caption, *EXTRA_SENTENCES]).save_pretrained(folder)
    return folder


def write_vae(work: Path, wan22: bool) -> Path:
    """The Wan2.1 VAE's architecture (z 16, 8x), or the Wan2.2 one (z 48, 16x) for TI2V-5B."""
    from diffusers import AutoencoderKLWan

    from backend.models.registry import WAN22_VAE_CONFIG_DIR

    folder = work / ("vae-wan2.2" if wan22 else "vae")
    if not folder.exists():
        config = AutoencoderKLWan.load_config(str(WAN22_VAE_CONFIG_DIR)) if wan22 else {}
        AutoencoderKLWan.from_config(config).eval().save_pretrained(folder)
    return folder


def write_dit(path: Path, model: str, expert: str | None = None, seed: int = 0) -> Path:
    """A transformer of `model`'s shipped config with random bf16 weights, built on the device (a 14B never exists in
    fp32 on the host), saved in the original Wan layout."""
    from diffusers import WanTransformer3DModel

    from backend.models.loading import save_transformer_original
    from backend.models.registry import get_model_kind

    if path.exists():
        return path
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            dit = WanTransformer3DModel.from_config(get_model_kind(model).config(expert))
    finally:
        torch.set_default_dtype(torch.float32)
    save_transformer_original(dit, path)
    del dit
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return path


class GpuMemoryPeak:
    """The largest GPU memory (MiB) nvidia-smi reports, sampled every 0.2 s while the `with` block runs, summed over
    the processes `counted(pid)` accepts (this process alone, or every other one). Nothing is sampled without CUDA."""

    def __init__(self, counted: Callable[[int], bool]) -> None:
        self.counted, self.peak_mib = counted, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def this_process() -> "GpuMemoryPeak":
        return GpuMemoryPeak(lambda pid: pid == os.getpid())

    @staticmethod
    def other_processes() -> "GpuMemoryPeak":
        return GpuMemoryPeak(lambda pid: pid != os.getpid())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                       "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                      timeout=5).stdout.splitlines()
                used = sum(int(mib) for pid, mib in (row.split(",") for row in rows if row.strip())
                           if self.counted(int(pid)))
                self.peak_mib = max(self.peak_mib, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> "GpuMemoryPeak":
        if DEVICE == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
