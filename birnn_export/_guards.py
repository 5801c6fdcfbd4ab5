"""The sizes at which a traced graph may not be the model: what torch.export assumed away.

torch.export traces the branch a model takes at the example's sizes. Where ``forward`` branches
on a size in a way a range cannot express (Demucs's ``center_trim`` runs ``if delta:``, and
``delta`` is 0 at some lengths; ``if steps % chunk:`` pads only some; ``if batch * steps >
2048:``), torch.export keeps the condition as a deferred runtime assertion of its program
(``Ne(100 - s27, 0)``), and the ONNX graph drops it: at the sizes where the assertion fails,
the graph computes the example's branch and the model the other one. A branch that is a no-op
there (padding by 0) gives the same numbers; one that is not gives other numbers, or shapes.

:func:`untraced_sizes` evaluates each assertion over the declared ranges of the dims it reads
(every size of one dim; a grid of two or more, each dim's sizes sampled to at most
:data:`GRID_SIZES`), so that the export can say where the graph and the model may part and
verification runs there. Sizes 0 and 1 are left out: torch.export assumes every dynamic size
is at least 2, and verification runs 1 anyway.

torch.export also checks sizes computed from the inputs against 1 where it broadcasts or
squeezes (``Eq(((s55 - 1)//2) + 1, 1)``: a stride-2 front end's length at 2 steps) and assumes
they are not; a branch a model writes (``if steps // 20 == 1:``) reads the same. Both are
verified, but only assertions of another form are told as branches (:attr:`Untraced.told`):
the first kind is in every model with a strided front end and changes no graph.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export.spec import MAX_RECORDED, MAX_RECORDED_SIZES

#: The message of torch.export's assertion that a size is not 1, as it words it (the check it
#: evaluated, then assumed false): against 1, or a multiple against its factor where it checked
#: a stride (``Ne(4*Max(1, (s53//4)), 4)``: time pooled by 4 is not 1 frame).
_NOT_ONE = re.compile(r"^evaluate_expr: (?:Eq|Ne)\((?:(\d+)\*)?(.*), (\d+)\)$")

#: The most sizes of one dim an assertion on several dims is evaluated at (evenly spaced, the
#: ends and the example's included), so that a grid stays small.
GRID_SIZES = 512

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
    it was traced at."""

    name: str
    low: int
    high: int
    example: int


@dataclass(frozen=True)
class Untraced:
    """Where assertions fail: on one dim (``dims`` of one name; ``sizes`` every failing size,
    sorted, several assertions joined), or on several (one assertion, ``condition`` in the
    dims' names, ``sizes`` the failing points of its grid, one row each). ``told``: sizes or
    points of assertions other than torch's checks against 1."""

    dims: tuple[str, ...]
    sizes: np.ndarray
    told: np.ndarray
    condition: str = ""

    def examples(self, near: Mapping[str, int]) -> list[dict[str, int]]:
        """A few failing points to verify at: the first, the last and the one nearest ``near``
        (the example's sizes), as ``{dim: size}``."""
        points = self.sizes.reshape(len(self.sizes), len(self.dims))
        if not len(points):
            return []
        target = np.array([near.get(d, 0) for d in self.dims])
        spread = np.maximum(points.max(0) - points.min(0), 1)
        nearest = np.argmin((np.abs(points - target) / spread).sum(1))
        picked = sorted({0, int(nearest), len(points) - 1})
        return [dict(zip(self.dims, map(int, points[i]), strict=True)) for i in picked]


def untraced_sizes(shape_env: Any, dims: Mapping[Any, Dim]) -> list[Untraced]:
    """The sizes where one of torch.export's deferred runtime assertions fails: where the
    model may take another branch than the traced one.

    Args:
        shape_env: The ``ShapeEnv`` of the exported program (a size's ``node.shape_env``).
        dims: Each size symbol (``s27``) of the graph's inputs, with its dim.

    Returns:
        One :class:`Untraced` per dim whose own assertions fail somewhere, then one per
        assertion on several dims that does; assertions numpy cannot evaluate here (unknown
        functions, sizes of no input) are left to verification.
    """
    single: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    several: list[Untraced] = []
    for asserts in getattr(shape_env, "deferred_runtime_asserts", {}).values():
        for condition in asserts:
            expr = condition.expr
            free = getattr(expr, "free_symbols", set())
            if not free or not free <= set(dims):
                continue
            symbols = [s for s in dims if s in free]  # in the order of the graph's dims
            grids = [_sizes(dims[s], full=len(symbols) == 1) for s in symbols]
            held = _evaluate(expr, symbols, grids)
            if held is None or held.all():
                continue
            if len(symbols) > 1:  # batch*(seq - 1) == 2*batch*((seq - 1)//2): on seq alone
                symbols, held = _on_one_dim(expr, symbols, held, dims)
            told = not _checks_one(str(getattr(condition, "msg", "")))
            if len(symbols) == 1:
                failing, said = single.get(symbols[0], (~held, np.zeros_like(held)))
                single[symbols[0]] = (failing | ~held, said | (~held if told else False))
                continue
            points = np.stack([g[i] for g, i in zip(grids, np.nonzero(~held), strict=True)], axis=1)
            names = {s: _readable(dims[s].name) for s in symbols}
            several.append(
                Untraced(
                    tuple(dims[s].name for s in symbols),
                    points,
                    points if told else points[:0],
                    _condition(expr.xreplace(names)),
                )
            )
    out = []
    for symbol, (failing, said) in single.items():
        sizes = _sizes(dims[symbol], full=True)
        out.append(Untraced((dims[symbol].name,), sizes[failing], sizes[said]))
    return out + several


#: The most points a condition on several dims is evaluated at to read it on one dim alone.
_ONE_DIM_POINTS = 2**22


def _on_one_dim(
    expr: Any, symbols: list[Any], held: np.ndarray, dims: Mapping[Any, Dim]
) -> tuple[list[Any], np.ndarray]:
    """``symbols`` and ``held`` as given, or, where the condition changes along one dim alone
    (a view's sizes multiplied by the batch: ``batch*(seq - 1) == 2*batch*((seq - 1)//2)``
    says that seq is odd; users64 F1), that dim and the condition at each of its sizes. The
    other dims are read at the sizes of their grid (at most :data:`GRID_SIZES` each): a
    condition that their other sizes would change is told on the one dim all the same."""
    varies = [
        axis
        for axis in range(held.ndim)
        if not np.array_equal(held, np.broadcast_to(held.take([0], axis=axis), held.shape))
    ]
    if len(varies) != 1:
        return symbols, held
    (axis,) = varies
    if any(n < 2 for i, n in enumerate(held.shape) if i != axis):  # one size tells nothing
        return symbols, held
    grids = [_sizes(dims[s], full=i == axis) for i, s in enumerate(symbols)]
    if np.prod([len(g) for g in grids]) > _ONE_DIM_POINTS:
        return symbols, held
    every = _evaluate(expr, symbols, grids)  # at every size of that dim, to tell each one
    if every is None:
        return symbols, held
    others = tuple(i for i in range(every.ndim) if i != axis)
    if not np.array_equal(every.all(axis=others), every.any(axis=others)):
        return symbols, held  # another dim matters after all, at sizes the grid had left out
    return [symbols[axis]], every.all(axis=others)


def _checks_one(msg: str) -> bool:
    """Whether an assertion's message is torch.export's check that a size is not 1: any size
    against 1, or a multiple of one term against its factor (not ``4*s0 - 8`` against 4)."""
    match = _NOT_ONE.match(msg)
    if match is None or match[3] != (match[1] or "1"):
        return False
    if re.match(r"(Python)?Mod\(", match[2]):  # a remainder is no size: `if T % 2 == 1:`
        return False
    if not match[1]:  # any size against 1
        return True
    depth = 0
    for i, char in enumerate(match[2]):  # a factor multiplies one term: no sum outside brackets
        depth += (char == "(") - (char == ")")
        if depth == 0 and char in "+-" and i and match[2][i - 1] == " ":
            return False
    return True


def _sizes(dim: Dim, full: bool) -> np.ndarray:
    """The sizes of ``dim`` from 2 an assertion is evaluated at: every one, or at most
    :data:`GRID_SIZES` of them (evenly spaced, the ends and the example's included)."""
    sizes = np.arange(max(dim.low, 2), dim.high + 1, dtype=np.int64)
    if full or len(sizes) <= GRID_SIZES:
        return sizes
    picked = np.linspace(0, len(sizes) - 1, GRID_SIZES).round().astype(np.int64)
    return np.union1d(sizes[picked], [min(max(dim.example, sizes[0]), sizes[-1])])


def _evaluate(expr: Any, symbols: Sequence[Any], grids: Sequence[np.ndarray]) -> np.ndarray | None:
    """``expr`` (a sympy condition) at every point of the grid of ``grids`` (one axis per
    symbol), or ``None`` where numpy cannot evaluate it as sympy does (checked at three
    points)."""
    import sympy

    if any(not len(g) for g in grids):
        return None
    axes = np.meshgrid(*grids, indexing="ij", sparse=True)
    shape = tuple(len(g) for g in grids)
    try:
        function = sympy.lambdify(list(symbols), expr, modules=[_NUMPY_FUNCTIONS, "numpy"])
        with np.errstate(all="ignore"):  # x % 0 at some sizes (adaptive pooling's checks)
            values = function(*axes)
        held = np.broadcast_to(np.asarray(values, dtype=bool), shape)
        for corner in {0, 1, 2}:
            index = tuple((len(g) - 1) * corner // 2 for g in grids)
            at = {
                s: sympy.Integer(int(g[i])) for s, g, i in zip(symbols, grids, index, strict=True)
            }
            if bool(expr.xreplace(at)) != bool(held[index]):
                return None
    except Exception:  # an expression numpy cannot run here: verification decides
        return None
    return held


def _readable(name: str) -> Any:
    import sympy

    return sympy.Symbol(name, integer=True, positive=True)


def _condition(expr: Any) -> str:
    """An assertion as a reader writes it: ``seq != batch + 40``."""
    if getattr(expr, "rel_op", None) and hasattr(expr, "lhs"):
        return f"{expr.lhs} {expr.rel_op} {expr.rhs}"
    return str(expr)


def examples(sizes: Sequence[int] | np.ndarray, near: int) -> tuple[int, ...]:
    """A few of ``sizes`` (sorted) to verify at: the smallest, the largest and the one nearest
    ``near`` (the example's size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(sizes):
        return ()
    nearest = sizes[np.argmin(np.abs(sizes - near))]
    return tuple(sorted({int(sizes[0]), int(nearest), int(sizes[-1])}))


def recorded(found: Untraced, words: str, note: str) -> dict[str, Any] | None:
    """An assumption as a graph's spec records it, so that ``birnn-export verify`` on the file
    says what the export said (review43 F7): its dims, its words, the export's note, and the
    sizes it tells, as runs ``[first, last, step]`` of one dim (``seq % 8 == 7`` is one run) or
    as points of several; ``None`` where that takes over :data:`MAX_RECORDED` of them."""
    told = np.asarray(found.told, dtype=np.int64).reshape(len(found.told), len(found.dims))
    entry: dict[str, Any] = {"dims": list(found.dims), "words": words, "note": note}
    if len(found.dims) > 1:
        entry["points"] = told.tolist()
        return entry if len(told) <= MAX_RECORDED else None
    sizes, runs = np.unique(told), []
    i = 0
    while i < len(sizes):
        step = int(sizes[i + 1] - sizes[i]) if i + 1 < len(sizes) else 1
        j = i
        while j + 1 < len(sizes) and sizes[j + 1] - sizes[j] == step:
            j += 1
        runs.append([int(sizes[i]), int(sizes[j]), step])
        i = j + 1
    entry["sizes"] = runs
    return entry if len(runs) <= MAX_RECORDED else None


def recorded_within(
    told: Sequence[tuple[Untraced, str]], notes: Sequence[str]
) -> tuple[dict[str, Any], ...]:
    """Each assumption as :func:`recorded` writes it, while all of them cover at most
    :data:`~birnn_export.spec.MAX_RECORDED_SIZES` sizes (the spec refuses more)."""
    out, covered = [], 0
    for (found, words), note in zip(told, notes, strict=True):
        entry = recorded(found, words, note)
        if entry is not None and covered + len(found.told) <= MAX_RECORDED_SIZES:
            out.append(entry)
            covered += len(found.told)
    return tuple(out)


def from_record(entry: Mapping[str, Any]) -> tuple[Untraced, str]:
    """A spec's recorded assumption (:func:`recorded`) as :func:`untraced_sizes` found it,
    with its words."""
    dims = tuple(entry["dims"])
    if "points" in entry:
        told = np.asarray(entry["points"], dtype=np.int64).reshape(-1, len(dims))
    else:
        told = np.concatenate(
            [np.arange(a, b + 1, step, dtype=np.int64) for a, b, step in entry["sizes"]]
            or [np.zeros(0, dtype=np.int64)]
        )
    return Untraced(dims, told, told), entry["words"]
