"""`run`, `ab` and `sweep`: one measurement path (with `--ray`, on a fleet), one result file, one report."""

from __future__ import annotations

from pathlib import Path

import click

from impbench.errors import InputError

from impbench.arms import GUARDS
from impbench.cli.app import cli
from impbench.cli.options import (
    check_environment, comparison_options, finish, FORCE, gate_from, model_options, NO_PREWARM, OUT,
    parse_prompt_lengths, presets_from, progress, protocol_from, RepsType, RESULT_FORMAT, SEED, TOLERANCE,
)


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
    check_environment()
    settings = {**protocol.to_dict(), "layers": layers, "arms": [arm.to_dict() for arm in arms]}
    if fleet is not None:
        settings["gpu_kinds"] = list(fleet["gpu_kinds"])
    target = ResultFile(out, force) if out else None
    if target is not None:
        target.check(command, settings)
    if fleet is not None:  # the driver needs no GPU; each row reports the machine that measured it
        from impbench import fleet as ray_fleet

        ray_fleet.connect(fleet["address"])
        fresh = Result(command, metadata=metadata.collect_metadata(), settings=settings)
    else:
        device.require_cuda()
        fresh = Result(command, metadata=metadata.device_metadata(), settings=settings)
    result = target.resume(fresh) if target is not None else fresh
    if target is not None and result.rows:
        progress(f"resuming {target.path}: {len(result.rows)} row(s) already measured")

    def save(partial) -> None:
        target.write(partial, format_result(partial, "csv"))
        progress(f"wrote {target.path}")

    if fleet is not None:
        jobs = [ray_fleet.RowJob(preset, pp, tuple(arms), protocol, kind) for kind in fleet["gpu_kinds"] or (None,)
                for preset in presets for pp in prompt_lengths]  # fmt: skip
        ray_fleet.run_fleet(result, jobs, fleet["max_retries"], on_row=save if target is not None else None,
                            progress=progress)  # fmt: skip
    else:
        measure.measure(result, presets, prompt_lengths, arms, protocol, profile=profile, progress=progress,
                        on_row=save if target is not None else None)  # fmt: skip
    click.echo(format_result(result, fmt))
    if plot:
        from impbench.plot import plot_result

        progress(f"wrote {plot_result(result, Path(out).with_suffix('.png'))}")
    from impbench.report import judged_in_result

    finish(gate, judged_in_result(result), format_result(result, "gh") if summary else None)


# ---- run, ab and sweep: the synthetic engine's prefill ---------------------------------------------------


@cli.command()
@model_options(multiple=False)
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS", help="Prompt length in tokens.")
@click.option("--mode", type=click.Choice(["eager", "graph"]), default="graph", show_default=True,
              help="eager: every kernel launched from Python; graph: non-last chunks replay one captured CUDA graph.")
@click.option("--guard", type=click.Choice(GUARDS), default=None,
              help="Dense GEMM dispatch: cublas everywhere, or our kernel per guard. Default: eager cublas, graph small-n.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--overlap", type=click.Choice(["on", "off"]), default=None,
              help="The shared expert / dense MLP on a second stream beside the routed experts. Default: on.")
@click.option("--reps", type=int, default=5, show_default=True, help="Timed prefills after the cold one and the warm-up (>= 1).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unrecorded prefills after the cold one.")
@TOLERANCE
@SEED
@NO_PREWARM
@click.option("--profile", is_flag=True,
              help="Also time every op of one eager prefill (CUDA events) against its `impbench plan` floor.")
@RESULT_FORMAT
@OUT
@FORCE
def run(models, model_config, name, layers, prompt_tokens, mode, guard, chunk, overlap, reps, warmup, tolerance, seed,
        no_prewarm, profile, fmt, out, force) -> None:  # fmt: skip
    """Build the engine once and run its prefill in one arm: tok/s, capture status, host µs per launch,
    GEMM paths, and how far the median is from the `impbench plan` floor.

    Wall time per prefill from the first launch to the final synchronize (host clock).
    """
    from impbench.arms import ArmSpec
    from impbench.prefill import PrefillSpec

    spec = PrefillSpec(prompt_tokens, chunk)
    arm = ArmSpec(mode, guard or "", spec.chunk_tokens, overlap=overlap or "")
    protocol = protocol_from(reps, warmup, tolerance, seed, not no_prewarm, 1)
    presets = presets_from(models, model_config, name, layers)
    _measure("run", presets, [spec.prompt_tokens], [arm], protocol, out, force, fmt, layers, profile=profile)


@cli.command()
@model_options(multiple=True)
@click.option("--pp", "pp_list", default="512,1024", show_default=True, metavar="LIST",
              help="Prompt lengths in tokens, comma-separated; one row (and one engine) each.")
@click.option("--reps", type=RepsType(), default=10, show_default=True,
              help="Measured prefills per arm, A B B A interleaved (>= 3), or `auto`: add A B B A blocks until the "
                   "interval of Δ is narrower than --target-ci (see --max-reps, --max-time).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Unrecorded prefills per arm after the cold run.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Chunk of both arms unless a SPEC sets its own (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--guard", type=click.Choice(GUARDS), default=None,
              help="Dense GEMM guard of a graph arm whose SPEC names none. Default: small-n.")
@click.option("--a", "spec_a", default="mode=eager", show_default=True, metavar="SPEC",
              help="Arm A as key=value pairs: mode=eager|graph, guard=cublas|tight|small-n|permissive|seed, chunk=N, prewarm=on|off, overlap=on|off.")
@click.option("--b", "spec_b", default="mode=graph", show_default=True, metavar="SPEC",
              help="Arm B, as --a (default guard of a graph arm: small-n).")
@comparison_options
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

    prompt_lengths = parse_prompt_lengths(pp_list)
    base = ArmSpec(chunk=None if chunk is None else check_chunk_tokens(chunk))
    arms = [parse_arm(spec_a, base, guard), parse_arm(spec_b, base, guard)]
    auto = {"target_ci_pct": target_ci, "max_reps": max_reps, "max_time_s": max_time, "cooldown_s": cooldown,
            "max_reruns": max_reruns}  # fmt: skip
    protocol = protocol_from(reps, warmup, tolerance, seed, not no_prewarm, MIN_REPS, auto_settings=auto)
    presets = presets_from(models, model_config, name, layers, default="qwen3-coder")
    _measure("ab", presets, prompt_lengths, arms, protocol, out, force, fmt, layers, gate=gate_from(fail_on, threshold),
             summary=summary, plot=plot)  # fmt: skip


@cli.command()
@click.argument("scenario", required=False, metavar="[SCENARIO]")
@click.option("--model", "-m", "models", default=None, metavar="LIST", help="Presets, comma-separated (overrides the scenario).")
@click.option("--pp", "pp_list", default=None, metavar="LIST", help="Prompt lengths in tokens, comma-separated (overrides).")
@click.option("--arm", "arm_specs", multiple=True, metavar="SPEC",
              help="An arm (repeatable, at least two; the first is the baseline): mode=eager|graph,guard=...,chunk=N,prewarm=on|off,overlap=on|off.")
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
@comparison_options
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
    prompt_lengths = parse_prompt_lengths(pp_list) if pp_list is not None else \
        parse_prompt_lengths(",".join(str(p) for p in grid.pp or (512, 1024)), "pp")  # fmt: skip
    specs = list(arm_specs) or list(grid.arms or ("mode=eager", "mode=graph"))
    if len(specs) < 2:
        raise InputError("a sweep needs at least two arms (the first is the baseline); give --arm twice or more")
    arms = [parse_arm(spec) for spec in specs]
    layers = layers if layers is not None else grid.layers
    defaults = {"reps": grid.reps or 5, "warmup": 1 if grid.warmup is None else grid.warmup, "tolerance": grid.tolerance,
                "seed": grid.seed}  # fmt: skip
    auto = {"target_ci_pct": target_ci, "max_reps": max_reps, "max_time_s": max_time, "cooldown_s": cooldown,
            "max_reruns": max_reruns}  # fmt: skip
    protocol = protocol_from(reps, warmup, tolerance, seed, not no_prewarm, MIN_REPS, defaults, auto_settings=auto)
    presets = presets_from(names, None, None, layers)
    fleet = None
    if ray_address is not None or gpu_kinds is not None:
        from impbench.fleet import parse_gpu_kinds

        if ray_address is None:
            raise InputError("--gpu-kinds places rows on a Ray cluster: give --ray too")
        kinds = parse_gpu_kinds(gpu_kinds) if gpu_kinds is not None else parse_gpu_kinds(grid.gpu_kinds) if grid.gpu_kinds else ()
        if max_retries < 0:
            raise InputError(f"--max-retries must be >= 0, got {max_retries}")
        fleet = {"address": None if ray_address == "auto" else ray_address, "gpu_kinds": kinds, "max_retries": max_retries}
    _measure("sweep", presets, prompt_lengths, arms, protocol, out, force, fmt, layers, gate=gate_from(fail_on, threshold),
             summary=summary, plot=plot, fleet=fleet)  # fmt: skip


