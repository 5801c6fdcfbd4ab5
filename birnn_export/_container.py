"""Models whose ``forward`` takes one container of tensors: ``batch["tokens"]`` (a collate
function's dict) or ``batch.tokens`` (a dataclass, a namespace).

Graph inputs are tensors, one per key. :func:`container_kind` tells whether ``forward`` reads
its one argument that way, :func:`discover` finds the keys it reads by running it (each run
stops at the first key not yet given), and :func:`fed_as` gives the model the container from
the graph's inputs, for the export and for every later run against the graph (the keys are
recorded in the graph's spec, ``GraphSpec.container``).
"""

from __future__ import annotations

import copy
import inspect
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from birnn_export._process import quiet_here
from birnn_export.spec import is_parameter_name

if TYPE_CHECKING:
    from torch import nn

#: The most keys :func:`discover` reads before it stops.
MAX_KEYS = 16
#: Names of tensor attributes that a container's fields take too (a sparse batch's
#: ``indices``): read as keys, where every other tensor attribute (``x.shape``) is not one.
_FIELD_NAMES = frozenset({"indices", "names"})


#: A :class:`Container` kind: ``forward`` takes the graph's inputs as keyword arguments, for a
#: parameter after others it does not need (``forward(input_ids, token_type_ids=None,
#: attention_mask=None)``).
KEYWORDS = "keywords"


@dataclass(frozen=True)
class Container:
    """How ``forward(param)`` takes the graph's inputs: a dict (``kind="dict"``) or an object
    (``"attributes"``) holding them under ``keys``, in the order of the graph's inputs; or, for
    ``kind="keywords"``, ``forward`` itself by those names (``param`` is its first)."""

    param: str
    kind: str
    keys: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.param, "kind": self.kind, "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Container:
        return cls(str(data["param"]), str(data["kind"]), tuple(str(k) for k in data["keys"]))

    def pack(self, tensors: Sequence[Any]) -> Any:
        values = dict(zip(self.keys, tensors, strict=True))
        return values if self.kind in ("dict", KEYWORDS) else types.SimpleNamespace(**values)

    def describe(self) -> str:
        if self.kind == KEYWORDS:
            return f"forward is called as forward({', '.join(f'{k}=' for k in self.keys)}...)"
        if self.kind == "dict":
            read = ", ".join(f"{self.param}[{k!r}]" for k in self.keys)
        else:
            read = ", ".join(f"{self.param}.{k}" for k in self.keys)
        held = "one dict" if self.kind == "dict" else "one object"
        return f"forward({self.param}) reads the inputs from {held}: {read}"


class _MissingKey(KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _MissingAttribute(AttributeError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Called(Exception):
    """A key's value was called: the key names a method of the container, not a tensor."""


class _Uncallable:
    """A key's stand-in before its tensor is planned: calling it tells a method."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Called


class _Probe(dict):  # type: ignore[type-arg]
    """A dict that raises at the first key, or attribute, it does not hold: the key ``forward``
    reads next. A read the model guards (``batch.get(k)``, ``except KeyError``, ``getattr(batch,
    k, None)``) stays optional, as it is in the model."""

    def __missing__(self, key: Any) -> Any:
        if isinstance(key, str):
            raise _MissingKey(key)
        raise KeyError(key)  # a tensor's index (x[:, 0]): not a container's key

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        import torch

        tensors_own = hasattr(torch.Tensor, name) and name not in _FIELD_NAMES
        if name.startswith("_") or tensors_own:  # x.shape: a tensor's own
            raise AttributeError(name)
        raise _MissingAttribute(name)


def forward_param(model: nn.Module) -> str:
    """The name of ``forward``'s first positional parameter: the container's."""
    from birnn_export._inputs import _forward_params

    return _forward_params(model)[0].name


def _read(model: nn.Module, probe: _Probe) -> tuple[str, str] | Exception | None:
    """(kind, key) of the first key ``forward`` reads that ``probe`` does not hold; else what
    it raised (``None`` if it ran)."""
    import torch

    from birnn_export._packing import any_order_packing

    try:  # quietly: what a model prints or warns on a probe is not the user's to read
        with (
            torch.no_grad(),
            any_order_packing(model),
            warnings.catch_warnings(),
            quiet_here(),
        ):
            warnings.simplefilter("ignore")
            type(model).forward(model, probe)
    except _MissingKey as missing:
        return ("dict", missing.key) if is_parameter_name(missing.key) else missing
    except _MissingAttribute as missing:
        return "attributes", missing.key
    except KeyError as exc:  # from a dict made of it: {k: v.to(device) for k, v in batch.items()}
        key = exc.args[0] if len(exc.args) == 1 else None
        return ("dict", key) if is_parameter_name(key) else exc
    except Exception as exc:  # the model's own failure: the caller's example run reports it
        return exc
    return None


def container_kind(model: nn.Module) -> str | None:
    """``"dict"`` or ``"attributes"`` where ``forward`` takes one argument (nothing else
    without a default) and reads it by key or attribute; else ``None``."""
    from birnn_export._inputs import _forward_params

    params = _forward_params(model)
    required = [p for p in params if p.default is p.empty]
    if len(params) < 1 or len(required) != 1 or required[0] is not params[0]:
        return None
    from torch import nn

    if isinstance(model, nn.RNNBase) or isinstance(getattr(model, "_birnn_container", None), dict):
        return None
    read = _read(model, _Probe())
    return read[0] if isinstance(read, tuple) else None


def discover(
    model: nn.Module, kind: str, plan: Callable[[nn.Module], Any]
) -> tuple[Container, Any] | None:
    """The keys ``forward`` reads from its container and the planned inputs for them: runs it
    on a probe holding the keys found so far (as ``plan`` makes their example tensors) until it
    reads no new key. Keys named as lengths or masks go after the others (the sequence comes
    first, as inference expects it). ``None`` where it reads none."""
    param = forward_param(model)
    keys: list[str] = []
    found: tuple[Container, Any] | None = None
    for _ in range(MAX_KEYS):
        given = dict(zip(found[0].keys, found[1].tensors, strict=True)) if found else {}
        read = _read(model, _Probe(given))
        if not isinstance(read, tuple) or read[0] != kind or read[1] in keys:
            break
        if isinstance(_read(model, _Probe({**given, read[1]: _Uncallable()})), _Called):
            return None  # it calls a method of its container (batch.max_len()): no bag of tensors
        keys.append(read[1])
        container = Container(param, kind, _in_input_order(keys))
        found = container, plan(fed_as(model, container))
    return found


def _in_input_order(keys: Sequence[str]) -> tuple[str, ...]:
    from birnn_export._inputs import param_role

    return tuple(sorted(keys, key=lambda k: param_role(k) is not None))


def fed_as(model: nn.Module, container: Container | Mapping[str, Any] | None) -> nn.Module:
    """``model`` (a shallow copy: the same weights) whose ``forward`` takes the graph's inputs
    as tensors, one per key, and passes them on in the container its own ``forward`` reads.
    ``model`` itself where ``container`` is ``None`` or it is fed so already."""
    if container is None:
        return model
    if not isinstance(container, Container):
        container = Container.from_dict(container)
    if getattr(model, "_birnn_container", None) == container.to_dict():
        return model
    cls = type(model)
    read = cls.forward

    def forward(self: nn.Module, *tensors: Any) -> Any:
        if container.kind == KEYWORDS:
            return read(self, **container.pack(tensors))
        return read(self, container.pack(tensors))

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in container.keys]
    forward.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
    forward.__wrapped__ = read  # type: ignore[attr-defined]  # the user's, for PackingSwap
    namespace = {
        "forward": forward,
        "_birnn_container": container.to_dict(),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    fed = copy.copy(model)
    fed.__class__ = type(cls.__name__, (cls,), namespace)
    return fed
