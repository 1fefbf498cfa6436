"""A prefill to measure or plan: its prompt length and chunk size, checked once where a command parses
them, and the one chunking rule that the plan and the engine share.

A prompt of P tokens is prefilled in chunks of C tokens, the last one shorter where C does not divide
P; C = 0 means one chunk of the whole prompt. C must be a multiple of 16 (every kernel's row tile
divides it, so a non-last chunk never has a ragged tile) and P at most MAX_PROMPT_TOKENS.
"""

from __future__ import annotations

from dataclasses import dataclass

from impbench.errors import InputError

CHUNK_MULTIPLE = 16
# Longer than any context the presets' models take (262,144 tokens); beyond it a plan has millions of
# chunk rows and an engine tens of GB of KV cache: a typo, not an experiment.
MAX_PROMPT_TOKENS = 1 << 20


def _whole(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{option} must be a whole number of tokens, got {value!r}")
    return value


def check_prompt_tokens(value, option: str = "--pp") -> int:
    value = _whole(value, option)
    if not 0 < value <= MAX_PROMPT_TOKENS:
        raise InputError(f"{option} must be between 1 and {MAX_PROMPT_TOKENS:,} prompt tokens, got {value:,}")
    return value


def check_chunk_tokens(value, option: str = "--chunk") -> int:
    value = _whole(value, option)
    if value < 0 or value % CHUNK_MULTIPLE or value > MAX_PROMPT_TOKENS:
        raise InputError(f"{option} must be 0 (the whole prompt in one chunk) or a positive multiple of "
                         f"{CHUNK_MULTIPLE} tokens up to {MAX_PROMPT_TOKENS:,}, got {value}")  # fmt: skip
    return value


@dataclass(frozen=True)
class PrefillSpec:
    """A checked prompt length and chunk size (None: the model preset's chunk size)."""

    prompt_tokens: int
    chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        check_prompt_tokens(self.prompt_tokens)
        if self.chunk_tokens is not None:
            check_chunk_tokens(self.chunk_tokens)

    def chunk_for(self, preset) -> int:
        return preset.chunk_size if self.chunk_tokens is None else self.chunk_tokens


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    length: int
    last: bool


def chunk_spans(prompt_tokens: int, chunk_tokens: int) -> list[Chunk]:
    """Full chunks of `chunk_tokens`, the last one possibly shorter; 0 = one chunk of the whole prompt."""
    size = chunk_tokens or prompt_tokens
    starts = range(0, prompt_tokens, size)
    return [Chunk(i, s, min(size, prompt_tokens - s), s + size >= prompt_tokens) for i, s in enumerate(starts)]
