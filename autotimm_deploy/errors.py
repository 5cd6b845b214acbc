"""The one user-facing error type of autotimm-deploy.

Every error a user can cause (a missing or hostile model file, a bad input size, an
unsupported operator) is raised as an :class:`AutotimmError` subclass.  The CLIs catch
it in ``main`` and print its message on one line, with no traceback, and exit with code 2.
"""

from __future__ import annotations


class AutotimmError(Exception):
    """Base class for errors a user can cause and fix.

    The message says what went wrong and, where possible, how to fix it.
    """

    exit_code: int = 2


class ModelFileError(AutotimmError):
    """A model file is missing, unreadable, hostile or does not match its config."""


class ExportError(AutotimmError):
    """ONNX export or graph surgery failed for a reason the user can act on."""


class ParityError(AutotimmError):
    """A parity check could not run (not a parity *failure*, which is a verdict)."""


class EngineError(AutotimmError):
    """An engine could not be built, checked or loaded.  ``log`` holds the library's error and warning
    lines when the library was involved (the message quotes the last ones)."""

    def __init__(self, message: str = "", log=None) -> None:
        super().__init__(message)
        self.log = list(log or [])


class EngineBuildError(EngineError):
    """TensorRT's parser or builder refused the network (the message names the node and op)."""


class EngineIncompatible(EngineError):
    """The engine is intact but cannot run here (library version, GPU, compute capability)."""


class EngineCorrupt(EngineError):
    """The engine file is truncated, modified, or not an engine of the library its sidecar names."""
