"""Our CUDA kernels: one compile cache (modules), one driver-call module (driver), and one wrapper
module per kernel family.

Wrappers check dtypes, shapes and contiguity and raise ValueError naming them; they never
allocate, synchronize or read device memory on the host, so every one is capture-safe.
"""

from impbench.kernels.modules import get_function, load_module  # noqa: F401
