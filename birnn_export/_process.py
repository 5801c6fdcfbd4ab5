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
"""

from __future__ import annotations

import contextlib
import functools
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
