"""One hierarchy of user-facing errors.

Every error a user can cause derives from :class:`BiRNNExportError`. The CLI prints these as a
single line and exits with :attr:`BiRNNExportError.exit_code`; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class BiRNNExportError(Exception):
    """Base class of errors caused by input, configuration or environment, not by a bug.

    ``model_sha256`` is the sha256 of the model file the failed export read, where it read one
    (for its ``--json`` summary).
    """

    exit_code: int = 2
    model_sha256: str | None = None


class UsageError(BiRNNExportError):
    """An option's value could not be read: the message names the option and a valid form."""


class ModelLoadError(BiRNNExportError):
    """A model file could not be read or recognised."""


class ConversionError(BiRNNExportError):
    """A recurrent layer cannot be represented by the manual modules."""


class ExportError(BiRNNExportError):
    """ONNX export failed or produced a graph that failed its own checks."""


class EngineUnavailableError(BiRNNExportError):
    """An inference engine was requested that cannot run here; the message says why."""


class EngineError(BiRNNExportError):
    """An engine failed on the graph when it ran: it could not load the graph, raised on valid
    inputs, or crashed (exit code 1: the graph does not run there; not bad input)."""

    exit_code = 1


class EngineBuildError(BiRNNExportError):
    """TensorRT's ONNX parser rejected a graph, or its builder failed on it: the graph does not
    run on that engine as exported (exit code 1, like a failed verification)."""

    exit_code = 1


class CompatibilityError(BiRNNExportError):
    """A graph failed the compatibility check it was asked to pass (exit code 1): the
    findings say which node and rule."""

    exit_code = 1


class VerificationError(BiRNNExportError):
    """An engine's outputs differ from the eager PyTorch reference beyond tolerance.

    ``report`` is the :class:`~birnn_export.verification.VerifyReport` that failed, when there
    is one (to render or save); ``loaded_report`` that of an export's saved inputs
    (``load_inputs``), judged before the sweep: ``report`` itself where they failed, or the
    verdict they passed with where the sweep then failed.
    """

    exit_code = 1

    def __init__(self, message: str, *, report: Any = None, loaded_report: Any = None) -> None:
        super().__init__(message)
        self.report = report
        self.loaded_report = loaded_report


class ExportInterrupted(KeyboardInterrupt):
    """An interrupt after the graph was written and verified: ``written`` is its path (the
    ``--json`` summary names it; users42, users47 F5)."""

    def __init__(self, message: str, *, written: str) -> None:
        super().__init__(message)
        self.written = written


def outcome(raise_for_failure: Callable[[], None]) -> dict[str, Any]:
    """``{"error": ..., "exit_code": ...}``: what ``raise_for_failure`` (a report's) raises, as
    the command would end, or ``None`` and 0. Every report's JSON holds them, so a pipeline
    gates each command on ``.exit_code == 0`` (users53 F2)."""
    try:
        raise_for_failure()
    except BiRNNExportError as exc:
        return {"error": str(exc), "exit_code": exc.exit_code}
    return {"error": None, "exit_code": 0}


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of at most 300 characters: its type, then its message."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def known_options(where: str, given: Mapping[str, Any], takes: Sequence[str]) -> None:
    """Refuse keyword arguments not among ``takes``, naming the nearest one: a mistyped
    option raised a TypeError naming an internal function, outside
    :class:`~birnn_export.errors.BiRNNExportError`.

    Raises:
        UsageError: one line, with the option the name is closest to.
    """
    import difflib

    for name in given:
        if name not in takes:
            near = difflib.get_close_matches(str(name), takes, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UsageError(f"{where}: no option {name!r}; {hint}it takes {', '.join(takes)}")


def keywords(function: Callable[..., Any], *, leaving: Sequence[str] = ()) -> list[str]:
    """The names of ``function``'s keyword parameters (``**`` ones aside), but ``leaving``."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        name
        for name, param in inspect.signature(function).parameters.items()
        if param.kind in kinds and name not in leaving
    ]
