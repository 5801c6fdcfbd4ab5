"""Edits of an exported ONNX graph that engines need: each one names the engine behaviour it
works around and keeps the graph's results the same."""

from __future__ import annotations

from typing import Any

from birnn_export.spec import GraphSpec, all_nodes

#: Value a dummy row holds, per input role (a lengths row of 1 is the shortest valid one).
_FILL = {"lengths": 1, "tokens": 0, "features": 0.0}


def guard_empty_batch(proto: Any, spec: GraphSpec) -> bool:
    """Run an empty batch as one row of padding and return empty outputs.

    ONNX Runtime 1.32's CPU kernels for LSTM and GRU crash the process (SIGSEGV) on a batch of
    0 rows. The graph therefore appends ``1 - min(batch, 1)`` rows to every input with a batch
    axis (one row of padding, a valid token id or length 1, when the batch is empty; none
    otherwise) and cuts every output with a batch axis back to ``batch`` rows. For any other
    batch size both are no-ops on the data (a Concat with zero rows and a Slice of all rows).
    Returns whether the graph was changed (it needs an input with a batch axis).
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    batched = [t for t in spec.inputs if t.batch_axis is not None]
    if not batched:
        return False
    elem = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    taken = {n.name for n in all_nodes(graph)} | {o for n in all_nodes(graph) for o in n.output}
    taken |= {i.name for i in graph.input} | {i.name for i in graph.initializer}

    def fresh(base: str) -> str:
        name, i = f"empty_batch/{base}", 1
        while name in taken:
            name, i = f"empty_batch/{base}_{i}", i + 1
        taken.add(name)
        return name

    def const(base: str, value: int) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(_int64([value]), name))
        return name

    def node(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = fresh(base)
        nodes.append(helper.make_node(op, inputs, [out], name=fresh(f"{base}/{op}"), **attrs))
        return out

    nodes: list[Any] = []
    one, zero, big = const("one", 1), const("zero", 0), const("end", 1 << 62)
    first = batched[0]
    shape = node("Shape", [first.name], "shape")
    batch = node("Gather", [shape, const("axis", first.batch_axis)], "batch", axis=0)
    pad = node("Sub", [one, node("Min", [batch, one], "at_most_one")], "pad")
    renamed = {}
    for tensor in batched:
        axis, rank = tensor.batch_axis, len(tensor.dims)
        dims = node("Shape", [tensor.name], f"{tensor.name}/shape")
        parts = (
            [node("Slice", [dims, zero, const("stop", axis)], f"{tensor.name}/head")]
            if axis
            else []
        )
        parts.append(pad)
        if axis < rank - 1:
            parts.append(
                node("Slice", [dims, const("start", axis + 1), big], f"{tensor.name}/tail")
            )
        value = helper.make_tensor("value", elem[tensor.name], [1], [_FILL.get(tensor.role, 0)])
        filler = node(
            "ConstantOfShape",
            [node("Concat", parts, f"{tensor.name}/filler_shape", axis=0)],
            f"{tensor.name}/filler",
            value=value,
        )
        renamed[tensor.name] = node("Concat", [tensor.name, filler], f"{tensor.name}", axis=axis)
    for existing in graph.node:
        for i, name in enumerate(existing.input):
            if name in renamed:
                existing.input[i] = renamed[name]
    cuts = []
    batch_outputs = {t.name: t for t in spec.outputs if t.batch_axis is not None}
    for output in graph.output:
        tensor = batch_outputs.get(output.name)
        if tensor is None:
            continue
        inner = fresh(f"{output.name}/rows")
        for existing in all_nodes(graph):
            for field in (existing.output, existing.input):
                for i, name in enumerate(field):
                    if name == output.name:
                        field[i] = inner
        cuts.append(
            helper.make_node(
                "Slice",
                [inner, zero, batch, const("batch_axis", tensor.batch_axis)],
                [output.name],
                name=fresh(f"{output.name}/Slice"),
            )
        )
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *kept, *cuts])
    return True


def _int64(values: list[int]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.int64)
