"""Captions beside media files (`clip.mp4` -> `clip.txt`): read, write atomically, and bulk edits.

The bulk edits are pure: they take {key: caption} and return a new {key: caption}; nothing touches disk until
`write_captions` is called with the result, so the Dataset tab can preview an edit before saving it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Hashable, Mapping

from backend.errors import UserError
from backend.fileio import atomic_write_text

Captions = Mapping[Hashable, str]


def caption_path_for(media: str | Path, extension: str = ".txt") -> Path:
    media = Path(media)
    return media.with_name(media.stem + extension)


def read_caption(media: str | Path, extension: str = ".txt") -> str | None:
    """The caption text (surrounding whitespace removed, as musubi-tuner reads it), or None without a caption file."""
    path = caption_path_for(media, extension)
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UserError(f"caption file {path} is not UTF-8 text; re-save it as UTF-8.") from None


def write_caption(media: str | Path, text: str, extension: str = ".txt") -> Path:
    return atomic_write_text(caption_path_for(media, extension), text.strip() + "\n")


def write_captions(captions: Mapping[str | Path, str], extension: str = ".txt") -> list[Path]:
    """Write {media path: caption}; returns the caption files written."""
    return [write_caption(media, text, extension) for media, text in captions.items()]


def changed(before: Captions, after: Captions) -> dict:
    """Only the entries an edit changed (what needs writing)."""
    return {key: text for key, text in after.items() if before.get(key) != text}


def _join(first: str, second: str, separator: str) -> str:
    if not first:
        return second
    if not second:
        return first
    return f"{first}{separator}{second}"


def add_prefix(captions: Captions, prefix: str, separator: str = ", ") -> dict:
    prefix = prefix.strip()
    return {key: _join(prefix, text, separator) for key, text in captions.items()}


def add_suffix(captions: Captions, suffix: str, separator: str = ", ") -> dict:
    suffix = suffix.strip()
    return {key: _join(text, suffix, separator) for key, text in captions.items()}


def find_replace(captions: Captions, find: str, replace: str, regex: bool = False,
                 case_sensitive: bool = True) -> dict:
    """Replace every occurrence of `find`; with `regex`, `find` is a Python regular expression and `replace` may
    use \\1 groups. Extra spaces left by a deletion are collapsed."""
    if not find:
        raise UserError("the text to find is empty; type what should be replaced.")
    flags = 0 if case_sensitive else re.IGNORECASE
    try:
        pattern = re.compile(find if regex else re.escape(find), flags)
    except re.error as exc:
        raise UserError(f"`{find}` is not a valid regular expression ({exc}); fix it or turn regex off.") from None
    replacement = replace if regex else replace.replace("\\", "\\\\")
    try:
        return {key: _tidy(pattern.sub(replacement, text)) for key, text in captions.items()}
    except (re.error, IndexError) as exc:
        raise UserError(f"replacement `{replace}` is invalid for `{find}` ({exc}); fix the group references.") from None


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"^[,;:\s]+|[,;:\s]+$", "", text)
    return text


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def add_trigger_word(captions: Captions, word: str, position: str = "start", separator: str = ", ") -> dict:
    """Put `word` at the start (or end) of every caption that does not already contain it as a whole word."""
    word = word.strip()
    if not word:
        raise UserError("the trigger word is empty; type the word to add.")
    if position not in ("start", "end"):
        raise UserError(f"trigger word position must be start or end, got {position!r}.")
    out = {}
    for key, text in captions.items():
        if has_word(text, word):
            out[key] = text
        else:
            out[key] = _join(word, text, separator) if position == "start" else _join(text, word, separator)
    return out
