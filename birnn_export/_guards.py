"""The sizes at which a traced graph may not be the model: what torch.export assumed away.

torch.export traces the branch a model takes at the example's sizes. Where ``forward`` branches
on a size in a way a range cannot express (Demucs's ``center_trim`` runs ``if delta:``, and
``delta`` is 0 at some lengths; ``if steps % chunk:`` pads only some), torch.export keeps the
condition as a deferred runtime assertion of its program (``Ne(100 - s27, 0)``), and the ONNX
graph drops it: at the sizes where the assertion fails, the graph computes the example's branch
and the model the other one. A branch that is a no-op there (padding by 0) gives the same
numbers; one that is not gives other numbers, or other shapes.

:func:`untraced_sizes` evaluates each assertion on one dim over the dim's declared range, so
that the export can say where the graph and the model may part and verification runs there.
Sizes 0 and 1 are left out, and so are assertions that a size computed from one is not 1
(``Eq(((s55 - 1)//2) + 1, 1)`` evaluated false, a stride-2 front end's length at 2 steps):
torch.export assumes every dynamic size is at least 2 where it checks for 1 (broadcasting,
squeeze), which changes no graph, and verification runs lengths 1 and 2 anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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


def untraced_sizes(
    shape_env: Any, dims: Mapping[Any, tuple[str, int, int]]
) -> dict[str, np.ndarray]:
    """Each dim's sizes (at least 2, within its declared range) where one of torch.export's
    deferred runtime assertions on that dim alone fails: where the model may take another
    branch than the traced one.

    Args:
        shape_env: The ``ShapeEnv`` of the exported program (a size's ``node.shape_env``).
        dims: Each size symbol (``s27``) with its dim's name and declared min and max.

    Returns:
        ``{dim name: sorted int64 sizes}`` for the dims where an assertion fails somewhere;
        assertions that cannot be evaluated here (several symbols, unknown functions) are
        left to verification.
    """
    failing: dict[str, np.ndarray] = {}
    for asserts in getattr(shape_env, "deferred_runtime_asserts", {}).values():
        for condition in asserts:
            expr = condition.expr
            symbols = getattr(expr, "free_symbols", set())
            if len(symbols) != 1 or _NOT_ONE.match(str(getattr(condition, "msg", ""))):
                continue
            (symbol,) = symbols
            if symbol not in dims:
                continue
            name, low, high = dims[symbol]
            sizes = np.arange(max(low, 2), high + 1, dtype=np.int64)
            held = _evaluate(expr, symbol, sizes)
            if held is None or held.all():
                continue
            found = np.union1d(failing.get(name, sizes[:0]), sizes[~held])
            failing[name] = found
    return failing


def _evaluate(expr: Any, symbol: Any, sizes: np.ndarray) -> np.ndarray | None:
    """``expr`` (a sympy condition on ``symbol``) at every size, or ``None`` where numpy cannot
    evaluate it as sympy does (checked at three sizes)."""
    import sympy

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
