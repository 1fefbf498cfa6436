"""An arm of an A/B: how a prefill runs (mode, dense-GEMM guard, chunk size), parsed from a SPEC.

SPEC is `key=value` pairs separated by commas, e.g. `mode=graph,guard=permissive,chunk=256`.
Dense GEMM guards: `cublas` sends every dense GEMM to cuBLAS (the eager baseline; under capture it
breaks the graph), `tight`, `small-n` and `permissive` pick our capture-safe kernel as
impbench.kernels.gemm.choose_variant decides. Unset guard: eager -> cublas, graph -> tight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from impbench.errors import InputError

MODES = ("eager", "graph")
GUARDS = ("cublas", "tight", "small-n", "permissive")
DEFAULT_GUARD = {"eager": "cublas", "graph": "tight"}


@dataclass(frozen=True)
class ArmSpec:
    mode: str = "eager"
    guard: str | None = None  # None: the mode's default
    chunk: int | None = None  # None: the preset's chunk size

    @property
    def effective_guard(self) -> str:
        return self.guard or DEFAULT_GUARD[self.mode]

    @property
    def gemm_policy(self) -> str | None:
        """The policy name for choose_variant, or None for all-cuBLAS."""
        guard = self.effective_guard
        return None if guard == "cublas" else guard

    def label(self) -> str:
        text = f"{self.mode}/{self.effective_guard}"
        return text if self.chunk is None else f"{text}/chunk={self.chunk}"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "guard": self.effective_guard, "chunk": self.chunk}


def check_chunk(chunk: int) -> int:
    if chunk < 0 or chunk % 16:
        raise InputError(f"chunk must be 0 (one chunk) or a positive multiple of 16 tokens, got {chunk}")
    return chunk


def check_guard(guard: str) -> str:
    if guard not in GUARDS:
        raise InputError(f"unknown guard {guard!r}; accepted: {', '.join(GUARDS)}")
    return guard


def parse_arm(spec: str, base: ArmSpec | None = None) -> ArmSpec:
    """Parse `mode=graph,guard=permissive,chunk=256` over `base` (unnamed keys keep base's values)."""
    arm = base or ArmSpec()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise InputError(f"arm spec item {item!r} is not key=value; accepted keys: mode, guard, chunk")
        if key == "mode":
            if value not in MODES:
                raise InputError(f"unknown mode {value!r} in arm spec; accepted: {', '.join(MODES)}")
            arm = replace(arm, mode=value)
        elif key == "guard":
            arm = replace(arm, guard=check_guard(value))
        elif key == "chunk":
            if not value.isdigit():
                raise InputError(f"chunk must be a whole number of tokens, got {value!r}")
            arm = replace(arm, chunk=check_chunk(int(value)))
        else:
            raise InputError(f"unknown arm spec key {key!r}; accepted keys: mode, guard, chunk")
    return arm
