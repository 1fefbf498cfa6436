"""Reading the files users hand to impbench (results, scenarios, presets, config.json): any problem,
bytes that are not UTF-8 and malformed JSON or TOML included, is one InputError line naming the file."""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from pathlib import Path

from impbench.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


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


def read_json(path: Path, what: str, expected: str):
    """A JSON file's value; `expected` says what it should be, for the error line."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected {expected}") from None


def read_toml(path: Path, what: str) -> dict:
    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
