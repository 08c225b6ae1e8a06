"""What a killed save leaves behind, and how the next start of that run puts it right.

An atomic file write (backend/fileio.py) leaves `.<name>.<random>.tmp` when killed before its rename; a state save
(backend/train/state.py) leaves `<stem>-state.tmp/` while it writes, and `<stem>-state.old/` for the moment between
moving the previous state aside and renaming the new one in. None of them is ever read as a checkpoint (`is_debris`):
a run's start deletes its own temp files and `.tmp` folders and puts an `.old` state folder back when its new
version never arrived. Only files of that run's output name are touched: another run may be saving beside it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from backend.models.registry import EXPERT_STEMS

STATE_TMP, STATE_OLD = "-state.tmp", "-state.old"
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def is_debris(path: Path) -> bool:
    """A temp file of an atomic write, or anything inside an unfinished / replaced state folder."""
    path = Path(path)
    return bool(_TEMP_FILE.match(path.name)) or any(part.endswith((STATE_TMP, STATE_OLD)) for part in path.parts)


def _stems(output_name: str) -> str:
    experts = "|".join(EXPERT_STEMS.values())
    return rf"{re.escape(output_name)}(-(step|epoch)\d{{6}})?"  + rf"(-({experts}))?"


def clean_debris(folder: Path, output_name: str) -> list[str]:
    """Remove (or restore) what interrupted saves of `output_name` left in `folder`; one line per thing done."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    temp_file = re.compile(rf"^\.{_stems(output_name)}\.safetensors\.[A-Za-z0-9_]+\.tmp$")
    state = re.compile(rf"^{_stems(output_name)}-state\.(tmp|old)$")
    done = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_file() and temp_file.match(name):
            path.unlink(missing_ok=True)
            done.append(f"removed the unfinished file {name}")
        elif path.is_dir() and state.match(name) and name.endswith(STATE_TMP):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed the unfinished state folder {name}")
        elif path.is_dir() and state.match(name):
            current = path.with_name(name[:-len(".old")])
            if current.exists():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed the replaced state folder {name}")
            else:
                path.rename(current)
                done.append(f"restored {current.name} (its replacement was never finished)")
    return done
