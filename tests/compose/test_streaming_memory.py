"""The DiT merge streams: merging a LoRA into a generated ~200 MB checkpoint grows the process's resident memory by
a small fraction of the file (about one tensor's worth of copies), and the merged tensors are still right."""
from __future__ import annotations

import threading

import psutil
import torch

from backend.adapters.formats import load_lora, save_lora
from backend.compose.merge_dit import merge_into_dit
from backend.compose.stream import TensorEntry, TensorReader, write_streaming
from backend.models.names import lora_key_prefix

DIM, BLOCKS, LINEARS = 1024, 12, ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o")  # 48 × 4 MiB


class PeakRss:
    def __init__(self) -> None:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> "PeakRss":
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_streaming_merge_peak_memory(tmp_path):
    names = [f"blocks.{b}.{linear}" for b in range(BLOCKS) for linear in LINEARS]
    entries = [TensorEntry(f"{name}.weight", torch.float32, (DIM, DIM)) for name in names]
    base = write_streaming(tmp_path / "big.safetensors", entries,
                           lambda e: torch.full(e.shape, float(entries.index(e)) / 100))
    size = base.stat().st_size
    assert size > 200_000_000
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for name in names:
        lora[f"{lora_key_prefix(name)}.lora_down.weight"] = torch.randn(8, DIM, generator=generator) * 0.01
        lora[f"{lora_key_prefix(name)}.lora_up.weight"] = torch.randn(DIM, 8, generator=generator) * 0.01
        lora[f"{lora_key_prefix(name)}.alpha"] = torch.tensor(4.0)
    lora_path = save_lora(tmp_path / "lora.safetensors", lora)
    with PeakRss() as rss:
        merge_into_dit(base, [lora_path], [0.5], tmp_path / "merged.safetensors")
    print(f"\nstreaming merge of a {size / 2**20:.0f} MiB checkpoint: peak RSS growth {rss.growth / 2**20:.1f} MiB")
    assert rss.growth < size / 5  # a whole-model merge would need at least the file size
    merged = TensorReader(tmp_path / "merged.safetensors")
    parts = load_lora(lora_path)
    for index in (0, len(names) - 1):
        entry = merged.entries[index]
        module = entry.name[: -len(".weight")]
        down, up = parts.parts(module)["lora_down.weight"], parts.parts(module)["lora_up.weight"]
        expected = torch.full((DIM, DIM), index / 100) + 0.5 * 0.5 * (up @ down)
        torch.testing.assert_close(merged.read(entry), expected, atol=1e-6, rtol=0)
