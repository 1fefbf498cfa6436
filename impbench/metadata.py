"""The facts a result must carry to be read later: software, source tree, GPU, host, command, time.

Like pyperf's _collect_metadata: a flat dict of strings and numbers, every value present, "n/a"
where this machine cannot say (no git checkout, no NVML, no GPU). Host facts are here because the
eager arm is host-bound and moves with the CPU, not the GPU (docs/DESIGN.md, Facts).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from impbench import __version__, env

NA = "n/a"
SOURCE_DIR = Path(__file__).resolve().parents[1]
# Where the tree was copied (e.g. onto a device machine), the commit can be passed in from outside.
# Where set it wins over git: a copied tree may carry a stale .git (seen on the lent H100 machine,
# whose copy reported a commit three behind the tree it ran).


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def git_info() -> dict:
    """git_commit (HEAD of the tree impbench runs from) and git_dirty (tracked files changed)."""
    commit = env.git_commit()
    if commit:
        return {"git_commit": commit, "git_dirty": NA}
    lines = (_git("rev-parse", "--show-toplevel", "HEAD") or "").split()
    # Only a checkout of impbench itself counts: an installed copy inside some other repository
    # (a virtualenv in a project) must not report that project's commit.
    if len(lines) != 2 or Path(lines[0]).resolve() != SOURCE_DIR:
        return {"git_commit": NA, "git_dirty": NA}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": lines[1], "git_dirty": NA if status is None else bool(status.strip())}


def kernel_info() -> dict:
    """kernels_digest: a digest of the kernel sources compiled (every kernels_cu/*.cu and *.cuh, so a
    result names the code it timed even where the commit does not: a copied tree, an edited file);
    kernels_dir: "installed", or the IMPBENCH_KERNELS_DIR folder that replaced them; impbench_env: the
    IMPBENCH_* settings in effect, "; "-separated ("none" where none is set), since PDL and the GEMM variant list change what
    runs."""
    from impbench import resources

    settings = sorted(f"{name}={os.environ[name].strip()}" for name in env.KNOWN if os.environ.get(name, "").strip())
    return {"kernels_digest": resources.sources_digest("*.cu", "*.cuh")[:16],
            "kernels_dir": str(resources.kernels_dir()) if env.kernels_dir() else "installed",
            "impbench_env": "; ".join(settings) or "none"}  # fmt: skip


def run_settings(metadata: dict) -> str | None:
    """The IMPBENCH_* settings that change what runs ("none" where none is set; None where the result
    predates the record): the kernel folder's path and the commit label are left out, since the kernels'
    digest and git_commit say those, whatever machine's paths they had."""
    recorded = metadata.get("impbench_env")
    if recorded is None:
        return None
    kept = [item for item in recorded.split("; ") if item != "none" and not item.startswith((env.KERNELS_DIR, env.GIT_COMMIT))]
    return "; ".join(kept) or "none"


def source_note(metadata: dict) -> str:
    """"" for a run of the installed kernels with no IMPBENCH_* setting; else what a report header must
    add after the commit so the run is not read as the commit's plain code."""
    parts = []
    if metadata.get("kernels_dir", "installed") != "installed":
        parts.append(f"kernels {metadata.get('kernels_digest', NA)} from {metadata['kernels_dir']}")
    settings = run_settings(metadata)
    if settings not in (None, "none"):
        parts.append(settings)
    return "".join(f" ({part})" for part in parts)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or NA


def host_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or NA,
        "cpu_count_usable": usable or NA,
        "platform": platform.platform(),
        "python_version": platform.python_version(),
    }


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"  # 13020 -> "13.2", as CUDA encodes it


def gpu_info(pci_bus_id: str | None = None, device_index: int = 0, nvml=None) -> dict:
    """GPU name, driver, CUDA driver version and limits from NVML; every key "n/a" where NVML fails."""
    from impbench.telemetry import open_nvml

    keys = ("gpu_name", "gpu_pci_bus_id", "gpu_driver", "cuda_driver_version", "gpu_memory_mib",
            "gpu_power_limit_w", "gpu_max_sm_mhz", "gpu_max_mem_mhz")  # fmt: skip
    info: dict = dict.fromkeys(keys, NA)
    try:
        nvml, handle = open_nvml(pci_bus_id, device_index, nvml)
    except Exception:  # no pynvml, no driver, no such device: the keys stay n/a
        return info
    queries = {
        "gpu_name": lambda: _text(nvml.nvmlDeviceGetName(handle)),
        "gpu_pci_bus_id": lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
        "gpu_driver": lambda: _text(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": lambda: _cuda_version(int(nvml.nvmlSystemGetCudaDriverVersion())),
        "gpu_memory_mib": lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
        "gpu_power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "gpu_max_sm_mhz": lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "gpu_max_mem_mhz": lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)),
    }
    try:
        for key, query in queries.items():
            try:
                info[key] = query()
            except Exception:  # NotSupported on this card: this key stays n/a
                pass
    finally:
        nvml.nvmlShutdown()
    return info


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cupy_info() -> dict:
    """CuPy, CUDA runtime and NVRTC versions (none of these needs a driver); "n/a" without cupy."""
    info = {"cupy_version": NA, "cuda_runtime_version": NA, "nvrtc_version": NA}
    try:
        import cupy
    except Exception:  # not installed or broken wheel
        return info
    info["cupy_version"] = cupy.__version__
    try:
        info["cuda_runtime_version"] = _cuda_version(int(cupy.cuda.runtime.runtimeGetVersion()))
    except Exception:
        pass
    try:
        info["nvrtc_version"] = ".".join(str(part) for part in cupy.cuda.nvrtc.getVersion())
    except Exception:
        pass
    return info


def collect_metadata(argv: list[str] | None = None, pci_bus_id: str | None = None, device_index: int = 0) -> dict:
    """Everything above in one flat dict, plus command_line (default sys.argv) and time_utc."""
    import numpy

    argv = sys.argv if argv is None else argv
    return {
        "impbench_version": __version__,
        **git_info(),
        **kernel_info(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": shlex.join(argv),
        **host_info(),
        "numpy_version": numpy.__version__,
        **cupy_info(),
        **gpu_info(pci_bus_id, device_index),
    }


def device_metadata(argv: list[str] | None = None) -> dict:
    """collect_metadata for the current CUDA device (a GPU command, after device.require_cuda)."""
    from impbench.device import pci_bus_id

    return collect_metadata(argv, pci_bus_id())
