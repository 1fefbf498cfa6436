"""The result of a kernel benchmark: rows of raw numbers, the view of them, metadata and telemetry;
one set of printers (markdown, CSV, JSON) and one atomic writer for `gemm`, `moe` and `ops`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impbench.errors import InputError
from impbench.metadata import source_note

FORMATS = ("md", "csv", "json")


@dataclass(frozen=True)
class Column:
    """One markdown column: the row key it shows, its header, and how a value is written."""

    key: str
    header: str
    text: Callable[[Any], str] = str


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: "-" if value is None else f"{value:.{digits}f}"


def sci(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def report_paths(path: str | Path, fmt: str) -> list[Path]:
    """The files a report written to `path` in `fmt` occupies: `path`, then for markdown or CSV its full
    JSON beside it (the last one is always the JSON)."""
    path = Path(path)
    if fmt == "json":
        return [path]
    if path.suffix == ".json":
        raise InputError(f"--out {path}: a {fmt} report gets its JSON beside it, at this very path; give a .{fmt} "
                         "path or --format json")  # fmt: skip
    return [path, path.with_suffix(".json")]


def below_floor_lines(rows: list[dict], label: Callable[[dict], str]) -> list[str]:
    """The summary line naming every row timed under its floor (a measurement error, never a speed), if any."""
    below = [label(row) for row in rows if row.get("x_floor") is not None and row["x_floor"] < 1.0]
    return [f"faster than the floor, so a measurement error: {', '.join(below)}"] if below else []


@dataclass
class BenchReport:
    command: str  # gemm | moe | ops
    rows: list[dict]  # raw numbers, one dict per timed case
    columns: list[Column]  # the markdown view
    summary: list[str] = field(default_factory=list)  # lines under the table: targets, geomeans, ceilings
    metadata: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    title: str = ""

    def to_dict(self) -> dict:
        return {"format": f"impbench.{self.command}", "schema_version": 2, "metadata": self.metadata,
                "settings": self.settings, "summary": self.summary, "rows": self.rows}  # fmt: skip

    def format(self, fmt: str) -> str:
        import pandas as pd

        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=1, default=str)
        if fmt == "csv":
            return pd.DataFrame(self.rows).to_csv(index=False)
        frame = pd.DataFrame([{c.header: c.text(row.get(c.key)) for c in self.columns} for row in self.rows])
        gpu = self.metadata.get("gpu_name", "n/a")
        commit = str(self.metadata.get("git_commit", "n/a"))[:12] + source_note(self.metadata)
        head = f"{self.title} GPU: {gpu}; commit {commit}".strip()
        table = frame.to_markdown(index=False, disable_numparse=True) if not frame.empty else "(no rows)"
        return "\n".join([head, "", table, "", *[f"- {line}" for line in self.summary]]) + "\n"

    def write(self, path: str | Path, fmt: str) -> list[Path]:
        """`path` in `fmt`, atomically; a markdown or CSV file also gets the full JSON beside it."""
        from impbench.outfile import atomic_write_text, check_writable_folder

        path = Path(path)
        check_writable_folder(path)
        written = list(zip(report_paths(path, fmt), (fmt, "json")))
        try:
            for target, form in written:
                atomic_write_text(target, self.format(form))
        except OSError as exc:
            raise InputError(f"--out {path}: cannot write ({exc.strerror or exc})") from None
        return [target for target, _ in written]
