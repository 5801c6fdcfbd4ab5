"""Inputs and outputs in files other tools read: Polygraphy's JSON, and numpy's ``.npz``.

Polygraphy (``polygraphy run --load-inputs F --load-outputs G``) stores a list of feed dicts,
and outputs as ``RunResults``, in JSON whose arrays are ``{"array": base64 of np.save bytes,
"polygraphy_class": "ndarray"}``. Written here without Polygraphy installed; the tests read the
files back with Polygraphy itself.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export._files import atomic_path
from birnn_export.errors import BiRNNExportError

Feed = dict[str, np.ndarray]
#: Suffixes the input and output files may have.
FORMATS = (".json", ".npz")


def check_format(option: str, path: str | os.PathLike[str]) -> str:
    """The file's format from its suffix (``".json"`` or ``".npz"``), else a one-line error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise BiRNNExportError(
            f"{option}: {path} must end in .json (Polygraphy's format) or .npz, got "
            f"{suffix or 'no suffix'}"
        )
    return suffix


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {
            "array": base64.b64encode(buffer.getvalue()).decode(),
            "polygraphy_class": "ndarray",
        }
    raise TypeError(type(value).__name__)


def _decode(obj: dict[str, Any]) -> Any:
    kind = obj.get("polygraphy_class")
    if kind == "ndarray":
        return np.load(io.BytesIO(base64.b64decode(obj["array"])), allow_pickle=False)
    if kind == "LazyArray":
        return obj["values"]
    return obj


def save_feeds(
    path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    cases: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Write feed dicts as Polygraphy JSON (``.json``) or ``.npz`` (keys ``case<i>/<name>``, and
    ``cases``: a JSON description of each case), atomically."""
    if check_format("save_inputs", path) == ".json":
        text = json.dumps([dict(feed) for feed in feeds], default=_encode, indent=1)
        with atomic_path(path) as temp:
            temp.write_text(text)
    else:
        arrays = {f"case{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()}
        if cases is not None:
            arrays["cases"] = np.array(json.dumps(list(cases)))
        with atomic_path(path) as temp, open(temp, "wb") as handle:
            np.savez(handle, **arrays)
    return str(path)


def load_feeds(path: str | os.PathLike[str]) -> list[Feed]:
    """Feed dicts from Polygraphy JSON or an ``.npz`` written by :func:`save_feeds` (or by
    ``verify --save-inputs``: ``case0/NAME`` keys), or one case's arrays under the inputs'
    names (``np.savez(f, feats=..., lengths=...)``: users46 F2)."""
    suffix = check_format("load_inputs", path)
    if Path(path).is_file() and Path(path).stat().st_size == 0:  # an old verify left one (users48)
        raise BiRNNExportError(f"load_inputs: {path} is empty (0 bytes): save the inputs again")
    try:
        if suffix == ".json":
            data = json.loads(Path(path).read_text(), object_hook=_decode)
            feeds = data if isinstance(data, list) else None
        else:
            with np.load(path, allow_pickle=False) as archive:
                grouped: dict[int, Feed] = {}
                for key in archive.files:
                    case, _, name = key.partition("/")
                    if case.startswith("case") and case[4:].isdigit() and name:
                        grouped.setdefault(int(case[4:]), {})[name] = archive[key]
                feeds = [grouped[i] for i in sorted(grouped)]
                if not grouped and archive.files:  # one case, keyed by the inputs' names
                    feeds = [{key: archive[key] for key in archive.files}]
    except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError) as exc:
        # MemoryError: an array's header declaring far more than memory holds (10**12 rows)
        raise BiRNNExportError(f"load_inputs: cannot read {path} ({exc})") from None
    if not feeds or not all(
        isinstance(f, dict) and all(isinstance(v, np.ndarray) for v in f.values()) for f in feeds
    ):
        raise BiRNNExportError(
            f"load_inputs: {path} holds no list of {{name: array}} feeds (Polygraphy's JSON; "
            "or an .npz of one case's arrays under the inputs' names, or of 'case0/NAME' keys "
            "as --save-inputs writes)"
        )
    return feeds


def load_cases(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """What :func:`save_feeds` wrote of each case in an ``.npz`` (its ``cases`` entry: batch,
    length, lengths mode, noise past the lengths...), or nothing where it holds none (JSON
    feeds, another tool's ``.npz``, an entry that is not such a list)."""
    if check_format("load_inputs", path) != ".npz":
        return []
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "cases" not in archive.files:
                return []
            cases = json.loads(str(archive["cases"]))
    except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError):
        return []  # load_feeds says what is wrong with the file itself
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        return []
    return cases


def check_outputs_format(path: str | os.PathLike[str]) -> None:
    """Outputs are saved as Polygraphy's ``RunResults`` JSON only."""
    if check_format("save_outputs", path) != ".json":
        raise BiRNNExportError(f"save_outputs: {path} must end in .json (Polygraphy's RunResults)")


def save_outputs(path: str | os.PathLike[str], runs: Mapping[str, Sequence[Feed]]) -> str:
    """Write ``{runner name: [outputs per case]}`` as Polygraphy ``RunResults`` JSON."""
    check_outputs_format(path)
    results = [
        [
            name,
            [
                {
                    "outputs": {
                        k: {"values": v, "polygraphy_class": "LazyArray"} for k, v in out.items()
                    },
                    "runtime": None,
                    "runner_name": name,
                    "polygraphy_class": "IterationResult",
                }
                for out in outputs
            ],
        ]
        for name, outputs in runs.items()
    ]
    text = json.dumps({"lst": results, "polygraphy_class": "RunResults"}, default=_encode)
    with atomic_path(path) as temp:
        temp.write_text(text)
    return str(path)


def load_outputs(path: str | os.PathLike[str]) -> dict[str, list[Feed]]:
    """``{runner name: [outputs per case]}`` from Polygraphy ``RunResults`` JSON."""
    if check_format("load_outputs", path) != ".json":
        raise BiRNNExportError(f"load_outputs: {path} must be Polygraphy RunResults JSON")
    try:
        data = json.loads(Path(path).read_text(), object_hook=_decode)
        runs = {
            str(name): [dict(iteration["outputs"]) for iteration in iterations]
            for name, iterations in data["lst"]
        }
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BiRNNExportError(f"load_outputs: cannot read {path} ({exc})") from None
    for outputs in runs.values():
        for out in outputs:
            if not all(isinstance(v, np.ndarray) for v in out.values()):
                raise BiRNNExportError(f"load_outputs: {path} holds outputs that are not arrays")
    return runs
