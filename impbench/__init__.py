"""impbench: is B faster than A for this MoE prefill, on this GPU, by how much, and why."""

__version__ = "0.1.0"
