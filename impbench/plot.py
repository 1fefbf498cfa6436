"""Plots of a result (`impbench plot`, `--plot` on ab / sweep): what a reader should see at a glance.

1. tok/s of every arm against the prompt length, one panel per model, the median with whiskers of
   its 95% bootstrap interval (stats.median_interval);
2. where a row was profiled (`run --profile`): device time per op against its plan floor;
3. the SM clock and the power of every rep in the order they ran, flagged reps marked, so a
   throttling story shows as a dip with red marks on it.
matplotlib is an optional extra (`pip install 'impbench[plot]'`); without it the command says so.
"""

from __future__ import annotations

from pathlib import Path

from impbench.errors import InputError
from impbench.results import Result

SUFFIXES = (".png", ".svg")


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise InputError("plots need matplotlib, which is not installed: pip install 'impbench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"a plot is written as {' or '.join(SUFFIXES)}; got {path.name!r}")
    from impbench.outfile import check_writable_folder

    check_writable_folder(path, "-o")
    return path


def _throughput(ax_row, result: Result, models: list[str]) -> None:
    from impbench.stats import median_interval

    for ax, model in zip(ax_row, models):
        rows = [row for row in result.measured_rows if row.model == model]
        labels = list(dict.fromkeys(f"{arm.name} {arm.label}" for row in rows for arm in row.arms))
        for label in labels:
            points = [(row.pp, arm) for row in rows for arm in row.arms if f"{arm.name} {arm.label}" == label and arm.reps]
            if not points:
                continue
            xs, mids, lows, highs = [], [], [], []
            for pp, arm in sorted(points, key=lambda p: p[0]):
                low, mid, high = median_interval(arm.tok_s)
                xs.append(pp), mids.append(mid), lows.append(mid - low), highs.append(high - mid)
            ax.errorbar(xs, mids, yerr=[lows, highs], marker="o", capsize=4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("tok/s")
        ax.set_title(model)
        ax.legend(fontsize="small")


def _profile(ax, result: Result) -> None:
    row = next(row for row in result.measured_rows if row.profile is not None)
    records = row.profile.records()
    ops = [r["op"] for r in records]
    positions = range(len(ops))
    ax.barh([p + 0.2 for p in positions], [r["device_us"] for r in records], height=0.4, label="device µs")
    ax.barh([p - 0.2 for p in positions], [r["floor_us"] or 0 for r in records], height=0.4, label="plan floor µs")
    ax.set_yticks(list(positions), ops, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("µs per prefill")
    ax.set_title(f"{row.model} pp={row.pp}: device time per op against the plan floor")
    ax.legend(fontsize="small")


def _clocks(ax, result: Result) -> None:
    reps = [rep for row in result.measured_rows for arm in row.arms for rep in arm.reps + arm.discarded]
    sm = [rep.telemetry.sm_mhz_median for rep in reps]
    power = [rep.telemetry.power_w_median for rep in reps]
    index = list(range(len(reps)))
    ax.plot(index, [v if v is not None else float("nan") for v in sm], ".-", label="SM MHz (median of the rep)")
    flagged = [(i, v) for i, rep, v in zip(index, reps, sm) if rep.flagged and v is not None]
    if flagged:
        ax.scatter(*zip(*flagged), color="red", zorder=3, label="flagged rep")
    ax.set_xlabel("rep, in the order of the result file (row by row, arm by arm)")
    ax.set_ylabel("SM MHz")
    twin = ax.twinx()
    twin.plot(index, [v if v is not None else float("nan") for v in power], color="gray", alpha=0.5, label="power W")
    twin.set_ylabel("W")
    ax.legend(fontsize="small", loc="lower left")
    ax.set_title("clocks and power per rep")


def plot_result(result: Result, path: str | Path) -> Path:
    """Every panel that applies to `result`, in one figure at `path` (.png or .svg)."""
    plt = require_matplotlib()
    path = check_path(path)
    models = list(dict.fromkeys(row.model for row in result.measured_rows)) or ["(no rows)"]
    profiled = any(row.profile is not None for row in result.measured_rows)
    panels = 2 + profiled
    width = max(6.0, 5.0 * len(models))
    fig = plt.figure(figsize=(width, 4.2 * panels), constrained_layout=True)
    grid = fig.add_gridspec(panels, len(models))
    _throughput([fig.add_subplot(grid[0, i]) for i in range(len(models))], result, models)
    if profiled:
        _profile(fig.add_subplot(grid[1, :]), result)
    _clocks(fig.add_subplot(grid[panels - 1, :]), result)
    gpu = result.metadata.get("gpu_name", "n/a")
    fig.suptitle(f"impbench {result.command} on {gpu} @ {str(result.metadata.get('git_commit', 'n/a'))[:12]}")
    try:
        fig.savefig(path)
    except OSError as exc:
        raise InputError(f"-o {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path
