"""CUDA kernel sources of impbench, shipped as package data (`impbench.kernels_cu`, see pyproject.toml)."""
