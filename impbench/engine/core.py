"""The synthetic MoE prefill engine: weights, buffers and the chunked prefill, eager or graph.

Construction is the prewarm: every weight and buffer is allocated and every kernel module compiled
before the first forward. After that a prefill never allocates, never synchronizes and never reads
device memory on the host (except in --no-prewarm mode, which exists to show what that costs).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from impbench.engine.buffers import Buffers, buffer_specs
from impbench.engine.forward import Branch, LaunchList, build_launches
from impbench.engine.memory import check_fits, free_device_bytes
from impbench.engine.weights import generate_weights
from impbench.errors import InputError
from impbench.prefill import Chunk, chunk_spans

KERNEL_FAMILIES = ("gemm_fp16", "moe_nvfp4", "ops", "routing", "attention", "bench")  # what every model runs
ENGINE_NVFP4 = {"experts", "attention"}  # tensor groups the engine can store as NVFP4
LAYER_FIRST_OPS = ("qkv_proj", "in_proj_qkvz")  # the first op of a full / a linear layer


ENGINE_ARCHITECTURES = ("qwen3_moe", "qwen3_5_moe", "gemma4")


def kernel_families(preset) -> tuple[str, ...]:
    """The kernel families a preset's prefill launches: every model's, plus the gated delta rule where it has
    linear layers and the dense NVFP4 GEMM where it stores projections as NVFP4 (compiling a family takes
    seconds on a fresh machine, so an engine compiles only its own)."""
    extra = ("gated_delta",) * ("linear" in preset.layer_types) + ("nvfp4_gemm",) * ("attention" in preset.nvfp4_tensors)
    return KERNEL_FAMILIES + extra


def check_supported(preset) -> None:
    """The engine runs Qwen3-MoE (full attention), Qwen3.5 / 3.6 hybrid (Gated DeltaNet + gated full
    attention, shared expert) and Gemma-4 MoE (sliding-window + full attention, dense MLP beside the
    experts) models with NVFP4 experts; anything else is plan-only (impbench plan)."""
    problems = []
    if preset.architecture not in ENGINE_ARCHITECTURES:
        problems.append(f"architecture {preset.architecture}")
    if "experts" not in preset.nvfp4_tensors or set(preset.nvfp4_tensors) - ENGINE_NVFP4:
        problems.append(f"NVFP4 groups {', '.join(preset.nvfp4_tensors)}")
    if problems:
        raise InputError(
            f"model {preset.name} has {'; '.join(problems)}: the engine runs {', '.join(ENGINE_ARCHITECTURES)} models "
            "with NVFP4 experts (and optionally NVFP4 attention projections); use `impbench plan` for the others"
        )


@dataclass
class PrefillStats:
    """What one prefill did: wall time, launches issued from Python, graph replays, GEMM paths."""

    wall_s: float
    issue_s: float  # host time spent issuing work (before the final synchronize)
    python_launches: int
    graph_replays: int
    gemm_paths: Counter

    @property
    def host_us_per_launch(self) -> float | None:
        return 1e6 * self.issue_s / self.python_launches if self.python_launches else None


class Engine:
    """One model preset, built for prompts up to `max_tokens` in chunks of at most `max_chunk` tokens.

    Buffers are sized for the largest chunk, so arms with different chunk sizes share one engine.
    `max_chunk` 0 means one chunk of the whole prompt. `weights`: another engine's (same preset and
    seed), shared instead of generated, so a second engine of one row costs only its buffers.
    """

    def __init__(self, preset, max_tokens: int, max_chunk: int, seed: int = 0, prewarm: bool = True, weights=None):
        import cupy

        from impbench.kernels import attention, gated_delta, load_module, moe, nvfp4_gemm

        check_supported(preset)
        self.preset = preset
        self.max_tokens = max_tokens
        self.chunk_tokens = min(max_chunk, max_tokens) if max_chunk > 0 else max_tokens
        if weights is not None and len(weights.layers) != preset.num_layers:
            raise ValueError(f"shared weights have {len(weights.layers)} layers, {preset.name} has {preset.num_layers}")
        # before anything is allocated; shared weights are resident already, so only the buffers must fit
        resident_bytes = 0.0 if weights is None else float(sum(preset.weight_bytes().values()))
        check_fits(preset, self.chunk_tokens, max_tokens, free_device_bytes() + resident_bytes)
        self.prewarm = prewarm
        self.current_op = ""
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # the second stream of the branch beside the routed experts (forward.Branch), with its two events
        self.branch = Branch(cupy.cuda.Stream(non_blocking=True), cupy.cuda.Event(disable_timing=True),
                             cupy.cuda.Event(disable_timing=True))  # fmt: skip
        for family in kernel_families(preset):  # compile outside any capture, in both modes
            load_module(family)
        # shared-memory limits; GEMM kernels are fetched as a launch list is built (with prewarm: before capture)
        prewarms = {"moe_nvfp4": moe.prewarm, "attention": attention.prewarm, "gated_delta": gated_delta.prewarm,
                    "nvfp4_gemm": nvfp4_gemm.prewarm}  # fmt: skip
        for family in kernel_families(preset):
            if family in prewarms:
                prewarms[family]()
        with self.stream:
            self.weights = generate_weights(preset, seed) if weights is None else weights
            self.buffers = Buffers(buffer_specs(preset, self.chunk_tokens, max_tokens), prewarm=prewarm)
            rng = cupy.random.default_rng(seed + 1)
            prompt = rng.integers(0, preset.vocab_size, size=max_tokens, dtype=cupy.int32)
            self.buffers.prompt_ids[...] = prompt
            self.buffers.dense_offsets[:, 1] = cupy.arange(self.chunk_tokens + 1, dtype=cupy.int32)
            self.buffers.dense_offsets[:, 0] = 0
        self.stream.synchronize()
        self._launch_lists: dict[tuple, LaunchList] = {}
        self._graphs: dict[tuple, object] = {}  # (chunk length, guard, delay, overlap) -> capture.ChunkGraph

    # -- one chunk -------------------------------------------------------------------------------
    def launch_list(self, length: int, last: bool, guard: str, delay_us: float = 0.0, overlap: bool = True) -> LaunchList:
        """The launches of one chunk; `overlap`: the branch beside the routed experts on its own stream."""
        key = (length, last, guard, delay_us, overlap)
        launches = self._launch_lists.get(key)
        if launches is None:
            launches = build_launches(self.preset, self.weights, self.buffers, length, last, guard, delay_us,
                                      self.branch if overlap else None)  # fmt: skip
            self._launch_lists[key] = launches
        return launches

    def _set_chunk_inputs(self, chunk: Chunk) -> None:
        """Copy the chunk's token ids and position into the static buffers the graph reads."""
        b = self.buffers
        self.current_op = "chunk_inputs"
        b.pos.fill(chunk.start)
        b.ids[: chunk.length] = b.prompt_ids[chunk.start : chunk.start + chunk.length]
        if chunk.start == 0 and "linear" in self.preset.layer_types:  # a new prompt: no conv inputs, zero state
            b.conv_state.fill(0)
            b.gdn_state.fill(0)

    # -- one prefill -----------------------------------------------------------------------------
    def prefill(
        self, prompt_tokens: int, chunk_size: int, mode: str = "eager", guard: str = "cublas", delay_us: float = 0.0,
        overlap: bool = True,
    ) -> PrefillStats:
        """Run the chunked prefill of the first `prompt_tokens` prompt tokens and wait for it.

        `guard` decides the dense GEMM path (impbench.arms.GUARDS); `overlap` runs the branch beside the
        routed experts (shared expert, dense MLP) on a second stream. mode "graph": every non-last chunk is a
        replay of one CUDA graph, captured on first use; if capture fails the prefill runs eager
        and the failure is kept in `capture_status`.
        """
        from impbench.capture import ChunkGraph

        if prompt_tokens > self.max_tokens:
            raise InputError(f"prompt of {prompt_tokens} tokens exceeds the engine's {self.max_tokens}")
        chunks = chunk_spans(prompt_tokens, chunk_size)
        if chunks[0].length > self.chunk_tokens:
            raise InputError(f"chunk of {chunks[0].length} tokens exceeds the engine's {self.chunk_tokens}")
        paths: Counter = Counter()
        python_launches = replays = 0
        start_s = time.perf_counter()
        with self.stream:
            for chunk in chunks:
                self._set_chunk_inputs(chunk)
                if self.prewarm:  # views, checks and kernel fetches outside any capture
                    self.launch_list(chunk.length, chunk.last, guard, delay_us, overlap)
                graph = None
                if mode == "graph" and not chunk.last:
                    key = (chunk.length, guard, delay_us, overlap)
                    graph = self._graphs.get(key)
                    if graph is None:
                        graph = self._graphs[key] = ChunkGraph.capture(self, chunk.length, guard, delay_us, overlap)
                launches = self.launch_list(chunk.length, chunk.last, guard, delay_us, overlap)
                if graph is not None and graph.captured:
                    graph.replay(self.stream)
                    replays += 1
                else:
                    launches.run(self)
                    python_launches += len(launches.kernels)
                paths.update(launches.gemm_paths)
            issue_s = time.perf_counter() - start_s
            self.stream.synchronize()
        wall_s = time.perf_counter() - start_s
        return PrefillStats(wall_s, issue_s, python_launches, replays, paths)

    def profile(self, prompt_tokens: int, chunk_size: int, guard: str = "cublas") -> dict[str, list[float]]:
        """Device µs of every launch of one eager prefill, by op name (CUDA events around each launch).

        Eager and serial (the branch beside the experts in line): it shows where device time goes, not what
        launch overhead or the overlap of two streams costs.
        """
        import cupy

        times: dict[str, list[float]] = {}
        with self.stream:
            marks = []
            for chunk in chunk_spans(prompt_tokens, chunk_size):
                self._set_chunk_inputs(chunk)
                marks += self.launch_list(chunk.length, chunk.last, guard).run_timed(self.stream)
            self.stream.synchronize()
        for op, start, end in marks:
            times.setdefault(op, []).append(1e3 * cupy.cuda.get_elapsed_time(start, end))
        return times

    def trace_layers(self, prompt_tokens: int, chunk_size: int, guard: str = "cublas") -> list[dict]:
        """One eager prefill, stopping after each op to copy what a sublayer comparison reads
        (impbench.reference.*.sublayer_errors): per chunk and layer the layer's input x, the token mixer's
        output attn, the residual h after it, the router logits, and the MoE (feed-forward) output moe.
        qwen3 / qwen3.6: attn is the O / out projection before the add; moe is each token's expert rows summed
        on the host in float64, plus the shared expert scaled by its gate. gemma4 (whose norms are fused with
        the adds, reference.gemma4 says where): attn is the normed O projection "ffn_norm" stores over its
        input, moe the block output "post_ffn_norms" stores over the dense MLP's. Tests only: it
        synchronizes after every op."""
        import numpy as np

        b = self.buffers
        gemma = self.preset.architecture == "gemma4"

        def host(array):
            return array.get().astype(np.float64)

        records: list[dict] = []
        with self.stream:
            for chunk in chunk_spans(prompt_tokens, chunk_size):
                self._set_chunk_inputs(chunk)
                t = chunk.length
                record: dict = {}
                for launch in self.launch_list(t, chunk.last, guard).kernels:
                    if launch.op in LAYER_FIRST_OPS:  # a layer starts: its input is the residual stream now
                        record = {"start": chunk.start, "layer": len(records) % self.preset.num_layers, "x": host(b.resid[:t])}
                        records.append(record)
                    elif launch.op.startswith("combine") and not gemma:  # before it adds them: the experts' output
                        record["moe"] = self._traced_moe(record["layer"], launch.op, t)
                    self.current_op = launch.op
                    launch.fn()
                    if launch.op in ("o_proj", "out_proj") and not gemma:
                        record["attn"] = host(b.attn_proj[:t])
                    elif launch.op == "ffn_norm":
                        record["h"] = host(b.resid[:t])
                        if gemma:
                            record["attn"] = host(b.attn_proj[:t])
                    elif launch.op == "router":
                        record["router_logits"] = host(b.router_logits[:t])
                    elif "post_ffn_norms" in launch.op:
                        record["moe"] = host(b.mlp_out[:t])
            self.stream.synchronize()
        return records

    def _traced_moe(self, layer: int, op: str, t: int):
        """qwen3 / qwen3.6's MoE output as a combine op is about to add it (float64, host)."""
        import numpy as np

        b = self.buffers
        moe = b.expert_out[: t * self.preset.experts_per_token].get().astype(np.float64)[b.token_rows[:t].get()].sum(axis=1)
        if "shared_combine" in op:
            gate = 1.0
            if self.weights.layers[layer].shared.gate is not None:
                gate = 1.0 / (1.0 + np.exp(-b.shared_gate[:t].get().astype(np.float64)))
            moe += gate * b.shared_out[:t].get().astype(np.float64)
        return moe

    def capture_status(self, chunk_size: int, guard: str, delay_us: float = 0.0, overlap: bool = True):
        """The capture.CaptureStatus of the graph for this chunk size and guard, or None if none was tried."""
        graph = self._graphs.get((chunk_size, guard, delay_us, overlap))  # non-last chunks are exactly chunk_size long
        return None if graph is None else graph.status

    def logits(self):
        """Last-token logits of the last prefill (host float32 copy; synchronizes)."""
        return self.buffers.logits.get().astype("float32")[0]
