"""How long runs (a verification sweep, a benchmark) say they are running.

On a terminal, a rich progress bar that appears once the run has taken a second. Elsewhere (a
CI log, a file, a dumb terminal) a plain line every :data:`PLAIN_PROGRESS_EVERY` seconds, from
a thread while one long step runs too: a single case of 100,000 steps took minutes without a
word (users32).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

#: Seconds between the plain progress lines written where stderr is not a terminal.
PLAIN_PROGRESS_EVERY = 30.0


#: The share of a run's work (batch x length) done before its time left is estimated.
ESTIMATE_AFTER = 0.1


def _bar_shows() -> bool:
    """Whether rich's bar shows on stderr: a terminal, but not a dumb one (``TERM=dumb``, as
    Emacs shells and some CI runners set), where rich draws nothing (users66 F10)."""
    dumb = os.environ.get("TERM", "").lower() in ("dumb", "unknown")  # rich's own test
    return sys.stderr.isatty() and not dumb


class Progress:
    """Progress of ``what`` (``verify``, ``bench``) over steps of the given ``weights``.

    Each step weighs what it computes (a case's batch x length), so the time left is estimated
    from the work done, not the steps: the longest case takes most of a sweep. Use it as a
    context manager (or call :meth:`close`): its thread says lines until then.
    """

    def __init__(self, what: str, weights: Sequence[float], enabled: bool) -> None:
        self.what, self.weights, self.enabled, self.done = what, list(weights), enabled, 0
        self.total = len(self.weights)
        self.start = time.perf_counter()
        self.running = ""  # the step now running, where the caller says
        self._bar: Any = None
        self._task: Any = None
        self._said = self.start  # when the last plain line was written
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._plain = enabled and not _bar_shows()
        if self._plain:
            threading.Thread(target=self._beat, daemon=True).start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restart(self) -> None:
        """Time the run from now (the engines' start-up done): elapsed times and estimates."""
        self.start = time.perf_counter()

    def extend(self, weights: Sequence[float]) -> None:
        """More steps, decided during the run."""
        self.weights += weights
        self.total = len(self.weights)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def left(self, elapsed: float) -> str:
        """``, about N s left`` from the work done so far, or nothing before a tenth of it: the
        first, smallest cases carry the start-up (a 340 MB model's first line said "about
        168591 s left" of a 271 s export)."""
        done = sum(self.weights[: self.done])
        rest = sum(self.weights[self.done :])
        if done < ESTIMATE_AFTER * (done + rest) or rest <= 0:
            return ""
        return f", about {elapsed * rest / done:.0f} s left"

    def advance(self, label: str, steps: int = 1) -> None:
        """``steps`` more done, the last of them ``label``."""
        self.done += steps
        self.running = ""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if self._plain:
            self._say(f"{self.done}/{self.total} steps ({label})")
            return
        if self._bar is None and elapsed > 1.0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn(self.what),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),  # not cases: a case may take several (users66 F9)
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, completed=self.done)
        elif self._bar is not None:
            self._bar.update(
                self._task, completed=self.done, description=label + self.left(elapsed)
            )

    def now(self, label: str) -> None:
        """The step now running is ``label`` (said by the line written while it runs)."""
        self.running = label
        if self._bar is not None:
            self._bar.update(self._task, description=label)

    def _say(self, doing: str) -> None:
        """A plain line, unless one was written less than the interval ago (by the clock,
        whatever :meth:`restart` did to the run's own time)."""
        now = time.perf_counter()
        elapsed = now - self.start
        with self._lock:
            if now - self._said < PLAIN_PROGRESS_EVERY:
                return
            self._said = now
            print(
                f"{self.what}: {doing}, {elapsed:.0f} s{self.left(elapsed)}",
                file=sys.stderr,
                flush=True,
            )

    def _beat(self) -> None:
        """Where one step runs longer than the interval, say so while it runs."""
        while not self._stopped.wait(1.0):
            if self.done < self.total:
                running = self.running or "the next"
                self._say(f"{self.done}/{self.total} steps, {running} still running")

    def close(self) -> None:
        self._stopped.set()
        if self._bar is not None:
            self._bar.stop()
