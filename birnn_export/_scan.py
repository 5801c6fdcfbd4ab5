"""The ``scan`` layout: every ONNX ``RNN`` node rewritten as a ``Scan`` loop, exactly.

ONNX Runtime's ``RNN`` kernel is slow at batch 8 and above (README, "Graph layouts and speed";
``scripts/bench_scan_form.py``). The same layer as one ``Scan`` whose body is one batched MatMul
of all directions' states ([D, B, H] x [D, H, H]) and a ``Tanh`` or ``Relu``, with every step's
input projection hoisted out of the loop as one MatMul, ran 1.6x to 2.4x as fast at B = 8 and 32
and 1.2x at B = 1. Batch and time stay symbolic and nothing is unrolled.

Semantics are the ``RNN`` node's, ``sequence_lens`` included: the reverse direction reads each
row's valid prefix reversed (``ReverseSequence``, as the node does); past a row's length a
per-step mask holds the row's state and writes zeros, so ``Y`` is zero there and ``Y_h`` is the
state at the row's last valid step, in both directions. LSTM and GRU nodes are left as they are
(a Scan was slower than ONNX Runtime's GRU kernel everywhere, and no faster for LSTM's).

Each Scan keeps the ``RNN`` node's name (``rnn/l0``) and records, in its body's
``metadata_props`` (:data:`SCAN_KEY`), which node it replaces and the name of its ``Y``, so
layer checks and ``inspect`` find the layer as before.
"""

from __future__ import annotations

import json
from typing import Any

from birnn_export.spec import all_nodes

#: ``metadata_props`` key of a Scan written here: JSON ``{"op": "RNN", "y": ..., "lengths": ...}``.
SCAN_KEY = "birnn_export.rnn_scan"
_ACTIVATIONS = {"Tanh", "Relu"}


def is_rnn_scan(node: Any) -> bool:
    """Whether ``node`` is a Scan :func:`scan_rnn_nodes` wrote in place of an ``RNN`` node."""
    return node.op_type == "Scan" and _record(node) is not None


def rnn_scan_info(node: Any) -> dict[str, Any]:
    """What :func:`scan_rnn_nodes` recorded on ``node``: its ``Y``, whether it took lengths."""
    return dict(json.loads(_record(node) or "{}"))


def rnn_scan_parts(nodes: Any) -> set[str]:
    """Names of the main-graph nodes :func:`scan_rnn_nodes` added around each loop (its input
    projection, masks, reversals): parts of that RNN layer, not ops of their own."""
    prefixes = tuple(f"{n.name}/scan/" for n in nodes if is_rnn_scan(n))
    return {n.name for n in nodes if prefixes and n.name.startswith(prefixes)}


def _record(node: Any) -> str | None:
    """The record lives in the loop body's ``metadata_props``: ONNX Runtime's quantizer drops a
    node's own but keeps the body it does not touch."""
    for attr in node.attribute:
        if attr.name == "body":
            return next((p.value for p in attr.g.metadata_props if p.key == SCAN_KEY), None)
    return None


def scan_rnn_nodes(proto: Any) -> int:
    """Replace every ``RNN`` node of ``proto``'s main graph by its Scan form, in place.

    Needs the weights as initializers (what birnn-export emits), float32 or float16; the loop
    computes in the node's own type. Returns how many nodes were replaced.

    Raises:
        ValueError: an ``RNN`` node this rewrite cannot express exactly (``clip``, an
            activation other than Tanh and Relu, batch-major ``layout``, weights not constant).
    """
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input} | set(initializers)
    rewritten: list[Any] = []
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type != "RNN" or node.domain not in ("", "ai.onnx"):
            rewritten.append(node)
            continue
        rewritten.extend(_Rewrite(node, initializers, taken, graph).nodes())
        replaced |= set(node.input[1:4])
    del graph.node[:]
    graph.node.extend(rewritten)
    used = {name for node in all_nodes(graph) for name in node.input}
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # the RNN nodes' W, R, B now live on in their new forms
    return sum(1 for node in graph.node if is_rnn_scan(node))


def _i64(*values: int) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.int64)


class _Rewrite:
    """One ``RNN`` node's replacement: initializers go to the graph, nodes are returned."""

    def __init__(self, node: Any, initializers: dict[str, Any], taken: set[str], graph: Any):
        from onnx import helper

        self.node, self.graph, self.taken = node, graph, taken
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.base = node.name or node.output[0]
        inputs = [*node.input, "", "", ""][:6]
        self.x, w, r, b, self.lengths_in, self.h0 = inputs
        self.hidden = int(self.attrs["hidden_size"])
        direction = self.attrs.get("direction", b"forward")
        self.directions = {
            "forward": ["forward"],
            "reverse": ["reverse"],
            "bidirectional": ["forward", "reverse"],
        }[direction.decode() if isinstance(direction, bytes) else direction]
        activations = [
            a.decode() if isinstance(a, bytes) else a
            for a in self.attrs.get("activations", [b"Tanh"] * len(self.directions))
        ]
        if "clip" in self.attrs or int(self.attrs.get("layout", 0)) != 0:
            raise ValueError(f"RNN node {self.base!r}: clip and layout=1 are not supported")
        if len(set(activations)) != 1 or activations[0] not in _ACTIVATIONS:
            raise ValueError(f"RNN node {self.base!r}: activations {activations} not supported")
        self.activation = activations[0]
        self.w, self.r = (self._constant(initializers, name) for name in (w, r))
        self.elem = initializers[w].data_type  # float32, or float16 for an fp16 node
        self.b = self._constant(initializers, b) if b else None
        self.out: list[Any] = []

    def _constant(self, initializers: dict[str, Any], name: str) -> Any:
        from onnx import numpy_helper

        if name not in initializers:
            raise ValueError(f"RNN node {self.base!r}: {name!r} is not an initializer")
        return numpy_helper.to_array(initializers[name])

    def _fresh(self, suffix: str) -> str:
        name, i = f"{self.base}/scan/{suffix}", 1
        while name in self.taken:
            name, i = f"{self.base}/scan/{suffix}_{i}", i + 1
        self.taken.add(name)
        return name

    def _const(self, suffix: str, value: Any) -> str:
        from onnx import numpy_helper

        name = self._fresh(suffix)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _op(self, op: str, inputs: list[str], suffix: str, outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        names = [self._fresh(f"{suffix}_{k}" if outputs > 1 else suffix) for k in range(outputs)]
        self.out.append(helper.make_node(op, inputs, names, name=self._fresh(op), **attrs))
        return names if outputs > 1 else names[0]

    def nodes(self) -> list[Any]:
        import numpy as np
        from onnx import TensorProto, helper

        d, h = len(self.directions), self.hidden
        zero, one, two = (self._const(name, _i64(v)) for name, v in (("0", 0), ("1", 1), ("2", 2)))
        shape = self._op("Shape", [self.x], "x_shape")
        seq_batch = self._op("Slice", [shape, zero, two], "seq_batch")
        seq = self._op("Slice", [shape, zero, one], "seq")
        batch = self._op("Slice", [shape, one, two], "batch")
        if self.lengths_in:
            lengths = self._op("Cast", [self.lengths_in], "lengths", to=TensorProto.INT64)
        else:  # every row runs the whole sequence
            lengths = self._op("Expand", [seq, batch], "lengths")
        # Every step's input projection, all directions at once: [D, T, B, H].
        per_direction = []
        for k, direction in enumerate(self.directions):
            x = self.x
            if direction == "reverse":
                x = self._op(
                    "ReverseSequence", [x, lengths], "x_reversed", batch_axis=1, time_axis=0
                )
            per_direction.append(self._op("Unsqueeze", [x, zero], f"x{k}"))
        stacked = (
            per_direction[0] if d == 1 else self._op("Concat", per_direction, "x_stacked", axis=0)
        )
        flat = self._op(
            "Reshape", [stacked, self._const("flat", _i64(d, -1, self.w.shape[2]))], "x_flat"
        )
        projected = self._op(
            "MatMul",
            [flat, self._const("w_t", np.ascontiguousarray(self.w.transpose(0, 2, 1)))],
            "xw_flat",
        )
        d_name, h_name = self._const("d", _i64(d)), self._const("h", _i64(h))
        xw_shape = self._op("Concat", [d_name, seq_batch, h_name], "xw_shape", axis=0)
        xw = self._op("Reshape", [projected, xw_shape], "xw")
        if self.b is not None:  # both biases act on every step alike: outside the loop
            bias = (self.b[:, :h].astype(np.float32) + self.b[:, h:]).reshape(d, 1, 1, h)
            bias = bias.astype(self.b.dtype)
            xw = self._op("Add", [xw, self._const("bias", np.ascontiguousarray(bias))], "xw_biased")
        xw = self._op("Transpose", [xw], "xw_time_major", perm=[1, 0, 2, 3])
        # valid[t, 0, b, 0] = t < lengths[b], in the graph's float type
        steps = self._op(
            "Range",
            [
                self._const("start", np.asarray(0, np.int64)),
                self._op("Squeeze", [seq], "seq_scalar"),
                self._const("delta", np.asarray(1, np.int64)),
            ],
            "steps",
        )
        steps = self._op("Unsqueeze", [steps, self._const("step_axes", _i64(1, 2, 3))], "steps4")
        rows = self._op("Unsqueeze", [lengths, self._const("row_axes", _i64(0, 1, 3))], "lengths4")
        valid = self._op(
            "Cast", [self._op("Less", [steps, rows], "valid_bool")], "valid", to=self.elem
        )
        if self.h0:
            h0 = self.h0
        else:
            h0_shape = self._op("Concat", [d_name, batch, h_name], "h0_shape", axis=0)
            zero_value = helper.make_tensor("zero", self.elem, [1], [0.0])
            h0 = self._op("ConstantOfShape", [h0_shape], "h0", value=zero_value)
        recurrence = self._const("r_t", np.ascontiguousarray(self.r.transpose(0, 2, 1)))
        h_last, ys = self._op(
            "Scan",
            [h0, xw, valid],
            "scan",
            outputs=2,
            num_scan_inputs=2,
            body=self._body(recurrence),
        )
        scan = self.out[-1]
        scan.name = self.base
        y_name, yh_name = ([*self.node.output, "", ""])[:2]
        y = self._outputs(ys, lengths)
        self.out.append(
            helper.make_node("Identity", [y], [y_name or self._fresh("y")], name=self._fresh("Y"))
        )
        if yh_name:
            self.out.append(
                helper.make_node("Identity", [h_last], [yh_name], name=self._fresh("Y_h"))
            )
        info = {"op": "RNN", "y": y_name, "lengths": bool(self.lengths_in)}
        body = next(a.g for a in scan.attribute if a.name == "body")
        body.metadata_props.add(key=SCAN_KEY, value=json.dumps(info))
        return self.out

    def _body(self, recurrence: str) -> Any:
        """One step. Its names carry the layer's prefix: a body name equal to one of the outer
        graph's (an output called ``y``, say) would shadow it, which ONNX forbids."""
        from onnx import helper

        state = [len(self.directions), "batch", self.hidden]
        prefix = f"{self.base}/step/"

        def node(op: str, inputs: list[str], output: str) -> Any:
            names = [name if name == recurrence else prefix + name for name in inputs]
            return helper.make_node(op, names, [prefix + output])

        def value(name: str, dims: list[Any]) -> Any:
            return helper.make_tensor_value_info(prefix + name, self.elem, dims)

        nodes = [
            node("MatMul", ["h", recurrence], "hr"),
            node("Add", ["hr", "xw"], "pre"),
            node(self.activation, ["pre"], "h_new"),
            node("Sub", ["h_new", "h"], "change"),
            node("Mul", ["change", "valid"], "kept"),
            node("Add", ["h", "kept"], "h_out"),  # past a row's length: unchanged
            node("Mul", ["h_new", "valid"], "y"),  # ... and zeros written
        ]
        return helper.make_graph(
            nodes,
            f"{self.base}/step",
            [value("h", state), value("xw", state), value("valid", [1, "batch", 1])],
            [value("h_out", state), value("y", state)],
        )

    def _outputs(self, ys: str, lengths: str) -> str:
        """The Scan's [T, D, B, H] with reverse directions back in original time."""
        import numpy as np

        if "reverse" not in self.directions:
            return ys
        parts = (
            self._op(
                "Split",
                [ys, self._const("split", np.ones(len(self.directions), np.int64))],
                "y_dir",
                outputs=len(self.directions),
                axis=1,
            )
            if len(self.directions) > 1
            else [ys]
        )
        axis1 = self._const("axis1", np.asarray([1], np.int64))
        restored = []
        for part, direction in zip(parts, self.directions, strict=True):
            if direction == "reverse":
                part = self._op("Squeeze", [part, axis1], "y_reverse")
                part = self._op(
                    "ReverseSequence", [part, lengths], "y_restored", batch_axis=1, time_axis=0
                )
                part = self._op("Unsqueeze", [part, axis1], "y_reverse_4d")
            restored.append(part)
        return restored[0] if len(restored) == 1 else self._op("Concat", restored, "y", axis=1)
