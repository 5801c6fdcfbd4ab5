"""What a user types, read into the keyword arguments the library takes.

The command line is click declarations over these functions; a Python user who reads the same
forms from a config file or a job spec calls them too. Each raises
:class:`~birnn_export.errors.UsageError` in one line that names the option and shows a valid
form. Nothing here imports torch or onnx, so ``birnn-export --help`` stays fast.

Example:
    >>> parse_sizes("1,8,32", "--batch-sizes")
    (1, 8, 32)
    >>> parse_named_ranges(["width=32,256,1024"])
    {'width': (32, 256, 1024)}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from birnn_export._files import check_output_path, refuse_same_files
from birnn_export.errors import BiRNNExportError, UsageError

if TYPE_CHECKING:
    from birnn_export.compare import ToleranceOverride


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``: positive integers, duplicates dropped, order kept."""
    try:
        values = tuple(int(p.strip()) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UsageError(
            f"{option}: expected comma-separated positive integers such as '1,8,32', got {text!r}"
        )
    return tuple(dict.fromkeys(values))


def parse_range(text: str, option: str) -> tuple[int, int, int]:
    """``"1,64,256"`` -> ``(1, 64, 256)`` with ``1 <= min <= opt <= max``."""
    from birnn_export.spec import check_range

    try:
        return check_range(option, text.split(","))
    except BiRNNExportError as exc:
        if "largest size" in str(exc):
            raise UsageError(str(exc)) from None
        raise UsageError(
            f"{option}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX such as '1,64,256', "
            f"got {text[:100]!r}"
        ) from None


def parse_names(text: str, option: str) -> tuple[str, ...]:
    """``"log_probs,lengths"`` -> ``("log_probs", "lengths")``: non-empty, each once."""
    names = tuple(p.strip() for p in text.split(","))
    bad = next((n for n in names if not re.fullmatch(r"[A-Za-z_][\w.:/-]*", n)), None)
    if bad is not None:
        raise UsageError(
            f"{option}: expected comma-separated names such as 'log_probs,lengths' (letters, "
            f"digits, '_', '.', ':', '/', '-'; not starting with a digit), got {bad!r}"
        )
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise UsageError(f"{option}: {repeated!r} is given twice; each output needs its own name")
    return names


def parse_scores(text: str) -> tuple[str, ...]:
    """``--scores``: ``"logits,tags"`` -> ``("logits", "tags")``, ``"none"`` -> ``()``."""
    return () if text.strip().lower() == "none" else parse_names(text, "--scores")


def parse_ctc(text: str) -> dict[str, int]:
    """``--ctc``: ``"log_probs"`` -> ``{"log_probs": 0}``, ``"log_probs=27"`` ->
    ``{"log_probs": 27}`` (the blank class, 0 unless given)."""
    parts = [part.partition("=") for part in text.split(",")]
    bad = next(
        (p for p in parts if p[1] and not (p[0].strip() and re.fullmatch(r"\s*\d{1,9}\s*", p[2]))),
        None,
    )
    if bad is not None:
        raise UsageError(
            "--ctc: expected NAME or NAME=BLANK (the blank class, an int >= 0) such as "
            f"'log_probs=0', got {''.join(bad).strip()[:100]!r}"
        )
    names = parse_names(",".join(name for name, _, _ in parts), "--ctc")
    return {name: int(blank or 0) for name, (_, _, blank) in zip(names, parts, strict=True)}


def parse_named_ranges(values: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """``["width=32,256,1024"]`` -> ``{"width": (32, 256, 1024)}`` (``--range``)."""
    out = {}
    for value in values:
        name, sep, numbers = value.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise UsageError(
                f"--range: expected DIM=MIN,OPT,MAX such as 'width=32,256,1024', got {value!r}"
            )
        out[name] = parse_range(numbers, f"--range {name}")
    return out


def parse_dims(values: Sequence[str]) -> dict[str, int]:
    """``["hypothesis_seq=32"]`` -> ``{"hypothesis_seq": 32}`` (``--dim``)."""
    out = {}
    for value in values:
        name, sep, number = value.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not number.strip().isdigit():
            raise UsageError(f"--dim: expected DIM=SIZE such as 'hypothesis_seq=32', got {value!r}")
        out[name] = int(number)
    return out


def parse_engines(values: Sequence[str]) -> tuple[str, ...]:
    """``["torch,ort-cpu", "trt"]`` -> ``("torch", "ort-cpu", "trt")``, each a known engine."""
    from birnn_export.runners import ENGINES

    names = tuple(dict.fromkeys(p.strip() for v in values for p in v.split(",") if p.strip()))
    unknown = [n for n in names if n not in ENGINES]
    if not names or unknown:
        raise UsageError(
            f"--engines: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
            f"expected a comma-separated list from {','.join(ENGINES)}"
        )
    return names


def parse_tolerance(values: Sequence[str], option: str) -> ToleranceOverride:
    """``1e-4`` (all outputs) and ``NAME:1e-3`` (one output), any number of them.

    Example:
        >>> parse_tolerance(["1e-4", "h_n:0.5"], "--atol")
        {'*': 0.0001, 'h_n': 0.5}
    """
    if not values:
        return None
    parsed: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition(":")
        key = name if sep else "*"
        try:
            parsed[key] = float(number)
        except ValueError:
            raise UsageError(
                f"{option}: expected a number or NAME:NUMBER (e.g. 1e-4 or output:1e-3), "
                f"got {value!r}"
            ) from None
        if not parsed[key] >= 0 or parsed[key] == float("inf"):
            raise UsageError(f"{option}: expected a finite number >= 0, got {value!r}")
    return parsed["*"] if list(parsed) == ["*"] else parsed


def parse_model_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--model-kwargs`` as a dict: a JSON object, or None when not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--model-kwargs: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except RecursionError:
        raise UsageError("--model-kwargs: nested too deeply to read; pass a flat object") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise UsageError(f"--model-kwargs: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--model-kwargs: expected a JSON object, got {type(value).__name__}")
    return value


def check_files(
    reads: dict[str, str | os.PathLike[str] | None],
    writes: dict[str, str | os.PathLike[str] | None],
    *,
    suffixes: dict[str, str] | None = None,
) -> None:
    """Before any work: no two of the files in ``reads`` and ``writes`` (option -> path; None
    where the option was not given) are the same (an output over an input, or two outputs over
    each other), and every output can be written as a file, ending in its ``suffixes`` entry
    where it has one, and every name is text ONNX Runtime can open (a Latin-1 name such as
    ``caf\xe9.pt`` was a TypeError traceback from its session)."""
    for option, path in {**reads, **writes}.items():
        try:
            os.fsdecode(path or "").encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{option}: {os.fsdecode(path or '')!r} is a name that is not UTF-8 text, which "
                "ONNX Runtime cannot open; rename the file (or its folder)"
            ) from None
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UsageError(
            "the working directory no longer exists; cd to one that does and run again"
        ) from None
    refuse_same_files(**reads, **writes)
    for option, path in writes.items():
        check_output_path(option, path, suffix=(suffixes or {}).get(option))
