"""Commands that need no GPU: `models`, `plan`, `compare`, `merge`, `plot`."""

from __future__ import annotations


import click

from impbench.errors import InputError

from impbench.cli.app import cli
from impbench.gpus import GPU_CHOICES
from impbench.cli.options import (
    finish, FORCE, FORMAT, FORMAT_CHOICE, gate_from, gate_options, model_options, presets_from,
    progress, RESULT_FORMATS,
)


# ---- models, plan and compare (no GPU needed) ----------------------------------------------------------


@cli.command()
@FORMAT
def models(fmt: str) -> None:
    """List the model presets: layers, experts, top-k, attention layout, total and active parameters.

    Parameters are counted from each preset's geometry (billions, B); `published` is the model
    card's figure where one exists. Synthetic presets (tiny) come last.
    """
    from impbench.plan import render_models
    from impbench.presets import list_presets

    click.echo(render_models(list_presets(), fmt))


@cli.command()
@model_options(multiple=False)
@click.option("--pp", "prompt_tokens", type=int, required=True, metavar="TOKENS", help="Prompt length to prefill, in tokens.")
@click.option("--chunk", type=int, default=None, metavar="TOKENS",
              help="Prefill chunk in tokens: 0 = whole prompt in one chunk, else a multiple of 16. Default: the preset's.")
@click.option("--gpu", type=click.Choice(GPU_CHOICES), default="h100", show_default=True,
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
    (preset,) = presets_from(models, model_config, name, layers)
    click.echo(render_plan(plan_prefill(preset, spec, gpu), fmt))


@cli.command()
@click.argument("old", metavar="OLD.json", type=click.Path(dir_okay=False))
@click.argument("new", metavar="NEW.json", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=RESULT_FORMATS, default="md", show_default=True,
              help="Output format: markdown table, gh (GitHub markdown), CSV, or JSON {notes, rows}.")  # fmt: skip
@gate_options
def compare(old: str, new: str, fmt: str, fail_on, threshold, summary) -> None:
    """Compare two results of `run`, `ab` or `sweep`: each arm's tok/s in NEW against OLD, with verdicts.

    Arms are matched by model, pp and arm settings; one present on one side only is listed, not
    dropped. Where both runs measured the same control arm beside an arm, the arm is judged by its
    ratio to that control, so drift of the machine between the runs is not read as a change.
    With --fail-on, a CI gate: exit 1 when an arm fails it (the failing rows are named on stderr).
    """
    from impbench.report import compare_notes, compare_results, format_compare, judged_in_compare
    from impbench.results import load_result

    gate = gate_from(fail_on, threshold)
    old_result, new_result = load_result(old), load_result(new)
    rows = compare_results(old_result, new_result)
    click.echo(format_compare(old_result, new_result, fmt, rows))
    if fmt == "csv":  # markdown and JSON carry the notes themselves; CSV holds only the table
        for note in compare_notes(old_result, new_result, rows):
            click.echo(note, err=True)
    finish(gate, judged_in_compare(rows), format_compare(old_result, new_result, "gh", rows) if summary else None)


@cli.command()
@click.argument("out", metavar="OUT.json", type=click.Path(dir_okay=False))
@click.argument("inputs", metavar="RESULT.json...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@FORCE
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
    target.check(merged.command, merged.settings)
    target.write(merged, format_result(merged, "csv"))
    progress(f"wrote {target.path}: {len(merged.rows)} rows from {len(inputs)} files")



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
    progress(f"wrote {plot_result(result, output)}")

