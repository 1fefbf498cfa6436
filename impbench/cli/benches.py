"""The kernel benchmarks: `gemm`, `moe`, `ops`, `attn`, `gdn`."""

from __future__ import annotations

from collections.abc import Callable

import click

from impbench.arms import GUARDS
from impbench.cli.app import cli
from impbench.cli.options import (
    BENCH_OUT, check_bench_out, check_environment, FORCE, FORMAT, parse_prompt_lengths, progress,
)


def _bench(command: str, fmt: str, out, force: bool, run: Callable[[dict], object]) -> None:
    """What every kernel benchmark does around its timing: --out checked before any GPU work, the
    environment and the device checked, `run(metadata)` for the report, printed and written."""
    from impbench import device, metadata

    check_bench_out(out, command, force, fmt)
    check_environment()
    device.require_cuda()
    report = run(metadata.device_metadata())
    click.echo(report.format(fmt))
    if out:
        for path in report.write(out, fmt):
            progress(f"wrote {path}")


def _names(variants: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in variants.split(",") if v.strip())


@cli.command()
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Preset whose dense GEMM shapes to time (repeatable). Default: every preset, unless --shape is given.")
@click.option("--shape", "shapes", multiple=True, metavar="MxNxK",
              help="Extra shape, M tokens x N outputs x K inputs, e.g. 512x32x2048 (repeatable).")
@click.option("--m", "ms", default="512,1024,2048", show_default=True, metavar="LIST",
              help="Token counts M (comma-separated) at which each model shape is timed.")
@click.option("--reps", type=int, default=50, show_default=True, help="Timed repetitions per shape (median reported).")
@click.option("--guard", type=click.Choice([g for g in GUARDS if g != "cublas"]), default="small-n",
              show_default=True, help="Dispatch guard whose variant is timed against cuBLAS.")
@click.option("--variants", default="", metavar="LIST",
              help="Also time these variants on every shape: comma-separated names, or 'all' (calibration).")
@FORMAT
@BENCH_OUT
@FORCE
def gemm(models, shapes, ms, reps, guard, variants, fmt, out, force) -> None:  # fmt: skip
    """Time our capture-safe FP16 GEMM against cuBLAS (cupy.matmul) on the models' dense shapes.

    Device time from CUDA events, median of --reps after warm-up, rotating input sets larger than
    L2. Per shape: µs of each, ratio cuBLAS/ours, TFLOP/s, the variant chosen, what each guard
    would do, and the relative error against cuBLAS; then the geometric-mean ratio.
    """
    from impbench.bench.gemm import parse_ms, parse_shape, run_gemm_bench
    from impbench.bench.timing import check_reps

    for text in shapes:  # bad input is exit 2 before any GPU work
        parse_shape(text)
    m_list, names = parse_ms(ms), _names(variants)
    check_reps(reps)
    _bench("gemm", fmt, out, force,
           lambda meta: run_gemm_bench(models, shapes, m_list, reps, guard, names, meta, progress=progress))  # fmt: skip


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
@click.option("--inter", type=int, default=None, metavar="I",
              help="Expert intermediate width instead of the preset's, a positive multiple of 64; e.g. 768 for "
                   "Gemma-4's experts as the engine stores them (704 padded to whole 256s, which the wgb variants need).")
@FORMAT
@BENCH_OUT
@FORCE
def moe(model, pp, routings, reps, variant, variants, inter, fmt, out, force) -> None:  # fmt: skip
    """Time the grouped NVFP4 expert GEMMs (gate_up + act(gate)*up with the preset's activation, down x router weight) of one chunk.

    Per GEMM: µs (median of CUDA events), weight GB/s and share of the copy bandwidth measured in the
    same run, TFLOP/s, the floor max(bytes / peak HBM bandwidth, FLOPs / peak FP16 rate), and as a
    reference the same GEMMs with FP16-dequantized weights through cuBLAS, one expert at a time.
    """
    from impbench.bench.moe import MoeShapes, run_moe_bench
    from impbench.bench.timing import check_reps
    from impbench.prefill import check_prompt_tokens
    from impbench.presets import get_preset

    shapes = MoeShapes.from_preset(get_preset(model))
    if inter is not None:  # before any GPU work: bad input is exit 2
        import dataclasses

        from impbench.errors import InputError

        if inter < 64 or inter % 64:
            raise InputError(f"--inter must be a positive multiple of 64, got {inter}")
        shapes = dataclasses.replace(shapes, inter=inter)
    check_prompt_tokens(pp, "--pp")
    check_reps(reps)
    names = _names(variants)
    _bench("moe", fmt, out, force,
           lambda meta: run_moe_bench(shapes, pp, routings or ("uniform",), reps, variants=names, variant=variant,
                                      metadata=meta, progress=progress))  # fmt: skip

@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default="qwen3-coder", show_default=True,
              help="Preset whose shapes (hidden, heads, experts, top-k, vocab) the ops run at.")
@click.option("--pp", "pp_list", default="512,2048", show_default=True, metavar="LIST",
              help="Chunk lengths T in tokens, comma-separated.")
@click.option("--variants", is_flag=True, help="Also time the alternative forms (thread counts, narrow qkv_post, two-launch routing).")
@FORMAT
@BENCH_OUT
@FORCE
def ops(model, pp_list, variants, fmt, out, force) -> None:
    """Time the engine's small ops and routing kernels (embedding, norms, q/k norm + RoPE + KV append,
    top-k and permutation, combine) at a model's shapes against their floors.

    Per op and T: device µs per launch of a replayed graph over rotating input sets larger than L2
    (cold) and over one set (hot), the floor (bytes over the GPU's peak HBM bandwidth), and host µs
    per eager call through the wrapper and through a prepared launcher.
    """
    from impbench.bench.ops import run_ops_bench
    from impbench.presets import get_preset

    preset = get_preset(model)
    token_counts = parse_prompt_lengths(pp_list)
    _bench("ops", fmt, out, force, lambda meta: run_ops_bench(preset, token_counts, variants, meta, progress=progress))


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default="gemma-4", show_default=True,
              help="Preset whose attention layer kinds (heads, head dim, sliding window, scale) to time.")
@click.option("--pp", "pp_list", default="1024,2048,4096", show_default=True, metavar="LIST",
              help="Chunk lengths T in tokens, comma-separated.")
@click.option("--prefix", "prefix_list", default="0,chunk", show_default=True, metavar="LIST",
              help="Keys already in the cache before the chunk, comma-separated: tokens, or 'chunk' (one chunk: T).")
@click.option("--layer", "layers", default=None, metavar="LIST",
              help="Only these attention layer kinds, comma-separated: sliding, full. Default: every kind the model has.")
@click.option("--reps", type=int, default=30, show_default=True, help="Timed repetitions per case (median reported).")
@click.option("--variant", default=None, metavar="NAME",
              help="Our kernel variant (wgmma, mma). Default: the one the engine runs here.")
@FORMAT
@BENCH_OUT
@FORCE
def attn(model, pp_list, prefix_list, layers, reps, variant, fmt, out, force) -> None:  # fmt: skip
    """Time our attention kernel on each attention layer kind of a model against PyTorch's SDPA.

    Per layer kind (sliding window / full), T and prefix: device µs of ours from CUDA events (and per
    launch of a replayed graph), torch's scaled_dot_product_attention on the same FP16 values in the
    same event loop (which backend ran; not timed where torch does not import), SDPA / ours, the plan
    floor of the attention op and ours against it, and ours' relative error against SDPA.
    """
    from impbench.bench.attention import check_variant, layer_kinds, parse_prefixes, run_attention_bench, select_kinds
    from impbench.bench.timing import check_reps
    from impbench.presets import get_preset

    preset = get_preset(model)
    token_counts = parse_prompt_lengths(pp_list)
    prefixes = parse_prefixes(prefix_list)
    check_reps(reps)
    check_variant(variant, select_kinds(layer_kinds(preset), layers))
    _bench("attn", fmt, out, force,
           lambda meta: run_attention_bench(preset, token_counts, prefixes, reps, variant, meta, progress=progress,
                                            layers=layers))  # fmt: skip


@cli.command()
@click.option("--model", "-m", "model", metavar="NAME", default="qwen3.6", show_default=True,
              help="Preset whose Gated DeltaNet geometry (key and value heads, head dims) the rule runs at.")
@click.option("--pp", "pp_list", default="512,1024,2048", show_default=True, metavar="LIST",
              help="Chunk lengths T in tokens, comma-separated.")
@click.option("--reps", type=int, default=15, show_default=True,
              help="Timed replays of each CUDA graph (median of µs per call reported).")
@FORMAT
@BENCH_OUT
@FORCE
def gdn(model, pp_list, reps, fmt, out, force) -> None:
    """Time our chunked gated delta rule (both kernels, one layer, one chunk) against flash-linear-attention's
    Triton chunk_gated_delta_rule, both as device time of a replayed CUDA graph, in one call on one GPU.

    Per T: µs per call of each over rotating input sets larger than L2 (cold) and over one set (hot),
    FLA/ours, the plan's floor of the op, ours against the float64 reference and FLA's output and final
    state against ours. Without torch or fla-core the FLA columns stay empty and one line says why.
    """
    from impbench.bench.gated_delta import GdnShape, run_gdn_bench
    from impbench.bench.timing import check_reps
    from impbench.presets import get_preset

    preset = get_preset(model)
    GdnShape.of(preset)  # a model without Gated DeltaNet layers or an unbuilt geometry: exit 2 here
    token_counts = parse_prompt_lengths(pp_list)
    check_reps(reps)
    _bench("gdn", fmt, out, force, lambda meta: run_gdn_bench(preset, token_counts, reps, meta, progress=progress))
