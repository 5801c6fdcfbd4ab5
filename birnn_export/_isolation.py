"""Engines in a child process.

An engine that crashes (a segfault inside ONNX Runtime or TensorRT) ends its child process, not
the command: :class:`IsolatedRunner` reports it as an :class:`~birnn_export.errors.EngineError`
naming the engine and the input shapes, and starts a fresh child for the next call. Verification
and benchmarks run every engine but eager PyTorch this way; timings are the child's own, taken
around the engine call, without the transfer between the processes; a benchmark's runs loop in
the child (:meth:`IsolatedRunner.timed_runs`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from birnn_export import errors
from birnn_export.base_runner import BaseRunner

#: Errors rebuilt by name in the parent: every class of the hierarchy (review34 R14: five of
#: them came back as RuntimeError); anything else arrives as a RuntimeError.
_ERRORS = {
    name: kind
    for name, kind in vars(errors).items()
    if isinstance(kind, type) and issubclass(kind, errors.BiRNNExportError)
}


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a spawned child without the user's ``__main__``: spawn would run their script again
    in it, and a script without an ``if __name__ == "__main__":`` guard would export (or train)
    again there and end the child. The child needs only birnn_export's own functions."""
    import sys
    import types

    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _working_directory_unsearched() -> Iterator[None]:
    """Start a spawned child that does not import from the working directory: spawn starts it
    as ``python -c ...``, which puts the working directory first on ``sys.path`` while the child
    imports multiprocessing's modules, so a ``selectors.py`` planted in a folder of downloaded
    files ran in every engine child (Python 3.11+; older versions ignore the variable)."""
    import os

    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = before


class IsolatedRunner(BaseRunner):
    """Run the runner that ``factory()`` builds (a picklable callable) in a child process.

    Args:
        engine: The engine's name, for messages.
        factory: Builds the runner in the child, e.g. ``functools.partial(make_runner, "ort-cpu",
            "model.onnx")``.
    """

    def __init__(self, engine: str, factory: Callable[[], BaseRunner]) -> None:
        super().__init__()
        self.engine = engine
        self.factory = factory
        self.info: dict[str, Any] = {}
        self._conn: Any = None
        self._proc: Any = None
        self._child_seconds: float | None = None

    # -- the contract --------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        return self.factory().unavailable_reason()  # the engine's own runner, not activated

    def activate(self) -> None:
        super().activate()
        self.activate_time_s = self.info.get("activate_time_s", self.activate_time_s)

    def activate_impl(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_serve, args=(child, self.factory), daemon=True)
        with _working_directory_unsearched():
            try:
                with _main_hidden():
                    self._proc.start()
            except (pickle.PicklingError, AttributeError, TypeError):  # the factory needs __main__
                self._proc.start()
        child.close()
        try:
            kind, payload = self._receive("starting")
        except BaseException:  # an interrupt: no child may outlive the command (users47 F1)
            self._kill()
            raise
        if kind == "error":
            self._stop()
            raise _rebuild(payload)
        self.info = payload

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = super().infer(feed)
        self.last_inference_time_s = self._child_seconds
        return outputs

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, self._child_seconds = self._ask("infer", feed)
        return outputs

    def timed_runs(
        self,
        feed: Mapping[str, np.ndarray],
        *,
        warmup: int,
        done: Callable[[int, float], bool],
    ) -> list[float]:
        """The child's own loop (see :meth:`BaseRunner.timed_runs`); ``done`` must pickle."""
        self._require_active("timed_runs")  # a child started here would outlive deactivate()
        return self._ask("time", feed, {"warmup": warmup, "done": done})

    def _ask(self, kind: str, feed: Mapping[str, np.ndarray], *args: Any) -> Any:
        """Send the child a request about ``feed``; its answer, or its error raised here."""
        if self._proc is None or not self._proc.is_alive():
            self.activate_impl()  # the last call crashed the child: start a fresh one
        shapes = ", ".join(f"{name} {list(np.shape(v))}" for name, v in feed.items())
        try:
            self._conn.send((kind, ({k: np.asarray(v) for k, v in feed.items()}, *args)))
            answer, payload = self._receive(f"running inputs {shapes}")
        except KeyboardInterrupt:  # SIGTERM too: the child's answer would find no one
            self._kill()
            raise
        if answer == "error":
            raise _rebuild(payload)
        return payload

    def deactivate_impl(self) -> None:
        self._stop()

    def providers(self) -> list[str]:
        return list(self.info.get("providers", []))

    @property
    def placement(self) -> Any:
        return self.info.get("placement")

    @property
    def cpu_recurrent_nodes(self) -> tuple[str, ...]:
        return tuple(self.info.get("cpu_recurrent_nodes", ()))

    @property
    def engine_path(self) -> Any:
        return self.info.get("engine_path")

    @property
    def quantized(self) -> Any:
        return self.info.get("quantized")

    # -- the child -----------------------------------------------------------------------------

    def _receive(self, doing: str) -> tuple[str, Any]:
        while True:
            try:
                if self._conn.poll(0.05):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self._stop()
                how = (
                    f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
                )
                raise errors.EngineError(
                    f"{self.engine} crashed ({how}) while {doing}: the engine's process ended; "
                    "the graph does not run there"
                )

    def _stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(("stop", None))
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn = self._proc = None

    def _kill(self) -> None:
        """End the child at once, without waiting for the engine to finish what it does."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._conn = self._proc = None


def _serve(conn: Any, factory: Callable[[], BaseRunner]) -> None:
    """The child: build and activate the runner, then answer ``infer`` until ``stop``. A parent
    gone (interrupted: its end of the pipe closed) ends it without a word: its staged graph may
    be gone too (users47 F1: two tracebacks after 'Aborted!')."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):
        _answer(conn, factory)


def _answer(conn: Any, factory: Callable[[], BaseRunner]) -> None:
    try:
        runner = factory()
        runner.activate()
    except BaseException as exc:
        conn.send(("error", (type(exc).__name__, str(exc))))
        return
    conn.send(
        (
            "ready",
            {
                "activate_time_s": runner.activate_time_s,
                "providers": list(runner.providers()),
                "placement": getattr(runner, "placement", None),
                "cpu_recurrent_nodes": tuple(getattr(runner, "cpu_recurrent_nodes", ())),
                "engine_path": getattr(runner, "engine_path", None),
                "quantized": getattr(runner, "quantized", None),
            },
        )
    )
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            runner.deactivate()
            return
        feed, *args = payload
        try:
            if kind == "time":
                answer: Any = runner.timed_runs(feed, **args[0])
            else:
                answer = (runner.infer(feed), runner.last_inference_time_s)
        except Exception as exc:
            conn.send(("error", (type(exc).__name__, str(exc))))
            continue
        conn.send(("ok", answer))


def _rebuild(payload: tuple[str, str]) -> Exception:
    name, message = payload
    if name in _ERRORS:
        return _ERRORS[name](message)
    return RuntimeError(f"{name}: {message}")
