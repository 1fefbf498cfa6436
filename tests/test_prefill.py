"""prefill: the checked prompt length and chunk size, and the one chunking rule."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from impbench.errors import InputError
from impbench.prefill import MAX_PROMPT_TOKENS, PrefillSpec, chunk_spans


def test_chunks_of_a_prompt_end_with_a_short_last_chunk():
    assert [(c.start, c.length, c.last) for c in chunk_spans(1100, 512)] == [(0, 512, False), (512, 512, False),
                                                                             (1024, 76, True)]  # fmt: skip
    assert [(c.start, c.length, c.last) for c in chunk_spans(300, 0)] == [(0, 300, True)]
    assert [(c.start, c.length, c.last) for c in chunk_spans(1024, 512)] == [(0, 512, False), (512, 512, True)]


@given(st.integers(1, 20_000), st.integers(0, 200).map(lambda c: 16 * c))
def test_chunks_cover_the_prompt_once_in_order(prompt, chunk):
    spans = chunk_spans(prompt, chunk)
    assert [c.index for c in spans] == list(range(len(spans)))
    assert spans[0].start == 0 and sum(c.length for c in spans) == prompt
    assert all(a.start + a.length == b.start for a, b in zip(spans, spans[1:]))
    assert [c.last for c in spans] == [False] * (len(spans) - 1) + [True]
    assert all(c.length == (chunk or prompt) for c in spans[:-1])


@pytest.mark.parametrize("pp,chunk,needle", [(0, None, "--pp"), (-5, 16, "--pp"), (MAX_PROMPT_TOKENS + 1, 0, "--pp"),
                                             (64, 40, "--chunk"), (64, -16, "--chunk"), (1.5, None, "whole"),
                                             (True, None, "whole"), (64, 2 * MAX_PROMPT_TOKENS, "--chunk")])  # fmt: skip
def test_bad_prompt_or_chunk_is_one_input_error(pp, chunk, needle):
    with pytest.raises(InputError, match=needle):
        PrefillSpec(pp, chunk)


def test_the_preset_chunk_is_the_default():
    class Preset:
        chunk_size = 512

    assert PrefillSpec(1024).chunk_for(Preset) == 512
    assert PrefillSpec(1024, 0).chunk_for(Preset) == 0
