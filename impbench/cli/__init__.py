"""The impbench command line: parse and check every input, call one function, print. No logic of its own.

`app` holds the group and the entry point, `options` what the commands share; one module per kind of
command registers them: `reading` (no GPU), `measuring` (run, ab, sweep), `benches` (gemm, moe, ops, attn, gdn).
"""

from impbench.cli import benches, measuring, reading  # noqa: F401  (registers the commands)
from impbench.cli.app import cli, main  # noqa: F401
