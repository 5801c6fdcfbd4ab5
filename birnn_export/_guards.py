"""The sizes at which a traced graph may not be the model: what torch.export assumed away.

torch.export traces the branch a model takes at the example's sizes. Where ``forward`` branches
on a size in a way a range cannot express (Demucs's ``center_trim`` runs ``if delta:``, and
``delta`` is 0 at some lengths; ``if steps % chunk:`` pads only some), torch.export keeps the
condition as a deferred runtime assertion of its program (``Ne(100 - s27, 0)``), and the ONNX
graph drops it: at the sizes where the assertion fails, the graph computes the example's branch
and the model the other one. A branch that is a no-op there (padding by 0) gives the same
numbers; one that is not gives other numbers, or other shapes.

:func:`untraced_sizes` evaluates each assertion over a dim's declared range, so that the export
can say where the graph and the model may part and verification runs there. An assertion on
the time dim and other sizes is evaluated with those at the sizes verification runs such
lengths at (batch 3, other dims at their opt). Sizes 0 and 1 are left out: torch.export assumes
every dynamic size is at least 2, and verification runs 1 anyway.

torch.export also checks sizes computed from the inputs against 1 where it broadcasts or
squeezes (``Eq(((s55 - 1)//2) + 1, 1)``: a stride-2 front end's length at 2 steps) and assumes
they are not; a branch a model writes (``if steps // 20 == 1:``) reads the same. The sizes of
both are verified, but only assertions of another form are told as branches (:attr:`Untraced.
told`): the first kind is in every model with a strided front end and changes no graph.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The message of torch.export's assertion that a size is not 1, as it words it (the check it
#: evaluated, then assumed false).
_NOT_ONE = re.compile(r"^evaluate_expr: (?:Eq|Ne)\(.*, 1\)$")

#: torch's own sympy functions, evaluated elementwise over int64 sizes (Python semantics: floor
#: division and modulo round towards minus infinity, as numpy's do).
_NUMPY_FUNCTIONS = {
    "FloorDiv": np.floor_divide,
    "CleanDiv": np.floor_divide,
    "PythonMod": np.mod,
    "Mod": np.mod,
    "IntTrueDiv": np.true_divide,
    "FloatTrueDiv": np.true_divide,
    "CeilToInt": lambda a: np.ceil(a).astype(np.int64),
    "FloorToInt": lambda a: np.floor(a).astype(np.int64),
    "TruncToInt": lambda a: np.trunc(a).astype(np.int64),
    "ToFloat": lambda a: np.asarray(a, dtype=np.float64),
    "Max": np.maximum,
    "Min": np.minimum,
}


@dataclass(frozen=True)
class Dim:
    """A named dim as :func:`untraced_sizes` reads it: its declared min and max, and the size
    the other dims' assertions take it at (``fixed``: batch 3, another dim's opt)."""

    name: str
    low: int
    high: int
    fixed: int


@dataclass(frozen=True)
class Untraced:
    """One dim's sizes (sorted, within its range, at least 2) where one of torch.export's
    assertions fails: ``sizes`` all of them (to verify), ``told`` those of assertions other
    than its checks against 1 (to tell the user)."""

    sizes: np.ndarray
    told: np.ndarray


def untraced_sizes(
    shape_env: Any, dims: Mapping[Any, Dim], vary: Sequence[Any]
) -> dict[str, Untraced]:
    """Each dim of ``vary`` with the sizes where one of torch.export's deferred runtime
    assertions fails: where the model may take another branch than the traced one.

    Args:
        shape_env: The ``ShapeEnv`` of the exported program (a size's ``node.shape_env``).
        dims: Each size symbol (``s27``) of the graph's inputs, with its dim.
        vary: The symbols whose sizes are searched (the time dim's, the batch's); an
            assertion on one of them and others takes the others at their ``fixed`` size.

    Returns:
        ``{dim name: Untraced}`` for the dims where an assertion fails somewhere; assertions
        numpy cannot evaluate here (unknown functions, sizes of no input) are left to
        verification.
    """
    import sympy

    failing: dict[Any, np.ndarray] = {}
    told: dict[Any, np.ndarray] = {}
    for asserts in getattr(shape_env, "deferred_runtime_asserts", {}).values():
        for condition in asserts:
            expr = condition.expr
            symbols = getattr(expr, "free_symbols", set())
            if not symbols or not symbols <= set(dims):
                continue
            for symbol in [s for s in vary if s in symbols]:
                if len(symbols) > 1 and symbol != vary[0]:
                    continue  # several sizes: searched along the first of vary (time) alone
                dim = dims[symbol]
                fixed = {s: sympy.Integer(dims[s].fixed) for s in symbols if s != symbol}
                held = _evaluate(expr.xreplace(fixed) if fixed else expr, symbol, dim)
                if held is None:
                    continue
                failing[symbol] = failing.get(symbol, np.zeros_like(held)) | ~held
                if not _NOT_ONE.match(str(getattr(condition, "msg", ""))):
                    told[symbol] = told.get(symbol, np.zeros_like(held)) | ~held
    out = {}
    for symbol, mask in failing.items():
        if mask.any():
            start = max(dims[symbol].low, 2)
            sizes = np.flatnonzero(mask) + start
            said = told.get(symbol)
            out[dims[symbol].name] = Untraced(
                sizes, sizes[:0] if said is None else np.flatnonzero(said) + start
            )
    return out


def _evaluate(expr: Any, symbol: Any, dim: Dim) -> np.ndarray | None:
    """``expr`` (a sympy condition on ``symbol``) at every size of ``dim`` from 2, or ``None``
    where numpy cannot evaluate it as sympy does (checked at three sizes)."""
    import sympy

    sizes = np.arange(max(dim.low, 2), dim.high + 1, dtype=np.int64)
    if not len(sizes) or expr.free_symbols != {symbol}:
        return None
    try:
        function = sympy.lambdify([symbol], expr, modules=[_NUMPY_FUNCTIONS, "numpy"])
        held = np.broadcast_to(np.asarray(function(sizes), dtype=bool), sizes.shape)
        for index in {0, len(sizes) // 2, len(sizes) - 1}:
            exact = expr.xreplace({symbol: sympy.Integer(int(sizes[index]))})
            if bool(exact) != bool(held[index]):
                return None
    except Exception:  # an expression numpy cannot run here: verification decides
        return None
    return held


def examples(sizes: Sequence[int] | np.ndarray, near: int) -> tuple[int, ...]:
    """A few of ``sizes`` (sorted) to verify at: the smallest, the largest and the one nearest
    ``near`` (the example's size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(sizes):
        return ()
    nearest = sizes[np.argmin(np.abs(sizes - near))]
    return tuple(sorted({int(sizes[0]), int(nearest), int(sizes[-1])}))
