"""Exceptions for bad simulator input: traces, workload data and cluster configs.

Messages say where (file and line), what (field), what was expected and what was received, e.g.
``AzureLLMInferenceTrace_conv.csv:812: field 'ContextTokens' must be a positive integer, got 'abc'``.
The CLI catches `SimInputError` and prints its one line.
"""

from __future__ import annotations

import os


class SimInputError(Exception):
    """Base class: the simulator's input is wrong (never a bug in the simulator)."""


class TraceFormatError(SimInputError):
    """A trace or workload file cannot be read as the format it claims to be.

    `line` is 1-based (None when the problem is the file as a whole); `field` names the column or key
    (None when the problem is not about one field).
    """

    def __init__(
        self, path: str | os.PathLike[str], line: int | None, field: str | None, message: str
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"field '{field}' {message}"
        super().__init__(f"{where}: {what}")

    def __reduce__(self) -> tuple[type[TraceFormatError], tuple[str, int | None, str | None, str]]:
        """Rebuilt from its fields, so the error crosses a process pool (`--jobs`) intact."""
        return type(self), (self.path, self.line, self.field, self.message)


class ClusterConfigError(SimInputError):
    """A simulated cluster's configuration is invalid or inconsistent."""
