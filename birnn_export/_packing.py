"""Replacing ``pack_padded_sequence`` / ``pad_packed_sequence`` where a model's ``forward``
finds them, for as long as a ``with`` block lasts.

Export swaps in functions that trace (:func:`birnn_export.export._traceable_packing`); eager
runs of the user's model (the example run, the verification reference, ``bench``'s torch
timings) swap in :func:`any_order_packing`'s, so that a model packing with torch's default
``enforce_sorted=True`` takes the tool's batches, whose rows are not sorted by length.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from typing import Any


class PackingSwap:
    """Replaces each key of ``swaps`` by its value in ``torch.nn.utils.rnn`` and in the globals
    and closure cells of every submodule's ``forward`` (``from ... import`` names, at module
    level or in an enclosing function; a decorated ``forward`` is unwrapped first) while a
    ``with`` block on it lasts, and puts them back on leaving. A helper that ``forward`` calls
    is reached through the globals: those of its own module, and of the modules of helpers
    imported from elsewhere (``from utils import run_packed``), and theirs in turn (not
    torch's).

    Where the functions sit is found once, so a ``with`` block per model call costs a few
    assignments (``bench`` times such calls); blocks on one swap must not overlap. The swapped
    in functions are the thread's that entered the block: another thread calling them meanwhile
    gets torch's (a thread serving a model that packs its batch failed in 880 of 1,084 calls
    while another exported: users59 F1).
    """

    def __init__(self, model: Any, swaps: dict[Callable[..., Any], Callable[..., Any]]) -> None:
        from torch.nn.utils import rnn as rnn_utils

        self.swaps = swaps
        namespaces = [rnn_utils.__dict__]
        cells: list[Any] = []
        for function in _methods(model):
            namespace = getattr(function, "__globals__", None)
            if namespace is not None and all(namespace is not n for n in namespaces):
                namespaces.append(namespace)
            # By identity: cells compare by what they hold (tensors, arrays).
            closure = getattr(function, "__closure__", None) or ()
            cells += [c for c in closure if all(c is not k for k in cells)]
        _add_helper_modules(namespaces)
        self.names = [
            (namespace, name)
            for namespace in namespaces
            for name, value in list(namespace.items())
            if self._swap(value) is not None
        ]
        self.cells = [cell for cell in cells if self._swap(_contents(cell)) is not None]
        self._saved: list[Any] = []

    def _swap(self, value: Any) -> Any:
        # By identity: a module's globals may hold callables that are not hashable.
        return next((new for old, new in self.swaps.items() if value is old), None)

    def __enter__(self) -> None:
        saved = []
        for namespace, name in self.names:
            value = namespace[name]
            if self._swap(value) is not None:
                saved.append((namespace, name, value))
                namespace[name] = _in_this_thread(value, self._swap(value))
        for cell in self.cells:
            value = cell.cell_contents
            if self._swap(value) is not None:
                saved.append((cell, None, value))
                cell.cell_contents = _in_this_thread(value, self._swap(value))
        self._saved = saved

    def __exit__(self, *exc: object) -> None:
        for where, name, value in reversed(self._saved):
            if name is None:
                where.cell_contents = value
            else:
                where[name] = value
        self._saved = []


def _in_this_thread(old: Callable[..., Any], new: Callable[..., Any]) -> Callable[..., Any]:
    """``new`` for the calling thread, ``old`` for every other thread; ``new`` where dynamo
    traces (torch.export's strict mode), which cannot trace the thread's identity.
    ``is_compiling()`` would not do: torch.export sets it for every thread."""
    import torch

    thread = threading.get_ident()

    def either(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_dynamo_compiling() or threading.get_ident() == thread:
            return new(*args, **kwargs)
        return old(*args, **kwargs)

    either.__name__ = either.__qualname__ = getattr(new, "__name__", "either")
    return either


def _methods(model: Any) -> list[Any]:
    """Every submodule's ``forward`` and the functions of its classes, base classes in other
    files included (a subclass overriding ``forward`` only, calling a base class's ``features``
    that packs), a decorated one unwrapped to the user's own; not torch's nor ours (their
    ``forward`` alone)."""
    found: list[Any] = []
    seen: set[type] = set()
    for module in model.modules():
        forward = inspect.unwrap(type(module).forward)
        if all(forward is not f for f in found):
            found.append(forward)
        for klass in type(module).__mro__:
            ours = klass.__module__.split(".")[0] in ("torch", "birnn_export", "builtins")
            if klass in seen or ours:
                continue
            seen.add(klass)
            for value in vars(klass).values():
                function = inspect.unwrap(value) if callable(value) else None
                if inspect.isfunction(function) and all(function is not f for f in found):
                    found.append(function)
    return found


def _add_helper_modules(namespaces: list[dict[str, Any]]) -> None:
    """Add to ``namespaces`` the globals of the user's modules they reach: of each Python
    function they hold that was defined in another module (``from utils import run_packed``)
    and of each module they hold (``import utils``), and so on. Modules of the standard library
    and installed packages are left out (``namespaces[0]`` is torch's), but for those of a
    package the model's own modules belong to."""
    import sysconfig
    import types

    paths = sysconfig.get_paths()
    libraries = tuple(os.path.realpath(paths[k]) for k in ("stdlib", "purelib", "platlib"))
    tools = {"torch", "birnn_export"}  # their layers' forwards are among the model's modules
    own = {_package(n) for n in namespaces[1:]} - tools

    def user_code(namespace: dict[str, Any]) -> bool:
        if _package(namespace) in tools or not namespace.get("__file__"):
            return False
        where = os.path.realpath(str(namespace["__file__"]))
        return _package(namespace) in own or not where.startswith(libraries)

    pending = [n for n in namespaces[1:] if _package(n) not in tools]
    while pending:
        for value in list(pending.pop().values()):
            if type(value) is types.ModuleType:  # not a lazy or deprecated stand-in
                found = value.__dict__
            elif type(value) is types.FunctionType:
                found = getattr(inspect.unwrap(value), "__globals__", None)
            else:
                continue
            if (
                isinstance(found, dict)
                and all(found is not n for n in namespaces)
                and user_code(found)
            ):
                namespaces.append(found)
                pending.append(found)


def _package(namespace: dict[str, Any]) -> str:
    return str(namespace.get("__name__", "")).split(".")[0]


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet
        return None


def any_order_packing(model: Any) -> PackingSwap:
    """While a ``with`` block on it lasts, ``model``'s ``pack_padded_sequence`` calls take
    rows in any order: on rows sorted longest first they pack what ``enforce_sorted=True``
    packs, and a row's results do not depend on the others, so unsorted rows get the results
    they would get sorted."""
    from torch.nn.utils.rnn import pack_padded_sequence as original

    def pack(
        input: Any, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
    ) -> Any:
        del enforce_sorted
        return original(input, lengths, batch_first=batch_first, enforce_sorted=False)

    return PackingSwap(model, {original: pack})
