"""birnn_export._guards: the sizes torch.export assumed the model never takes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sympy
from torch.utils._sympy.functions import CeilToInt, FloorDiv, IntTrueDiv, Max, Mod, PythonMod

from birnn_export._guards import (
    Dim,
    Untraced,
    examples,
    from_record,
    recorded,
    recorded_within,
    untraced_sizes,
)

T = sympy.Symbol("s27", integer=True, positive=True)
B = sympy.Symbol("s77", integer=True, positive=True)
C = sympy.Symbol("s12", integer=True, positive=True)
DIMS = {B: Dim("batch", 1, 32, 7), T: Dim("time", 1, 400, 64), C: Dim("chars", 1, 20, 8)}


def _env(*conditions: sympy.Basic, msg: str = "") -> SimpleNamespace:
    """A ShapeEnv as far as untraced_sizes reads it: its deferred runtime assertions."""
    asserts = [SimpleNamespace(expr=c, msg=msg) for c in conditions]
    return SimpleNamespace(deferred_runtime_asserts={None: asserts})


def _found(*conditions: sympy.Basic, msg: str = "") -> dict[str, tuple[list[int], list[int]]]:
    """One-dim findings: {dim: (sizes, told sizes)}."""
    found = untraced_sizes(_env(*conditions, msg=msg), DIMS)
    return {u.dims[0]: (u.sizes.tolist(), u.told.tolist()) for u in found if len(u.dims) == 1}


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
    want = _by_sympy(condition, 2, 400)
    assert want  # every one of them fails somewhere in the range
    assert _found(condition) == {"time": (want, want)}


def test_a_branch_on_two_sizes_is_searched_over_both_and_told_as_written() -> None:
    """`if T == B + 40:` was skipped (two symbols), then searched at batch 3 alone and told as
    "time is not 43"; `if B * T > 2048:` never fails at batch 3."""
    (found,) = untraced_sizes(_env(sympy.Ne(T, B + 40)), DIMS)
    assert found.dims == ("batch", "time") and found.condition == "time != batch + 40"
    assert found.sizes.tolist() == [[b, b + 40] for b in range(2, 33)]
    assert found.examples({"batch": 7, "time": 64}) == [
        {"batch": 2, "time": 42},
        {"batch": 7, "time": 47},
        {"batch": 32, "time": 72},
    ]
    (product,) = untraced_sizes(_env(sympy.StrictLessThan(B * T, 2049)), DIMS)
    assert all(b * t > 2048 for b, t in product.sizes) and len(product.sizes) > 0
    assert _found(sympy.Ne(B, 8)) == {"batch": ([8], [8])}  # `if B == 8:`
    assert _found(sympy.Ne(C, 5)) == {"chars": ([5], [5])}  # another named dim


def test_a_branch_on_two_sizes_that_reads_one_is_told_on_that_one() -> None:
    """users64 F1: `if T % 2: x = x[:, :-1]` before `x.view(B, T // 2, 2 * D)` leaves
    `batch*(time - 1) == 2*batch*((time - 1)//2)`, told as a condition on both dims of which a
    grid's 3875 points failed; it says time is odd, at every size of time, merged with the
    other assertions on time. One where the batch matters stays on both."""
    odd = sympy.Eq(B * (T - 1), 2 * B * FloorDiv(T - 1, 2))
    nonzero = sympy.Ne(B * FloorDiv(T - 1, 8), 0)  # a third level's length, times the batch
    even = list(range(2, 401, 2))
    assert _found(odd) == {"time": (even, even)}
    assert _found(odd, nonzero) == {"time": ([*range(2, 9), *even[4:]], [*range(2, 9), *even[4:]])}
    (both,) = untraced_sizes(_env(sympy.Ne(B * T, 64)), DIMS)  # the batch matters here
    assert both.dims == ("batch", "time")


def test_checks_against_one_are_verified_but_not_told() -> None:
    """A stride-2 front end's length is 1 at 2 steps: torch.export assumed it is not, where it
    checked for a size of 1 (the shipped speech_ctc sample); a branch the model writes on
    `steps // 20 == 1` reads the same, so both are verified, and only other forms are told."""
    checked = "evaluate_expr: Eq(((s27 - 1)//2) + 1, 1)"
    assert _found(sympy.Ne(FloorDiv(T - 1, 2), 0), msg=checked) == {"time": ([2], [])}
    branch = sympy.Ne(FloorDiv(T, 20), 1)
    want = list(range(20, 40))
    assert _found(branch, msg="evaluate_expr: Eq((s27//20), 1)") == {"time": (want, [])}
    told = "evaluate_expr: Ne(((s27 - 1)//2), 0)"  # `if (steps - 1) // 2:`
    assert _found(sympy.Ne(FloorDiv(T - 1, 2), 0), msg=told) == {"time": ([2], [2])}
    # time pooled by 4 checked against one frame as a stride: 4 * frames against 4
    pooled = sympy.Ne(Max(1, FloorDiv(T, 4)), 1)
    checked = "evaluate_expr: Ne(4*Max(1, (s27//4)), 4)"
    assert _found(pooled, msg=checked) == {"time": ([2, 3, 4, 5, 6, 7], [])}
    for written in ("Eq(4*s27 - 8, 4)", "Eq(2*s27 - 2, 2)"):  # a branch: a sum, not one term
        assert _found(sympy.Ne(T, 3), msg=f"evaluate_expr: {written}") == {"time": ([3], [3])}
    # review43 F3: `if T % 2 == 1: x = x * 0.5`, a remainder against 1, is no check of a size
    told = "evaluate_expr: Eq(Mod(s27, 2), 1)"
    even = list(range(2, 401, 2))
    assert _found(sympy.Eq(Mod(T, 2), 1), msg=told) == {"time": (even, even)}
    told = "evaluate_expr: Ne(4*Max(1, (s27//4)), 8)"  # `if 4 * frames == 8:`, not a stride
    assert _found(sympy.Ne(Max(1, FloorDiv(T, 4)), 2), msg=told) == {
        "time": ([8, 9, 10, 11], [8, 9, 10, 11])
    }


def test_sizes_below_two_unknown_symbols_and_functions_are_left_alone() -> None:
    unknown = sympy.Function("Opaque")
    u0 = sympy.Symbol("u0", integer=True)
    conditions = (
        sympy.Ne(B, 1),  # torch.export's assumption that a dynamic size is not 1
        sympy.Ne(T - u0, 0),  # a size of no input (a longest row)
        sympy.Ne(unknown(T), 3),  # numpy cannot run it: left to verification
        sympy.Ne(T, 500),  # outside the range
    )
    assert untraced_sizes(_env(*conditions), DIMS) == []


def test_failing_sizes_of_several_conditions_are_joined_per_dim() -> None:
    found = _found(sympy.Ne(T, 40), sympy.Ne(T, 7), sympy.Ne(B, 5))
    assert found == {"time": ([7, 40], [7, 40]), "batch": ([5], [5])}


def test_a_range_of_a_million_sizes_with_many_conditions() -> None:
    """The largest declared range, 40 conditions: joined as one mask per dim (each failing
    set was sorted into the last one, 16-33 s here)."""
    dims = {**DIMS, T: Dim("time", 1, 1 << 20, 64)}
    env = _env(*(sympy.Ne(PythonMod(T, k), 0) for k in range(3, 43)))
    (found,) = untraced_sizes(env, dims)
    multiples = np.arange(2, (1 << 20) + 1)
    multiples = multiples[np.any([multiples % k == 0 for k in range(3, 43)], axis=0)]
    assert np.array_equal(found.sizes, multiples) and np.array_equal(found.told, multiples)


def test_examples_are_the_ends_and_the_size_nearest_the_example() -> None:
    assert examples(np.arange(16, 401, 16), 44) == (16, 48, 400)
    assert examples([100], 11) == (100,)
    assert examples([], 11) == ()


def test_a_modulo_by_zero_at_some_sizes_says_nothing_on_stderr(recwarn) -> None:
    """Adaptive pooling's checks take 4 % (frames % 4), a modulo by zero at every fourth size:
    numpy's RuntimeWarning reached the user."""
    untraced_sizes(_env(sympy.Eq(Mod(4, Mod(T, 4)), 0)), DIMS)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize(
    ("told", "runs"),
    [
        (list(range(15, 257, 8)), [[15, 255, 8]]),  # seq % 8 == 7: one run
        ([4], [[4, 4, 1]]),
        ([2, 3, 4, 5, 9, 11, 13, 20], [[2, 5, 1], [9, 13, 2], [20, 20, 1]]),
    ],
)
def test_an_assumption_is_recorded_as_runs_of_its_sizes(told: list[int], runs: list) -> None:
    """review43 F7: the graph records every size an assumption tells, as few runs as it takes,
    so that verify on the file finds the failing cases it leaves out as the export did."""
    found = Untraced(("seq",), np.array(told), np.array(told))
    entry = recorded(found, "words", "note")
    assert entry == {"dims": ["seq"], "words": "words", "note": "note", "sizes": runs}
    again, words = from_record(entry)
    assert again.dims == ("seq",) and again.told.tolist() == told and words == "words"


def test_an_assumption_on_two_dims_is_recorded_as_points_and_none_over_the_cap() -> None:
    points = np.array([[3, 7], [5, 9]])
    entry = recorded(Untraced(("batch", "seq"), points, points, "b*t > 20"), "w", "n")
    assert entry is not None and entry["points"] == [[3, 7], [5, 9]]
    assert from_record(entry)[0].told.tolist() == [[3, 7], [5, 9]]
    many = np.arange(2, 400, 3)[:, None] * np.array([1, 1])
    assert recorded(Untraced(("batch", "seq"), many, many, "b == t"), "w", "n") is None
    scattered = np.array([2**k for k in range(1, 9)] + [300 + 7 * k * k for k in range(150)])
    assert recorded(Untraced(("seq",), scattered, scattered), "w", "n") is None


def test_the_records_of_a_graph_cover_at_most_the_sizes_its_spec_takes(monkeypatch) -> None:
    """The export keeps what it records within what the spec accepts (review45 F1's cap)."""
    from birnn_export import _guards

    monkeypatch.setattr(_guards, "MAX_RECORDED_SIZES", 40)
    odd = np.arange(3, 64, 2)  # 31 sizes, one run
    told = [(Untraced(("seq",), odd, odd), "a"), (Untraced(("seq",), odd, odd), "b")]
    kept = recorded_within(told, ["note a", "note b"])
    assert [entry["words"] for entry in kept] == ["a"]
