"""Kernel benchmarks (`impbench gemm`, `impbench moe`, `impbench ops`): one timing loop (timing), one
report with its printers and atomic writer (report), and one module of cases per command."""
