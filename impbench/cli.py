"""The impbench command line: parse and check every input, call one function, print.

Every error a user can cause ends as exit code 2 and one line on stderr saying what was wrong and
what is accepted, before any GPU time is spent; that includes running a GPU command where no CUDA
device is usable. Exit codes: 0 done, 1 a bug (a traceback), 2 bad input or no GPU, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from impbench import __version__
from impbench.errors import InputError, NoDeviceError

FORMAT_CHOICE = click.Choice(["md", "csv", "json"])
RESULT_FORMATS = click.Choice(["md", "gh", "csv", "json"])


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


def _progress(line: str) -> None:
    click.echo(line, err=True)


def _check_environment() -> None:
    from impbench import env

    for note in env.check():
        _progress(note)


# ---- shared options ---------------------------------------------------------------------------------

def _model_options(multiple: bool):
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


def _presets(models, model_config, name, layers, default: str | None = None) -> list:
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


def _prompt_lengths(text: str, option: str = "--pp") -> list[int]:
    from impbench.prefill import check_prompt_tokens

    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() for part in parts):
        raise InputError(f"{option} takes comma-separated whole numbers of tokens such as 512,1024; got {text!r}")
    return list(dict.fromkeys(check_prompt_tokens(int(part), option) for part in parts))


_SEED = click.option("--seed", type=int, default=None, metavar="N", help="Seed of the synthetic weights and prompt. [default: 0]")
_NO_PREWARM = click.option("--no-prewarm", is_flag=True,
                           help="Allocate buffers on first use, as the original engine did: graph capture then fails "
                                "on the allocation and the arm falls back to eager (shown on purpose).")  # fmt: skip
_TOLERANCE = click.option("--tolerance", type=float, default=None, metavar="PCT",
                          help="Flag a rep whose median SM clock is further than PCT % from the run's median. [default: 5]")
_OUT = click.option("--out", type=click.Path(), default=None, metavar="PATH",
                    help="Write the result as JSON (metadata, every rep and clock reading) and a CSV beside it, "
                         "atomically after every row; run again with the same PATH and settings to resume.")
_FORCE = click.option("--force", is_flag=True, help="Replace an impbench result of other settings at --out.")
_BENCH_OUT = click.option("--out", type=click.Path(), default=None, metavar="PATH",
                          help="Also write the table to PATH (a .md or .csv gets its full .json beside it).")
_PLOT = click.option("--plot", is_flag=True, help="Also write the plots of the result beside --out (PATH with .png; "
                                                  "needs matplotlib: pip install 'impbench[plot]').")
_FORMAT = click.option("--format", "fmt", type=FORMAT_CHOICE, default="md", show_default=True,
                       help="Output format: markdown tables, CSV or JSON records.")
_RESULT_FORMAT = click.option("--format", "fmt", type=RESULT_FORMATS, default="md", show_default=True,
                              help="Output format: markdown tables, gh (GitHub markdown for a job summary or a pull-request "
                                   "comment: a headline table, details folded), CSV or JSON records.")


def _gate_options(command):
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


def _gate(fail_on, threshold):
    if fail_on is None:
        if threshold:
            raise InputError("--threshold needs --fail-on slower|faster|change")
        return None
    from impbench.gate import Gate

    return Gate(fail_on, threshold)


def _finish(gate, judged: list, github_text: str | None) -> None:
    """After the table: the job summary, then the gate's lines on stderr and its exit code."""
    import os

    if github_text is not None:
        target = os.environ.get("GITHUB_STEP_SUMMARY")
        if not target:
            _progress("note: --summary: GITHUB_STEP_SUMMARY is not set (not a GitHub Actions job); nothing appended")
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
            _progress(line)
        if not passed:
            sys.exit(EXIT_FAILED)


def _measure(command: str, presets: list, prompt_lengths: list[int], arms: list, protocol, out, force: bool,
             fmt: str, layers: int | None, profile: bool = False, gate=None, summary: bool = False,
             plot: bool = False, fleet: dict | None = None) -> None:  # fmt: skip
    """The one path of run / ab / sweep: checks, --out, the measurement, the table."""
    from impbench import device, measure, metadata
    from impbench.engine.core import check_supported
    from impbench.outfile import ResultFile
    from impbench.report import format_result
    from impbench.results import Result

    for preset in presets:  # every bad model is exit 2 before any engine is built
        check_supported(preset)
    if plot:
        if not out:
            raise InputError("--plot writes beside --out: give --out PATH too")
        from impbench.plot import check_path, require_matplotlib

        require_matplotlib()  # matplotlib missing is one line now, not after the measurement
        check_path(Path(out).with_suffix(".png"))
    _check_environment()
    settings = {**protocol.to_dict(), "layers": layers, "arms": [arm.to_dict() for arm in arms]}
    if fleet is not None:
        settings["gpu_kinds"] = list(fleet["gpu_kinds"])
    target = ResultFile(out, force) if out else None
    if target is not None:
        target.start(Result(command, settings=settings), machine_known=False)  # the path, before any GPU work
    if fleet is not None:  # the driver needs no GPU; each row reports the machine that measured it
        from impbench import fleet as ray_fleet

        ray_fleet.connect(fleet["address"])
        fresh = Result(command, metadata=metadata.collect_metadata(), settings=settings)
    else:
        device.require_cuda()
        fresh = Result(command, metadata=metadata.device_metadata(), settings=settings)
    result = target.start(fresh) if target is not None else fresh
    if target is not None and result.rows:
        _progress(f"resuming {target.path}: {len(result.rows)} row(s) already measured")

    def save(partial) -> None:
        target.write(partial, format_result(partial, "csv"))
        _progress(f"wrote {target.path}")

    if fleet is not None:
        jobs = [ray_fleet.RowJob(preset, pp, tuple(arms), protocol, kind) for kind in fleet["gpu_kinds"] or (None,)
                for preset in presets for pp in prompt_lengths]  # fmt: skip
        ray_fleet.run_fleet(result, jobs, fleet["max_retries"], on_row=save if target is not None else None,
                            progress=_progress)  # fmt: skip
    else:
        measure.measure(result, presets, prompt_lengths, arms, protocol, profile=profile, progress=_progress,
                        on_row=save if target is not None else None)  # fmt: skip
    click.echo(format_result(result, fmt))
    if plot:
        from impbench.plot import plot_result

        _progress(f"wrote {plot_result(result, Path(out).with_suffix('.png'))}")
    from impbench.report import judged_in_result

    _finish(gate, judged_in_result(result), format_result(result, "gh") if summary else None)


def _check_bench_out(out, command: str, force: bool) -> None:
    """A kernel benchmark's --out, before any GPU work: writable, and an existing file is replaced only
    where it is this command's own report and --force says so."""
    if not out:
        return
    from pathlib import Path

    from impbench.outfile import check_writable_folder

    path = Path(out)
    check_writable_folder(path)
    twin = path if path.suffix == ".json" else path.with_suffix(".json")
    if not (path.exists() or twin.exists()):
        return
    try:
        own = json.loads(twin.read_text(encoding="utf-8")).get("format") == f"impbench.{command}"
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


def _auto_options(command):
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


def _comparison_options(command):
    """The options of the commands that compare arms (ab, sweep)."""
    for option in reversed([_TOLERANCE, _SEED, _NO_PREWARM, _RESULT_FORMAT, _OUT, _FORCE, _gate_options, _auto_options, _PLOT]):
        command = option(command)
    return command


def _protocol(reps, warmup, tolerance, seed, prewarm, min_reps: int, defaults: dict, auto_options: dict | None = None):
    from impbench.measure import Protocol
    from impbench.stopping import AutoStop

    def pick(value, key):
        return defaults[key] if value is None else value

    reps, auto_options = pick(reps, "reps"), dict(auto_options or {})
    rerun = {key: auto_options.pop(key) for key in ("cooldown_s", "max_reruns") if key in auto_options}
    given = {key: value for key, value in auto_options.items() if value is not None}
    auto = None
    if reps == "auto":
        auto, reps = AutoStop(**given), max(min_reps, 3)
    elif given:
        names = {"target_ci_pct": "--target-ci", "max_reps": "--max-reps", "max_time_s": "--max-time"}
        raise InputError(f"{', '.join(names[key] for key in given)} go with --reps auto")
    return Protocol(reps=reps, warmup=pick(warmup, "warmup"), tolerance_pct=pick(tolerance, "tolerance"),
                    seed=pick(seed, "seed"), prewarm=prewarm, auto=auto, **rerun).check(min_reps)  # fmt: skip


# ---- models, plan and compare (no GPU needed) ----------------------------------------------------------


@cli.command()
@_FORMAT
def models(fmt: str) -> None:
    """List the model presets: layers, experts, top-k, attention layout, total and active parameters.

    Parameters are counted from each preset's geometry (billions, B); `published` is the model
    card's figure where one exists. Synthetic presets (tiny) come last.
    """
    from impbench.plan import render_models
    from impbench.presets import list_presets

    click.echo(render_models(list_presets(), fmt))


@cli.command()
@_model_options(multiple=False)
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS", help="Prompt length to prefill, in tokens.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk in tokens: 0 = whole prompt in one chunk, else a multiple of 16. Default: the preset's.")
@click.option("--gpu", type=click.Choice(["h100", "h200", "rtx5090", "auto"]), default="h100", show_default=True,
              help="GPU whose compute (TFLOP/s) and memory (TB/s) ceilings give the floor times; auto = detect via NVML.")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="md", show_default=True,
              help="Output format: markdown (summary + tables), CSV or JSON.")
def plan(models, model_config, name, layers, prompt_tokens, chunk, gpu, fmt) -> None:  # fmt: skip
    """FLOPs, bytes moved and floor time (µs) of every op of a prefill, per chunk and in total.

    Floors are max(FLOPs / compute ceiling, bytes / memory ceiling) per call; memory lines give the
    weights, the KV cache (or linear-attention state) after the prefill and one chunk's activations.
    """
    from impbench.plan import plan_prefill, render_plan
    from impbench.prefill import PrefillSpec

    spec = PrefillSpec(prompt_tokens, chunk)
    (preset,) = _presets(models, model_config, name, layers)
    click.echo(render_plan(plan_prefill(preset, spec, gpu), fmt))


@cli.command()
@click.argument("old", metavar="OLD.json", type=click.Path(dir_okay=False))
@click.argument("new", metavar="NEW.json", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=RESULT_FORMATS, default="md", show_default=True,
              help="Output format: markdown table, gh (GitHub markdown), CSV, or JSON {notes, rows}.")  # fmt: skip
@_gate_options
def compare(old: str, new: str, fmt: str, fail_on, threshold, summary) -> None:
    """Compare two results of `run`, `ab` or `sweep`: each arm's tok/s in NEW against OLD, with verdicts.

    Arms are matched by model, pp and arm settings; one present on one side only is listed, not
    dropped. Where both runs measured the same control arm beside an arm, the arm is judged by its
    ratio to that control, so drift of the machine between the runs is not read as a change.
    With --fail-on, a CI gate: exit 1 when an arm fails it (the failing rows are named on stderr).
    """
    from impbench.report import compare_notes, compare_results, format_compare, judged_in_compare
    from impbench.results import load_result

    gate = _gate(fail_on, threshold)
    old_result, new_result = load_result(old), load_result(new)
    click.echo(format_compare(old_result, new_result, fmt))
    rows = compare_results(old_result, new_result)
    if fmt == "csv":  # markdown and JSON carry the notes themselves; CSV holds only the table
        for note in compare_notes(old_result, new_result, rows):
            click.echo(note, err=True)
    _finish(gate, judged_in_compare(rows), format_compare(old_result, new_result, "gh") if summary else None)


@cli.command()
@click.argument("out", metavar="OUT.json", type=click.Path(dir_okay=False))
@click.argument("inputs", metavar="RESULT.json...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_FORCE
def merge(out, inputs, force) -> None:
    """Merge results of one sweep run in several places (clusters, or GPU kinds apart) into OUT.json.

    Every input must hold the same command and settings, and each (model, pp, GPU kind) row may come
    from one input only; rows keep the host and GPU that measured them.
    """
    from impbench.outfile import ResultFile
    from impbench.report import format_result
    from impbench.results import load_result, merge_results

    if len(inputs) < 2:
        raise InputError("merge takes OUT.json and at least two result files")
    merged = merge_results([load_result(path) for path in inputs], list(inputs))
    target = ResultFile(out, force)
    target.start(merged, machine_known=False)
    target.write(merged, format_result(merged, "csv"))
    _progress(f"wrote {target.path}: {len(merged.rows)} rows from {len(inputs)} files")


# ---- run, ab and sweep: the synthetic engine's prefill ---------------------------------------------------


@cli.command()
@_model_options(multiple=False)
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS", help="Prompt length in tokens.")
@click.option("--mode", type=click.Choice(["eager", "graph"]), default="graph", show_default=True,
              help="eager: every kernel launched from Python; graph: non-last chunks replay one captured CUDA graph.")
@click.option("--guard", type=click.Choice(["cublas", "tight", "small-n", "permissive"]), default=None,
              help="Dense GEMM dispatch: cublas everywhere, or our kernel per guard. Default: eager cublas, graph small-n.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--reps", type=int, default=5, show_default=True, help="Timed prefills after the cold one and the warm-up (>= 1).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unrecorded prefills after the cold one.")
@_TOLERANCE
@_SEED
@_NO_PREWARM
@click.option("--profile", is_flag=True,
              help="Also time every op of one eager prefill (CUDA events) against its `impbench plan` floor.")
@_RESULT_FORMAT
@_OUT
@_FORCE
def run(models, model_config, name, layers, prompt_tokens, mode, guard, chunk, reps, warmup, tolerance, seed,
        no_prewarm, profile, fmt, out, force) -> None:  # fmt: skip
    """Build the engine once and run its prefill in one arm: tok/s, capture status, host µs per launch,
    GEMM paths, and how far the median is from the `impbench plan` floor.

    Wall time per prefill from the first launch to the final synchronize (host clock).
    """
    from impbench.arms import ArmSpec
    from impbench.prefill import PrefillSpec

    spec = PrefillSpec(prompt_tokens, chunk)
    arm = ArmSpec(mode, guard or "", spec.chunk_tokens)
    protocol = _protocol(reps, warmup, tolerance, seed, not no_prewarm, 1, {"tolerance": 5.0, "seed": 0})
    presets = _presets(models, model_config, name, layers)
    _measure("run", presets, [spec.prompt_tokens], [arm], protocol, out, force, fmt, layers, profile=profile)


@cli.command()
@_model_options(multiple=True)
@click.option("--pp", "pp_list", default="512,1024", show_default=True, metavar="LIST",
              help="Prompt lengths in tokens, comma-separated; one row (and one engine) each.")
@click.option("--reps", type=RepsType(), default=10, show_default=True,
              help="Measured prefills per arm, A B B A interleaved (>= 3), or `auto`: add A B B A blocks until the "
                   "interval of Δ is narrower than --target-ci (see --max-reps, --max-time).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Unrecorded prefills per arm after the cold run.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Chunk of both arms unless a SPEC sets its own (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--guard", type=click.Choice(["cublas", "tight", "small-n", "permissive"]), default=None,
              help="Dense GEMM guard of a graph arm whose SPEC names none. Default: small-n.")
@click.option("--a", "spec_a", default="mode=eager", show_default=True, metavar="SPEC",
              help="Arm A as key=value pairs: mode=eager|graph, guard=cublas|tight|small-n|permissive, chunk=N.")
@click.option("--b", "spec_b", default="mode=graph", show_default=True, metavar="SPEC",
              help="Arm B, as --a (default guard of a graph arm: small-n).")
@_comparison_options
def ab(models, model_config, name, layers, pp_list, reps, warmup, chunk, guard, spec_a, spec_b, tolerance, seed,
       no_prewarm, fmt, out, force, fail_on, threshold, summary, target_ci, max_reps, max_time, cooldown,
       max_reruns, plot) -> None:  # fmt: skip
    """A/B two ways of running the same prefill (default: A eager, B CUDA graph) on one engine per row.

    Each arm's first prefill is timed apart as `cold`; then --warmup unrecorded prefills; then --reps
    per arm in A B B A order so drift hits both alike, each under an NVML clock/power sampler. Prints
    B's delta over A with a 95% bootstrap interval and a FASTER / SLOWER / SAME verdict, then why:
    cold vs warm, clocks, throttling, capture status, GEMM paths, host time per launch.
    """
    from impbench.arms import ArmSpec, parse_arm
    from impbench.prefill import check_chunk_tokens
    from impbench.stats import MIN_REPS

    prompt_lengths = _prompt_lengths(pp_list)
    base = ArmSpec(chunk=None if chunk is None else check_chunk_tokens(chunk))
    arms = [parse_arm(spec_a, base, guard), parse_arm(spec_b, base, guard)]
    auto = {"target_ci_pct": target_ci, "max_reps": max_reps, "max_time_s": max_time, "cooldown_s": cooldown,
            "max_reruns": max_reruns}  # fmt: skip
    protocol = _protocol(reps, warmup, tolerance, seed, not no_prewarm, MIN_REPS, {"tolerance": 5.0, "seed": 0}, auto)
    presets = _presets(models, model_config, name, layers, default="qwen3-coder")
    _measure("ab", presets, prompt_lengths, arms, protocol, out, force, fmt, layers, gate=_gate(fail_on, threshold),
             summary=summary, plot=plot)  # fmt: skip


@cli.command()
@click.argument("scenario", required=False, metavar="[SCENARIO]")
@click.option("--model", "-m", "models", default=None, metavar="LIST", help="Presets, comma-separated (overrides the scenario).")
@click.option("--pp", "pp_list", default=None, metavar="LIST", help="Prompt lengths in tokens, comma-separated (overrides).")
@click.option("--arm", "arm_specs", multiple=True, metavar="SPEC",
              help="An arm (repeatable, at least two; the first is the baseline): mode=eager|graph,guard=...,chunk=N.")
@click.option("--reps", type=RepsType(), default=None,
              help="Measured prefills per arm (>= 3), or `auto` (as in ab). [default: the scenario's, else 5]")
@click.option("--warmup", type=int, default=None, help="Unrecorded prefills per arm after the cold run. [default: the scenario's, else 1]")
@click.option("--layers", type=int, default=None, metavar="N", help="Only the first N layers. [default: the scenario's, else all]")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run every row as a task on one GPU of a Ray cluster (ADDRESS, or the one this host runs); needs "
                   "pip install 'impbench[ray]'. The driver needs no GPU.")
@click.option("--gpu-kinds", default=None, metavar="LIST",
              help="With --ray: run every row once on each GPU kind (h100,h200,...) via Ray's accelerator types; the "
                   "tables group by kind. [default: the scenario's gpu_kinds, else any GPU]")
@click.option("--max-retries", type=int, default=2, show_default=True, metavar="N",
              help="With --ray: retries of a failed row task (out of memory, a lost node) before it is written as failed.")
@_comparison_options
def sweep(scenario, models, pp_list, arm_specs, reps, warmup, layers, ray_address, gpu_kinds, max_retries, tolerance, seed,
          no_prewarm, fmt, out, force, fail_on, threshold, summary, target_ci, max_reps, max_time, cooldown, max_reruns,
          plot) -> None:  # fmt: skip
    """Measure a grid of models x prompt lengths x arms (one engine per model and pp, arms
    interleaved) and print one table: tok/s per arm and its delta over the first arm, with CI.

    SCENARIO is a TOML file (keys: models, pp, arms, reps, warmup, layers, tolerance, seed) or the
    name of a packaged one, e.g. `ci` (scenarios/sweeps/ci.toml); options override its keys.
    """
    from impbench.arms import parse_arm
    from impbench.scenario import Scenario, load_scenario
    from impbench.stats import MIN_REPS

    grid = load_scenario(scenario) if scenario else Scenario(path="")
    names = models if models is not None else ",".join(grid.models or ("qwen3-coder",))
    prompt_lengths = _prompt_lengths(pp_list) if pp_list is not None else \
        _prompt_lengths(",".join(str(p) for p in grid.pp or (512, 1024)), "pp")  # fmt: skip
    specs = list(arm_specs) or list(grid.arms or ("mode=eager", "mode=graph"))
    if len(specs) < 2:
        raise InputError("a sweep needs at least two arms (the first is the baseline); give --arm twice or more")
    arms = [parse_arm(spec) for spec in specs]
    layers = layers if layers is not None else grid.layers
    defaults = {"reps": grid.reps or 5, "warmup": 1 if grid.warmup is None else grid.warmup,
                "tolerance": grid.tolerance or 5.0, "seed": grid.seed or 0}  # fmt: skip
    auto = {"target_ci_pct": target_ci, "max_reps": max_reps, "max_time_s": max_time, "cooldown_s": cooldown,
            "max_reruns": max_reruns}  # fmt: skip
    protocol = _protocol(reps, warmup, tolerance, seed, not no_prewarm, MIN_REPS, defaults, auto)
    presets = _presets(names, None, None, layers)
    fleet = None
    if ray_address is not None or gpu_kinds is not None:
        from impbench.fleet import parse_gpu_kinds

        if ray_address is None:
            raise InputError("--gpu-kinds places rows on a Ray cluster: give --ray too")
        kinds = parse_gpu_kinds(gpu_kinds) if gpu_kinds is not None else parse_gpu_kinds(grid.gpu_kinds) if grid.gpu_kinds else ()
        if max_retries < 0:
            raise InputError(f"--max-retries must be >= 0, got {max_retries}")
        fleet = {"address": None if ray_address == "auto" else ray_address, "gpu_kinds": kinds, "max_retries": max_retries}
    _measure("sweep", presets, prompt_lengths, arms, protocol, out, force, fmt, layers, gate=_gate(fail_on, threshold),
             summary=summary, plot=plot, fleet=fleet)  # fmt: skip


# ---- kernel benchmarks --------------------------------------------------------------------------------


@cli.command()
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Preset whose dense GEMM shapes to time (repeatable). Default: every preset, unless --shape is given.")
@click.option("--shape", "shapes", multiple=True, metavar="MxNxK",
              help="Extra shape, M tokens x N outputs x K inputs, e.g. 512x32x2048 (repeatable).")
@click.option("--m", "ms", default="512,1024,2048", show_default=True, metavar="LIST",
              help="Token counts M (comma-separated) at which each model shape is timed.")
@click.option("--reps", type=int, default=50, show_default=True, help="Timed repetitions per shape (median reported).")
@click.option("--guard", type=click.Choice(["small-n", "tight", "permissive"]), default="small-n",
              show_default=True, help="Dispatch guard whose variant is timed against cuBLAS.")
@click.option("--variants", default="", metavar="LIST",
              help="Also time these variants on every shape: comma-separated names, or 'all' (calibration).")
@_FORMAT
@_BENCH_OUT
@_FORCE
def gemm(models, shapes, ms, reps, guard, variants, fmt, out, force) -> None:  # fmt: skip
    """Time our capture-safe FP16 GEMM against cuBLAS (cupy.matmul) on the models' dense shapes.

    Device time from CUDA events, median of --reps after warm-up, rotating input sets larger than
    L2. Per shape: µs of each, ratio cuBLAS/ours, TFLOP/s, the variant chosen, what each guard
    would do, and the relative error against cuBLAS; then the geometric-mean ratio.
    """
    from impbench import device, metadata
    from impbench.bench.gemm import parse_ms, parse_shape, run_gemm_bench

    for text in shapes:  # bad input is exit 2 before any GPU work
        parse_shape(text)
    m_list = parse_ms(ms)
    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    _check_bench_out(out, "gemm", force)
    _check_environment()
    device.require_cuda()
    report = run_gemm_bench(models, shapes, m_list, reps, guard, names, metadata.device_metadata(), progress=_progress)
    click.echo(report.format(fmt))
    if out:
        for path in report.write(out, fmt):
            _progress(f"wrote {path}")


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", required=True,
              help="Preset name or alias (see `impbench models`) whose expert shapes to use, e.g. qwen3-coder.")
@click.option("--pp", type=int, default=512, show_default=True, metavar="TOKENS",
              help="Tokens in the chunk (rows = pp x top-k).")
@click.option("--routing", "routings", type=click.Choice(["uniform", "skewed"]), multiple=True,
              help="Routing of the chunk (repeatable): uniform, or skewed (a few hot experts 25x as likely). Default: uniform.")
@click.option("--reps", type=int, default=50, show_default=True, help="Timed repetitions per GEMM (median reported).")
@click.option("--variant", default=None, metavar="NAME",
              help="Kernel variant reported as ours (cvt, wgq, wgp, wgb). Default: the one the engine runs here.")
@click.option("--variants", default="", metavar="LIST",
              help="Also time these kernel variants: comma-separated names, or 'all' (every one this GPU runs).")
@_FORMAT
@_BENCH_OUT
@_FORCE
def moe(model, pp, routings, reps, variant, variants, fmt, out, force) -> None:  # fmt: skip
    """Time the grouped NVFP4 expert GEMMs (gate_up + SiLU*up, down x router weight) of one chunk.

    Per GEMM: µs (median of CUDA events), weight GB/s and share of the copy bandwidth measured in the
    same run, TFLOP/s, the floor max(bytes / peak HBM bandwidth, FLOPs / peak FP16 rate), and as a
    reference the same GEMMs with FP16-dequantized weights through cuBLAS, one expert at a time.
    """
    from impbench import device, metadata
    from impbench.bench.moe import MoeShapes, run_moe_bench
    from impbench.presets import get_preset

    shapes = MoeShapes.from_preset(get_preset(model))
    pp = _prompt_lengths(str(pp))[0]
    if reps < 1:
        raise InputError(f"--reps must be a whole number >= 1, got {reps}")
    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    _check_bench_out(out, "moe", force)
    _check_environment()
    device.require_cuda()
    report = run_moe_bench(shapes, pp, routings or ("uniform",), reps, variants=names, variant=variant,
                           metadata=metadata.device_metadata(), progress=_progress)  # fmt: skip
    click.echo(report.format(fmt))
    if out:
        for path in report.write(out, fmt):
            _progress(f"wrote {path}")

@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default="qwen3-coder", show_default=True,
              help="Preset whose shapes (hidden, heads, experts, top-k, vocab) the ops run at.")
@click.option("--pp", "pp_list", default="512,2048", show_default=True, metavar="LIST",
              help="Chunk lengths T in tokens, comma-separated.")
@click.option("--variants", is_flag=True, help="Also time the alternative forms (thread counts, narrow qkv_post, two-launch routing).")
@_FORMAT
@_BENCH_OUT
@_FORCE
def ops(model, pp_list, variants, fmt, out, force) -> None:
    """Time the engine's small ops and routing kernels (embedding, norms, q/k norm + RoPE + KV append,
    top-k and permutation, combine) at a model's shapes against their floors.

    Per op and T: device µs per launch of a replayed graph over rotating input sets larger than L2
    (cold) and over one set (hot), the floor (bytes over the GPU's peak HBM bandwidth), and host µs
    per eager call through the wrapper and through a prepared launcher.
    """
    from impbench import device, metadata
    from impbench.bench.ops import run_ops_bench
    from impbench.presets import get_preset

    preset = get_preset(model)
    token_counts = _prompt_lengths(pp_list)
    _check_bench_out(out, "ops", force)
    _check_environment()
    device.require_cuda()
    report = run_ops_bench(preset, token_counts, variants, metadata.device_metadata(), progress=_progress)
    click.echo(report.format(fmt))
    if out:
        for path in report.write(out, fmt):
            _progress(f"wrote {path}")


@cli.command()
@click.argument("result_path", metavar="RESULT.json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, metavar="FILE.png|svg",
              help="Where to write the figure (.png or .svg).")
def plot(result_path, output) -> None:
    """Plot a result of run, ab or sweep: tok/s per arm against prompt length with interval whiskers,
    device time per op against the plan floor (where profiled), and the SM clock and power of every
    rep, flagged reps marked. Needs matplotlib (pip install 'impbench[plot]').
    """
    from impbench.plot import check_path, plot_result
    from impbench.results import load_result

    check_path(output)
    result = load_result(result_path)
    _progress(f"wrote {plot_result(result, output)}")
