"""The one place a GPU command checks for a usable CUDA device (cupy is imported lazily)."""

from impbench.errors import NoDeviceError


def require_cuda() -> None:
    """Raise NoDeviceError with one line if cupy or a CUDA device is not usable here."""
    try:
        import cupy
    except ImportError as exc:  # cupy wheel missing or broken
        raise NoDeviceError(f"no usable CUDA device: cupy cannot be imported ({exc})") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorInsufficientDriver / NoDevice on CPU machines
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NoDeviceError(f"no usable CUDA device: {reason}; this command needs an NVIDIA GPU") from None
    if count < 1:
        raise NoDeviceError("no usable CUDA device: the driver reports 0 devices; this command needs an NVIDIA GPU")


def cuda_available() -> bool:
    try:
        require_cuda()
    except NoDeviceError:
        return False
    return True


def compute_capability() -> int:
    """The current CUDA device's compute capability as one number: 90 on an H100 or H200, 120 on an RTX 5090."""
    import cupy

    return int(cupy.cuda.Device().compute_capability)


def sm_count() -> int:
    """Streaming multiprocessors of the current CUDA device: 132 on an H100 SXM or an H200."""
    import cupy

    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def pci_bus_id() -> str:
    """The PCI bus id of the current CUDA device: NVML then reads the same card CUDA uses."""
    import cupy

    return cupy.cuda.Device().pci_bus_id
