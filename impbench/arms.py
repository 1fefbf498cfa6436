"""An arm of a measurement: how a prefill runs (mode, dense-GEMM guard, chunk size, prewarm), parsed from a SPEC.

SPEC is `key=value` pairs separated by commas, e.g. `mode=graph,guard=permissive,chunk=256`.
- mode: `eager` (every kernel launched from Python) or `graph` (each non-last chunk replays one
  captured CUDA graph; the last chunk, which computes the logits, runs eager).
- guard: which dense GEMMs run on our capture-safe kernel instead of cuBLAS (impbench.kernels.gemm):
  `cublas` (none: the eager baseline; under capture cuBLAS breaks the graph), `tight` (the original
  engine's rule: large tiles where M >= 128 and N >= 128, the rest to cuBLAS), `small-n` (every shape,
  small-N tiles included), `permissive` (every shape on a large tile: the original engine's tile size,
  on today's kernels) or `seed` (every shape on mma_128x128, the original engine's capture kernel itself:
  one 128x128x32 tile of 4 warps, no split-K, no cuBLAS; the configuration whose N=32 shapes made
  capture slower on Qwen3.6).
- chunk: prefill chunk in tokens (0 = one chunk; default: the model preset's).
- prewarm: `on` (every buffer allocated when the engine is built) or `off` (each buffer allocated on
  its first use, as the original baseline engine did: the arm's cold prefill pays the allocations, and a
  graph arm's capture fails on the first one and runs eager). Unset, the arm takes the command's
  (`--no-prewarm`); an arm that sets it wins. Arms of one row that differ get one engine each, the
  second built on the first's weights (impbench.measure.row_engines).
- overlap: `on` (the default) runs the branch beside the routed experts, Qwen3.6's shared expert or
  Gemma-4's dense MLP, on a second stream from the norm they share to the combine that sums them, as vLLM
  overlaps its shared experts, and Qwen3.6's in_proj_b beside its merged in_proj_qkvz GEMM and in_proj_a;
  `off` runs them in line on the one stream. No effect on models without such a branch (Qwen3-MoE). Shown
  in the label only where a SPEC sets it.
- delay_us: a planted slowdown, for testing a CI gate only: a kernel that waits this many µs after
  every layer (kernels_cu/bench.cu bench_delay), eager and captured alike. 0 (the default) adds none.

DEFAULT_GUARD is the one place the default guard of each mode is decided. The graph arm defaults to
`small-n`, the guard our measurements show best for graph capture (docs/notes/engine.md): with
`tight`, the routers fall to a 128-wide tile and the graph arm loses 2-4% to eager for a reason that
is not graph capture at all, which is the kind of misreading this tool exists to prevent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from impbench.errors import InputError
from impbench.prefill import check_chunk_tokens

MODES = ("eager", "graph")
GUARDS = ("cublas", "tight", "small-n", "permissive", "seed")
DEFAULT_GUARD = {"eager": "cublas", "graph": "small-n"}
PREWARMS = ("on", "off")
OVERLAPS = ("on", "off")
KEYS = ("mode", "guard", "chunk", "prewarm", "overlap", "delay_us")
MAX_DELAY_US = 10_000.0


@dataclass(frozen=True)
class ArmSpec:
    """A checked arm; `guard` "" takes the mode's default."""

    mode: str = "eager"
    guard: str = ""
    chunk: int | None = None  # None: the preset's chunk size
    delay_us: float = 0.0  # planted slowdown per layer (CI gate tests only)
    prewarm: str = ""  # "on" / "off"; "" takes the command's (Protocol.prewarm)
    overlap: str = ""  # "on" / "off"; "" is on

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r} in an arm; accepted: {', '.join(MODES)}")
        if not self.guard:
            object.__setattr__(self, "guard", DEFAULT_GUARD[self.mode])
        if self.guard not in GUARDS:
            raise InputError(f"unknown guard {self.guard!r} in an arm; accepted: {', '.join(GUARDS)}")
        if self.chunk is not None:
            check_chunk_tokens(self.chunk, "chunk")
        if not (isinstance(self.delay_us, (int, float)) and 0 <= self.delay_us <= MAX_DELAY_US):
            raise InputError(f"delay_us must be a number of µs in [0, {MAX_DELAY_US:g}], got {self.delay_us!r}")
        if self.prewarm and self.prewarm not in PREWARMS:
            raise InputError(f"unknown prewarm {self.prewarm!r} in an arm; accepted: {', '.join(PREWARMS)}")
        if self.overlap and self.overlap not in OVERLAPS:
            raise InputError(f"unknown overlap {self.overlap!r} in an arm; accepted: {', '.join(OVERLAPS)}")

    def prewarmed(self, default: bool = True) -> bool:
        """Whether this arm's engine allocates every buffer up front; `default` where the arm does not say."""
        return default if not self.prewarm else self.prewarm == "on"

    @property
    def overlapped(self) -> bool:
        """Whether the branch beside the routed experts runs on its own stream."""
        return self.overlap != "off"

    def label(self) -> str:
        text = f"{self.mode}/{self.guard}"
        if self.chunk is not None:
            text += f"/chunk={self.chunk}"
        if self.prewarm:  # set only by a SPEC, so the labels of every earlier arm are unchanged
            text += f"/prewarm={self.prewarm}"
        if self.overlap:
            text += f"/overlap={self.overlap}"
        return text if not self.delay_us else f"{text}/delay={self.delay_us:g}us"

    def to_dict(self) -> dict:
        data = {"mode": self.mode, "guard": self.guard, "chunk": self.chunk}
        if self.prewarm:  # an explicit "on" too: under --no-prewarm it is what tells the arm apart
            data["prewarm"] = self.prewarm
        if self.overlap:
            data["overlap"] = self.overlap
        return data if not self.delay_us else {**data, "delay_us": self.delay_us}

    @classmethod
    def from_dict(cls, data: dict) -> ArmSpec:
        return cls(data["mode"], data.get("guard") or "", data.get("chunk"), float(data.get("delay_us") or 0.0),
                   data.get("prewarm") or "", data.get("overlap") or "")  # fmt: skip


def parse_arm(spec: str, base: ArmSpec | None = None, graph_guard: str | None = None) -> ArmSpec:
    """Parse `mode=graph,guard=permissive,chunk=256` over `base` (keys not named keep base's values).
    A mode named without a guard takes `graph_guard` where the mode is graph and that is given, else
    the mode's default guard."""
    if not isinstance(spec, str):
        raise InputError(f"an arm spec is text such as 'mode=graph,guard=small-n', got {spec!r}")
    values: dict = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise InputError(f"arm spec item {item!r} is not key=value; accepted keys: {', '.join(KEYS)}")
        if key not in KEYS:
            raise InputError(f"unknown arm spec key {key!r}; accepted keys: {', '.join(KEYS)}")
        if key in values:
            raise InputError(f"arm spec {spec!r} names {key} twice")
        if key == "chunk":
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise InputError(f"chunk must be a whole number of tokens (0 or a multiple of 16), got {value!r}")
            values[key] = int(value)
        elif key == "delay_us":
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
                raise InputError(f"delay_us must be a number of µs such as 50, got {value!r}")
            values[key] = float(value)
        else:
            values[key] = value
    arm = base or ArmSpec()
    if "mode" in values and "guard" not in values:
        values["guard"] = (graph_guard or "") if values["mode"] == "graph" else ""
    return replace(arm, **values)
