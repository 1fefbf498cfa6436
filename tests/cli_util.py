"""Shared by the CLI tests: run `impbench ARGS` in-process and return (exit code, stdout, stderr)."""

import pytest

from impbench.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
