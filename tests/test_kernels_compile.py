"""Every kernel family compiles with nvcc, as NVRTC sees it (module_source: the .cu plus any generated
entry points), for Hopper (sm_90a) and for the other GPUs where the family runs: sm_80 (A100),
sm_89 (L40/RTX 4090) and sm_120 (RTX 5090). Skipped only where nvcc is missing."""

import shutil
import subprocess

import pytest

from impbench import resources
from impbench.kernels import modules

ARCHS = {"sm_90a": "-gencode=arch=compute_90a,code=sm_90a", "sm_80": "-arch=sm_80", "sm_89": "-arch=sm_89",
         "sm_120": "-arch=sm_120"}  # fmt: skip
CASES = [(family, arch) for family in resources.kernel_families() for arch in ARCHS
         if int(arch[3:].rstrip("a")) >= modules.MIN_COMPUTE_CAPABILITY.get(family, 80)]  # fmt: skip


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("family,arch", CASES, ids=[f"{f}-{a}" for f, a in CASES])
def test_kernel_family_compiles(family, arch, tmp_path):
    source = tmp_path / f"{family}.cu"
    source.write_text(modules.module_source(family))
    cubin = tmp_path / f"{family}.cubin"
    result = subprocess.run(
        ["nvcc", ARCHS[arch], "-cubin", "--std=c++17", f"-I{resources.kernels_dir()}", "-o", str(cubin), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert cubin.stat().st_size > 0
    if arch == "sm_90a" and shutil.which("cuobjdump"):
        early = loads_before_the_wait(cubin)
        assert not early, f"{family}: global memory accessed before griddepcontrol.wait: {early}"


# SASS of a global memory access: loads (LDG, and LD.E of generic addresses), cp.async (LDGSTS), TMA
# (UTMALDG), stores and atomics.
GLOBAL_ACCESS = ("LDG", "LD.E", "LDGSTS", "UTMALDG", "STG", "ATOM", "RED")


def loads_before_the_wait(cubin) -> dict[str, list[str]]:
    """Kernels whose machine code touches global memory before griddepcontrol.wait (ACQBULK), with those
    instructions. Under programmatic dependent launch (impbench/kernels/driver.py) a kernel starts while
    the previous one still writes; pdl_entry() waits first, but ptxas scheduled ld.global.nc loads of
    qkv_post above the wait (kernels_cu/vec16.cuh), and that read the previous GEMM's output early."""
    sass = subprocess.run(["cuobjdump", "--dump-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    early: dict[str, list[str]] = {}
    for function in sass.split("Function : ")[1:]:
        name, body = function.split("\n", 1)
        if "ACQBULK" not in body:
            continue
        before = [line.split(";")[0].split("*/")[-1].strip() for line in body.split("ACQBULK")[0].splitlines()]
        hits = [ins for ins in before if ins and _opcode(ins).startswith(GLOBAL_ACCESS)]
        if hits:
            early[name.strip()] = hits
    return early


def _opcode(instruction: str) -> str:
    words = instruction.split()
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def test_every_family_is_compiled_for_hopper():
    families = resources.kernel_families()
    assert {"gemm_fp16", "moe_nvfp4", "attention", "ops", "routing"} <= set(families)
    assert {family for family, arch in CASES if arch == "sm_90a"} == set(families)


def test_a_changed_header_changes_the_compile_options(tmp_path, monkeypatch):
    (tmp_path / "a.cuh").write_text("#pragma once\n")
    (tmp_path / "a.cu").write_text('#include "a.cuh"\n')
    monkeypatch.setenv("IMPBENCH_KERNELS_DIR", str(tmp_path))
    before = modules.headers_digest()
    (tmp_path / "a.cuh").write_text("#pragma once\n// changed\n")
    assert modules.headers_digest() != before
