"""int8 graphs: ONNX Runtime's dynamic quantization of an exported graph.

:func:`quantize_int8` runs ``onnxruntime.quantization.quantize_dynamic`` (weights in 8 bits per
tensor, chosen so every x86 CPU sums them exactly: :func:`quantize_weights`; activations
quantized at run time, per call): LSTM nodes become
``com.microsoft::DynamicQuantizeLSTM`` and MatMul/Gemm heads ``MatMulInteger``. ONNX Runtime
has no quantized GRU or RNN kernels: those nodes stay float32, and so does an RNN layer written
as a Scan loop (the ``scan`` layout: its input projection is kept out of the quantizer, as in
the node it replaces); :class:`QuantizeReport` says which. The result runs on ONNX Runtime's CPU
provider.

An int8 graph cannot match the model to float32 rounding; it is judged by the task instead
(:class:`~birnn_export.compare.QuantizedCriterion`): top-1 agreement with the float64 model at
valid positions and the relative error of every output.

Example:
    >>> report = quantize_int8("tagger.onnx", "tagger.int8.onnx")  # doctest: +SKIP
    >>> report.quantized  # doctest: +SKIP
    {'DynamicQuantizeLSTM': 4, 'MatMulInteger': 1}
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birnn_export._process import quiet_here
from birnn_export.errors import BiRNNExportError
from birnn_export.spec import INT8 as INT8
from birnn_export.spec import stamp_ir_version

#: An Embedding's Gather reading its table stored in 8 bits (weights only, dequantized when read:
#: smaller, not faster).
_INT8_TABLE = "Gather (int8 table)"
_QUANTIZED_OPS = (
    "DynamicQuantizeLSTM",
    "MatMulInteger",
    "ConvInteger",
    "QAttention",
    _INT8_TABLE,
)


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` changed: quantized ops by type, and the recurrent and matrix
    ops left in float (GRU and RNN: ONNX Runtime has no quantized kernels for them)."""

    quantized: dict[str, int]
    left_float: dict[str, int]
    #: the graph zeroes its float inputs past each row's length (:func:`zeroes_padding`)
    padding_zeroed: bool = False

    def summary(self) -> str:
        done = ", ".join(f"{op} x{n}" for op, n in self.quantized.items()) or "nothing"
        left = ", ".join(f"{op} x{n}" for op, n in self.left_float.items())
        text = f"int8: {done}" + (
            f"; float32 (no int8 kernel in ONNX Runtime): {left}" if left else ""
        )
        if "DynamicQuantizeLSTM" not in self.quantized and {"GRU", "RNN"} & set(self.left_float):
            text += "; its recurrent layers stay float32, so expect no speed-up over float32"
        return text


def quantize_weights(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    nodes_to_exclude: Collection[str] = (),
) -> None:
    """ONNX Runtime's ``quantize_dynamic`` as ``--quantize int8`` runs it, on any graph.

    On x86 CPUs without VNNI (AMD Zen 2 and 3, Intel before Cascade Lake) ONNX Runtime's
    uint8 x int8 kernels add products in pairs into a saturating int16: with the quantizer's
    default full-range int8 weights, outputs came out at half their value there, and a graph
    verified on a CPU with VNNI was wrong on one without. Each kernel here gets weights it sums
    exactly on every CPU: LSTM nodes (whose weights are always int8) 7-bit weights
    (``reduce_range``, as ONNX Runtime advises), in a first pass; every other op full-range
    uint8 weights, whose uint8 x uint8 kernels do not saturate, in a second.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = sorted(nodes_to_exclude)
    with tempfile.TemporaryDirectory(prefix="birnn-export-int8-") as folder:
        lstm_done = os.path.join(folder, "lstm.onnx")
        quantize_dynamic(
            str(src),
            lstm_done,
            op_types_to_quantize=["LSTM"],
            weight_type=QuantType.QInt8,
            reduce_range=True,
            nodes_to_exclude=excluded,
        )
        quantize_dynamic(
            lstm_done, str(dst), weight_type=QuantType.QUInt8, nodes_to_exclude=excluded
        )


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> QuantizeReport:
    """Write the dynamically quantized int8 form of the graph ``src`` to ``dst`` (its metadata
    kept, the spec marked ``quantization: int8-dynamic``).

    Raises:
        BiRNNExportError: onnxruntime's quantization tools are missing, or failed on the graph.
    """
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise BiRNNExportError(
            f"int8: onnxruntime's quantization tools are not importable ({exc}); pip install "
            "onnxruntime"
        ) from None
    import onnx

    from birnn_export._scan import is_rnn_scan, rnn_scan_info, rnn_scan_parts
    from birnn_export.spec import METADATA_KEY, GraphSpec

    source = onnx.load(str(src), load_external_data=False)
    kept_float = rnn_scan_parts(source.graph.node)
    shared = _shared_lstm_weights(source)
    quantized_from = str(src)

    try:
        # the quantizer logs advice meant for image models, on the root logger
        with contextlib.ExitStack() as stack:
            stack.enter_context(quiet_here(root_log_below=logging.ERROR))
            if shared:  # quantize a copy in which every LSTM node has weights of its own
                folder = stack.enter_context(tempfile.TemporaryDirectory())
                source = onnx.load(str(src))
                _unshare(source, shared)
                quantized_from = os.path.join(folder, "unshared.onnx")
                onnx.save(source, quantized_from)
            quantize_weights(quantized_from, dst, nodes_to_exclude=kept_float)
    except Exception as exc:  # the quantizer raises many types for graphs it cannot handle
        raise BiRNNExportError(
            f"int8: ONNX Runtime's quantize_dynamic failed on {src}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}"
        ) from None
    proto = onnx.load(str(dst), load_external_data=bool(shared))
    _mark(proto, METADATA_KEY)
    # The quantizer's shape inference leaves dims it could not name (``unk__8``) on tensors
    # whose dims the float graph named or left out; an engine infers them again anyway.
    kept = [v for v in proto.graph.value_info if not _has_unknown_dims(v)]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    if shared:
        _merge_copies(proto)
    _zero_padded_steps(proto)
    spec = GraphSpec.from_onnx(proto)
    if _padding_unread(src, spec):
        _zero_padded_inputs(proto, spec)
    stamp_ir_version(proto)  # the quantizer writes its own (review44 F1)
    onnx.save(proto, str(dst))
    counts = collections.Counter(
        str(rnn_scan_info(node)["op"]) if is_rnn_scan(node) else node.op_type
        for node in proto.graph.node
        if node.name not in kept_float  # a loop's own parts: counted as its RNN
    )
    # an Embedding's table stored in 8 bits: its Gather reads those rows (dequantized after it)
    # or, where the quantizer dequantizes the table first, the table dequantized whole
    int8 = {
        i.name
        for i in proto.graph.initializer
        if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    }
    int8 |= {
        o
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in int8
        for o in n.output
    }
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
    counts[_INT8_TABLE] = sum(n.input[0] in int8 for n in gathers)
    return QuantizeReport(
        quantized={op: counts[op] for op in _QUANTIZED_OPS if counts[op]},
        left_float={
            op: counts[op] for op in ("GRU", "RNN", "LSTM", "MatMul", "Gemm") if counts[op]
        },
        padding_zeroed=zeroes_padding(proto, spec),
    )


#: The largest int8 weight magnitude that x86 kernels without VNNI add exactly: they sum a pair
#: of uint8 x int8 products into an int16, and 2 x 255 x 64 < 2**15 (``reduce_range``'s
#: weights lie within it).
_UNSATURATED = 64
#: Where each quantized op takes an int8 weight that is multiplied by uint8 activations.
_WEIGHT_SLOTS = {
    "MatMulInteger": (1,),
    "ConvInteger": (1,),
    "DynamicQuantizeMatMul": (1,),
    "DynamicQuantizeLSTM": (1, 2),
}


#: Said under an int8 verdict over the sweep: its inputs are not the user's data (users58 F1).
SWEEP_INPUTS_NOTE = (
    "int8 was judged on the sweep's random features (draws from N(0, 1)), not on your data: "
    "a model fed features of another scale (un-normalised energies, pixels 0..255) can "
    "keep its task here and lose it on its own inputs (a BiLSTM fed features x100: 99.69% here, "
    "95.6% on them); check the graph on real batches: export with --load-inputs BATCHES.npz, "
    "or birnn-export verify GRAPH --model MODEL --load-inputs BATCHES.npz"
)


def saturating_nodes(proto: Any) -> list[str]:
    """The quantized nodes whose int8 weights go past 7 bits: on x86 CPUs without VNNI (AMD Zen 2
    and 3, Intel before Cascade Lake) ONNX Runtime adds their uint8 x int8 products in pairs into
    a saturating int16, so their outputs there differ from a CPU with VNNI (by half, in a head
    whose activations and weights are both large). :func:`quantize_int8` writes none."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    weights = {i.name: i for i in proto.graph.initializer if i.data_type == TensorProto.INT8}
    found = []
    for node in proto.graph.node:
        for slot in _WEIGHT_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name in weights:
                values = numpy_helper.to_array(weights[name]).astype(np.int16)
                if values.size and np.abs(values).max() > _UNSATURATED:
                    found.append(node.name or node.output[0])
                    break
    return found


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has VNNI (``avx512_vnni`` or ``avx_vnni`` in /proc/cpuinfo); ``None``
    where that cannot be read (not Linux, or not x86)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line.split() for line in info if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_vnni", "avx_vnni"} & set(flags))


def saturation_note(proto: Any) -> list[str]:
    """A note for verify where :func:`saturating_nodes` finds any (an int8 graph an older
    birnn-export, or ONNX Runtime's quantizer by default, wrote)."""
    nodes = saturating_nodes(proto)
    if not nodes:
        return []
    vnni = cpu_has_vnni()
    here = "" if vnni is None else f" (this CPU {'has' if vnni else 'lacks'} VNNI)"
    shown = ", ".join(repr(n) for n in nodes[:3]) + (", ..." if len(nodes) > 3 else "")
    return [
        f"{len(nodes)} int8 node(s) ({shown}) have weights past 7 bits: on x86 CPUs without "
        "VNNI (AMD Zen 2 and 3, Intel before Cascade Lake) ONNX Runtime adds their products "
        f"into a saturating int16, so the graph's outputs there are not these{here}; export it "
        "again (birnn-export >= 0.6.3 writes 7-bit LSTM weights and uint8 weights elsewhere), "
        "or quantize with reduce_range=True"
    ]


def _zero_padded_steps(proto: Any) -> None:
    """Zero each ``DynamicQuantizeLSTM`` node's input past each row's length (its
    ``sequence_lens``). The node quantizes its whole input with one scale, so whatever a caller
    left in the padding, never read and so without effect in exact arithmetic, would set the
    scale of the valid steps: a loud padding would cost them their precision."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from birnn_export.spec import fresh_name, graph_names

    graph = proto.graph
    taken = graph_names(graph)
    consts = {
        name: numpy_helper.from_array(np.asarray(value, np.int64), f"int8_padding/{name}")
        for name, value in (("zero", 0), ("one", 1), ("axis0", [0]), ("axis1", [1]), ("axis2", [2]))
    }
    nodes: list[Any] = []

    def add(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = fresh_name(taken, f"int8_padding/{base}")
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    c = {name: t.name for name, t in consts.items()}
    masked: dict[tuple[str, str], str] = {}
    for current in list(graph.node):
        lengths = current.input[4] if len(current.input) > 4 else ""
        if current.op_type == "DynamicQuantizeLSTM" and lengths:
            x = current.input[0]  # [T, B, I]
            if (x, lengths) not in masked:
                steps = add("Shape", [x], "steps", start=0, end=1)
                times = add(
                    "Range",
                    [c["zero"], add("Squeeze", [steps, c["axis0"]], "t"), c["one"]],
                    "times",
                )
                rows = add("Cast", [lengths], "lengths", to=TensorProto.INT64)
                valid = add(
                    "Less",
                    [add("Unsqueeze", [times, c["axis1"]], "times_col"),
                     add("Unsqueeze", [rows, c["axis0"]], "lengths_row")],
                    "valid",
                )  # fmt: skip
                mask = add(
                    "Cast",
                    [add("Unsqueeze", [valid, c["axis2"]], "valid_3d")],
                    "mask",
                    to=TensorProto.FLOAT,
                )
                masked[x, lengths] = add("Mul", [x, mask], "input")
            current.input[0] = masked[x, lengths]
        nodes.append(current)
    if masked:
        graph.initializer.extend(consts.values())
        del graph.node[:]
        graph.node.extend(nodes)


def _padded_float_inputs(spec: Any) -> list[tuple[Any, str]]:
    """Each float input with a batch axis and one dim whose rows have lengths (by a lengths
    input or a mask), with that dim: the inputs whose padding an int8 graph may zero."""
    sources = spec.length_sources()
    padded = []
    for tensor in spec.inputs:
        dims = [d for d in tensor.dims if d in sources]
        float_input = tensor.role == "features" and tensor.dtype.startswith("float")
        if float_input and tensor.batch_axis is not None and len(dims) == 1:
            padded.append((tensor, dims[0]))
    return padded


def _padding_unread(src: str | os.PathLike[str], spec: Any) -> bool:
    """Whether the float graph ``src`` gives the same valid outputs whatever its float inputs
    hold past each row's length (x50 noise there, and zeros), so zeroing it changes nothing
    the model computes. A model that runs a layer over the padding (a mask used only to pool,
    a conv reading row ends) reads it: review17 measured an int8 graph's class flip on a
    constant log-mel floor there."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    names = [t.name for t in spec.outputs]
    return padding_unread(
        spec, lambda feed: dict(zip(names, session.run(names, feed), strict=True))
    )


def zeroes_padding(proto: Any, spec: Any) -> bool:
    """Whether an int8 graph zeroes a float input past each row's length (the nodes
    :func:`_zero_padded_inputs` writes; :func:`_zero_padded_steps`' zero only what its
    recurrent nodes read of their own input)."""
    bases = tuple(f"int8_padding/{tensor.name}/" for tensor, _ in _padded_float_inputs(spec))
    return bool(bases) and any(node.name.startswith(bases) for node in proto.graph.node)


def padding_unread(spec: Any, run: Any) -> bool:
    """Whether ``run`` (a feed to ``{output: array}``: a graph, or the model) gives the same
    valid outputs whatever the float inputs hold past each row's length (x50 noise there, and
    zeros): see :func:`_padding_unread`. ``verify`` asks it of the model where an int8 graph
    zeroes that padding (users48: one written before the export asked it passed)."""
    import numpy as np

    from birnn_export.compare import valid_mask
    from birnn_export.spec import make_feed

    padded = _padded_float_inputs(spec)
    if not padded:
        return False  # no float input with lengths: nothing to zero
    sources = spec.length_sources()
    batch, seq = max(spec.example_batch, 3), max(spec.example_seq, 8)
    quiet = make_feed(spec, batch, seq, seed=0)
    loud = dict(quiet)
    rng = np.random.default_rng(1)
    for tensor, dim in padded:  # what _zero_padded_inputs zeroes: nothing else need differ
        rows = spec.feed_lengths(quiet, dim)
        keep = valid_mask(dataclasses.replace(tensor, time_at=tensor.dims.index(dim)),
                          quiet[tensor.name].shape, rows)  # fmt: skip
        noise = 50 * rng.standard_normal(quiet[tensor.name].shape)
        loud[tensor.name] = np.where(keep, quiet[tensor.name], noise).astype(tensor.dtype)
    said, shouted = run(quiet), run(loud)
    for tensor in spec.outputs:
        a, b = np.asarray(said[tensor.name]), np.asarray(shouted[tensor.name])
        axis = tensor.time_axis
        dim = tensor.dims[axis] if axis is not None else None
        rows = spec.feed_lengths(quiet, dim) if dim in sources else None
        keep = valid_mask(tensor, a.shape, rows) if rows is not None else None
        a, b = (a, b) if keep is None else (a[keep], b[keep])
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            return False
    return True


def _zero_padded_inputs(proto: Any, spec: Any) -> None:
    """Zero each float input's steps past each row's length (told by a lengths input or a
    ``[batch, steps]`` mask), where the model reads none of it (:func:`_padding_unread`). A
    layer before the recurrent ones (a Linear front end) quantizes its whole input with one
    scale, like ``DynamicQuantizeLSTM`` (:func:`_zero_padded_steps`): loud padding left there
    by a caller cost a trained CTC model's int8 graph the decode of 44% of its rows
    (users25)."""
    graph = proto.graph
    sources = spec.length_sources()
    added: list[Any] = []
    constants: list[Any] = []
    for tensor, dim in _padded_float_inputs(spec):
        made = _masked_input(tensor, dim, sources[dim], spec.batch_dim)
        if made is None:
            continue
        nodes, values, masked = made
        for reader in graph.node:
            reader.input[:] = [masked if i == tensor.name else i for i in reader.input]
        added += nodes
        constants += values
    if added:
        kept = list(graph.node)
        del graph.node[:]
        graph.node.extend(added + kept)
        graph.initializer.extend(constants)


def _masked_input(
    tensor: Any, dim: str, source: Any, batch_dim: str
) -> tuple[list[Any], list[Any], str] | None:
    """The nodes and constants that make ``tensor`` with zeros past each row's length along
    ``dim`` (by ``source``, a lengths input or a ``[batch, dim]`` mask), and the name of the
    result; ``None`` for a source of another form."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    base, axis = f"int8_padding/{tensor.name}", tensor.dims.index(dim)
    nodes: list[Any] = []

    def node(op: str, inputs: list[str], part: str, **attrs: Any) -> str:
        out = f"{base}/{part}"
        nodes.append(helper.make_node(op, inputs, [out], out, **attrs))
        return out

    if source.role == "lengths" and len(source.dims) == 1:  # valid: [batch, steps]
        steps = node("Shape", [tensor.name], "steps", start=axis, end=axis + 1)
        count = node("Squeeze", [steps, f"{base}/axis0"], "count")
        times = node("Range", [f"{base}/zero", count, f"{base}/one"], "times")
        valid = node(
            "Less",
            [node("Unsqueeze", [times, f"{base}/axis0"], "times_row"),
             node("Unsqueeze",
                  [node("Cast", [source.name], "lengths", to=TensorProto.INT64), f"{base}/axis1"],
                  "lengths_col")],
            "valid",
        )  # fmt: skip
    elif source.role in ("mask", "padding_mask") and source.dims == (batch_dim, dim):
        valid = node("Cast", [source.name], "marked", to=TensorProto.BOOL)
        if source.role == "padding_mask":
            valid = node("Not", [valid], "valid")
    else:
        return None
    if tensor.batch_axis > axis:
        valid = node("Transpose", [valid], "valid_steps_first", perm=[1, 0])
    others = [i for i in range(len(tensor.dims)) if i not in (tensor.batch_axis, axis)]
    if others:
        valid = node("Unsqueeze", [valid, f"{base}/others"], "valid_as_input")
    masked = node("Where", [valid, tensor.name, f"{base}/fill"], "masked")
    values = {"zero": 0, "one": 1, "axis0": [0], "axis1": [1], "others": others}
    read = {name for n in nodes for name in n.input}  # no initializer left unread (ORT warns)
    constants = [
        numpy_helper.from_array(np.asarray(v, np.int64), f"{base}/{k}")
        for k, v in values.items()
        if f"{base}/{k}" in read
    ]
    fill = np.zeros((), np.float16 if tensor.dtype == "float16" else np.float32)
    return nodes, [*constants, numpy_helper.from_array(fill, f"{base}/fill")], masked


def _has_unknown_dims(value: Any) -> bool:
    return any(d.dim_param.startswith("unk__") for d in value.type.tensor_type.shape.dim)


def _shared_lstm_weights(proto: Any) -> set[str]:
    """W and R initializers that more than one LSTM node reads (the ``packed`` layout's spans).

    ONNX Runtime's quantizer (``operators/lstm.py``) transposes a node's quantized W and R and
    stores them back under the same name; a second node reading that name gets them transposed
    twice: wrong weights of the right size, no error. Measured: a packed BiLSTM's int8 output
    was off by 0.26 where the fused graph's was off by 0.002.
    """
    readers = collections.Counter(
        name for node in proto.graph.node if node.op_type == "LSTM" for name in node.input[1:3]
    )
    return {name for name, count in readers.items() if count > 1}


#: What :func:`_unshare` appends to a copied weight's name (the quantizer keeps it as a prefix).
_COPY = "#unshared"


def _unshare(proto: Any, shared: set[str]) -> None:
    """Give every LSTM node reading a weight in ``shared`` a copy of its own."""
    initializers = {t.name: t for t in proto.graph.initializer}
    seen: collections.Counter[str] = collections.Counter()
    for node in proto.graph.node:
        if node.op_type != "LSTM":
            continue
        for k in (1, 2):
            name = node.input[k]
            if name in shared:
                seen[name] += 1
                if seen[name] > 1:
                    copy = proto.graph.initializer.add()
                    copy.CopyFrom(initializers[name])
                    copy.name = node.input[k] = f"{name}{_COPY}{seen[name]}"


def _merge_copies(proto: Any) -> None:
    """Store once what :func:`_unshare` copied: the quantizer turns each copy into int8
    weights, scales and zero points identical to the original's. Only the copies' tensors are
    dropped, each for a byte-identical initializer that is not a graph input; every node that
    read one, in subgraphs too, reads the one kept."""
    from onnx import numpy_helper

    from birnn_export.spec import all_nodes

    def key(tensor: Any) -> tuple[int, tuple[int, ...], bytes]:
        return tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes()

    graph = proto.graph
    inputs = {i.name for i in graph.input}
    originals = {
        key(t): t.name for t in graph.initializer if _COPY not in t.name and t.name not in inputs
    }
    renamed = {
        t.name: originals[key(t)]
        for t in graph.initializer
        if _COPY in t.name and t.name not in inputs and key(t) in originals
    }
    if not renamed:
        return
    for node in all_nodes(graph):
        node.input[:] = [renamed.get(name, name) for name in node.input]
    kept = [t for t in graph.initializer if t.name not in renamed]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _mark(proto: Any, key: str) -> None:
    import json

    for prop in proto.metadata_props:
        if prop.key == key:
            data = json.loads(prop.value)
            data["quantization"] = INT8
            prop.value = json.dumps(data, sort_keys=True)


def quantized_path(folder: str | os.PathLike[str], src: str | os.PathLike[str]) -> Path:
    """Where a quantized copy of ``src`` goes inside ``folder``."""
    return Path(folder) / (Path(src).stem + ".int8.onnx")
