"""TensorRT build plans, without TensorRT or a GPU: profiles, the engine cache, precision.

* :func:`derive_profile` turns a graph's :class:`~birnn_export.spec.GraphSpec` into one
  optimisation profile (min / opt / max shape of every dynamic input); :func:`generic_profile`
  guesses one for a graph without that spec; :func:`sweep_profile` widens the declared ranges
  to cover a verification sweep;
* :func:`cache_key` names a serialized engine after everything that makes it valid (the ONNX
  file's sha256, library and version, GPU, profile, precision and build options);
  :func:`cache_dir` and :func:`timing_cache_name` say where engines and timing caches live;
* :func:`build_plan` decides strong typing and precision flags for a build.

:mod:`birnn_export.trt` builds and runs engines with these.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birnn_export.errors import BiRNNExportError, EngineUnavailableError
from birnn_export.spec import GraphSpec, check_range, covering_range

#: Environment variable that overrides :data:`DEFAULT_CACHE_DIR`.
CACHE_ENV = "BIRNN_EXPORT_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/birnn-export/trt")

#: How to install each package.
INSTALL_HINTS = {
    "tensorrt": "pip install tensorrt (birnn-export's gpu extra)",
    "tensorrt_rtx": "pip install tensorrt-rtx (birnn-export's tensorrt-rtx extra)",
}
#: Kept for callers of the data-centre library's hint.
INSTALL_HINT = INSTALL_HINTS["tensorrt"]

if TYPE_CHECKING:
    from birnn_export._sweep import Case

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where engines and timing caches live: ``path``, else ``$BIRNN_EXPORT_CACHE``, else
    ``~/.cache/birnn-export/trt``."""
    chosen = path if path is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def derive_profile(
    spec: GraphSpec,
    *,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
) -> Profile:
    """One optimisation profile for every input with a symbolic dim.

    ``batch`` / ``seq`` are (min, opt, max) of the batch and time dims; ``None`` takes the ranges
    the graph declares (``spec.batch_range`` / ``spec.seq_range``, set at export); other named
    dims take theirs (``spec.dim_ranges``). Static dims keep their size in all three shapes;
    inputs without symbolic dims are left out (TensorRT needs no profile entry for them).

    Example:
        >>> from birnn_export.spec import TensorSpec
        >>> spec = GraphSpec(
        ...     inputs=(TensorSpec("x", "float32", ("batch", "seq", 10), "features"),
        ...             TensorSpec("lengths", "int64", ("batch",), "lengths")),
        ...     outputs=(), example_batch=2, example_seq=5)
        >>> derive_profile(spec)["x"]
        ((1, 1, 10), (8, 64, 10), (32, 256, 10))
    """
    ranges = dict(spec.ranges())
    ranges[spec.batch_dim] = check_range("batch", spec.batch_range if batch is None else batch)
    ranges[spec.time_dim] = check_range("seq", spec.seq_range if seq is None else seq)
    profile: Profile = {}
    for tensor in spec.inputs:
        if all(isinstance(dim, int) for dim in tensor.dims):
            continue
        shapes = []
        for i in range(3):
            shape = []
            for dim in tensor.dims:
                if isinstance(dim, str):
                    if dim not in ranges:
                        raise BiRNNExportError(
                            f"input {tensor.name!r}: symbolic dim {dim!r} has no declared range "
                            f"in the graph spec ({', '.join(ranges)} do); re-export the model"
                        )
                    shape.append(ranges[dim][i])
                else:
                    shape.append(int(dim))
            shapes.append(tuple(shape))
        profile[tensor.name] = (shapes[0], shapes[1], shapes[2])
    return profile


_BATCH_NAMES = re.compile(r"(?i)^(b|n|bs|batch.*|.*_batch|.*batch_size.*)$")


def generic_profile(
    inputs: Mapping[str, Sequence[int | str | None]],
    *,
    batch: Sequence[int] | None = None,
    seq: Sequence[int] | None = None,
) -> Profile:
    """A profile for a graph without birnn-export's spec (defaults 1,8,32 and 1,64,256).

    ``inputs`` maps input names to their ONNX dims: an int (static), a name (``dim_param``)
    or ``None`` (dynamic, unnamed). A named dim that reads as a batch (``batch``, ``b``,
    ``N``, ...) takes the ``batch`` range and every other name the ``seq`` range, the same
    for every input that shares the name. Unnamed dims cannot be told apart (a time-major
    ``[seq, batch, ...]`` input beside a ``[batch]`` one must agree on the batch): they all
    take one range spanning both, min of the mins, batch's opt, max of the maxes.

    Example:
        >>> generic_profile({"x": ("seq", "batch", 40), "lens": ("batch",), "w": (3, 3)})["x"]
        ((1, 1, 40), (64, 8, 40), (256, 32, 40))
        >>> generic_profile({"x": (None, None, 2)})["x"]
        ((1, 1, 2), (8, 8, 2), (256, 256, 2))
    """
    from birnn_export.spec import DEFAULT_BATCH_RANGE, DEFAULT_SEQ_RANGE

    b = check_range("batch", DEFAULT_BATCH_RANGE if batch is None else batch)
    s = check_range("seq", DEFAULT_SEQ_RANGE if seq is None else seq)

    unnamed = (min(b[0], s[0]), b[1], max(b[2], s[2]))

    def sizes(dim: str | None) -> tuple[int, int, int]:
        if dim is None:
            return unnamed
        return b if _BATCH_NAMES.match(dim) else s

    profile: Profile = {}
    for name, dims in inputs.items():
        if all(isinstance(d, int) for d in dims):
            continue
        triple = [tuple(d if isinstance(d, int) else sizes(d)[i] for d in dims) for i in range(3)]
        profile[name] = (triple[0], triple[1], triple[2])
    return profile


def cache_key(
    onnx_sha256: str,
    gpu_name: str,
    trt_version: str,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    dtype: str,
    *,
    library: str = "tensorrt",
    options: Mapping[str, Any] | None = None,
) -> str:
    """A file-name-safe key that changes with every ingredient of a serialized engine.

    ``library`` is the package (``"tensorrt"`` or ``"tensorrt_rtx"``); ``options`` holds build
    options that change the engine (e.g. ``{"tf32": False}``).
    """
    payload = {
        "onnx_sha256": onnx_sha256,
        "gpu": gpu_name,
        "library": library,
        "tensorrt": trt_version,
        "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())},
        "dtype": dtype,
        "options": dict(sorted((options or {}).items())),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    short = "rtx" if library == "tensorrt_rtx" else "trt"
    return f"{_slug(gpu_name)}-{short}{_slug(trt_version)}-{digest[:32]}"


def timing_cache_name(gpu_name: str, trt_version: str) -> str:
    """Timing caches hold per-layer tactic timings: valid for one GPU and TensorRT version,
    and shared by every model built there (so later builds are faster)."""
    return f"timing-{_slug(gpu_name)}-trt{_slug(trt_version)}.cache"


@dataclass(frozen=True)
class BuildPlan:
    """How to create the network and builder config for one TensorRT version."""

    strongly_typed: bool
    fp16_flag: bool


def build_plan(
    trt_version: str,
    dtype: str,
    *,
    has_strongly_typed: bool = True,
    library: str = "tensorrt",
) -> BuildPlan:
    """Strongly typed whenever TensorRT has the ``STRONGLY_TYPED`` network flag (every 10.x and
    11.x does: it arrived in 9.x, and 11.x keeps it, ignored, for compatibility, since there
    every network is strongly typed; TensorRT-RTX networks are always strongly typed). Precision
    then comes from the graph, so fp16 needs an fp16 ONNX graph, and TensorRT refuses precision
    flags (ONNX Runtime's TensorRT EP likewise sets one or the other, never both).
    ``BuilderFlag.FP16`` is only the fallback for a TensorRT build that lacks the flag.
    """
    if library == "tensorrt_rtx":
        return BuildPlan(strongly_typed=True, fp16_flag=False)
    major = major_version(trt_version)
    if major < 10:
        raise EngineUnavailableError(
            f"trt: TensorRT {trt_version} is too old: need 10 or newer; {INSTALL_HINT}"
        )
    strongly_typed = has_strongly_typed or major >= 11
    return BuildPlan(
        strongly_typed=strongly_typed, fp16_flag=not strongly_typed and dtype == "float16"
    )


def major_version(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "unknown"


def sweep_profile(
    cases: Sequence[Case],
    *,
    batch_invariance: bool = True,
    declared: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(min, opt, max) batch sizes and sequence lengths for the TensorRT engines' optimisation
    profile: the graph's ``declared`` ranges (so the engine verified is the one that would be
    served), widened to cover every run of the sweep. Without ``declared``: the sweep's bounds,
    with ``opt`` the largest shape.

    The batch-invariance runs feed each row alone (batch 1, T = its own length, down to 1), so
    with them the minimum batch and length are 1.

    Example:
        >>> from birnn_export._sweep import Case
        >>> sweep_profile([Case(64, 300, "ragged", 1.0, 0), Case(4, 8, "ragged", 1.0, 1)])
        ((1, 64, 64), (1, 300, 300))
        >>> sweep_profile([Case(3, 9, "ragged", 1.0, 0)], declared=((1, 8, 32), (1, 64, 256)))
        ((1, 8, 32), (1, 64, 256))
    """
    batches = [c.batch for c in cases] + ([1] if batch_invariance else [])
    seqs = [c.seq for c in cases] + ([1] if batch_invariance else [])
    if declared is not None:
        return covering_range(declared[0], batches), covering_range(declared[1], seqs)
    return (min(batches), max(batches), max(batches)), (min(seqs), max(seqs), max(seqs))
