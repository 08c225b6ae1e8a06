"""The results a workspace holds: every `<outputs>/<name>.json` sidecar written by `python -m backend generate`, with
the video or image beside it, newest first. A sidecar that cannot be read, or whose media file is gone, is skipped."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backend.errors import UserError

CAPTION_PROMPT_CHARS = 48


@dataclass(frozen=True)
class GeneratedResult:
    sidecar: Path
    media: Path  # the mp4, or the png of a one-frame result
    record: dict

    @property
    def is_video(self) -> bool:
        return self.media.suffix == ".mp4"

    @property
    def prompt(self) -> str:
        return str(self.record.get("settings", {}).get("prompt", ""))

    @property
    def caption(self) -> str:
        """`seed 7 · 2 LoRAs · a red ball ...`"""
        loras = len(self.record.get("loras") or [])
        prompt = self.prompt if len(self.prompt) <= CAPTION_PROMPT_CHARS else self.prompt[:CAPTION_PROMPT_CHARS] + "…"
        parts = [f"seed {self.record.get('seed')}"] + ([f"{loras} LoRA{'s' * (loras != 1)}"] if loras else [])
        return " · ".join(parts + [prompt])


def _media_of(sidecar: Path, record: dict) -> Path | None:
    outputs = record.get("outputs") or {}
    for key in ("video", "image"):
        if outputs.get(key):
            path = Path(outputs[key])
            beside = sidecar.with_name(path.name)  # the workspace may have moved since: trust the sidecar's folder
            return beside if beside.is_file() else path if path.is_file() else None
    return None


def read_result(sidecar: str | Path) -> GeneratedResult:
    """One result from its sidecar; a UserError sentence when it is not a readable generation record."""
    sidecar = Path(sidecar)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"The result record {sidecar.name} cannot be read; pick another result or generate again.") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise UserError(f"{sidecar.name} is not a generation record (no settings); pick another result.")
    media = _media_of(sidecar, record)
    if media is None:
        raise UserError(f"The video or image of {sidecar.name} is gone; pick another result.")
    return GeneratedResult(sidecar, media, record)


def list_results(outputs: Path, limit: int = 200) -> list[GeneratedResult]:
    """The newest `limit` results in `outputs`, by the time their sidecar was written."""
    folder = Path(outputs)
    if not folder.is_dir():
        return []
    found = []
    for sidecar in sorted(folder.glob("*.json"), key=_written, reverse=True):
        try:
            found.append(read_result(sidecar))
        except UserError:
            continue
        if len(found) >= limit:
            break
    return found


def _written(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except OSError:  # deleted while listing: read_result skips it
        return 0.0, path.name
