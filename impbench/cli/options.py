"""Options and checks the commands share: models, prompt lengths, the measurement protocol, the gate,
the output files; and the one line of progress on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from impbench.errors import InputError

FORMAT_CHOICE = click.Choice(["md", "csv", "json"])
# impbench.report.FORMATS, written out: importing the report module brings pandas into every command
RESULT_FORMATS = click.Choice(["md", "gh", "csv", "json"])

def progress(line: str) -> None:
    click.echo(line, err=True)


def check_environment() -> None:
    from impbench import env

    for note in env.check():
        progress(note)


# ---- shared options ---------------------------------------------------------------------------------

def model_options(multiple: bool):
    def decorate(command):
        for option in reversed([
            click.option("--model", "-m", "models", multiple=multiple, metavar="NAME[,NAME]" if multiple else "NAME",
                         help="Preset name or alias (see `impbench models`)" + (", comma-separated or repeated." if multiple
                                                                                else ".")),
            click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                         help="Build the model from a Hugging Face config.json instead of a preset."),
            click.option("--name", default=None, metavar="TEXT",
                         help="Name of the --model-config model in tables and result files. Default: the config's "
                              "_name_or_path, else its architecture and geometry."),
            click.option("--layers", type=int, default=None, metavar="N",
                         help="Only the first N layers of the model (small GPUs, quick checks). Default: all."),
        ]):  # fmt: skip
            command = option(command)
        return command

    return decorate


def presets_from(models, model_config, name, layers, default: str | None = None) -> list:
    """The model presets a command works on, each checked (one line per problem, exit 2)."""
    from impbench.presets import from_hf_config, get_preset, replace_layers

    names = [part.strip() for text in (models if isinstance(models, tuple) else (models,) if models else ())
             for part in text.split(",") if part.strip()]  # fmt: skip
    if model_config and names:
        raise InputError("give --model or --model-config, not both")
    if name is not None and not model_config:
        raise InputError("--name names a --model-config model; presets keep their own names")
    if model_config:
        presets = [from_hf_config(model_config, name=name)]
    elif names:
        presets = [get_preset(n) for n in dict.fromkeys(names)]
    elif default:
        presets = [get_preset(default)]
    else:
        raise InputError("pass --model NAME (see `impbench models`) or --model-config path/config.json")
    return presets if layers is None else [replace_layers(p, layers) for p in presets]


def parse_prompt_lengths(text: str, option: str = "--pp") -> list[int]:
    from impbench.prefill import check_prompt_tokens

    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() for part in parts):
        raise InputError(f"{option} takes comma-separated whole numbers of tokens such as 512,1024; got {text!r}")
    return list(dict.fromkeys(check_prompt_tokens(int(part), option) for part in parts))


SEED = click.option("--seed", type=int, default=None, metavar="N", help="Seed of the synthetic weights and prompt. [default: 0]")
NO_PREWARM = click.option("--no-prewarm", is_flag=True,
                           help="Allocate buffers on first use, as the original engine did: graph capture then fails "
                                "on the allocation and the arm falls back to eager (shown on purpose). The default for arms whose "
                                "SPEC does not set prewarm=on|off; an arm's key wins.")  # fmt: skip
TOLERANCE = click.option("--tolerance", type=float, default=None, metavar="PCT",
                          help="Flag a rep whose median SM clock is further than PCT % from the run's median. [default: 5]")
OUT = click.option("--out", type=click.Path(), default=None, metavar="PATH",
                    help="Write the result as JSON (metadata, every rep and clock reading) and a CSV beside it, "
                         "atomically after every row; run again with the same PATH and settings to resume.")
FORCE = click.option("--force", is_flag=True, help="Replace an impbench result of other settings at --out.")
BENCH_OUT = click.option("--out", type=click.Path(), default=None, metavar="PATH",
                          help="Also write the table to PATH (a .md or .csv gets its full .json beside it).")
PLOT = click.option("--plot", is_flag=True, help="Also write the plots of the result beside --out (PATH with .png; "
                                                  "needs matplotlib: pip install 'impbench[plot]').")
FORMAT = click.option("--format", "fmt", type=FORMAT_CHOICE, default="md", show_default=True,
                       help="Output format: markdown tables, CSV or JSON records.")
RESULT_FORMAT = click.option("--format", "fmt", type=RESULT_FORMATS, default="md", show_default=True,
                              help="Output format: markdown tables, gh (GitHub markdown for a job summary or a pull-request "
                                   "comment: a headline table, details folded), CSV or JSON records.")


def gate_options(command):
    for option in reversed([
        click.option("--fail-on", type=click.Choice(["slower", "faster", "change"]), default=None,
                     help="Exit 1 when an arm's verdict is SLOWER (FASTER, either) by more than --threshold with its "
                          "whole confidence interval past it; exit codes: 0 passed, 1 gate failed, 2 bad input."),
        click.option("--threshold", type=float, default=0.0, show_default=True, metavar="PCT",
                     help="With --fail-on: how far past 0 % the interval must lie for an arm to fail."),
        click.option("--summary", is_flag=True,
                     help="Also append the GitHub markdown table (--format gh) to the file $GITHUB_STEP_SUMMARY names."),
    ]):  # fmt: skip
        command = option(command)
    return command


def gate_from(fail_on, threshold):
    if fail_on is None:
        if threshold:
            raise InputError("--threshold needs --fail-on slower|faster|change")
        return None
    from impbench.gate import Gate

    return Gate(fail_on, threshold)


def finish(gate, judged: list, github_text: str | None) -> None:
    """After the table: the job summary, then the gate's lines on stderr and its exit code."""
    import os

    if github_text is not None:
        target = os.environ.get("GITHUB_STEP_SUMMARY")
        if not target:
            progress("note: --summary: GITHUB_STEP_SUMMARY is not set (not a GitHub Actions job); nothing appended")
        else:
            try:
                with open(target, "a", encoding="utf-8") as handle:
                    handle.write(github_text + "\n")
            except OSError as exc:
                raise InputError(f"--summary: cannot append to {target} ({exc.strerror or exc})") from None
    if gate is not None:
        from impbench.gate import EXIT_FAILED

        passed, lines = gate.report(judged)
        for line in lines:
            progress(line)
        if not passed:
            sys.exit(EXIT_FAILED)


def check_bench_out(out, command: str, force: bool, fmt: str) -> None:
    """A kernel benchmark's --out, before any GPU work: writable, and an existing file is replaced only
    where it is this command's own report and --force says so."""
    if not out:
        return

    from impbench.bench.report import report_paths
    from impbench.outfile import check_writable_folder

    path = Path(out)
    check_writable_folder(path)
    paths = report_paths(path, fmt)
    if not any(p.exists() for p in paths):
        return
    try:
        own = json.loads(paths[-1].read_text(encoding="utf-8")).get("format") == f"impbench.{command}"
    except (OSError, ValueError, AttributeError):
        own = False
    if not own:
        raise InputError(f"--out {path}: a file is there that is not an `impbench {command}` report; it is never "
                         "overwritten: give another path")  # fmt: skip
    if not force:
        raise InputError(f"--out {path} holds an earlier `impbench {command}` report; add --force to replace it, "
                         "or give another path")  # fmt: skip


class RepsType(click.ParamType):
    """--reps: a whole number, or `auto` (stop on the delta's interval, impbench.stopping)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        text = str(value).strip()
        if text == "auto":
            return text
        if text.isascii() and text.lstrip("-").isdigit():
            return int(text)
        self.fail(f"{value!r} is neither a whole number nor 'auto'", param, ctx)


def auto_options(command):
    for option in reversed([
        click.option("--target-ci", type=float, default=None, metavar="PCT",
                     help="--reps auto: stop once every arm's 95% interval of Δ is narrower than PCT. [default: 1.0]"),
        click.option("--max-reps", type=int, default=None, metavar="N",
                     help="--reps auto: at most N reps per arm. [default: 50]"),
        click.option("--max-time", type=float, default=None, metavar="S",
                     help="--reps auto: at most S seconds of measured reps per row. [default: 600]"),
        click.option("--cooldown", type=float, default=5.0, show_default=True, metavar="S",
                     help="Seconds to wait before measuring flagged (throttled or clock-strayed) reps again."),
        click.option("--max-reruns", type=int, default=2, show_default=True, metavar="N",
                     help="Rounds of re-measuring flagged reps per row; 0 keeps them, flagged."),
    ]):  # fmt: skip
        command = option(command)
    return command


def comparison_options(command):
    """The options of the commands that compare arms (ab, sweep)."""
    for option in reversed([TOLERANCE, SEED, NO_PREWARM, RESULT_FORMAT, OUT, FORCE, gate_options, auto_options, PLOT]):
        command = option(command)
    return command


def protocol_from(reps, warmup, tolerance, seed, prewarm, min_reps: int, defaults: dict | None = None,
                  auto_settings: dict | None = None):  # fmt: skip
    """The Protocol of the options given; where one is None, `defaults` (a scenario's) or else Protocol's own."""
    from impbench.measure import Protocol
    from impbench.stopping import AutoStop

    fallback = {"reps": Protocol.reps, "warmup": Protocol.warmup, "tolerance": Protocol.tolerance_pct, "seed": Protocol.seed,
                **{key: value for key, value in (defaults or {}).items() if value is not None}}  # fmt: skip

    def pick(value, key):
        return fallback[key] if value is None else value

    reps, auto_settings = pick(reps, "reps"), dict(auto_settings or {})
    rerun = {key: auto_settings.pop(key) for key in ("cooldown_s", "max_reruns") if key in auto_settings}
    given = {key: value for key, value in auto_settings.items() if value is not None}
    auto = None
    if reps == "auto":
        auto, reps = AutoStop(**given), min_reps  # the least the stopping rule starts from
    elif given:
        names = {"target_ci_pct": "--target-ci", "max_reps": "--max-reps", "max_time_s": "--max-time"}
        raise InputError(f"{', '.join(names[key] for key in given)} go with --reps auto")
    return Protocol(reps=reps, warmup=pick(warmup, "warmup"), tolerance_pct=pick(tolerance, "tolerance"),
                    seed=pick(seed, "seed"), prewarm=prewarm, auto=auto, **rerun).check(min_reps)  # fmt: skip


