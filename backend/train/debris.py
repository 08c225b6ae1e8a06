"""What a killed save leaves behind, and how the next start puts it right.

An atomic file write (backend/fileio.py) leaves `.<name>.<random>.tmp` when killed before its rename; a state save
(backend/train/state.py) leaves `<stem>-state.tmp/` while it writes, and `<stem>-state.old/` for the moment between
moving the previous state aside and renaming the new one in. None of them is ever read as a checkpoint: temp files
and `.tmp` folders are deleted, and an `.old` state folder is put back when its new version never arrived.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
STATE_TMP, STATE_OLD = "-state.tmp", "-state.old"


def is_debris(path: Path) -> bool:
    name = Path(path).name
    return bool(TEMP_FILE.match(name)) or name.endswith((STATE_TMP, STATE_OLD)) or \
        any(part.endswith((STATE_TMP, STATE_OLD)) for part in Path(path).parts)


def clean_debris(folder: Path) -> list[str]:
    """Remove (or restore) what interrupted saves left in `folder`; returns one line per thing done."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_file() and TEMP_FILE.match(name):
            path.unlink(missing_ok=True)
            done.append(f"removed the unfinished file {name}")
        elif path.is_dir() and name.endswith(STATE_TMP):
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed the unfinished state folder {name}")
        elif path.is_dir() and name.endswith(STATE_OLD):
            current = path.with_name(name[:-len(".old")])
            if current.exists():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed the replaced state folder {name}")
            else:
                path.rename(current)
                done.append(f"restored {current.name} (its replacement was never finished)")
    return done
