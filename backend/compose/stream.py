"""Streaming safetensors I/O: read one tensor at a time, write a file whose header is known before any weight.

`TensorReader` reads a tensor's bytes with one positioned read (no memory map), so the process never holds pages
of the whole file: memory stays at about one tensor. `write_streaming` computes the header from (name, dtype,
shape) entries, then writes each tensor's bytes in order into a temp file beside the target, fsyncs and renames
it (`fileio.atomic_write`), so the previous file survives a crash and the whole model is never in memory.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from backend.errors import UserError
from backend.fileio import atomic_write
from backend.models.checkpoint import read_safetensors_header

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


class TensorReader:
    """The tensors of one safetensors file, in file order, each read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        header, self.metadata = read_safetensors_header(self.path)
        with open(self.path, "rb") as handle:
            self._data_start = 8 + int.from_bytes(handle.read(8), "little")
        self._spans: dict[str, tuple[int, int]] = {}
        entries = []
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in DTYPES:
                raise UserError(f"{self.path.name} stores `{name}` as {info['dtype']}, which cannot be merged; "
                                f"use a bf16 / fp16 / fp32 release of the model.")
            start, stop = info["data_offsets"]
            self._spans[name] = (start, stop)
            entries.append(TensorEntry(name, DTYPES[info["dtype"]], tuple(info["shape"])))
        self.entries = entries

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def read(self, entry: TensorEntry) -> torch.Tensor:
        start, stop = self._spans[entry.name]
        if stop - start != entry.nbytes:
            raise UserError(f"{self.path.name} is damaged: `{entry.name}` should take {entry.nbytes} bytes but its "
                            f"header gives {stop - start}; re-download or re-save it.")
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        with open(self.path, "rb") as handle:
            data = bytearray(entry.nbytes)
            handle.seek(self._data_start + start)
            if handle.readinto(data) != entry.nbytes:
                raise UserError(f"{self.path.name} is truncated at `{entry.name}`; re-download or re-save it.")
        return torch.frombuffer(data, dtype=torch.uint8).view(entry.dtype).reshape(entry.shape)


def header_bytes(entries: Iterable[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The safetensors header (length prefix + JSON, padded to 8 bytes) for tensors stored in this order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted((str(k), str(v)) for k, v in metadata.items()))
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": DTYPE_NAMES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded


def write_streaming(path: str | Path, entries: list[TensorEntry], produce: Callable[[TensorEntry], torch.Tensor],
                    metadata: Mapping[str, str] | None = None,
                    on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write `produce(entry)` for each entry, in order, atomically; each result must match its entry's dtype and
    shape (checked), so the header written first stays true."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(header_bytes(entries, metadata))
            for index, entry in enumerate(entries, 1):
                tensor = produce(entry)
                if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                    raise RuntimeError(f"{entry.name}: produced {tensor.dtype} {tuple(tensor.shape)}, header says "
                                       f"{entry.dtype} {entry.shape}")
                if entry.nbytes:
                    handle.write(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
                if on_tensor is not None:
                    on_tensor(index, len(entries))
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)
