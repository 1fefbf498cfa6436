"""Reading the text files users hand to impbench (results, scenarios, presets, config.json): any
problem, bytes that are not UTF-8 included, is one InputError line naming the file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from impbench.errors import InputError


def read_text(path: Path, what: str = "file") -> str:
    """A file's text: gzip-compressed or plain, UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error):
        raise InputError(f"{path}: not a UTF-8 text {what} (binary or damaged bytes)") from None
