"""The impbench command line: parse, call one function, print. No logic of its own.

Every error a user can cause ends as exit code 2 and one line on stderr saying what was wrong
and what is accepted; that includes running a GPU command where no CUDA device is usable.
"""

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
    try:
        cli.main(args=argv, prog_name="impbench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("impbench: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        _fail(exc.format_message())
    except (InputError, NoDeviceError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("impbench: interrupted", err=True)
        sys.exit(130)


# Commands are registered below, one per workflow; each calls into its own module.


@cli.command()
@click.argument("old", metavar="OLD.json", type=click.Path(dir_okay=False))
@click.argument("new", metavar="NEW.json", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True,
              help="Output format: markdown table, CSV, or JSON {notes, rows}.")  # fmt: skip
def compare(old: str, new: str, fmt: str) -> None:
    """Compare two `impbench ab --out` results: each arm's tok/s in NEW against OLD, with verdicts.

    Arms are matched by model, pp, arm (A/B) and arm settings; one present on one side only is
    listed, not dropped.
    """
    from impbench.report import compare_notes, format_compare
    from impbench.results import load_result

    old_result, new_result = load_result(old), load_result(new)
    click.echo(format_compare(old_result, new_result, fmt))
    if fmt == "csv":  # markdown and JSON carry the notes themselves; CSV holds only the table
        for note in compare_notes(old_result, new_result):
            click.echo(note, err=True)


@cli.command()
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Preset whose dense GEMM shapes to time (repeatable). Default: every preset, unless --shape is given.")
@click.option("--shape", "shapes", multiple=True, metavar="MxNxK",
              help="Extra shape, M tokens x N outputs x K inputs, e.g. 512x32x2048 (repeatable).")
@click.option("--m", "ms", default="512,1024,2048", show_default=True, metavar="LIST",
              help="Token counts M (comma-separated) at which each model shape is timed.")
@click.option("--reps", type=int, default=50, show_default=True, help="Timed repetitions per shape (median reported).")
@click.option("--guard", "policy", type=click.Choice(["small-n", "tight", "permissive"]), default="small-n",
              show_default=True, help="Dispatch guard policy whose variant is timed against cuBLAS.")
@click.option("--variants", default="", metavar="LIST",
              help="Also time these variants on every shape: comma-separated names, or 'all' (calibration).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True,
              help="Output format: markdown table, CSV, or JSON with metadata.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the output to this file (a .md or .csv gets its .json beside it).")
def gemm(models, shapes, ms, reps, policy, variants, fmt, out) -> None:  # fmt: skip
    """Time our capture-safe FP16 GEMM against cuBLAS (cupy.matmul) on the models' dense shapes.

    Device time from CUDA events, median of --reps after warm-up, rotating input sets larger than
    L2. Per shape: µs of each, ratio cuBLAS/ours, TFLOP/s, the variant chosen, what each guard
    policy would do, and the relative error against cuBLAS; then the geometric-mean ratio.
    """
    from impbench.device import require_cuda
    from impbench.gemm_bench import format_report, parse_ms, parse_shape, run_gemm_bench, write_report

    for text in shapes:  # bad input is exit 2 before any GPU work
        parse_shape(text)
    m_list = parse_ms(ms)
    require_cuda()
    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    report = run_gemm_bench(models, shapes, m_list, reps, policy, names, progress=lambda row: click.echo(row.progress_line(), err=True))
    click.echo(format_report(report, fmt))
    if out:
        for path in write_report(report, out, fmt):
            click.echo(f"wrote {path}", err=True)


# ---- models and plan (no GPU needed) ---------------------------------------------------------------

_FORMAT = click.Choice(["md", "csv", "json"])


@cli.command()
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True,
              help="Output format: markdown table, CSV or JSON.")
def models(fmt: str) -> None:
    """List the model presets: layers, experts, top-k, attention layout, total and active parameters.

    Parameters are counted from each preset's geometry (billions, B); `published` is the model
    card's figure where one exists. Synthetic presets (tiny) come last.
    """
    from impbench.plan import render_models
    from impbench.presets import list_presets

    click.echo(render_models(list_presets(), fmt))


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default=None,
              help="Preset name or alias (see `impbench models`), e.g. qwen3-coder.")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Build the model from a Hugging Face config.json instead (qwen3_moe, qwen3_5_moe, gemma4 MoE).")
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS",
              help="Prompt length to prefill, in tokens (> 0).")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk in tokens: 0 = whole prompt in one chunk, else a multiple of 16. "
                   "Default: the preset's chunk size.")
@click.option("--layers", type=int, default=None, metavar="N",
              help="Plan only the first N layers of the model. Default: all.")
@click.option("--gpu", type=click.Choice(["h100", "h200", "rtx5090", "auto"]), default="h100", show_default=True,
              help="GPU whose compute (TFLOP/s) and memory (TB/s) ceilings give the floor times; auto = detect via NVML.")
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True,
              help="Output format: markdown (summary + tables), CSV or JSON.")
def plan(model, model_config, prompt_tokens, chunk, layers, gpu, fmt) -> None:  # fmt: skip
    """FLOPs, bytes moved and floor time (µs) of every op of a prefill, per chunk and in total.

    Floors are max(FLOPs / compute ceiling, bytes / memory ceiling) per call; memory lines give the
    weights, the KV cache (or linear-attention state) after the prefill and one chunk's activations.
    """
    from impbench.plan import plan_prefill, render_plan, validate_prompt_and_chunk
    from impbench.presets import replace_layers, resolve_model

    validate_prompt_and_chunk(prompt_tokens, chunk)
    preset = resolve_model(model, model_config)
    if layers is not None:
        preset = replace_layers(preset, layers)
    click.echo(render_plan(plan_prefill(preset, prompt_tokens, chunk, gpu), fmt))


# ---- moe: the grouped NVFP4 expert GEMMs of one chunk -----------------------------------------------


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", required=True,
              help="Preset name or alias (see `impbench models`) whose expert shapes to use, e.g. qwen3-coder.")
@click.option("--pp", type=int, default=512, show_default=True, metavar="TOKENS",
              help="Tokens in the chunk (rows = pp x top-k).")
@click.option("--routing", "routings", type=click.Choice(["uniform", "skewed"]), multiple=True,
              help="Routing of the chunk (repeatable): uniform, or skewed (a few hot experts 25x as likely). Default: uniform.")
@click.option("--reps", type=int, default=50, show_default=True, help="Timed repetitions per GEMM (median reported).")
@click.option("--variant", default=None, metavar="NAME",
              help="Kernel variant reported as ours (impbench.kernels.moe.VARIANTS). Default: the production one.")
@click.option("--variants", default="", metavar="LIST",
              help="Also time these kernel variants: comma-separated names, or 'all' (calibration).")
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True,
              help="Output format: markdown table, CSV, or JSON with metadata.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the output to this file (a .md or .csv gets its .json beside it).")
def moe(model, pp, routings, reps, variant, variants, fmt, out) -> None:  # fmt: skip
    """Time the grouped NVFP4 expert GEMMs (gate_up + SiLU*up, down x router weight) of one chunk.

    Per GEMM: µs (median of CUDA events), weight GB/s and share of the copy bandwidth measured in the
    same run, TFLOP/s, the floor max(bytes / copy bandwidth, FLOPs / cuBLAS FP16 rate), and as a
    reference the same GEMMs with FP16-dequantized weights through cuBLAS, one expert at a time.
    """
    from impbench.device import require_cuda
    from impbench.moe_bench import MoeShapes, format_report, run_moe_bench, write_report
    from impbench.presets import get_preset

    shapes = MoeShapes.from_preset(get_preset(model))
    if pp < 1:
        raise click.BadParameter(f"must be >= 1 token, got {pp}", param_hint="--pp")
    if reps < 1:
        raise click.BadParameter(f"must be >= 1, got {reps}", param_hint="--reps")
    require_cuda()
    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    report = run_moe_bench(shapes, pp, routings or ("uniform",), reps, variants=names, variant=variant,
                           progress=lambda r: click.echo(f"{r.routing} {r.op}: {r.time_us:.1f} µs", err=True))  # fmt: skip
    click.echo(format_report(report, fmt))
    if out:
        for path in write_report(report, out, fmt):
            click.echo(f"wrote {path}", err=True)


# ---- run and ab: the synthetic engine's prefill -----------------------------------------------------


def _engine_preset(model: str | None, model_config: str | None, layers: int | None):
    from impbench.presets import replace_layers, resolve_model

    preset = resolve_model(model, model_config)
    return preset if layers is None else replace_layers(preset, layers)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} takes comma-separated whole numbers such as 512,1024; got {text!r}") from None
    if not values or min(values) <= 0:
        raise InputError(f"{option} values must be > 0, got {text!r}")
    return values


def _progress(line: str) -> None:
    click.echo(line, err=True)


_LAYERS = click.option("--layers", type=int, default=None, metavar="N",
                       help="Build only the first N layers (small GPUs, quick checks). Default: all.")
_SEED = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic weights and prompt.")
_NO_PREWARM = click.option("--no-prewarm", is_flag=True,
                           help="Allocate buffers on first use, as the original engine did: graph capture then fails "
                                "on the allocation and the arm falls back to eager (shown on purpose).")  # fmt: skip


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default=None,
              help="Preset name or alias, e.g. qwen3-coder (full-attention qwen3_moe models run; see `impbench models`).")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Build the model from a Hugging Face qwen3_moe config.json instead.")
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS", help="Prompt length in tokens (> 0).")
@click.option("--mode", type=click.Choice(["eager", "graph"]), default="graph", show_default=True,
              help="eager: every kernel launched from Python; graph: non-last chunks replay one captured CUDA graph.")
@click.option("--guard", type=click.Choice(["cublas", "tight", "small-n", "permissive"]), default=None,
              help="Dense GEMM dispatch: cublas everywhere, or our kernel per policy. Default: eager cublas, graph tight.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--reps", type=int, default=5, show_default=True, help="Timed prefills after the cold one.")
@_LAYERS
@_SEED
@_NO_PREWARM
@click.option("--profile", is_flag=True,
              help="Also time every op of one eager prefill (CUDA events) against its `impbench plan` floor.")
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True, help="Output format.")
def run(model, model_config, prompt_tokens, mode, guard, chunk, reps, layers, seed, no_prewarm, profile, fmt) -> None:  # fmt: skip
    """Build the engine once and run its prefill: tok/s per rep, capture status, host µs per launch,
    GEMM paths, and how far the median is from the `impbench plan` floor.

    Wall time per prefill from the first launch to the final synchronize (host clock).
    """
    from impbench.arms import ArmSpec, check_chunk
    from impbench.plan import validate_prompt_and_chunk
    from impbench.prefill_run import format_run, run_prefill

    validate_prompt_and_chunk(prompt_tokens, chunk)
    from impbench.device import require_cuda
    from impbench.engine.core import check_supported

    preset = _engine_preset(model, model_config, layers)
    check_supported(preset)
    arm = ArmSpec(mode, guard, None if chunk is None else check_chunk(chunk))
    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
    require_cuda()

    def progress(index, total, sample):
        _progress(f"rep {index}/{total}: {sample.tok_s:,.0f} tok/s ({sample.wall_ms:.2f} ms)")

    _progress(f"{preset.name}: building the engine for {prompt_tokens} tokens ({preset.num_layers} layers)")
    result = run_prefill(preset, prompt_tokens, arm, reps, seed=seed, prewarm=not no_prewarm, progress=progress,
                         profile=profile)  # fmt: skip
    click.echo(format_run(result, fmt))


@cli.command()
@click.option("--model", "-m", "models", metavar="NAME[,NAME]", multiple=True,
              help="Preset(s), comma-separated or repeated. Default: qwen3-coder.")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Use the model of a Hugging Face qwen3_moe config.json instead of presets.")
@click.option("--pp", "pp_list", default="512,1024", show_default=True, metavar="LIST",
              help="Prompt lengths in tokens, comma-separated; one row (and one engine) each.")
@click.option("--reps", type=int, default=10, show_default=True, help="Measured prefills per arm (ABBA interleaved).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Unrecorded prefills per arm after the cold run.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Chunk of both arms unless a SPEC sets its own (multiple of 16; 0 = one chunk). Default: the preset's.")
@click.option("--guard", type=click.Choice(["cublas", "tight", "small-n", "permissive"]), default=None,
              help="Dense GEMM guard of the graph arm(s) unless a SPEC sets one. Default: tight.")
@click.option("--a", "spec_a", default="mode=eager", show_default=True, metavar="SPEC",
              help="Arm A as key=value pairs: mode=eager|graph, guard=cublas|tight|small-n|permissive, chunk=N.")
@click.option("--b", "spec_b", default="mode=graph", show_default=True, metavar="SPEC", help="Arm B, as --a.")
@click.option("--tolerance", type=float, default=5.0, show_default=True, metavar="PCT",
              help="Flag a rep whose median SM clock is further than this from the run's median.")
@_LAYERS
@_SEED
@_NO_PREWARM
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True, help="Output format of the table.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Write the full result (metadata, every rep and clock reading) as JSON, and a CSV beside it; "
                   "rewritten atomically after every row, so an interrupted run keeps the finished rows.")
def ab(models, model_config, pp_list, reps, warmup, chunk, guard, spec_a, spec_b, tolerance, layers, seed,
       no_prewarm, fmt, out) -> None:  # fmt: skip
    """A/B two ways of running the same prefill (default: A eager, B CUDA graph) on one engine per row.

    Each arm's first prefill is timed apart as `cold`; then --warmup unrecorded prefills; then --reps
    per arm in A B B A order so drift hits both alike, each under an NVML clock/power sampler. Prints
    B's delta over A with a 95% bootstrap interval and a FASTER / SLOWER / SAME verdict, then why:
    cold vs warm, clocks, throttling, capture status, GEMM paths, host time per launch.
    """
    from impbench.ab import ABSettings, run_ab
    from impbench.arms import ArmSpec, check_chunk, parse_arm
    from impbench.device import require_cuda
    from impbench.engine.core import check_supported
    from impbench.metadata import collect_metadata
    from impbench.report import format_ab, write_result

    prompt_lengths = _int_list(pp_list, "--pp")
    base = ArmSpec(chunk=None if chunk is None else check_chunk(chunk))
    arm_a, arm_b = parse_arm(spec_a, base), parse_arm(spec_b, base)
    if guard is not None:  # the graph arms' guard, where their SPEC does not name one
        arm_a, arm_b = (parse_arm(f"guard={guard}", arm) if arm.mode == "graph" and arm.guard is None else arm
                        for arm in (arm_a, arm_b))  # fmt: skip
    names = [name.strip() for text in models for name in text.split(",") if name.strip()] or ["qwen3-coder"]
    presets = [_engine_preset(None, model_config, layers)] if model_config else \
        [_engine_preset(name, None, layers) for name in names]  # fmt: skip
    for preset in presets:  # every bad model is exit 2 before any engine is built
        check_supported(preset)
    settings = ABSettings(reps=reps, warmup=warmup, tolerance_pct=tolerance, seed=seed, prewarm=not no_prewarm)
    settings.check()

    def save(partial) -> None:
        if out:
            for path in write_result(partial, out):
                _progress(f"wrote {path}")

    require_cuda()
    import cupy

    metadata = collect_metadata(None, cupy.cuda.Device().pci_bus_id)
    result = run_ab(presets, prompt_lengths, arm_a, arm_b, settings, metadata, progress=_progress, on_row=save)
    click.echo(format_ab(result, fmt))


@cli.command()
@click.argument("scenario", required=False, metavar="[SCENARIO.toml]", type=click.Path(dir_okay=False))
@click.option("--model", "-m", "models", default=None, metavar="LIST", help="Presets, comma-separated (overrides the scenario).")
@click.option("--pp", "pp_list", default=None, metavar="LIST", help="Prompt lengths in tokens, comma-separated.")
@click.option("--arm", "arm_specs", multiple=True, metavar="SPEC",
              help="An arm (repeatable; the first is the baseline): mode=eager|graph,guard=...,chunk=N.")
@click.option("--reps", type=int, default=None, help="Measured prefills per arm (scenario's, else 5).")
@click.option("--warmup", type=int, default=None, help="Unrecorded prefills per arm after the cold run (scenario's, else 1).")
@_LAYERS
@_SEED
@_NO_PREWARM
@click.option("--format", "fmt", type=_FORMAT, default="md", show_default=True, help="Output format of the table.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Result JSON, rewritten after every (model, pp); run again with the same PATH to resume.")
def sweep(scenario, models, pp_list, arm_specs, reps, warmup, layers, seed, no_prewarm, fmt, out) -> None:  # fmt: skip
    """Measure a grid of models x prompt lengths x arms (one engine per model and pp, arms
    interleaved) and print one table: tok/s per arm and its delta over the first arm, with CI.

    SCENARIO is a TOML file such as scenarios/sweeps/ci.toml (keys: models, pp, arms, reps, warmup,
    layers); options override its keys.
    """
    from pathlib import Path

    from impbench.device import require_cuda
    from impbench.engine.core import check_supported
    from impbench.metadata import collect_metadata
    from impbench.sweep import build_plan, format_sweep, load_scenario, run_sweep

    data = load_scenario(scenario) if scenario else {}
    plan = build_plan(data, models, pp_list, arm_specs, reps, warmup, layers, seed, not no_prewarm)
    presets = [_engine_preset(name, None, plan.layers) for name in plan.models]
    for preset in presets:
        check_supported(preset)
    require_cuda()
    import cupy

    metadata = collect_metadata(None, cupy.cuda.Device().pci_bus_id)
    result = run_sweep(plan, presets, metadata, Path(out) if out else None, progress=_progress)
    click.echo(format_sweep(result, fmt))
