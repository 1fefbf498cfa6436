"""GPU ceilings for the roofline floors of `impbench plan`.

A floor is what an op cannot beat on a GPU: max(FLOPs / compute ceiling, bytes / memory ceiling).
So the ceilings are the vendor's peak rates, which no kernel exceeds: dense FP16 tensor-core
throughput (every GEMM here runs FP16 MMA; NVFP4 weights are dequantized to FP16 first, Hopper has
no FP4 tensor cores) and the HBM bandwidth, counting bytes read plus bytes written. A measured
device-to-device copy (3.0 TB/s on the lent H100) is not a ceiling: a kernel that mostly reads runs
faster than a copy, and an op timed under a floor built on it looked faster than possible.
A measurement faster than its floor is therefore a measurement error, and the report says so.
What was measured on the lent machines is kept beside each entry (`measured`) for reading the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

from impbench.errors import InputError


@dataclass(frozen=True)
class GpuCeilings:
    name: str
    description: str
    fp16_flops_per_s: float  # dense FP16 tensor-core FLOP/s (FP32 accumulate where stated)
    mem_bytes_per_s: float  # device memory, read + write bytes per second
    memory_bytes: float  # device memory capacity
    basis: str  # where the two ceilings come from
    measured: str = ""  # what a lent machine of this kind achieved, for reading the gap to the floor

    @property
    def fp16_tflops(self) -> float:
        return self.fp16_flops_per_s / 1e12

    @property
    def mem_tb_s(self) -> float:
        return self.mem_bytes_per_s / 1e12

    def floor_us(self, flops: float, bytes_moved: float) -> tuple[float, str]:
        """(µs, "memory" or "compute"): the roofline floor of one op on these ceilings."""
        mem_us, compute_us = 1e6 * bytes_moved / self.mem_bytes_per_s, 1e6 * flops / self.fp16_flops_per_s
        return max(mem_us, compute_us), "memory" if mem_us >= compute_us else "compute"


GPUS: dict[str, GpuCeilings] = {
    "h100": GpuCeilings(
        name="h100",
        description="NVIDIA H100 80GB HBM3 (SXM)",
        fp16_flops_per_s=989.4e12,
        mem_bytes_per_s=3.35e12,
        memory_bytes=80e9,
        basis="datasheet peaks (H100 SXM5: 989.4 TFLOP/s dense FP16 tensor, 3.35 TB/s HBM3)",
        measured="lent H100: cupy.matmul FP16 8192^3 ~750 TFLOP/s (76%); device-to-device copy ~3.0 TB/s (90%)",
    ),
    "h200": GpuCeilings(
        name="h200",
        description="NVIDIA H200 141GB HBM3e (SXM)",
        fp16_flops_per_s=989.4e12,
        mem_bytes_per_s=4.8e12,
        memory_bytes=141e9,
        basis="datasheet peaks (H200 SXM: 989.4 TFLOP/s dense FP16 tensor, 4.8 TB/s HBM3e)",
        measured="lent H200: cupy.matmul FP16 8192^3 ~727 TFLOP/s (73%); device-to-device copy 3.98-4.18 TB/s (83-87%)",
    ),
    "rtx5090": GpuCeilings(
        name="rtx5090",
        description="NVIDIA GeForce RTX 5090 32GB GDDR7",
        fp16_flops_per_s=419.2e12,
        mem_bytes_per_s=1.792e12,
        memory_bytes=32e9,
        basis="datasheet peaks (838.4 TFLOP/s FP16 tensor with sparsity -> 419.2 dense; 1792 GB/s GDDR7)",
        measured="not measured here; GeForce parts may run FP32-accumulate MMA at a lower rate than the peak",
    ),
}

GPU_CHOICES = (*GPUS, "auto")


def _detect_name() -> str:
    """The first GPU's marketing name via NVML; InputError when NVML or a GPU is unavailable."""
    try:
        import pynvml
    except ImportError:
        raise InputError("--gpu auto needs nvidia-ml-py (pynvml), which is not installed; pass --gpu h100|h200|rtx5090") from None
    try:
        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                raise InputError("--gpu auto found no GPU; pass --gpu h100|h200|rtx5090")
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        raise InputError(f"--gpu auto could not query NVML ({exc}); pass --gpu h100|h200|rtx5090") from None
    return name.decode() if isinstance(name, bytes) else str(name)


def match_gpu_name(device_name: str) -> GpuCeilings | None:
    """The ceilings entry for an NVML device name, or None if impbench has no entry for it."""
    text = device_name.upper().replace(" ", "")
    if "H200" in text:
        return GPUS["h200"]
    if "H100" in text:
        return GPUS["h100"]
    if "RTX5090" in text or text.endswith("5090"):
        return GPUS["rtx5090"]
    return None


def get_gpu(name: str) -> GpuCeilings:
    """Ceilings for h100 | h200 | rtx5090, or `auto` (detect the first GPU via NVML)."""
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    if key == "auto":
        device = _detect_name()
        gpu = match_gpu_name(device)
        if gpu is None:
            raise InputError(f"--gpu auto found {device!r}, which has no ceilings entry; accepted: {', '.join(GPUS)}")
        return gpu
    raise InputError(f"unknown GPU {name!r}; accepted: {', '.join(GPU_CHOICES)}")
