"""GPU tests carry @pytest.mark.gpu and skip cleanly where no CUDA device is usable."""

import pytest


def _cuda_reason() -> str | None:
    from impbench.device import require_cuda
    from impbench.errors import NoDeviceError

    try:
        require_cuda()
    except NoDeviceError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _cuda_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)
