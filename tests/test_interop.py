"""Tests for ``birnn_export/_interop.py``: saved inputs and outputs in the files Polygraphy
reads and writes, checked with Polygraphy's own loaders, and ``.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from birnn_export import _interop
from birnn_export.errors import BiRNNExportError

FEEDS = [
    {"ids": np.array([[3, 1, 0]], dtype=np.int64), "lengths": np.array([2], dtype=np.int64)},
    {"ids": np.arange(8, dtype=np.int64).reshape(2, 4), "lengths": np.array([4, 1])},
]


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys()
        and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_feeds_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cases{suffix}"
    _interop.save_feeds(path, FEEDS, cases=[{"batch": 1}, {"batch": 2}])
    assert _same(_interop.load_feeds(path), FEEDS)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically


def test_polygraphy_reads_our_feeds_and_we_read_its(tmp_path: Path) -> None:
    json_io = pytest.importorskip("polygraphy.json", reason="polygraphy is not installed")
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    _interop.save_feeds(ours, FEEDS)
    assert _same(json_io.load_json(str(ours)), FEEDS)
    json_io.save_json(FEEDS, str(theirs))
    assert _same(_interop.load_feeds(theirs), FEEDS)


def test_polygraphy_reads_our_run_results(tmp_path: Path) -> None:
    comparator = pytest.importorskip("polygraphy.comparator", reason="polygraphy is not installed")
    outputs = {
        "reference": [{"output": np.full((1, 3, 2), 0.5)}],
        "eager": [{"output": np.ones(2)}],
    }
    path = tmp_path / "golden.json"
    _interop.save_outputs(path, outputs)
    results = comparator.RunResults.load(str(path))
    assert [name for name, _ in results] == ["reference", "eager"]
    assert np.array_equal(results["reference"][0]["output"], outputs["reference"][0]["output"])
    loaded = _interop.load_outputs(path)
    assert loaded.keys() == outputs.keys()
    assert np.array_equal(loaded["eager"][0]["output"], np.ones(2))


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BiRNNExportError, match=r"save_inputs: .*cases\.pt must end in \.json"):
        _interop.save_feeds(tmp_path / "cases.pt", FEEDS)
    assert not (tmp_path / "cases.pt").exists()
    broken = tmp_path / "broken.json"
    broken.write_text('[{"ids": {"array": "not base64!", "polygraphy_class": "ndarray"}}]')
    with pytest.raises(BiRNNExportError, match=r"load_inputs: cannot read .*broken\.json"):
        _interop.load_feeds(broken)
    broken.write_text('{"ids": [1, 2]}')
    with pytest.raises(BiRNNExportError, match=r"holds no list of \{name: array\} feeds"):
        _interop.load_feeds(broken)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(BiRNNExportError, match=r"empty\.json is empty \(0 bytes\)"):
        _interop.load_feeds(tmp_path / "empty.json")
    np.savez(tmp_path / "flat.npz", ids=np.ones((2, 3)), lengths=np.array([3, 1]))
    (feed,) = _interop.load_feeds(tmp_path / "flat.npz")  # one case, by the inputs' names
    assert sorted(feed) == ["ids", "lengths"] and feed["lengths"].tolist() == [3, 1]
    with pytest.raises(BiRNNExportError, match="load_outputs: cannot read"):
        _interop.load_outputs(broken)
    with pytest.raises(BiRNNExportError, match=r"must end in \.json"):
        _interop.save_outputs(tmp_path / "golden.npz", {"reference": []})
