"""What a public call does to the caller's process: one call at a time, the random state kept.

An export or a verification changes process-wide state while it runs: torch's packing functions
(and a model's module's names for them) are swapped for traceable ones, torch's loggers are
quieted, an engine's child process starts with ``__main__`` hidden and ``PYTHONSAFEPATH`` set.
Two calls at once in two threads put back each other's state: both failed, blaming their
models, and the process stayed broken (torch's ``pad_packed_sequence`` replaced for good,
``sys.stdout`` a closed file: users59 F1). :func:`one_at_a_time` runs the public entry points
one after another on one re-entrant lock (a call within a call goes on).

Each also runs under :func:`torch.random.fork_rng`: converted layers are built with a random
init before the model's weights are copied in, and a model class is built from a state_dict,
both drawing from torch's global generator, so a seeded training loop that exported each
epoch trained to other weights than the same loop without (users59 F2: up to 0.09 after three
epochs).

While a call runs, what it prints itself (torch's exporter, ONNX Runtime's quantizer, a model run
on a probe) is dropped by :func:`quiet_here`, for its own thread only: a ``/dev/null`` or a
``StringIO`` in ``sys.stdout``'s place hid a whole service's output (users59 F3, review38 R1).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_CALL = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def one_at_a_time(function: F) -> F:
    """``function`` holding the process's one lock for public calls while it runs, with torch's
    random state (CPU, and each CUDA device in use) as it was when it returns or raises."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _CALL, _random_state_kept():
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """torch's global generators put back on leaving. Where torch is not imported yet the
    caller has drawn nothing from it to keep (and ``birnn-export --help`` stays free of it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else ()
    with torch.random.fork_rng(devices=list(devices)):
        yield


@contextlib.contextmanager
def quiet_here(*, root_log_below: int | None = None) -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` dropping what the calling thread writes while the block
    lasts, and passing on what other threads write; with ``root_log_below``, the calling
    thread's records of the root logger below that level dropped too (ONNX Runtime's quantizer
    logs advice meant for image models there: setting the root logger's level silenced every
    thread's logs)."""
    root = logging.getLogger()
    drop = _ThisThreadBelow(root_log_below) if root_log_below is not None else None
    # logging.warning() gives a root logger without handlers one on sys.stderr, kept for good:
    # here, the stream that drops this thread's writes
    stand_in = _LastResort() if drop is not None and not root.handlers else None
    if drop is not None:
        root.addFilter(drop)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        with (
            contextlib.redirect_stdout(_QuietHere(sys.stdout)),
            contextlib.redirect_stderr(_QuietHere(sys.stderr)),
        ):
            yield
    finally:
        if drop is not None:
            root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


class _QuietHere:
    """A stream that drops what one thread writes and passes on what other threads write (to
    nothing, where there was no stream: ``sys.stdout`` is ``None`` under pythonw and some
    daemons)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._thread = threading.get_ident()

    def _passes(self) -> bool:
        return self._stream is not None and threading.get_ident() != self._thread

    def write(self, text: str) -> int:
        return self._stream.write(text) if self._passes() else len(text)

    def writelines(self, lines: Any) -> None:
        if self._passes():
            self._stream.writelines(lines)

    def flush(self) -> None:
        if self._passes():
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty...: the stream's
        return getattr(self._stream, name)


class _ThisThreadBelow(logging.Filter):
    """Drops the records one thread logs below ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level, self._thread = level, threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self._thread or record.levelno >= self._level


class _LastResort(logging.Handler):
    """What a root logger without handlers does (:data:`logging.lastResort`), as a handler."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)
