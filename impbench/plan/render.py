"""Views of a plan and of the preset list: markdown, CSV and JSON (`impbench plan`, `impbench models`)."""

from __future__ import annotations

import json

from impbench.errors import InputError
from impbench.plan.cost import Plan
from impbench.presets import ModelPreset


def _billions(value: float | None) -> str:
    """Parameter counts as people write them: 30.5B, 3.35B, 2.23M."""
    if value is None:
        return "-"
    return f"{value / 1e9:.3g}B" if value >= 1e9 else f"{value / 1e6:.3g}M"


def plan_frames(plan: Plan):
    """(ops, chunks) as pandas DataFrames with display units (GFLOP, MB, us)."""
    import pandas as pd

    ops = pd.DataFrame([
        {
            "op": r.op, "layer": r.layer_type, "kind": r.kind, "calls": r.calls, "M": r.tokens,
            "N": r.n or "", "K": r.k or "", "GFLOP": r.flops / 1e9, "MB": r.bytes_moved / 1e6,
            "compute_us": r.compute_us, "memory_us": r.memory_us, "floor_us": r.floor_us, "bound": r.bound,
        }
        for r in plan.ops
    ])
    chunks = pd.DataFrame([
        {
            "chunk": c.chunk, "start": c.start, "tokens": c.tokens, "last": c.last, "GFLOP": c.flops / 1e9,
            "MB": c.bytes_moved / 1e6, "compute_us": c.compute_us, "memory_us": c.memory_us, "floor_us": c.floor_us,
        }
        for c in plan.chunks
    ])
    return ops, chunks


def summary_lines(plan: Plan) -> list[str]:
    g = plan.gpu
    chunk = "one chunk" if plan.chunk_size == 0 else f"chunk {plan.chunk_size}"
    return [
        f"model {plan.model} ({plan.architecture}, {plan.layers} layers: {plan.attention_layout}); "
        f"NVFP4: {', '.join(plan.nvfp4_tensors) or 'none'}",
        f"params: total {_billions(plan.total_params)} (published {_billions(plan.published_total_params)}), "
        f"active {_billions(plan.active_params)} (published {_billions(plan.published_active_params)})",
        f"prefill {plan.prompt_tokens} tokens, {chunk}, {len(plan.chunks)} chunk(s) on {g.name}: "
        f"{g.fp16_tflops:.0f} TFLOP/s FP16, {g.mem_tb_s:.2f} TB/s ({g.basis})",
        f"memory: weights {plan.weight_total_bytes / 1e9:.2f} GB, KV cache/state {plan.kv_cache_bytes / 1e6:.1f} MB, "
        f"activations {plan.activation_bytes / 1e6:.1f} MB (one chunk)",
        f"total: {plan.flops / 1e12:.3f} TFLOP, {plan.bytes_moved / 1e9:.2f} GB moved, "
        f"floor {plan.floor_us / 1e3:.3f} ms = {plan.floor_tok_s:,.0f} tok/s",
    ]


MAX_CHUNK_ROWS = 8  # markdown: a long prompt's chunks beyond these are summarised in one line


def _chunk_rows_shown(chunks):
    """The chunk table of a markdown plan: every chunk, or the first and last few with one summary row."""
    if len(chunks) <= MAX_CHUNK_ROWS:
        return chunks
    head, tail = chunks.iloc[: MAX_CHUNK_ROWS - 2], chunks.iloc[-2:]
    middle = chunks.iloc[MAX_CHUNK_ROWS - 2 : -2]
    summary = {column: "" for column in chunks.columns}
    summary.update(chunk=f"{len(middle):,} more", start=f"{middle['start'].iloc[0]:,}..", tokens=middle["tokens"].iloc[0],
                   GFLOP=middle["GFLOP"].sum(), MB=middle["MB"].sum(), compute_us=middle["compute_us"].sum(),
                   memory_us=middle["memory_us"].sum(), floor_us=middle["floor_us"].sum())  # fmt: skip
    import pandas as pd

    return pd.concat([head, pd.DataFrame([summary]), tail], ignore_index=True)


def render_plan(plan: Plan, fmt: str = "md") -> str:
    """The plan as markdown (summary + two tables), CSV (one table, `section` column) or JSON."""
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2)
    ops, chunks = plan_frames(plan)
    if fmt == "csv":
        import pandas as pd

        ops.insert(0, "section", "op")
        chunks.insert(0, "section", "chunk")
        return pd.concat([ops, chunks], ignore_index=True).to_csv(index=False).rstrip("\n")
    if fmt != "md":
        raise InputError(f"unknown format {fmt!r}; accepted: md, csv, json")
    lines = [f"- {line}" for line in summary_lines(plan)]
    lines += ["", "Per op (all layers and chunks):", "",
              ops.to_markdown(index=False, floatfmt=(".0f",) * 7 + (".3f", ".2f", ".1f", ".1f", ".1f")), "",
              "Per chunk (all layers):", "",
              _chunk_rows_shown(chunks).to_markdown(index=False, floatfmt=(".0f",) * 4 + (".2f", ".1f", ".1f", ".1f", ".1f"))]
    return "\n".join(lines)


def models_frame(presets: list[ModelPreset]):
    import pandas as pd

    return pd.DataFrame([
        {
            "name": p.name,
            "aliases": ", ".join(p.aliases),
            "arch": p.architecture,
            "layers": p.num_layers,
            "experts": p.num_experts,
            "top_k": p.experts_per_token,
            "shared": (f"expert {p.shared_expert_intermediate_size}" if p.shared_expert_intermediate_size
                       else f"dense mlp {p.dense_intermediate_size}" if p.dense_intermediate_size else "-"),
            "attention": p.attention_layout,
            "chunk": p.chunk_size,
            "total": _billions(p.total_params),
            "active": _billions(p.active_params),
            "published": f"{_billions(p.published_total_params)} / {_billions(p.published_active_params)}",
            "nvfp4": ", ".join(p.nvfp4_tensors),
            "synthetic": p.synthetic,
        }
        for p in presets
    ])


def render_models(presets: list[ModelPreset], fmt: str = "md") -> str:
    if fmt == "json":
        return json.dumps([
            dict(p.to_dict(), total_params=p.total_params, active_params=p.active_params,
                 attention_layout=p.attention_layout)
            for p in presets
        ], indent=2)
    frame = models_frame(presets)
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt != "md":
        raise InputError(f"unknown format {fmt!r}; accepted: md, csv, json")
    return frame.to_markdown(index=False)
