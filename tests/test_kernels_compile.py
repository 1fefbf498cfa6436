"""Every kernels_cu/*.cu compiles with nvcc for sm_90 (skipped only where nvcc is missing)."""

import shutil
import subprocess

import pytest

from impbench.kernels import KERNELS_DIR

SOURCES = sorted(KERNELS_DIR.glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_kernel_family_compiles_for_sm90(source, tmp_path):
    cubin = tmp_path / (source.stem + ".cubin")
    result = subprocess.run(
        ["nvcc", "-arch=sm_90", "-cubin", "--std=c++17", f"-I{KERNELS_DIR}", "-o", str(cubin), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert cubin.stat().st_size > 0


def test_there_are_kernel_sources():
    assert SOURCES, f"no .cu files under {KERNELS_DIR}"


def test_a_changed_header_changes_the_compile_options(tmp_path, monkeypatch):
    from impbench.kernels import _cache

    (tmp_path / "a.cuh").write_text("#pragma once\n")
    monkeypatch.setattr(_cache, "KERNELS_DIR", tmp_path)
    before = _cache.headers_digest()
    (tmp_path / "a.cuh").write_text("#pragma once\n// changed\n")
    assert _cache.headers_digest() != before
