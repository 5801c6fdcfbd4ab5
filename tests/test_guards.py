"""birnn_export._guards: the sizes torch.export assumed the model never takes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sympy
from torch.utils._sympy.functions import CeilToInt, FloorDiv, IntTrueDiv, Max, Mod, PythonMod

from birnn_export._guards import examples, untraced_sizes

T = sympy.Symbol("s27", integer=True, positive=True)
B = sympy.Symbol("s77", integer=True, positive=True)


def _env(*conditions: sympy.Basic, msg: str = "") -> SimpleNamespace:
    """A ShapeEnv as far as untraced_sizes reads it: its deferred runtime assertions."""
    asserts = [SimpleNamespace(expr=c, msg=msg) for c in conditions]
    return SimpleNamespace(deferred_runtime_asserts={None: asserts})


def _by_sympy(condition: sympy.Basic, low: int, high: int) -> list[int]:
    """The sizes where ``condition`` fails, each evaluated by sympy itself."""
    return [t for t in range(low, high + 1) if not condition.xreplace({T: sympy.Integer(t)})]


@pytest.mark.parametrize(
    "condition",
    [
        sympy.Ne(100 - T, 0),  # `if delta:` with delta = 100 - T
        sympy.Ne(PythonMod(T, 16), 0),  # `if T % 16:`
        sympy.Ne(4 * FloorDiv(T + 3, 4) - T, 0),
        # Demucs's valid_length frozen at the example: holds at a few lengths only
        sympy.Eq(Max(1, CeilToInt(IntTrueDiv(T - 8, 4)) + 1), 25),
        sympy.Eq(T, Mod(T, 16) + 32),
    ],
    ids=["one", "mod", "floordiv", "ceil", "pinned"],
)
def test_each_condition_fails_where_sympy_says(condition: sympy.Basic) -> None:
    found = untraced_sizes(_env(condition), {T: ("time", 2, 400)})
    want = _by_sympy(condition, 2, 400)
    assert want  # every one of them fails somewhere in the range
    assert found["time"].tolist() == want


def test_sizes_below_two_other_symbols_and_unknown_functions_are_left_alone() -> None:
    unknown = sympy.Function("Opaque")
    conditions = (
        sympy.Ne(B, 1),  # torch.export's assumption that a dynamic size is not 1
        sympy.Ne(T - B, 0),  # two sizes: not evaluated here
        sympy.Ne(unknown(T), 3),  # numpy cannot run it: left to verification
        sympy.Ne(T, 500),  # outside the range
    )
    dims = {T: ("time", 1, 400), B: ("batch", 1, 32)}
    assert untraced_sizes(_env(*conditions), dims) == {}


def test_an_assumption_that_a_computed_size_is_not_one_is_left_alone() -> None:
    """A stride-2 front end's length is 1 at 2 steps: torch.export assumed it is not, where it
    checked for a size of 1 (the shipped speech_ctc sample), which changes no graph."""
    condition = sympy.Ne(FloorDiv(T - 1, 2), 0)
    checked = "evaluate_expr: Eq(((s27 - 1)//2) + 1, 1)"
    assert untraced_sizes(_env(condition, msg=checked), {T: ("time", 1, 400)}) == {}
    branched = "evaluate_expr: Ne(((s27 - 1)//2), 0)"  # `if (steps - 1) // 2:`
    found = untraced_sizes(_env(condition, msg=branched), {T: ("time", 1, 400)})
    assert found["time"].tolist() == [2]


def test_failing_sizes_of_several_conditions_are_joined_per_dim() -> None:
    env = _env(sympy.Ne(T, 40), sympy.Ne(T, 7), sympy.Ne(B, 5))
    found = untraced_sizes(env, {T: ("time", 2, 64), B: ("batch", 1, 8)})
    assert {k: v.tolist() for k, v in found.items()} == {"time": [7, 40], "batch": [5]}


def test_examples_are_the_ends_and_the_size_nearest_the_example() -> None:
    assert examples(np.arange(16, 401, 16), 44) == (16, 48, 400)
    assert examples([100], 11) == (100,)
    assert examples([], 11) == ()
