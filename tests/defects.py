"""Defects planted in exported graphs, each a bug seen in practice (shared by the tests and
``scripts/measure_verification.py``).

Every function takes the path of a good export and writes the broken one to ``dst``; it returns
``None`` where the defect does not apply to that graph (no ``ReverseSequence`` to flip, no mask
to drop, no final state to move, no LSTM/GRU gates to swap).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from birnn_export.spec import GraphSpec

RECURRENT = ("LSTM", "GRU", "RNN")


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def nodes(proto: onnx.ModelProto, *ops: str) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type in ops]


def initializer(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in proto.graph.initializer if i.name == name)


def replace_initializer(proto: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    old = initializer(proto, name)
    dtype = numpy_helper.to_array(old).dtype
    old.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path


def _hidden(node: onnx.NodeProto) -> int:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "hidden_size")


def plant_whole_flip(
    src: Path, dst: Path, *, before: str | None = None, after: str | None = None
) -> Path | None:
    """The seed's Example 3: every ReverseSequence (or only the one feeding the node named
    ``before``, or reading the output of the one named ``after``) becomes a flip of the whole
    padded time axis."""
    proto = onnx.load(str(src))
    reversals = nodes(proto, "ReverseSequence")
    if before is not None:
        fed = {i for n in proto.graph.node if n.name == before for i in n.input}
        reversals = [n for n in reversals if n.output[0] in fed]
    if after is not None:  # its Y, squeezed
        made = {o for n in proto.graph.node if n.name == after for o in n.output}
        made |= {n.output[0] for n in nodes(proto, "Squeeze") if n.input[0] in made}
        reversals = [n for n in reversals if n.input[0] in made]
    if not reversals:
        return None
    graph = proto.graph
    starts = _const(graph, "flip_starts", np.array([-1], np.int64))
    ends = _const(graph, "flip_ends", np.array([np.iinfo(np.int64).min], np.int64))
    axes = _const(graph, "flip_axes", np.array([0], np.int64))
    steps = _const(graph, "flip_steps", np.array([-1], np.int64))
    for node in reversals:
        flip = helper.make_node(
            "Slice", [node.input[0], starts, ends, axes, steps], list(node.output), name=node.name
        )
        node.CopyFrom(flip)
    return _save(proto, dst)


def plant_missing_mask(src: Path, dst: Path) -> Path | None:
    """Drop the (first) Where that writes the padding value past each row's length."""
    proto = onnx.load(str(src))
    wheres = nodes(proto, "Where")
    if not wheres:
        return None
    where = wheres[0]
    kept, dropped = where.input[1], where.output[0]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == dropped:
                node.input[i] = kept
    for output in proto.graph.output:
        if output.name == dropped:
            return None
    proto.graph.node.remove(where)
    return _save(proto, dst)


def plant_dropped_masked_fill(src: Path, dst: Path) -> Path | None:
    """The first ``masked_fill`` (a Where) passes its input through unfilled: attention without
    its key padding mask (the padded keys' -inf), a convolution reading the features past each
    row's length that the model zeroes."""
    proto = onnx.load(str(src))
    fills = [n for n in nodes(proto, "Where") if "masked_fill" in n.name]
    if not fills:
        return None
    for node in proto.graph.node:
        node.input[:] = [fills[0].input[2] if i == fills[0].output[0] else i for i in node.input]
    proto.graph.node.remove(fills[0])
    return _save(proto, dst)


def _swap_first_gates(block: np.ndarray, hidden: int) -> None:
    first, second = slice(0, hidden), slice(hidden, 2 * hidden)
    if block.shape[0] >= 4 * hidden:  # LSTM: ONNX (i, o, f, c); swap o and f
        first, second = slice(hidden, 2 * hidden), slice(2 * hidden, 3 * hidden)
    block[first], block[second] = block[second].copy(), block[first].copy()


def plant_gate_swap(src: Path, dst: Path, *, node: int = 0, direction: int = 0) -> Path | None:
    """Swap two gate blocks (LSTM o and f, GRU z and r) of one recurrent node's input weights W
    (``direction`` 0 or 1 of a fused node)."""
    proto = onnx.load(str(src))
    recurrent = nodes(proto, "LSTM", "GRU")
    if not recurrent:
        return None
    target = recurrent[node]
    w = numpy_helper.to_array(initializer(proto, target.input[1])).copy()
    if direction >= w.shape[0]:
        return None
    _swap_first_gates(w[direction], _hidden(target))
    replace_initializer(proto, target.input[1], w)
    return _save(proto, dst)


def plant_last_layer_gate_swap(src: Path, dst: Path, direction: str) -> Path:
    """Swap two gate blocks of W in ONE direction of the last recurrent layer: its ``/forward``
    or ``/backward`` node (split layout) or that direction's slice of W (fused)."""
    proto = onnx.load(str(src))
    last = nodes(proto, "LSTM", "GRU")[-1]
    index = ("forward", "backward").index(direction)
    if last.name.endswith(("/forward", "/backward")):
        name = f"{last.name.rsplit('/', 1)[0]}/{direction}"
        position = next(i for i, n in enumerate(nodes(proto, "LSTM", "GRU")) if n.name == name)
        result = plant_gate_swap(src, dst, node=position)
    else:
        result = plant_gate_swap(src, dst, node=-1, direction=index)
    assert result is not None
    return result


def plant_unreversed_input(src: Path, dst: Path, *, node: int = -1) -> Path | None:
    """A split graph's backward node (the last) reads its input in time order: the
    ReverseSequence before it skipped (only where one feeds it)."""
    proto = onnx.load(str(src))
    backward = [n for n in nodes(proto, *RECURRENT) if n.name.endswith("/backward")]
    if not backward:
        return None
    target = backward[node]
    reversal = next(
        (n for n in nodes(proto, "ReverseSequence") if n.output[0] == target.input[0]), None
    )
    if reversal is None:
        return None
    target.input[0] = reversal.input[0]
    return _save(proto, dst)


def plant_swapped_concat(src: Path, dst: Path, output: str) -> Path | None:
    """The Concat that writes the graph output ``output`` (through slices: a model's final
    states of the two directions side by side, fairseq's combine_bidir) takes its first two
    inputs swapped."""
    proto = onnx.load(str(src))
    made_by = {o: n for n in proto.graph.node for o in n.output}
    concat = made_by.get(output)
    while concat is not None and concat.op_type in ("Slice", "Identity", "Reshape"):
        concat = made_by.get(concat.input[0])  # the empty-batch guard's Slice, say
    if concat is None or concat.op_type != "Concat" or len(concat.input) < 2:
        return None
    concat.input[0], concat.input[1] = concat.input[1], concat.input[0]
    return _save(proto, dst)


def plant_state_at_last_step(src: Path, dst: Path) -> Path | None:
    """Take the forward node's final state from Y at T - 1, not at each row's last step (only
    where the graph returns final states)."""
    proto = onnx.load(str(src))
    if not any(o.name in ("h_n", "c_n") for o in proto.graph.output):
        return None
    node = nodes(proto, *RECURRENT)[0]
    y, y_h = node.output[0], node.output[1]
    node.output[1] = "y_h_unused"
    index = _const(proto.graph, "last_step", np.array(-1, np.int64))
    gather = helper.make_node("Gather", [y, index], [y_h], axis=0, name="state_at_T_minus_1")
    position = list(proto.graph.node).index(node) + 1
    proto.graph.node.insert(position, gather)
    return _save(proto, dst)


def plant_baked_length(src: Path, dst: Path) -> Path | None:
    """Declare the first input's time dim static (the example length), as stock export does."""
    proto = onnx.load(str(src))
    spec = GraphSpec.from_onnx(proto)
    tensor = spec.inputs[0]
    if tensor.time_axis is None:
        return None
    dim = proto.graph.input[0].type.tensor_type.shape.dim[tensor.time_axis]
    dim.Clear()
    dim.dim_value = spec.example_seq
    return _save(proto, dst)


def plant_recurrent_perturbation(
    src: Path, dst: Path, node: int = -1, *, absolute: float = 1e-3, relative: float = 0.0
) -> Path:
    """``R * (1 + relative) + absolute`` on one recurrent node's recurrent weights R."""
    proto = onnx.load(str(src))
    name = nodes(proto, *RECURRENT)[node].input[2]
    r = numpy_helper.to_array(initializer(proto, name)).astype(np.float64)
    replace_initializer(proto, name, r * (1 + relative) + absolute)
    return _save(proto, dst)


def plant_missing_sequence_lens(src: Path, dst: Path, *, node: int = 0) -> Path | None:
    """Feed one recurrent node (the first) no ``sequence_lens`` (only where it had them)."""
    proto = onnx.load(str(src))
    node = nodes(proto, *RECURRENT)[node]
    if len(node.input) <= 4 or not node.input[4]:
        return None
    node.input[4] = ""
    return _save(proto, dst)


def plant_missing_initial_states(src: Path, dst: Path, *, node: int = 0) -> Path | None:
    """Start one recurrent node (the first) from zeros: its ``initial_h`` (and ``initial_c``)
    dropped, where it was given them."""
    proto = onnx.load(str(src))
    node = nodes(proto, *RECURRENT)[node]
    if len(node.input) <= 5 or not node.input[5]:
        return None
    for index in range(5, min(len(node.input), 7)):
        node.input[index] = ""
    return _save(proto, dst)


#: Every defect by name: ``(planting function, what it stands for)``.
DEFECTS: dict[str, tuple[Callable[[Path, Path], Path | None], str]] = {
    "whole flip": (plant_whole_flip, "seed Example 3: the padded tensor flipped as a whole"),
    "no mask": (plant_missing_mask, "no padding mask after the recurrent layers"),
    "gate swap": (plant_gate_swap, "two gate blocks swapped in the first layer"),
    "state at T-1": (plant_state_at_last_step, "final state taken at the last padded step"),
    "baked length": (plant_baked_length, "the example length declared static"),
    "R +1e-3": (plant_recurrent_perturbation, "+1e-3 on every element of the last R"),
    "R x(1+1e-4) last": (
        lambda src, dst: plant_recurrent_perturbation(src, dst, -1, absolute=0, relative=1e-4),
        "+1e-4 relative on the last layer's R",
    ),
    "R x(1+1e-4) first": (
        lambda src, dst: plant_recurrent_perturbation(src, dst, 0, absolute=0, relative=1e-4),
        "+1e-4 relative on the first (lowest) layer's R",
    ),
    "no sequence_lens": (plant_missing_sequence_lens, "a recurrent node fed no sequence_lens"),
}
