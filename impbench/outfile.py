"""The --out writer of run / ab / sweep: checked before any GPU work, resumable, atomic, never destructive.

Rules, in the order they are checked (every failure is one InputError line naming a way out):
- the path is not a folder, its folder exists (created if missing) and is writable;
- a file already there must be an impbench result: anything else is never overwritten;
- a result of the same command, settings and GPU is resumed (its rows are kept and not measured
  again); one of other settings is replaced only with --force;
- the CSV beside the JSON belongs to the result: it is rewritten with it, but a CSV there without
  its JSON is someone else's file and is not overwritten.
Each write goes to a temporary file in the same folder, then is renamed over the old one: an
interrupted write leaves the previous version, so the finished rows survive a full disk or a kill.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from impbench.errors import InputError
from impbench.results import Result, code_difference, load_result


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file in path's folder, then rename it over path (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_path_for(path: Path) -> Path:
    return path.with_suffix(".csv") if path.suffix == ".json" else path.with_name(path.name + ".csv")


def check_writable_folder(path: Path, option: str = "--out") -> None:
    """`path` can be written as a file: not a folder, in a folder that exists (or can be made) and takes files."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name such as {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write in {path.parent} ({exc.strerror or exc}); give another path") from None


class ResultFile:
    """A result's JSON file (and the CSV table beside it) for one command's --out."""

    option = "--out"

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.csv_path = csv_path_for(self.path)
        self.force = force
        self.previous: Result | None = None  # the result there to continue, once check() found one

    def check(self, command: str, settings: dict) -> None:
        """Before any GPU work: the path can be written, and what is there is replaced (--force) or
        continued (same command and settings) but never overwritten otherwise."""
        check_writable_folder(self.path, self.option)
        where = f"{self.option} {self.path}"
        if not self.path.exists():
            if self.csv_path.exists():
                raise InputError(f"{where}: {self.csv_path} is already there and is not the table of an impbench result "
                                 "beside it; give another path")  # fmt: skip
            return
        try:
            previous = load_result(self.path)
        except InputError:
            raise InputError(f"{where} holds a file that is not an impbench result; it is never overwritten: "
                             "give another path") from None  # fmt: skip
        if self.force:
            return
        if previous.command != command or previous.settings != settings:
            raise InputError(f"{where} holds a result of other settings (a `{previous.command}` run); rerun with the same "
                             "settings to resume it, add --force to replace it, or give another path")  # fmt: skip
        self.previous = previous

    def resume(self, fresh: Result) -> Result:
        """After check(), with the machine known: the result to continue (earlier rows kept), or `fresh`."""
        if self.previous is None:
            return fresh
        gpu_before, gpu_now = self.previous.metadata.get("gpu_name"), fresh.metadata.get("gpu_name")
        if gpu_before != gpu_now:
            raise InputError(f"{self.option} {self.path} holds rows measured on {gpu_before!r}, not on this {gpu_now!r}: rows "
                             "of two GPUs are never one table; give another path, or --force to replace it")  # fmt: skip
        differs = code_difference(fresh.metadata, self.previous.metadata)
        if differs:
            raise InputError(f"{self.option} {self.path} holds rows of other code than this run (this run's {differs} in the file): rows "
                             "of two versions are never one table; give another path, or --force to replace it")  # fmt: skip
        self.previous.metadata = {**fresh.metadata, "resumed_from": self.previous.metadata.get("time_utc")}
        return self.previous

    def write(self, result: Result, csv_text: str) -> None:
        """Both files, atomically; a failure (full disk, vanished folder) is one line, earlier rows kept."""
        try:
            atomic_write_text(self.path, result.to_json())
            atomic_write_text(self.csv_path, csv_text)
        except OSError as exc:
            kept = "the rows written before are still there" if self.path.exists() else "nothing was written"
            raise InputError(f"{self.option} {self.path}: cannot write ({exc.strerror or exc}); {kept}") from None
