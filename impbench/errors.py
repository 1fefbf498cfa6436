"""Errors the CLI turns into exit code 2 with one line (bad input, no usable GPU)."""


class InputError(ValueError):
    """Bad user input: the message says what was wrong and what is accepted."""


class NoDeviceError(RuntimeError):
    """No usable CUDA device: a GPU command cannot run here."""
