"""What an exported graph takes and returns, recorded in the ONNX file itself.

:func:`birnn_export.export_onnx` writes a :class:`GraphSpec` into the model's ``metadata_props``
(key ``birnn_export.spec``, JSON), so verification and benchmarks can build valid inputs from the
ONNX file alone: each input's dtype, symbolic dims and valid value range (token ids within the
vocabulary, lengths in ``[1, seq]``), which outputs run along time, and the padding value.

Example:
    >>> spec = GraphSpec.from_onnx("model.onnx")  # doctest: +SKIP
    >>> feed = make_feed(spec, batch=3, seq=40, seed=0)  # doctest: +SKIP

One cohesive module, over 600 lines: the graph's contract (tensors, dims, ranges) and the
inputs it defines (feeds, lengths), read back from every file with bounds.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
import keyword
import logging
import math
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from birnn_export._files import is_torch_file
from birnn_export.errors import BiRNNExportError, ModelLoadError

logger = logging.getLogger(__name__)

METADATA_KEY = "birnn_export.spec"
#: The quantization scheme recorded in an int8 graph's spec (:mod:`birnn_export.quantize`).
INT8 = "int8-dynamic"
#: The graph layouts the export writes (``--layout``; README, "Graph layouts").
LAYOUTS = ("split", "fused", "scan", "packed")
BATCH = "batch"
SEQ = "seq"
#: Default serving ranges (min, opt, max) of the symbolic dims, declared in every spec.
DEFAULT_BATCH_RANGE = (1, 8, 32)
DEFAULT_SEQ_RANGE = (1, 64, 256)
#: The default range of a dim nested in another's steps (a word's characters): most words are
#: short, and each step of every row holds one, so the time dim's range would feed 256 x 256.
DEFAULT_NESTED_RANGE = (1, 16, 64)

Role = Literal[
    "features", "tokens", "lengths", "mask", "padding_mask", "sequence", "state", "tags", "other"
]
#: Input roles that mark each row's valid steps: ``mask`` is 1 (True) at them, ``padding_mask``
#: is 1 past them (``key_padding_mask``'s sense).
MASK_ROLES = ("mask", "padding_mask")
#: ONNX element types by number, as the specs and reports name them.
ONNX_DTYPES = {
    1: "float32",
    10: "float16",
    11: "float64",
    7: "int64",
    6: "int32",
    2: "uint8",
    9: "bool",
}
LengthsMode = Literal["ragged", "equal", "full"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    ``dims`` holds ints for static sizes and names for the symbolic ones: the graph's batch and
    time dims (``"batch"`` / ``"seq"`` unless declared otherwise), other declared dims, and
    output dims derived from them (``"(width//4)"``, as the exporter names them). ``low`` /
    ``high`` bound valid values (inclusive); ``high`` may be a dim's name: the dim lengths
    measure (values up to its size), or the dim an index input's ids index (up to its size - 1).
    ``batch_at`` / ``time_at`` are the batch and time axes; unset, they are found by the names
    ``"batch"`` and ``"seq"`` (files written before inputs could be declared).
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    role: Role
    low: float | None = None
    high: float | str | None = None
    batch_at: int | None = None
    time_at: int | None = None
    #: An output's last axis holds class scores (a linear head's logits or log-probabilities),
    #: as read from the graph at export; ``None`` in files written before it was recorded.
    classes: bool | None = None
    #: The blank class of an output declared to hold CTC scores along time (export's
    #: ``--ctc``): its greedy decode is its task, what an int8 graph is judged by.
    ctc_blank: int | None = None

    @property
    def time_axis(self) -> int | None:
        if self.time_at is not None:
            return self.time_at
        return self.dims.index(SEQ) if SEQ in self.dims else None

    @property
    def batch_axis(self) -> int | None:
        if self.batch_at is not None:
            return self.batch_at
        return self.dims.index(BATCH) if BATCH in self.dims else None

    @property
    def within(self) -> str | None:
        """For the lengths or mask of a dim nested in another's steps (each word's characters:
        lengths ``[batch, OUTER]``, a length per row and OUTER step, or a mask ``[batch, OUTER,
        DIM]``), the dim OUTER; ``None`` for any other tensor."""
        if self.role == "lengths" and len(self.dims) == 2:
            return next(str(d) for i, d in enumerate(self.dims) if i != self.batch_axis)
        if _nested_mask(self.role, self.dims, self.batch_axis):
            return str(self.dims[1 - (self.batch_axis or 0)])
        return None

    @property
    def nests(self) -> str | None:
        """The nested dim (DIM) whose lengths or mask this is, where :attr:`within` is set."""
        if self.within is None:
            return None
        return str(self.high) if self.role == "lengths" else str(self.dims[-1])

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape at ``sizes`` (every named dim; derived dims are evaluated)."""
        return tuple(d if isinstance(d, int) else dim_size(d, sizes) for d in self.dims)


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
    #: Declared serving ranges (min, opt, max) of the batch and time dims: the TensorRT
    #: optimisation profile's default, and the largest length verification runs.
    batch_range: tuple[int, int, int] = DEFAULT_BATCH_RANGE
    seq_range: tuple[int, int, int] = DEFAULT_SEQ_RANGE
    #: Names of the batch dim and of the time dim (the one lengths measure and the sweep varies).
    batch_dim: str = BATCH
    time_dim: str = SEQ
    #: Other named input dims: their declared (min, opt, max) and the size they were traced at.
    dim_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    example_sizes: dict[str, int] = field(default_factory=dict)
    #: ``"int8-dynamic"`` for a graph quantized by :func:`birnn_export.quantize.quantize_int8`.
    quantization: str | None = None
    #: The token id that pads a batch, for graphs without a lengths input whose model masks by
    #: it (a CRF tagger's ``mask = ids != pad``): verification pads its ragged rows with it.
    #: Outputs with role ``"tags"`` (a CRF's Viterbi decode) hold -1 past each row's length.
    token_padding: int | None = None
    #: Where ``forward`` takes one container and reads the inputs from it (``batch["ids"]``):
    #: ``{"param": ..., "kind": "dict" | "attributes", "keys": [one per input, in order]}``.
    container: dict[str, Any] | None = None
    #: Sizes where the model may take another branch than the one traced (torch.export
    #: assumed it does not: :mod:`birnn_export._guards`): a few points ``{dim: size}`` of the
    #: dims an assumption reads (``{"seq": 100}``, ``{"batch": 8, "seq": 48}``); the default
    #: sweep verifies each. Written only where there are any.
    untraced: tuple[dict[str, int], ...] = ()
    #: What torch.export assumed of those sizes, as the export told it, and every size each
    #: assumption leaves out (:func:`birnn_export._guards.recorded`): ``verify`` on the file
    #: says it, and which failing cases ran there. Written only where there are any.
    assumed: tuple[dict[str, Any], ...] = ()

    @property
    def lengths_input(self) -> TensorSpec | None:
        """The lengths input of the time dim (of the first sequence, in a graph of several)."""
        source = self.length_source
        return source if source is not None and source.role == "lengths" else None

    @property
    def length_source(self) -> TensorSpec | None:
        """The input that tells each row's length along the time dim: its lengths input, else
        its mask."""
        return self.length_sources().get(self.time_dim)

    def length_sources(self) -> dict[str, TensorSpec]:
        """Each dim whose rows have lengths of their own, with the input that tells them (a
        lengths input, else a mask): the time dim first, then a second sequence's in a graph
        of two (a sentence pair)."""
        sources: dict[str, TensorSpec] = {}
        for tensor in sorted(self.inputs, key=lambda t: t.role != "lengths"):
            if tensor.within is not None:
                continue  # nested in another sequence: see nested_sources
            if tensor.role == "lengths":
                dim = tensor.high if isinstance(tensor.high, str) else self.time_dim
            elif tensor.role in MASK_ROLES:
                dim = self.time_dim if tensor.time_axis is not None else _other_dim(tensor)
            else:
                continue
            sources.setdefault(dim, tensor)
        return dict(sorted(sources.items(), key=lambda item: item[0] != self.time_dim))

    def nested_sources(self) -> dict[str, TensorSpec]:
        """Each dim nested in another sequence's steps (a word's characters) with the input that
        tells its lengths: lengths ``[batch, OUTER]`` (a length per row and OUTER step), else a
        mask ``[batch, OUTER, DIM]``."""
        sources: dict[str, TensorSpec] = {}
        for tensor in sorted(self.inputs, key=lambda t: t.role != "lengths"):
            if tensor.within is not None:
                sources.setdefault(str(tensor.nests), tensor)
        return sources

    def feed_lengths(
        self, feed: Mapping[str, np.ndarray], dim: str | None = None
    ) -> np.ndarray | None:
        """Each row's length in ``feed`` (int64 ``[batch]``) along the time dim (or ``dim``, a
        second sequence's): its lengths input, else the valid steps its mask counts; ``None``
        for a graph that takes neither."""
        source = self.length_source if dim is None else self.length_sources().get(dim)
        if source is None:
            return None
        value = np.asarray(feed[source.name])
        if source.role == "lengths":
            return value.astype(np.int64)
        valid = value.astype(bool) != (source.role == "padding_mask")
        b_axis, t_axis = source.batch_axis, source.time_axis
        if b_axis is None or t_axis is None:
            raise BiRNNExportError(f"{source.name}: a mask needs batch and time axes")
        valid = np.moveaxis(valid, (b_axis, t_axis), (0, 1))
        return valid.reshape(*valid.shape[:2], -1).all(axis=2).sum(axis=1).astype(np.int64)

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of every named input dim."""
        return {self.batch_dim: self.batch_range, self.time_dim: self.seq_range, **self.dim_ranges}

    def sizes(
        self, batch: int, seq: int, *, which: int = 1, dims: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Every named input dim's size: ``batch`` and ``seq`` for the batch and time dims, the
        others as ``dims`` gives them, else at their declared opt (``which=1``; 0 min, 2 max)."""
        sizes = {name: triple[which] for name, triple in self.dim_ranges.items()}
        return {**sizes, **(dims or {}), self.batch_dim: batch, self.time_dim: seq}

    def check_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        """``dims`` (sizes of named dims other than batch and time), each a dim of the graph
        within its declared range.

        Raises:
            BiRNNExportError: an unknown dim or a size outside its range, in one line.
        """
        for name, size in dims.items():
            if name not in self.dim_ranges:
                others = ", ".join(self.dim_ranges) or "none"
                raise BiRNNExportError(
                    f"dim {name!r}: not one of the graph's other named dims ({others}); the "
                    f"batch and time dims ({self.batch_dim}, {self.time_dim}) take their own "
                    "options"
                )
            low, _, high = self.dim_ranges[name]
            if not low <= size <= high:
                raise BiRNNExportError(
                    f"dim {name!r}: {size} is outside its declared range {low}..{high}"
                )
        return dict(dims)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for key in ("untraced", "assumed"):  # files without them stay readable by earlier versions
            if not data[key]:
                del data[key]
        for tensor in data["inputs"] + data["outputs"]:  # likewise
            if tensor["ctc_blank"] is None:
                del tensor["ctc_blank"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GraphSpec:
        """The spec from its JSON (files of every earlier version included).

        Raises:
            BiRNNExportError: the text is not a valid spec (the message says what is wrong).
        """
        try:
            data = json.loads(text)
            _check_spec_data(data)
            for key in ("inputs", "outputs"):
                data[key] = tuple(TensorSpec(**{**t, "dims": tuple(t["dims"])}) for t in data[key])
            data["recurrent_layers"] = tuple(data.get("recurrent_layers", ()))
            data["untraced"] = tuple(dict(p) for p in data.get("untraced", ()))
            data["assumed"] = tuple(dict(a) for a in data.get("assumed", ()))
            # Files written before the ranges were declared take the defaults.
            for key in ("batch_range", "seq_range"):
                if key in data:
                    data[key] = check_range(key, data[key])
            data["dim_ranges"] = {
                str(k): check_range(f"dim_ranges[{k}]", v)
                for k, v in data.get("dim_ranges", {}).items()
            }
            return cls(**data)
        except BiRNNExportError as exc:
            raise BiRNNExportError(
                f"unreadable {METADATA_KEY} metadata ({exc}); {_reexport(text)}"
            ) from None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise BiRNNExportError(
                f"unreadable {METADATA_KEY} metadata ({type(exc).__name__}: {exc}); "
                f"{_reexport(text)}"
            ) from None

    @classmethod
    def from_onnx(cls, model: Any) -> GraphSpec:
        """Read the spec from an ONNX file path or a loaded ``onnx.ModelProto``."""
        import onnx

        where = "" if isinstance(model, onnx.ModelProto) else f"{model}: "  # a path: named
        model = load_onnx(model)
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise BiRNNExportError(
                f"{where}the ONNX file has no '{METADATA_KEY}' metadata: {_no_spec(model)}"
            )
        return cls.from_json(props[METADATA_KEY])


def changed_after_export(proto: Any, spec: GraphSpec) -> list[str]:
    """Where a graph departs from its birnn-export metadata because another tool changed it
    after export (an output renamed or the graph cut by onnx-graphsurgeon, a float16
    conversion by onnxconverter-common, which keep the metadata): inputs and outputs the
    metadata names that the graph lacks, other dtypes, float16 recurrent weights in a float32
    graph."""
    from onnx import TensorProto, helper

    found = []
    for kind, values, tensors in (
        ("input", proto.graph.input, spec.inputs),
        ("output", proto.graph.output, spec.outputs),
    ):
        by_name = {v.name: v for v in values}
        for tensor in tensors:
            info = by_name.get(tensor.name)
            if info is None:
                have = ", ".join(repr(v.name) for v in values) or "none"
                found.append(
                    f"{kind} {tensor.name!r} of its metadata is not in it ({kind}s: {have})"
                )
                continue
            elem = info.type.tensor_type.elem_type
            got = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name if elem else tensor.dtype
            if got != tensor.dtype:
                found.append(f"{kind} {tensor.name!r} is {got}, {tensor.dtype} in its metadata")
    # a recurrent node's W and R, and what a loop's body reads (a Scan layer's R): float32 in
    # every float32 graph birnn-export writes (a model may keep another weight, an embedding
    # table, in float16 and cast it up)
    weights = {
        name
        for node in proto.graph.node
        if node.op_type in RECURRENT_OPS
        for name in node.input[1:3]
    }
    bodies = [a.g for n in proto.graph.node for a in n.attribute if a.type == a.GRAPH]
    while bodies:
        body = bodies.pop()
        weights |= {name for node in body.node for name in node.input}
        bodies += [a.g for n in body.node for a in n.attribute if a.type == a.GRAPH]
    halves = [
        i.name
        for i in proto.graph.initializer
        if i.name in weights and i.data_type == TensorProto.FLOAT16
    ]
    if spec.dtype == "float32" and spec.quantization is None and halves:
        found.append(
            f"its recurrent layers' weights are float16 ({len(halves)}), its metadata says float32"
        )
    # int8 is judged by looser criteria: the label must be the graph's (ONNX Runtime's dynamic
    # quantization writes DynamicQuantize*, *Integer and QAttention nodes, and an int8
    # embedding table is read through DequantizeLinear: quantize._QUANTIZED_OPS)
    quantized = holds_quantized_nodes(proto)
    if spec.quantization is not None and not quantized:
        found.append(f"its metadata says {spec.quantization}, but it holds no quantized node")
    if spec.quantization is None and quantized:  # quantize_dynamic keeps the metadata (users58)
        found.append(
            f"it holds ONNX Runtime's int8 nodes, its metadata says {spec.dtype} (quantized "
            "after export)"
        )
    return found


def holds_quantized_nodes(proto: Any) -> bool:
    """Whether ONNX Runtime's dynamic quantization wrote nodes into ``proto``:
    DynamicQuantize*, *Integer and QAttention nodes, and the DequantizeLinear an int8 embedding
    table is read through (:data:`birnn_export.quantize._QUANTIZED_OPS`)."""
    return any(
        n.op_type.startswith("DynamicQuantize")
        or n.op_type.endswith("Integer")
        or n.op_type in ("QAttention", "DequantizeLinear")
        for n in all_nodes(proto.graph)
    )


def refuse_changed(proto: Any, spec: GraphSpec, path: Any) -> None:
    """Raise where :func:`changed_after_export` finds the graph changed: it cannot be judged by
    its metadata (every case failed, and the diagnosis blamed the reversal or the gates).

    Raises:
        ModelLoadError: one line naming what changed, and what to do.
    """
    changes = changed_after_export(proto, spec)
    if changes:
        shown = changes[:3] + ([f"+{len(changes) - 3} more"] if len(changes) > 3 else [])
        raise ModelLoadError(
            f"{path}: the graph was changed after export ({'; '.join(shown)}), so its "
            "metadata no longer describes it: check the graph birnn-export wrote, or re-export "
            "with the options that give this one (--output-names, --dtype float16, --quantize "
            "int8)"
        )


def _no_spec(proto: Any) -> str:
    """Why a graph has no spec, and what to do: one birnn-export wrote lost its metadata to
    another tool (``polygraphy surgeon sanitize`` drops ``metadata_props`` and keeps the
    producer); another was never ours."""
    if proto.producer_name == "birnn-export":
        return (
            f"written by birnn-export {proto.producer_version}, its metadata was removed after "
            "(by a tool such as polygraphy surgeon sanitize): copy metadata_props back from the "
            "exported graph, or re-export it with 'birnn-export MODEL.pt'"
        )
    return "it was not written by birnn-export; re-export it with 'birnn-export MODEL.pt'"


#: The tag a CRF's decoded ``"tags"`` output holds past each row's length.
TAG_PADDING = -1

#: The largest size a declared dim may have (batch or length): 2**20. Larger serving ranges are
#: refused at export (a profile of 1e9 rows would fail at every engine later).
MAX_DIM = 1 << 20


def _nested_mask(role: str, dims: tuple[int | str, ...], batch_axis: int | None) -> bool:
    """Whether a mask over ``dims`` covers a dim nested in another's steps: ``[batch, OUTER,
    DIM]`` or ``[OUTER, batch, DIM]``, every dim named (each word's characters)."""
    named = all(isinstance(d, str) for d in dims)
    return role in MASK_ROLES and len(dims) == 3 and named and batch_axis in (0, 1)


def _other_dim(tensor: TensorSpec) -> str:
    """The named dim of a ``[batch, TIME]`` mask besides its batch dim."""
    return next(
        str(d) for i, d in enumerate(tensor.dims) if isinstance(d, str) and i != tensor.batch_axis
    )


def check_range(name: str, values: Any) -> tuple[int, int, int]:
    """``values`` as a (min, opt, max) triple with ``1 <= min <= opt <= max <= MAX_DIM``.

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
            f"{name}: expected (min, opt, max) with 1 <= min <= opt <= max, got {values!r}"[:300]
        )
    if triple[2] > MAX_DIM:
        raise BiRNNExportError(
            f"{name}: max {triple[2]} is over {MAX_DIM}, the largest size birnn-export declares"
        )
    return triple  # type: ignore[return-value]


_TENSOR_FIELDS = {
    "name": str,
    "dtype": str,
    "dims": list,
    "role": str,
    "low": (int, float, str, type(None)),
    "high": (int, float, str, type(None)),
    "batch_at": (int, type(None)),
    "time_at": (int, type(None)),
    "classes": (bool, type(None)),
    "ctc_blank": (int, type(None)),
}
_ROLES = get_args(Role)


def _reexport(text: str) -> str:
    """What to do with unreadable metadata: re-export, or read it with the version that wrote
    it where that is another one (a newer tool records more)."""
    from birnn_export._version import __version__

    try:
        written = json.loads(text).get("tool_version")
    except (ValueError, AttributeError, RecursionError):
        written = None
    if isinstance(written, str) and written and written != __version__:
        return (
            f"it was written by birnn-export {written[:40]}, this is {__version__}: read it "
            "with that version, or re-export the model"
        )
    return "re-export the model"


def _check_spec_data(data: Any) -> None:
    """Every field of a spec read from a file has the type and bounds it must have.

    Raises:
        BiRNNExportError: naming the first field that does not.
    """
    if not isinstance(data, dict):
        raise BiRNNExportError(f"expected a JSON object, got {type(data).__name__}")
    for key in ("inputs", "outputs"):
        tensors = data.get(key)
        if not isinstance(tensors, list) or len(tensors) > 1000:
            raise BiRNNExportError(f"{key}: expected a list of tensors")
        for index, tensor in enumerate(tensors):
            where = f"{key}[{index}]"
            if not isinstance(tensor, dict) or set(tensor) - set(_TENSOR_FIELDS):
                raise BiRNNExportError(
                    f"{where}: expected an object with {', '.join(_TENSOR_FIELDS)}"
                )
            for field_name, kind in _TENSOR_FIELDS.items():
                if field_name in tensor and not isinstance(tensor[field_name], kind):
                    raise BiRNNExportError(f"{where}.{field_name}: wrong type")
            if tensor.get("role") not in _ROLES:
                raise BiRNNExportError(f"{where}.role: expected one of {', '.join(_ROLES)}")
            dims = tensor.get("dims", [])
            if len(dims) > 32:
                raise BiRNNExportError(f"{where}.dims: more than 32 dims")
            for dim in dims:
                if isinstance(dim, bool) or not (
                    (isinstance(dim, int) and 0 <= dim <= MAX_DIM)
                    or (isinstance(dim, str) and 0 < len(dim) <= 200)
                ):
                    raise BiRNNExportError(
                        f"{where}.dims: {dim!r} is neither a size in 0..{MAX_DIM} nor a name"
                    )
            for axis in ("batch_at", "time_at"):
                at = tensor.get(axis)
                if isinstance(at, bool) or (at is not None and not 0 <= at < len(dims)):
                    raise BiRNNExportError(f"{where}.{axis}: {at} is not an axis of its dims")
            if tensor.get("batch_at") is not None and tensor.get("batch_at") == tensor.get(
                "time_at"
            ):
                raise BiRNNExportError(f"{where}: batch_at and time_at are the same axis")
        _check_tensor_values(data, key)
    for key in ("example_batch", "example_seq"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
            raise BiRNNExportError(f"{key}: expected a size in 1..{MAX_DIM}")
    _check_untraced(data)
    _check_assumed(data)
    padding = data.get("padding_value", 0.0)
    if isinstance(padding, bool) or not isinstance(padding, int | float):
        raise BiRNNExportError("padding_value: expected a number")
    if data.get("dtype", "float32") not in ("float32", "float16"):
        raise BiRNNExportError("dtype: expected float32 or float16")
    opset = data.get("opset", 18)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 1 <= opset <= 100:
        raise BiRNNExportError("opset: expected an opset number")
    if not isinstance(data.get("layout", "split"), str):
        raise BiRNNExportError("layout: expected a layout's name")
    pad = data.get("token_padding")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise BiRNNExportError("token_padding: expected a token id (an int >= 0) or nothing")
    if data.get("quantization") not in (None, "int8-dynamic"):
        raise BiRNNExportError("quantization: expected int8-dynamic or nothing")
    container = data.get("container")
    if container is not None and not (
        isinstance(container, dict)
        and container.get("kind") in ("dict", "attributes", "keywords")
        and isinstance(container.get("keys"), list)
        and len(container["keys"]) == len(data["inputs"])
        and all(is_parameter_name(k) for k in [container.get("param"), *container["keys"]])
    ):
        raise BiRNNExportError(
            "container: expected param, kind (dict, attributes or keywords), a key per input"
        )
    for key in ("dim_ranges", "example_sizes", "config"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise BiRNNExportError(f"{key}: expected an object")
    layers = data.get("recurrent_layers", [])
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise BiRNNExportError("recurrent_layers: expected a list of objects")
    for layer in layers:
        for key in ("hidden_size", "num_layers"):
            value = layer.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                raise BiRNNExportError(f"recurrent_layers: {key} {value!r} out of range")


#: A token id range's bounds stay within what int64 sampling takes.
_ID_LIMIT = 1 << 62


def _check_tensor_values(data: dict[str, Any], key: str) -> None:
    """The values of ``data[key]``'s tensors agree with each other and the graph: unique names,
    known dtypes, a value range of numbers (or, for lengths, the dim they measure), tags as
    integer ``[batch, time]``."""
    tensors = data[key]
    names = [t.get("name") for t in tensors]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise BiRNNExportError(f"{key}: two tensors are named {twice!r}")
    graph_dims = {d for t in data["inputs"] + data["outputs"] for d in t.get("dims", [])}
    batch_dim = data.get("batch_dim", BATCH)
    dtypes = (*INPUT_DTYPES, "unknown")  # unknown: an input of a type no engine here takes
    for index, tensor in enumerate(tensors):
        where = f"{key}[{index}]"
        if tensor.get("dtype") not in dtypes:
            raise BiRNNExportError(f"{where}.dtype: expected one of {', '.join(dtypes)}")
        bounds = [tensor.get("low"), tensor.get("high")]
        for name, value in zip(("low", "high"), bounds, strict=True):
            if isinstance(value, str):  # lengths measuring a dim, ids indexing one's steps
                role = tensor.get("role")
                counted = role == "lengths" or (name == "high" and role == "tokens")
                if not (counted and value != batch_dim and value in graph_dims):
                    raise BiRNNExportError(
                        f"{where}.{name}: {value!r} names no dim of the graph for these "
                        f"{'ids to index' if role == 'tokens' else 'lengths to measure'}"
                    )
            elif isinstance(value, bool) or (value is not None and not abs(value) <= _ID_LIMIT):
                raise BiRNNExportError(f"{where}.{name}: {value!r} is out of range")
        low, high = bounds
        if not isinstance(low, str | None) and not isinstance(high, str | None) and low > high:
            raise BiRNNExportError(f"{where}: low {low} is above high {high}")
        if tensor.get("role") == "tags" and (
            not tensor.get("dtype", "").startswith("int") or len(tensor.get("dims", [])) != 2
        ):
            raise BiRNNExportError(f"{where}: tags are integer ids over [batch, time]")
        blank = tensor.get("ctc_blank")
        if blank is not None and not ctc_shaped(tensor.get("dims", []), blank):
            raise BiRNNExportError(
                f"{where}.ctc_blank: {blank!r} is not a class of [batch, time, classes] scores"
            )


def ctc_shaped(dims: Sequence[int | str], blank: int) -> bool:
    """``dims`` are CTC scores' (three, a static class axis last) and ``blank`` one of their
    classes."""
    classes = dims[-1] if len(dims) == 3 else None
    return (
        not isinstance(blank, bool)
        and isinstance(classes, int)
        and not isinstance(classes, bool)
        and 0 <= blank < classes
    )


#: The most points a graph may record as untraced (the export records a few).
MAX_UNTRACED = 64


def _check_untraced(data: dict[str, Any]) -> None:
    """``untraced``: a list of points ``{dim: size}``, each dim the graph's, each size in its
    declared range (a file edited by hand must not make the sweep run a batch of 5000)."""
    untraced = data.get("untraced", [])
    if isinstance(untraced, list) and len(untraced) > MAX_UNTRACED:
        raise BiRNNExportError(
            f"untraced: {len(untraced)} points; the export records at most {MAX_UNTRACED}"
        )
    for point in untraced if isinstance(untraced, list) else [None]:
        if not isinstance(point, dict) or not point:
            raise BiRNNExportError("untraced: expected a list of {dim: size} objects")
        _check_point("untraced", point, data)


def _check_point(key: str, point: dict[Any, Any], data: dict[str, Any]) -> None:
    """Each dim of ``point`` is the graph's, and each size within its declared range."""
    ranges = _dim_ranges(data)
    for dim, size in point.items():
        bounds = ranges.get(dim)
        if bounds is None:
            raise BiRNNExportError(f"{key}: {dim!r} is not a dim of the graph")
        if isinstance(size, bool) or not isinstance(size, int):
            raise BiRNNExportError(f"{key}: {dim} {size!r} is not a size")
        if not (isinstance(bounds, list | tuple) and len(bounds) == 3):
            continue  # the ranges' own check says what is wrong with them
        if not bounds[0] <= size <= bounds[2]:
            raise BiRNNExportError(
                f"{key}: {dim} {size} is outside its declared range {bounds[0]}..{bounds[2]}"
            )


def _dim_ranges(data: dict[str, Any]) -> dict[Any, Any]:
    """Each named dim of a spec's data with its declared range, as the data has them."""
    return {
        data.get("batch_dim", BATCH): data.get("batch_range", DEFAULT_BATCH_RANGE),
        data.get("time_dim", SEQ): data.get("seq_range", DEFAULT_SEQ_RANGE),
        **(data.get("dim_ranges") or {}),
    }


#: The most runs of evenly spaced sizes (one dim) or points (several) a graph records of an
#: assumption (:func:`birnn_export._guards.recorded`); one that needs more is left out.
MAX_RECORDED = 64
#: The most sizes all of a graph's recorded assumptions may cover together: verify expands
#: them (review45 F1: 64 runs of a million sizes each took 11 GB).
MAX_RECORDED_SIZES = 2**21


def _check_assumed(data: dict[str, Any]) -> None:
    """``assumed``: a list of ``{"dims", "words", "note"}`` objects with runs ``"sizes"``
    ``[[first, last, step], ...]`` of their one dim or ``"points"`` of several (at most
    :data:`MAX_RECORDED`: a file edited by hand must not make verify expand millions of
    sizes), each size in its dim's declared range."""
    assumed = data.get("assumed", [])
    if not isinstance(assumed, list) or len(assumed) > MAX_RECORDED:
        raise BiRNNExportError(f"assumed: expected a list of at most {MAX_RECORDED} objects")
    graph_dims, covered = _dim_ranges(data), 0
    for entry in assumed:
        one = isinstance(entry, dict) and isinstance(entry.get("dims"), list | str)
        keys = {"dims", "words", "note", "sizes" if one and len(entry["dims"]) == 1 else "points"}
        if not isinstance(entry, dict) or set(entry) != keys:
            raise BiRNNExportError(
                "assumed: expected objects of dims, words, note, and sizes (one dim) or points"
            )
        dims, rows = entry["dims"], entry.get("sizes", entry.get("points"))
        if not all(_printable(entry[k]) for k in ("words", "note")):  # printed (review45 F3)
            raise BiRNNExportError("assumed: words and note are texts of one printable line")
        if (
            not isinstance(dims, list)
            or not dims
            or not all(isinstance(d, str) and d in graph_dims for d in dims)
            or len(set(dims)) < len(dims)
        ):
            raise BiRNNExportError(f"assumed: {dims!r}: expected distinct dims of the graph")
        width = 3 if "sizes" in entry else len(dims)
        if not (
            isinstance(rows, list)
            and len(rows) <= MAX_RECORDED
            and all(isinstance(r, list) and len(r) == width for r in rows)
        ):
            raise BiRNNExportError(
                f"assumed: expected at most {MAX_RECORDED} runs [first, last, step] of one dim "
                "or points of several"
            )
        for row in rows:
            if "points" in entry:
                _check_point("assumed", dict(zip(dims, row, strict=True)), data)
                continue
            for size in row[:2]:
                _check_point("assumed", {dims[0]: size}, data)
            step = row[2]
            if isinstance(step, bool) or not isinstance(step, int) or step < 1 or row[0] > row[1]:
                raise BiRNNExportError(f"assumed: {row} is not a run [first, last, step]")
            covered += (row[1] - row[0]) // step + 1
        covered += len(rows) if "points" in entry else 0
        if covered > MAX_RECORDED_SIZES:
            raise BiRNNExportError(
                f"assumed: more than {MAX_RECORDED_SIZES} sizes in all; the export records fewer"
            )


def _printable(text: Any) -> bool:
    """A text of one line without control characters (a terminal's escapes), at most 2000
    characters long."""
    return isinstance(text, str) and len(text) <= 2000 and text.isprintable()


def is_parameter_name(value: Any) -> bool:
    """A name Python takes for a parameter: a container's keys become ``forward``'s (a key
    such as "input-ids", or a KeyError's message, cannot)."""
    return isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)


def _whole(value: Any) -> int:
    """An int or a string of digits as an int; anything else (floats, bools) is refused."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise TypeError(value)


#: ONNX's recurrent operators, the nodes birnn-export writes for its layers (or loops for).
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


#: Element types that need an IR version above their opsets' minimum (float8: IR 9; 4-bit
#: integers: IR 10; float4 and the rest: IR 11).
_NEWER_TYPES = frozenset(range(17, 26))


def stamp_ir_version(proto: Any) -> None:
    """Stamp ``proto`` with the lowest ONNX IR version its opsets need (opset 18: 8) instead of
    the exporter's own: torch writes 10, which ONNX Runtime 1.17 and older refuse though they
    run opset 18 (review44 F1), and which is too low for opset 23 (11). A graph with local
    functions or element types of a later IR keeps its version."""
    import onnx

    types = {t.data_type for t in proto.graph.initializer} | {
        v.type.tensor_type.elem_type
        for v in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info)
    }
    if proto.functions or types & _NEWER_TYPES:
        return
    proto.ir_version = onnx.helper.find_min_ir_version_for(
        list(proto.opset_import), ignore_unknown=True
    )


def takes_lengths(node: Any) -> bool:
    """Whether a recurrent node is fed ``sequence_lens`` (its optional fifth input)."""
    return len(node.input) > 4 and bool(node.input[4])


def all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of an ONNX ``graph`` and of the subgraphs in its nodes' attributes (the bodies
    of If, Loop and Scan)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_nodes(attr.g)
            for sub in attr.graphs:
                yield from all_nodes(sub)


def op_counts(proto: Any) -> dict[str, int]:
    """``{op_type: count}`` of the main graph's nodes, sorted by op type: the op histogram
    ``inspect`` and the export's summary show."""
    return dict(sorted(collections.Counter(node.op_type for node in proto.graph.node).items()))


def graph_names(graph: Any) -> set[str]:
    """Every name a new node or tensor of ONNX ``graph`` must not take: its inputs, outputs
    and initializers, and every node's name and outputs, the subgraphs' included."""
    taken = {i.name for i in graph.input} | {o.name for o in graph.output}
    taken |= {t.name for t in graph.initializer}
    for node in all_nodes(graph):
        taken.add(node.name)
        taken.update(node.output)
    return taken


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... where it is taken; added to ``taken``."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def batch_not_first_note(spec: GraphSpec) -> list[str]:
    """A note where the batch is not the first axis of an input or output (a time-major
    model's): a server that batches requests on the first axis cuts such a tensor along
    another (users56 F2)."""
    names = [t.name for t in (*spec.inputs, *spec.outputs) if t.batch_axis not in (None, 0)]
    if not names:
        return []
    return [
        f"the batch is not the first axis of {', '.join(repr(n) for n in names)}: a server "
        "that batches requests on the first axis (Triton with max_batch_size > 0) would cut "
        "them along another; serve the graph with max_batch_size 0 and the batch among the dims "
        '(README, "Serving the graph")'
    ]


def unread_inputs(graph: Any) -> list[str]:
    """The inputs of an ONNX ``graph`` that no node reads (nor an output passes on): a
    ``forward`` parameter the model ignores, which callers still feed."""
    read = {o.name for o in graph.output}
    for node in all_nodes(graph):
        read.update(node.input)
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in read and i.name not in initializers]


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


#: What to do about lengths relative to the padded length (SpeechBrain's ``wav_lens``).
RELATIVE_LENGTHS = (
    "export a subclass whose forward takes absolute lengths and gives them to each place the "
    "model turns the fractions back into steps (its packing, masks, pooling): passing lengths "
    "/ x.shape[1] on is not exact (3 / 37 * 37 truncates to 2 in float32, a step lost), and no "
    "offset suits every reading (packing truncates, masks compare with <, pooling rounds); "
    "where the model only packs them, (lengths + 0.25) / x.shape[1] reads as each length"
)


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
        with path.open("rb") as head:
            if head.read(8)[4:] == b"ORTM":  # a FlatBuffer's file identifier
                raise ModelLoadError(
                    f"{path}: an ONNX Runtime format (.ort) model, which only ONNX Runtime "
                    "reads: give the .onnx it was converted from"
                ) from None
        if is_torch_file(path):
            raise ModelLoadError(
                f"{path}: not an ONNX model but a PyTorch file (what torch.save or pickle "
                f"writes); give the graph exported from it (birnn-export {path} -o GRAPH.onnx "
                "exports it)"
            ) from None
        kind = type(exc).__name__
        raise ModelLoadError(f"{path}: not an ONNX model ({kind}); expected a .onnx file") from None
    if not proto.graph.node and not proto.graph.input and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph); expected a .onnx file")
    if not _text_fields_decode(proto):
        raise ModelLoadError(
            f"{path}: a name or text field in the graph is not UTF-8: a corrupted ONNX file"
        )
    _check_external_data(proto, path)
    return proto


def _external_tensors(proto: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    """Every tensor ``onnx.load`` would read from an external data file, with its
    ``external_data`` entries: initializers, Constant nodes' values and those in loop and
    branch bodies."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors  # the walk onnx.load itself does

    for tensor in _get_all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor, {e.key: e.value for e in tensor.external_data}


def refuse_data_outside(proto: Any, path: str | os.PathLike[str]) -> None:
    """Refuse, before anything runs, a graph whose external data file is a link out of the
    folder of the graph's own file (a graph copied beside a link into a Hugging Face cache's
    ``blobs/``): ONNX Runtime resolves links and reads no data outside that folder, so it cannot
    load the graph. Where the graph is a link into the same ``blobs/`` too (a cache's snapshot),
    it reads it.

    Raises:
        ModelLoadError: naming the file, where it leads, and what to do.
    """
    folder = Path(path).resolve().parent  # the graph's own file's: a cache links both
    for location in dict.fromkeys(
        entries.get("location", "") for _, entries in _external_tensors(proto)
    ):
        target = (Path(path).parent / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: its external data file {location} is a link to {target}, outside the "
                "graph's folder, and ONNX Runtime reads no data outside it; copy the graph and "
                f"its data into one folder (cp -L {path} {Path(path).parent / location} DIR/; "
                "huggingface_hub: snapshot_download(..., local_dir=DIR)) and give that copy"
            )


def _check_external_data(proto: Any, path: Path) -> None:
    """Refuse a graph whose weights in external data files are not where it says (a graph
    copied without its ``.onnx.data``, or with a truncated one), naming the file."""
    for tensor, entries in _external_tensors(proto):
        location = entries.get("location", "")
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            # ONNX Runtime refuses these too: a file sent with the graph names a file beside it
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} names its external data file as {location!r}, "
                "not a file in the graph's folder; refused (a graph reads its weights from "
                "files beside it)"
            )
        data = path.parent / location
        if not data.is_file():
            raise ModelLoadError(
                f"{path}: its weights are in the external data file {location}, which is not "
                f"beside it; copy {location} along with the graph"
            )
        span = [entries.get(key) or "0" for key in ("offset", "length")]
        if not all(text.isascii() and text.isdigit() for text in span):
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} gives its place in {location} as offset "
                f"{span[0]!r}, length {span[1]!r}, not byte counts: a corrupted graph"
            )
        end = int(span[0]) + int(span[1])
        if data.stat().st_size < end:
            raise ModelLoadError(
                f"{path}: its external data file {location} holds {data.stat().st_size} bytes, "
                f"fewer than its weights need ({end}): a truncated copy"
            )


def onnx_bytes(proto: Any) -> int:
    """About how many bytes ``proto`` takes serialized: its tensors' data (protobuf's own
    ``ByteSize`` serializes the graph, and fails where one tensor is over 2 GB)."""
    from onnx.external_data_helper import _get_all_tensors  # the walk onnx.load itself does

    total = 0
    for t in _get_all_tensors(proto):
        total += len(t.raw_data) + sum(len(s) for s in t.string_data)
        total += 4 * (len(t.float_data) + len(t.int32_data))
        total += 8 * (len(t.int64_data) + len(t.double_data) + len(t.uint64_data))
    return total


def _text_fields_decode(proto: Any) -> bool:
    """Whether every name, op type and metadata text of ``proto`` is text (protobuf hands back
    ``bytes`` for a string field that is not UTF-8, which later breaks sorting and printing)."""
    graph = proto.graph
    texts: list[Any] = [proto.producer_name, proto.producer_version, graph.name]
    texts += [o.domain for o in proto.opset_import]
    texts += [p.key for p in proto.metadata_props] + [p.value for p in proto.metadata_props]
    texts += [v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)]
    for node in graph.node:
        texts += [node.op_type, node.name, node.domain, *node.input, *node.output]
        texts += [a.name for a in node.attribute]
    return not any(isinstance(text, bytes) for text in texts)


def make_lengths(
    batch: int, seq: int, rng: np.random.Generator, mode: LengthsMode = "ragged", low: int = 1
) -> np.ndarray:
    """Lengths coupled to ``seq``: all in ``[low, seq]`` (``low``: the shortest row the graph
    serves, the time dim's declared minimum; at most ``seq``).

    ``"ragged"``: unsorted, with at least one full-length row and (for batch >= 2) one row of
    length ``low``; ``"equal"``: every row the same length drawn from ``[low, seq]``;
    ``"full"``: all ``seq``.
    """
    low = max(1, min(low, seq))
    if mode == "full":
        return np.full(batch, seq, dtype=np.int64)
    if mode == "equal":
        return np.full(batch, int(rng.integers(low, seq + 1)), dtype=np.int64)
    lengths = rng.integers(low, seq + 1, size=batch).astype(np.int64)
    lengths[0] = seq
    if batch >= 2:
        lengths[1] = low
    return rng.permutation(lengths)


def make_feed(
    spec: GraphSpec,
    batch: int,
    seq: int,
    *,
    seed: int = 0,
    lengths: LengthsMode = "ragged",
    scale: float = 1.0,
    which: int = 1,
    dims: Mapping[str, int] | None = None,
    noise: bool = False,
) -> dict[str, np.ndarray]:
    """Valid random inputs for ``spec`` at batch ``batch`` and time ``seq`` (other named dims as
    ``dims`` gives them, else at their declared opt; ``which=0`` min, ``2`` max), padded as a
    real batch is (``noise``: past the lengths that a lengths input or a mask tells, noise
    instead, drawn as the valid steps are: a batch from a reused buffer, which a graph must not
    read where the model does not).

    Float features are N(0, 1) times ``scale``; token ids are uniform within their range;
    lengths follow ``lengths`` (see :func:`make_lengths`; none shorter than their time dim's
    declared minimum), and a mask marks each row's first ``length`` steps (1 there in a
    ``mask``, 1 past them in a ``padding_mask``). Where the graph takes lengths or a mask,
    positions past each row's length hold padding (0, or the lowest token id) in every input
    with batch and time axes, as in a padded batch: layers before the recurrent ones (a
    convolution, say) see them. A second sequence (a sentence pair's) with lengths or a mask of
    its own is padded likewise along its own time dim, at its size in ``spec.sizes``; a dim
    nested in another's steps (each word's characters, ``spec.nested_sources``) gets a length per
    row and step (:func:`_nested_lengths`; its lengths input or mask tells them) and is padded
    past each; so are the ids of a token
    input's named dim right after the time dim that no lengths input measures (a char-CNN's
    characters: the lowest id past each word's end, and not before it). Where the
    graph takes neither but pads token rows with ``spec.token_padding``, token rows are
    ``lengths`` long and padded with it.
    """
    rng = np.random.default_rng(seed)
    sizes = spec.sizes(batch, seq, which=which, dims=dims)
    ranges = spec.ranges()  # no row shorter than its time dim's declared minimum
    sources = spec.length_sources()
    feed: dict[str, np.ndarray] = {}
    nested = spec.nested_sources()
    noisy = (rng, sizes, scale) if noise else None
    for tensor in spec.inputs:
        shape = tensor.shape(sizes)
        if tensor.within is not None:
            feed[tensor.name] = np.zeros(shape, dtype=tensor.dtype)  # set from its outer dim's
        elif tensor.role == "lengths":
            dim = next(d for d, source in sources.items() if source is tensor)
            rows = make_lengths(batch, sizes[dim], rng, lengths, ranges[dim][0])
            feed[tensor.name] = rows.astype(tensor.dtype)
        elif tensor.role == "tokens":
            low, high = _token_bounds(tensor, sizes)
            feed[tensor.name] = rng.integers(low, high + 1, size=shape).astype(tensor.dtype)
        elif tensor.role in MASK_ROLES:
            feed[tensor.name] = np.zeros(shape, dtype=tensor.dtype)  # set from the lengths below
        else:
            feed[tensor.name] = (rng.standard_normal(shape) * scale).astype(tensor.dtype)
    if not sources and spec.token_padding is not None:
        token_lengths = make_lengths(batch, seq, rng, lengths, ranges[spec.time_dim][0])
        _pad_tokens(spec, feed, token_lengths, spec.token_padding)
    for dim, source in sources.items():
        rows = (
            feed[source.name]
            if source.role == "lengths"
            else make_lengths(batch, sizes[dim], rng, lengths, ranges[dim][0])
        )
        _pad_past(spec, feed, dim, rows, noise=noisy)
    for dim, tensor in nested.items():
        outer = spec.feed_lengths(feed, tensor.within)
        if outer is None:
            raise BiRNNExportError(f"{tensor.name}: {tensor.within!r} has no lengths or mask")
        rows = _nested_lengths(
            outer, sizes[tensor.within], sizes[dim], rng, lengths, ranges[dim][0]
        )
        if tensor.role == "lengths":
            feed[tensor.name] = (rows if tensor.batch_axis == 0 else rows.T).astype(tensor.dtype)
        _pad_past(spec, feed, dim, rows, within=tensor.within, noise=noisy)  # its mask too
    for tensor, dim in _spelled_without_lengths(spec):
        outer = spec.feed_lengths(feed)
        steps = sizes[spec.time_dim]
        outer = np.full(batch, steps, dtype=np.int64) if outer is None else outer
        rows = _nested_lengths(outer, steps, sizes[dim], rng, lengths, ranges[dim][0])
        # a padding word: all padding, or the noise written past the lengths left as it is
        rows[np.arange(steps)[None, :] >= outer[:, None]] = sizes[dim] if noise else 0
        data, low = feed[tensor.name], int(tensor.low or 0)
        high = tensor.high if isinstance(tensor.high, (int, float)) else low
        if low + 1 <= high:  # no padding id inside a word: the model may find its end by it
            data[data == low] = low + 1  # padding is written back below
        _pad_past(spec, feed, dim, rows, within=spec.time_dim, only=tensor.name)
    return feed


def _spelled_without_lengths(spec: GraphSpec) -> list[tuple[TensorSpec, str]]:
    """Token inputs with a named dim right after the time dim that no lengths input measures
    (``chars:int64[batch,seq,chars]`` read by a char-CNN, or by a model that finds each word's
    end by its padding id), with that dim: each word's ids are padded past a length of its own,
    as a real batch of words is."""
    measured = {*spec.length_sources(), *spec.nested_sources()}
    out = []
    for tensor in spec.inputs:
        t_axis, b_axis = tensor.time_axis, tensor.batch_axis
        if tensor.role != "tokens" or t_axis is None or b_axis is None:
            continue
        inner = tensor.dims[t_axis + 1] if t_axis + 1 < len(tensor.dims) else None
        if isinstance(inner, str) and inner not in measured and inner != spec.batch_dim:
            out.append((tensor, inner))
    return out


def _nested_lengths(
    outer: np.ndarray,
    steps: int,
    size: int,
    rng: np.random.Generator,
    mode: LengthsMode,
    low: int,
) -> np.ndarray:
    """Lengths ``[batch, steps]`` of a dim nested in another's steps (each word's characters),
    as :func:`make_lengths` makes them over every valid step (``outer``: each row's valid steps
    along that dim); steps past a row's length have ``low`` (at least 1): a padding word is one
    padding character, as NCRF++ pads them."""
    low = max(1, min(low, size))
    rows = np.full((len(outer), steps), low, dtype=np.int64)
    valid = np.arange(steps)[None, :] < outer[:, None]
    rows[valid] = make_lengths(int(valid.sum()), size, rng, mode, low)
    return rows


def _token_bounds(tensor: TensorSpec, sizes: Mapping[str, int]) -> tuple[int, int]:
    """The lowest and highest id a token input takes (an index's highest: its dim's size - 1)."""
    low = int(tensor.low or 0)
    high = low if tensor.high is None else tensor.high
    return low, sizes[high] - 1 if isinstance(high, str) else int(high)


def _pad_past(
    spec: GraphSpec,
    feed: dict[str, np.ndarray],
    dim: str,
    rows: np.ndarray,
    within: str | None = None,
    only: str | None = None,
    noise: tuple[np.random.Generator, Mapping[str, int], float] | None = None,
) -> None:
    """Padding past each row's length along ``dim`` in every input with batch and ``dim`` axes
    (or the input named ``only``), and each mask of ``dim`` set to match. ``within``: ``dim``
    is nested in that dim's steps and ``rows`` is ``[batch, within]`` (each word's characters);
    inputs without it are left as they are. ``noise``: (generator, sizes, scale) to draw the
    features and ids past the lengths from instead, as the valid ones are drawn."""
    for tensor in spec.inputs:
        if only is not None and tensor.name != only:
            continue
        b_axis = tensor.batch_axis
        t_axis = tensor.time_axis if dim == spec.time_dim else None
        if t_axis is None and dim != spec.time_dim and dim in tensor.dims:
            t_axis = tensor.dims.index(dim)
        if b_axis is None or t_axis is None or tensor.dims[t_axis] != dim:
            continue
        axes = [b_axis, t_axis]
        if within is not None:
            if within not in tensor.dims:
                continue
            axes.insert(1, tensor.dims.index(within))
        data = feed[tensor.name]
        steps = data.shape[axes[-1]]
        valid = np.arange(steps) < rows[..., None]  # [batch, (within,) steps]
        expand = [1] * data.ndim
        for axis in axes:
            expand[axis] = data.shape[axis]
        keep = np.broadcast_to(valid.transpose(np.argsort(axes)).reshape(expand), data.shape)
        if tensor.role in MASK_ROLES:
            data[...] = keep if tensor.role == "mask" else ~keep
        elif tensor.role in ("features", "tokens") and noise is not None:
            rng, sizes, scale = noise
            count = int((~keep).sum())
            if tensor.role == "tokens":
                low, high = _token_bounds(tensor, sizes)
                data[~keep] = rng.integers(low, high + 1, size=count)
            else:
                data[~keep] = rng.standard_normal(count) * scale
        elif tensor.role in ("features", "tokens"):
            data[~keep] = int(tensor.low or 0) if tensor.role == "tokens" else 0


def _pad_tokens(
    spec: GraphSpec, feed: dict[str, np.ndarray], lengths: np.ndarray, pad: int
) -> None:
    """Token inputs as a padded batch of rows ``lengths`` long: ``pad`` past each row's length
    and nowhere before it (the model finds each row's length by it)."""
    for tensor in spec.inputs:
        b_axis, t_axis = tensor.batch_axis, tensor.time_axis
        if tensor.role != "tokens" or b_axis is None or t_axis is None:
            continue
        data = np.moveaxis(feed[tensor.name], (b_axis, t_axis), (0, 1))
        high = tensor.high if isinstance(tensor.high, (int, float)) else pad
        other = pad + 1 if pad + 1 <= high else pad - 1  # a valid token that is not padding
        if other >= (tensor.low or 0):
            data[data == pad] = other
        data[np.arange(data.shape[1])[None, :] >= lengths[:, None]] = pad


# -- declared inputs and symbolic dims ------------------------------------------------------

_DECL = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.]*)\s*:\s*(?P<dtype>\w+)\s*\[(?P<dims>[^\]]*)\]\s*"
    r"(?::\s*lengths\s*\(\s*(?P<measures>[A-Za-z_]\w*)\s*\)\s*"
    r"|:\s*index\s*\(\s*(?P<indexes>[A-Za-z_]\w*)\s*\)\s*"
    r"|:\s*(?P<mask>mask|padding_mask)\s*)?$"
)
_DIM_NAME = re.compile(r"^[A-Za-z_]\w*$")
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")


@dataclass(frozen=True)
class InputDecl:
    """A declared graph input: ``NAME:DTYPE[DIM,...]``, a name for a dynamic dim and a number
    for a fixed one; for a lengths input ``:lengths(DIM)`` (the dim it measures; ``[batch]``, or
    ``[batch,OUTER]`` for a dim nested in OUTER's steps, as a word's characters are); for a mask of
    each row's valid steps ``:mask`` (1 or True at them) or ``:padding_mask`` (1 or True past
    them), over ``batch`` and the time dim (or ``[batch,OUTER,DIM]`` for a dim nested in OUTER's
    steps); for integers that index another dim's steps ``:index(DIM)`` (a subword's word:
    ``word_ids:int64[batch,seq]:index(words)``), which are then 0 to DIM's size - 1.

    Example:
        >>> InputDecl.parse("image:float32[batch,1,64,width]").dims
        ('batch', 1, 64, 'width')
        >>> InputDecl.parse("feat_lens:int64[batch]:lengths(time)").measures
        'time'
        >>> InputDecl.parse("char_lens:int64[batch,seq]:lengths(chars)").dims
        ('batch', 'seq')
        >>> InputDecl.parse("attention_mask:int64[batch,seq]:mask").mask
        'mask'
        >>> InputDecl.parse("word_ids:int64[batch,seq]:index(words)").indexes
        'words'
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    measures: str | None = None
    mask: str | None = None
    indexes: str | None = None

    @classmethod
    def parse(cls, text: str) -> InputDecl:
        """Raises: BiRNNExportError naming what is wrong and how a declaration looks."""
        how = "expected NAME:DTYPE[DIM,...] such as 'image:float32[batch,1,64,width]'"
        match = _DECL.match(str(text)) if len(str(text)) < 1000 else None
        if match is None:
            raise BiRNNExportError(f"input {text!r}: {how}")
        dtype = match["dtype"]
        if dtype not in INPUT_DTYPES:
            raise BiRNNExportError(
                f"input {match['name']!r}: unknown dtype {dtype!r}; choose one of "
                f"{', '.join(INPUT_DTYPES)}"
            )
        dims: list[int | str] = []
        for part in (p.strip() for p in match["dims"].split(",")):
            if part.isdigit() and int(part) > 0:
                dims.append(int(part))
            elif _DIM_NAME.match(part):
                dims.append(part)
            else:
                raise BiRNNExportError(
                    f"input {match['name']!r}: dim {part!r} is neither a positive number nor a "
                    f"name; {how}"
                )
        measures = match["measures"]
        named = [d for d in dims if isinstance(d, str)]
        nested = len(dims) == len(named) == 2 and BATCH in named and measures not in named
        if measures is not None and (
            dtype not in ("int64", "int32") or not (len(dims) == 1 or nested)
        ):
            floats = (
                "; step counts held as floats (20.0) are declared int64, and the graph is fed "
                "them as int64; lengths relative to the padded length (fractions, as "
                f"SpeechBrain's wav_lens) are not graph inputs: {RELATIVE_LENGTHS}"
                if dtype.startswith("float")
                else ""
            )
            raise BiRNNExportError(
                f"input {match['name']!r}: a lengths input is int64[batch] or int32[batch] (one "
                "length per row), or [batch,OUTER] for a sequence nested in another's steps "
                f"(each word's characters: 'char_lens:int64[batch,seq]:lengths(chars)'){floats}"
            )
        if match["indexes"] and dtype not in ("int64", "int32"):
            raise BiRNNExportError(
                f"input {match['name']!r}: an index into {match['indexes']!r}'s steps is int64 or "
                f"int32, e.g. 'word_ids:int64[batch,seq]:index({match['indexes']})'"
            )
        flat = len(dims) == len(named) == 2 and BATCH in named
        if match["mask"] and len(dims) == 3 and dims[-1] in dims[:-1]:
            raise BiRNNExportError(
                f"input {match['name']!r}: a mask over [{', '.join(map(str, dims))}] relates "
                "steps to steps (an attention mask), not each row's valid steps; declare it "
                "without ':mask', and the rows' lengths or valid steps as an input of their own"
            )
        if match["mask"] and not (flat or _nested_mask("mask", tuple(dims), _index(dims))):
            raise BiRNNExportError(
                f"input {match['name']!r}: a mask is [batch, TIME] or [TIME, batch] (one value "
                f"per row and step), e.g. 'mask:bool[batch,seq]:{match['mask']}', or [batch, "
                "OUTER, DIM] for a sequence nested in another's steps (each word's characters: "
                f"'char_mask:bool[batch,seq,chars]:{match['mask']}')"
            )
        return cls(match["name"], dtype, tuple(dims), measures, match["mask"], match["indexes"])

    @property
    def within(self) -> str | None:
        """OUTER of a nested lengths input ``[batch,OUTER]:lengths(DIM)`` or mask
        ``[batch,OUTER,DIM]:mask`` (DIM nested in OUTER's steps, as a word's characters are);
        ``None`` for any other input."""
        if self.measures is not None and len(self.dims) == 2:
            return next(str(d) for d in self.dims if d != BATCH)
        if self.mask is not None and _nested_mask(self.mask, self.dims, _index(self.dims)):
            return next(str(d) for d in self.dims[:2] if d != BATCH)
        return None

    @property
    def nests(self) -> str | None:
        """DIM, the nested dim whose lengths or mask this is, where :attr:`within` is set."""
        if self.within is None:
            return None
        return self.measures if self.measures is not None else str(self.dims[-1])

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.dims)
        tail = f":lengths({self.measures})" if self.measures else ""
        tail += f":index({self.indexes})" if self.indexes else ""
        return f"{self.name}:{self.dtype}[{dims}]{tail}" + (f":{self.mask}" if self.mask else "")


def _index(dims: list[int | str] | tuple[int | str, ...]) -> int | None:
    """The batch dim's axis in declared ``dims``."""
    return dims.index(BATCH) if BATCH in dims else None


_ARITHMETIC: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


def run_time_dim(dim: int | str | None) -> bool:
    """A dim the model computes from the lengths at run time: ``longest(seq)``, one the
    exporter left unnamed (``u0``), or one derived from either (``((u2 + 1)//2)``: the longest
    row subsampled)."""
    return isinstance(dim, str) and ("longest(" in dim or re.search(r"\bu\d+\b", dim) is not None)


def dim_size(text: str, sizes: Mapping[str, int], unknown: int | None = None) -> int:
    """A symbolic dim such as ``seq`` or ``((time - 1)//2) + 1`` at ``sizes``.

    Only names, numbers, ``+ - * / // %`` and ``floor``/``ceiling`` are evaluated (the text
    comes from a file: nothing is executed).

    Raises:
        BiRNNExportError: the dim cannot be evaluated and no ``unknown`` fallback was given.

    Example:
        >>> dim_size("(((time - 1)//2)) + 1", {"time": 97})
        49
    """

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in sizes:
            return sizes[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("floor", "ceiling", "ceil")
            and len(node.args) == 1
        ):
            inner = value(node.args[0])
            return math.floor(inner) if node.func.id == "floor" else math.ceil(inner)
        raise ValueError(text)

    try:
        if not isinstance(text, str) or len(text) > 200:
            raise ValueError(text)
        return int(value(ast.parse(text, mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError, RecursionError, OverflowError):
        if unknown is not None:
            return unknown
        raise BiRNNExportError(f"dim {text!r}: cannot evaluate it at {dict(sizes)}") from None


def dim_sources(text: str) -> set[str]:
    """The names a symbolic dim is made of (``"(width//4)"`` -> ``{"width"}``)."""
    if not isinstance(text, str) or len(text) > 200:
        return set()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, RecursionError, ValueError):
        return set()
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - calls


Shapes = list[tuple[int | str, ...]]


def tensor_shapes(proto: Any) -> Shapes:
    """The dims of every input, output and intermediate tensor of the graph (a size, or a
    symbolic expression such as ``8*batch``; ``""`` where nothing is known), by ONNX Runtime's
    symbolic shape inference, which follows the shapes an attention layer computes for its
    Reshapes; where it fails, the shapes recorded in the file (the exporter leaves such dims
    unknown, and a [batch*heads, seq, seq] tensor would count as seq^4)."""
    graph = proto.graph
    infos = [*graph.input, *graph.output, *graph.value_info]
    said = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = said.level
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        said.setLevel(logging.ERROR)  # its guesses ("Unable to determine if ...") are not news
        # infer_shapes' own loop, without its ending: where some shape stays unknown it writes
        # sym_shape_infer_temp.onnx (and its weights) into the working directory and raises;
        # the shapes it did infer are what is wanted
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        inferred = inference.out_mp_.graph
        infos = [*inferred.input, *inferred.output, *inferred.value_info]
    except Exception:  # any failure of the inference: the recorded shapes
        logger.debug("symbolic shape inference failed; using the recorded shapes", exc_info=True)
    finally:
        said.setLevel(level)
    return [
        tuple(int(d.dim_value) if d.HasField("dim_value") else d.dim_param for d in dims)
        for dims in (info.type.tensor_type.shape.dim for info in infos)
    ]


def largest_tensor_bytes(
    shapes: Shapes,
    spec: GraphSpec,
    batch: int,
    seq: int,
    which: int = 1,
    dims: Mapping[str, int] | None = None,
) -> int:
    """The largest tensor of the graph at ``batch`` x ``seq``, in bytes at float64: what one case
    of the float64 reference allocates at least. Read from the graph's :func:`tensor_shapes`
    (their symbolic dims evaluated; an unreadable dim counts as the largest size of the case);
    other named dims as ``dims`` gives them, else at ``which`` of their ranges."""
    sizes = spec.sizes(batch, seq, which=which, dims=dims)
    unknown = max(batch, seq, *sizes.values())
    largest = 0
    for shape in shapes:
        count = 1
        for dim in shape:
            size = dim if isinstance(dim, int) else dim_size(dim, sizes, unknown)
            count *= max(size, 1)
        largest = max(largest, count)
    return largest * 8
