"""What an exported graph takes and returns, recorded in the ONNX file itself.

:func:`birnn_export.export_onnx` writes a :class:`GraphSpec` into the model's ``metadata_props``
(key ``birnn_export.spec``, JSON), so verification and benchmarks can build valid inputs from the
ONNX file alone: each input's dtype, symbolic dims and valid value range (token ids within the
vocabulary, lengths in ``[1, seq]``), which outputs run along time, and the padding value.

Example:
    >>> spec = GraphSpec.from_onnx("model.onnx")  # doctest: +SKIP
    >>> feed = make_feed(spec, batch=3, seq=40, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from birnn_export.errors import BiRNNExportError, ModelLoadError

METADATA_KEY = "birnn_export.spec"
BATCH = "batch"
SEQ = "seq"
#: Default serving ranges (min, opt, max) of the symbolic dims, declared in every spec.
DEFAULT_BATCH_RANGE = (1, 8, 32)
DEFAULT_SEQ_RANGE = (1, 64, 256)

Role = Literal["features", "tokens", "lengths", "sequence", "state", "other"]
LengthsMode = Literal["ragged", "equal", "full"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    ``dims`` holds ints for static sizes and ``"batch"`` / ``"seq"`` for the symbolic ones.
    ``low`` / ``high`` bound valid values (inclusive); ``high`` may be ``"seq"`` for lengths.
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    role: Role
    low: float | None = None
    high: float | str | None = None

    @property
    def time_axis(self) -> int | None:
        return self.dims.index(SEQ) if SEQ in self.dims else None

    @property
    def batch_axis(self) -> int | None:
        return self.dims.index(BATCH) if BATCH in self.dims else None

    def shape(self, batch: int, seq: int) -> tuple[int, ...]:
        sizes = {BATCH: batch, SEQ: seq}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)


@dataclass(frozen=True)
class GraphSpec:
    """The contract of an exported graph; see the module docstring."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example_batch: int
    example_seq: int
    padding_value: float = 0.0
    layout: str = "split"
    dtype: str = "float32"
    opset: int = 18
    config: dict[str, Any] | None = None
    tool_version: str = ""
    source_sha256: str | None = None
    recurrent_layers: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    #: Declared serving ranges (min, opt, max) of ``batch`` and ``seq``: the TensorRT
    #: optimisation profile's default, and the largest length verification runs.
    batch_range: tuple[int, int, int] = DEFAULT_BATCH_RANGE
    seq_range: tuple[int, int, int] = DEFAULT_SEQ_RANGE

    @property
    def lengths_input(self) -> TensorSpec | None:
        return next((t for t in self.inputs if t.role == "lengths"), None)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GraphSpec:
        data = json.loads(text)
        for key in ("inputs", "outputs"):
            data[key] = tuple(TensorSpec(**{**t, "dims": tuple(t["dims"])}) for t in data[key])
        data["recurrent_layers"] = tuple(data.get("recurrent_layers", ()))
        # Files written before the ranges were declared take the defaults.
        for key in ("batch_range", "seq_range"):
            if key in data:
                data[key] = check_range(key, data[key])
        return cls(**data)

    @classmethod
    def from_onnx(cls, model: Any) -> GraphSpec:
        """Read the spec from an ONNX file path or a loaded ``onnx.ModelProto``."""
        model = load_onnx(model)
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise BiRNNExportError(
                f"the ONNX file has no '{METADATA_KEY}' metadata: it was not written by "
                "birnn-export; re-export it with 'birnn-export MODEL.pt'"
            )
        return cls.from_json(props[METADATA_KEY])


def check_range(name: str, values: Any) -> tuple[int, int, int]:
    """``values`` as a (min, opt, max) triple with ``1 <= min <= opt <= max``.

    Raises:
        BiRNNExportError: naming ``name`` and what a valid range looks like.

    Example:
        >>> check_range("seq_range", [1, 64, 256])
        (1, 64, 256)
    """
    try:
        triple = tuple(_whole(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or not 1 <= triple[0] <= triple[1] <= triple[2]:
        raise BiRNNExportError(
            f"{name}: expected (min, opt, max) with 1 <= min <= opt <= max, got {values!r}"
        )
    return triple  # type: ignore[return-value]


def _whole(value: Any) -> int:
    """An int or a string of digits as an int; anything else (floats, bools) is refused."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise TypeError(value)


def covering_range(declared: tuple[int, int, int], sizes: Any) -> tuple[int, int, int]:
    """``declared`` (min, opt, max) widened to cover ``sizes``; ``opt`` stays the declared one
    (kept within the widened bounds).

    Example:
        >>> covering_range((1, 64, 256), [16, 300])
        (1, 64, 300)
    """
    sizes = [int(s) for s in sizes]
    low = min([declared[0], *sizes])
    high = max([declared[2], *sizes])
    return low, min(max(declared[1], low), high), high


#: Engines that run on a GPU (the others run on the host CPU).
GPU_ENGINES = frozenset({"ort-cuda", "ort-trt", "trt", "trt-rtx"})


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|`` element-wise, and, where set,
    ``||actual - expected||_2 / ||expected||_2 < rel_l2``."""

    atol: float
    rtol: float
    rel_l2: float | None = None


def default_tolerance(dtype: str, engine: str, *, device: str = "cpu") -> Tolerance:
    """The named defaults of NOTES section 6, by output dtype and engine.

    fp32 (and fp64) on CPU: atol 1e-5, rtol 1e-4; fp32 on a GPU (a GPU engine, or eager torch
    with ``device="cuda"``; TF32 off): 1e-4 / 1e-3; fp16 anywhere: 1e-2 / 1e-2 plus a relative
    L2 error below 1e-3.
    """
    if dtype == "float16":
        return Tolerance(1e-2, 1e-2, 1e-3)
    if engine in GPU_ENGINES or device != "cpu":
        return Tolerance(1e-4, 1e-3)
    return Tolerance(1e-5, 1e-4)


def load_onnx(model: Any) -> Any:
    """An ``onnx.ModelProto`` from a path (weights in external data are not loaded), or the
    proto itself.

    Raises:
        ModelLoadError: a one-line reason when the path is missing, a directory or not ONNX.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; expected an ONNX file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        kind = type(exc).__name__
        raise ModelLoadError(f"{path}: not an ONNX model ({kind}); expected a .onnx file") from None
    if not proto.graph.node and not proto.graph.input and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph); expected a .onnx file")
    return proto


def make_lengths(
    batch: int, seq: int, rng: np.random.Generator, mode: LengthsMode = "ragged"
) -> np.ndarray:
    """Lengths coupled to ``seq``: all in ``[1, seq]``.

    ``"ragged"``: unsorted, with at least one full-length row and (for batch >= 2) one row of
    length 1; ``"equal"``: every row the same length drawn from ``[1, seq]``; ``"full"``: all
    ``seq``.
    """
    if mode == "full":
        return np.full(batch, seq, dtype=np.int64)
    if mode == "equal":
        return np.full(batch, int(rng.integers(1, seq + 1)), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch).astype(np.int64)
    lengths[0] = seq
    if batch >= 2:
        lengths[1] = 1
    return rng.permutation(lengths)


def make_feed(
    spec: GraphSpec,
    batch: int,
    seq: int,
    *,
    seed: int = 0,
    lengths: LengthsMode = "ragged",
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Valid random inputs for ``spec`` at one shape, padded as a real batch is.

    Float features are N(0, 1) times ``scale``; token ids are uniform within their range;
    lengths follow ``lengths`` (see :func:`make_lengths`). Where the graph takes lengths,
    positions past each row's length hold padding (0, or the lowest token id), as in a padded
    batch: layers before the recurrent ones (a convolution, say) see them.
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        shape = tensor.shape(batch, seq)
        if tensor.role == "lengths":
            feed[tensor.name] = make_lengths(batch, seq, rng, lengths).astype(tensor.dtype)
        elif tensor.role == "tokens":
            low = int(tensor.low or 0)
            high = int(tensor.high) if tensor.high is not None else low
            feed[tensor.name] = rng.integers(low, high + 1, size=shape).astype(tensor.dtype)
        else:
            feed[tensor.name] = (rng.standard_normal(shape) * scale).astype(tensor.dtype)
    lengths_input = spec.lengths_input
    if lengths_input is not None:
        valid = np.arange(seq)[None, :] < feed[lengths_input.name][:, None]  # [batch, seq]
        for tensor in spec.inputs:
            if tensor.role in ("features", "tokens") and tensor.dims[:2] == (BATCH, SEQ):
                pad = int(tensor.low or 0) if tensor.role == "tokens" else 0
                data = feed[tensor.name]
                data[~valid] = pad
    return feed
