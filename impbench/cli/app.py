"""The impbench command group and its entry point: every error a user can cause ends as exit code 2
and one line on stderr, before any GPU time is spent. Exit codes: 0 done, 1 a --fail-on gate failed
(or a bug: a traceback), 2 bad input or no usable GPU, 130 interrupted."""

from __future__ import annotations

import sys

import click

from impbench import __version__
from impbench.errors import InputError, NoDeviceError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="impbench")
def cli() -> None:
    """impbench: is B faster than A for this MoE prefill, on this GPU, by how much, and why.

    Plans (no GPU needed), kernel benchmarks, and an interleaved eager-vs-CUDA-graph A/B of a
    synthetic MoE prefill with real model shapes.
    """


def _fail(message: str) -> None:
    first = " ".join(str(message).split())  # one line, whatever the message held
    click.echo(f"impbench: error: {first}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning every user-caused error into exit 2 + one line."""
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the whole help, as help, not squashed into one error line
        click.echo(cli.get_help(click.Context(cli, info_name="impbench")), err=True)
        sys.exit(2)
    try:
        cli.main(args=args, prog_name="impbench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("impbench: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        _fail(exc.format_message())
    except (InputError, NoDeviceError) as exc:
        _fail(str(exc))


