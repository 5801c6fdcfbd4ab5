"""What is in an exported graph: :func:`describe_onnx` (a JSON-ready dict, ``inspect --json``)
and :func:`describe_lines` (the ``inspect`` command's text)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from birnn_export._container import Container
from birnn_export._files import onnx_file_size, size_text
from birnn_export._packed import is_packed_layer, packed_info
from birnn_export._scan import is_rnn_scan, is_viterbi_scan, rnn_scan_info
from birnn_export.errors import BiRNNExportError
from birnn_export.spec import (
    METADATA_KEY,
    ONNX_DTYPES,
    RECURRENT_OPS,
    GraphSpec,
    batch_not_first_note,
    changed_after_export,
    load_onnx,
    op_counts,
    unread_inputs,
)


def _shown_dims(value: Any) -> list[int | str] | None:
    """A graph input's or output's dims as ``inspect`` shows them: ``None`` where the graph
    gives no rank (``[]`` read as a scalar), ``"?"`` for a dim with neither size nor name."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(int(dim.dim_value) if dim.HasField("dim_value") else "?")
    return dims


def _text(value: Any) -> Any:
    """An attribute's value with its bytes (and lists of bytes) decoded."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return [_text(v) for v in value] if isinstance(value, list) else value


def dims_text(dims: list[int | str] | None) -> str:
    """``[batch, seq, 9]``, or ``unknown rank`` (see :func:`_shown_dims`)."""
    return "unknown rank" if dims is None else "[" + ", ".join(map(str, dims)) + "]"


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``birnn-export inspect`` shows: I/O with dims, op histogram, recurrent nodes (and a
    CRF's Viterbi Scans), metadata; :func:`describe_lines` renders it.

    Raises:
        ModelLoadError: the file is missing or not an ONNX model.
    """
    from onnx import helper

    path = Path(path)
    proto = load_onnx(path)

    def io(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": ONNX_DTYPES.get(v.type.tensor_type.elem_type, "other"),
                "dims": _shown_dims(v),
            }
            for v in values
        ]

    recurrent = []
    weight_types = {t.name: t.data_type for t in proto.graph.initializer}
    packed = {f"{n.name}/packed/" for n in proto.graph.node if is_packed_layer(n)}
    for node in proto.graph.node:
        if packed and node.name.startswith(tuple(packed)):
            continue  # a packed layer's parts: the layer is listed once, below
        if is_packed_layer(node):
            info = packed_info(node)
            attrs = {k: info[k] for k in ("hidden_size", "direction", "chunks")}
            recurrent.append(
                {
                    "name": node.name,
                    "op": f"{info['op']} (packed)",
                    "attributes": attrs,
                    "inputs": info.get("inputs", list(node.input)),  # older files: Y's
                }
            )
            continue
        if is_rnn_scan(node):
            info = rnn_scan_info(node)
            attrs = {k: info[k] for k in ("hidden_size", "proj_size", "direction") if k in info}
            body = next(a.g for a in node.attribute if a.name == "body")
            state = body.input[0].type.tensor_type.elem_type  # the loop computes in its state's
            recurrent.append(
                {
                    "name": node.name,
                    "op": f"{info['op']} (scan)",
                    "attributes": attrs,
                    "inputs": list(node.input),
                    "dtype": ONNX_DTYPES.get(state) or _type_name(state),
                }
            )
            continue
        # an int8 graph's LSTM nodes are ONNX Runtime's DynamicQuantizeLSTM (users63 F2)
        recurrent_op = node.op_type in (*RECURRENT_OPS, "DynamicQuantizeLSTM", "ReverseSequence")
        if recurrent_op or is_viterbi_scan(node):
            attrs = {
                a.name: _text(helper.get_attribute_value(a))
                for a in node.attribute
                if not a.HasField("g")  # a Scan's body: its node name says what it is
            }
            entry = {
                "name": node.name,
                "op": node.op_type,
                "attributes": attrs,
                "inputs": list(node.input),
            }
            if node.op_type != "ReverseSequence" and len(node.input) > 1:
                weight = weight_types.get(node.input[1])  # a recurrent node computes in W's
                if weight is not None:
                    entry["dtype"] = ONNX_DTYPES.get(weight) or _type_name(weight)
            recurrent.append(entry)
    metadata: dict[str, Any] = {}
    for prop in proto.metadata_props:
        try:
            metadata[prop.key] = json.loads(prop.value) if prop.key == METADATA_KEY else prop.value
        except (json.JSONDecodeError, RecursionError):
            metadata[prop.key] = prop.value[:200]
    initializers = {i.name for i in proto.graph.initializer}
    return {
        "path": str(path),
        "file_size": onnx_file_size(path),
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": io([i for i in proto.graph.input if i.name not in initializers]),
        "outputs": io(proto.graph.output),
        "op_counts": op_counts(proto),
        "recurrent_nodes": recurrent,
        "unread_inputs": unread_inputs(proto.graph),
        "metadata": metadata,
        "changed_after_export": _changes(proto),
    }


def _changes(proto: Any) -> list[str]:
    """:func:`~birnn_export.spec.changed_after_export`, where the graph has readable metadata."""
    try:
        return changed_after_export(proto, GraphSpec.from_onnx(proto))
    except BiRNNExportError:
        return []  # no metadata, or unreadable: describe_lines says so


def _no_spec_text(info: dict[str, Any]) -> str:
    return (
        f"written by {info['producer']}, its metadata was removed after (by a tool such as "
        "polygraphy surgeon sanitize): verify and bench need it, and check its dims"
    )


def opset_text(opsets: dict[str, int]) -> str:
    """``{"ai.onnx": 18, "com.microsoft": 1}`` as ``18, com.microsoft 1``: the default domain's
    version first and bare, as ONNX tools print it."""
    default = [str(v) for d, v in opsets.items() if d == "ai.onnx"]
    return ", ".join(default + [f"{d} {v}" for d, v in opsets.items() if d != "ai.onnx"])


def describe_lines(info: dict[str, Any]) -> list[str]:
    """:func:`describe_onnx`'s dict as the ``inspect`` command prints it.

    Raises:
        BiRNNExportError: the file's birnn-export metadata is unreadable (re-export it).
    """
    path = info["path"]
    spec = info["metadata"].get(METADATA_KEY)
    parsed = None
    if spec is not None:
        try:
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
            parsed = GraphSpec.from_json(json.dumps(spec))
        except BiRNNExportError as exc:
            raise BiRNNExportError(f"{path}: {exc}") from None
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise BiRNNExportError(
                f"{path}: unreadable {METADATA_KEY} metadata ({exc}); re-export the model"
            ) from None
    out = [f"{path}  ({size_text(info['file_size'])}, {info['producer']})"]
    out.append(f"opset: {opset_text(info['opsets'])} (IR version {info['ir_version']})")
    width = max(12, *(len(v["name"]) for v in (*info["inputs"], *info["outputs"])))
    unread = set(info.get("unread_inputs", ()))
    for kind in ("inputs", "outputs"):
        out.append(f"{kind}:")
        for value in info[kind]:
            dims = dims_text(value["dims"])
            ignored = "  (read by no node: any values of its shape)" * (value["name"] in unread)
            out.append(f"  {value['name']:<{width}} {value['dtype']:<8} {dims}{ignored}")
    out.append("ops: " + ", ".join(f"{op} x{n}" for op, n in info["op_counts"].items()))
    if info["recurrent_nodes"]:
        out.append("recurrent nodes:")
        precision = parsed.dtype if parsed is not None else _graph_dtype(info)
        for node in info["recurrent_nodes"]:
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(node["attributes"].items()))
            if node.get("dtype") and node["dtype"] != precision:  # a float32 island
                attrs += f", computes in {node['dtype']}"
            out.append(f"  {node['op']:<15} {node['name']}: {attrs}")
    if parsed is not None:
        out += _recorded(spec, parsed)
        out += [f"  changed after export: {c}" for c in info.get("changed_after_export", ())]
    elif info["producer"].startswith("birnn-export"):
        out.append(f"metadata: none ({_no_spec_text(info)})")
    shown = (  # the lines above say these already (users66 F12)
        {
            "birnn_export.version": spec["tool_version"],
            "birnn_export.layout": spec["layout"],
            "birnn_export.source_sha256": spec.get("source_sha256"),
        }
        if parsed is not None
        else {}
    )
    others = {k: v for k, v in info["metadata"].items() if k != METADATA_KEY and shown.get(k) != v}
    out += [f"  {key}: {value}" for key, value in others.items()]
    return out


def _type_name(elem_type: int) -> str:
    """An ONNX element type's name in lower case (``int8``: DynamicQuantizeLSTM's weights)."""
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return "other"


def _graph_dtype(info: dict[str, Any]) -> str | None:
    """The float type of the graph's float inputs and outputs (its precision), if any."""
    values = [*info["inputs"], *info["outputs"]]
    floats = [v["dtype"] for v in values if v["dtype"].startswith("float")]
    return floats[0] if floats else None


_MASK_SENSE = {"mask": " (1 at each row's valid steps)", "padding_mask": " (1 past each row's end)"}


def _recorded(spec: dict[str, Any], parsed: GraphSpec) -> list[str]:
    out = ["recorded by birnn-export:"]
    for value, tensor in zip(spec["inputs"], parsed.inputs, strict=True):
        valid = f", values {value['low']}..{value['high']}" if value["low"] is not None else ""
        sense = _MASK_SENSE.get(value["role"], "")
        if tensor.within is not None:
            sense += f" of each step of {tensor.within} (a sequence nested in it)"
        out.append(f"  input {value['name']}: {value['role']}{sense}{valid}")
    if parsed.token_padding is not None:
        out.append(f"  token rows are padded with id {parsed.token_padding} (no lengths input)")
    if parsed.container is not None:
        out.append(f"  the model's {Container.from_dict(parsed.container).describe()}")
    out += [
        f"  output {t.name}: CRF tags, -1 past each row's length"
        for t in parsed.outputs
        if t.role == "tags"
    ]
    out += [
        f"  output {t.name}: CTC scores, blank {t.ctc_blank} (an int8 graph is judged by their "
        "greedy decodes)"
        for t in parsed.outputs
        if t.ctc_blank is not None
    ]
    out += [f"  note: {note}" for note in batch_not_first_note(parsed)]
    out.append(
        f"  layout {spec['layout']}, dtype {spec['dtype']}"
        + (f" ({spec['quantization']})" if spec.get("quantization") else "")
        + ", padding value "
        f"{spec['padding_value']}, tool {spec['tool_version']}"
    )
    recorded = "batch_range" in spec and "seq_range" in spec
    declared = "" if recorded else " (not all recorded in this file: defaults filled in)"
    ranges = ", ".join(f"{name} {','.join(map(str, r))}" for name, r in parsed.ranges().items())
    out.append(
        f"  serving ranges (min,opt,max): {ranges}{declared}: the default TensorRT profile; "
        f"batch dim {parsed.batch_dim!r}, time dim {parsed.time_dim!r}"
    )
    if parsed.untraced:
        points = "; ".join(", ".join(f"{d} {s}" for d, s in p.items()) for p in parsed.untraced)
        out.append(
            "  sizes the default verification also runs, where torch.export assumed the model "
            f"takes the traced branch: {points}"
        )
    out += [f"  torch.export assumed {entry['words']}" for entry in parsed.assumed]
    if spec.get("source_sha256"):
        out.append(f"  source sha256 {spec['source_sha256']}")
    if spec.get("config"):
        out.append(f"  config {json.dumps(spec['config'])}")
    return out
