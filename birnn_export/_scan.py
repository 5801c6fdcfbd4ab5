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

from birnn_export._node_rewrite import NodeRewrite, i64, replace_nodes

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
    return replace_nodes(proto, {"RNN"}, lambda node, *context: _Rewrite(node, *context).nodes())


class _Rewrite(NodeRewrite):
    """One ``RNN`` node's replacement: initializers go to the graph, nodes are returned."""

    def __init__(self, node: Any, initializers: dict[str, Any], taken: set[str], graph: Any):
        super().__init__(node, initializers, taken, graph, "scan")
        self.x, self.lengths_in, self.h0 = (self.inputs[k] for k in ("x", "lengths", "h0"))
        activations = [
            a.decode() if isinstance(a, bytes) else a
            for a in self.attrs.get("activations", [b"Tanh"] * len(self.directions))
        ]
        if "clip" in self.attrs or int(self.attrs.get("layout", 0)) != 0:
            raise ValueError(f"RNN node {self.base!r}: clip and layout=1 are not supported")
        if len(set(activations)) != 1 or activations[0] not in _ACTIVATIONS:
            raise ValueError(f"RNN node {self.base!r}: activations {activations} not supported")
        self.activation = activations[0]
        self.w, self.r, self.b = (self.constant(role) for role in ("w", "r", "b"))

    def nodes(self) -> list[Any]:
        import numpy as np
        from onnx import TensorProto, helper

        d, h = len(self.directions), self.hidden
        zero, one, two = (self.const(name, i64(v)) for name, v in (("0", 0), ("1", 1), ("2", 2)))
        shape = self.op("Shape", [self.x], "x_shape")
        seq_batch = self.op("Slice", [shape, zero, two], "seq_batch")
        seq = self.op("Slice", [shape, zero, one], "seq")
        batch = self.op("Slice", [shape, one, two], "batch")
        if self.lengths_in:
            lengths = self.op("Cast", [self.lengths_in], "lengths", to=TensorProto.INT64)
        else:  # every row runs the whole sequence
            lengths = self.op("Expand", [seq, batch], "lengths")
        # Every step's input projection, all directions at once: [D, T, B, H].
        per_direction = []
        for k, direction in enumerate(self.directions):
            x = self.x
            if direction == "reverse":
                x = self.op(
                    "ReverseSequence", [x, lengths], "x_reversed", batch_axis=1, time_axis=0
                )
            per_direction.append(self.op("Unsqueeze", [x, zero], f"x{k}"))
        stacked = (
            per_direction[0] if d == 1 else self.op("Concat", per_direction, "x_stacked", axis=0)
        )
        flat = self.op(
            "Reshape", [stacked, self.const("flat", i64(d, -1, self.w.shape[2]))], "x_flat"
        )
        projected = self.op(
            "MatMul",
            [flat, self.const("w_t", np.ascontiguousarray(self.w.transpose(0, 2, 1)))],
            "xw_flat",
        )
        d_name, h_name = self.const("d", i64(d)), self.const("h", i64(h))
        xw_shape = self.op("Concat", [d_name, seq_batch, h_name], "xw_shape", axis=0)
        xw = self.op("Reshape", [projected, xw_shape], "xw")
        if self.b is not None:  # both biases act on every step alike: outside the loop
            bias = (self.b[:, :h].astype(np.float32) + self.b[:, h:]).reshape(d, 1, 1, h)
            bias = bias.astype(self.b.dtype)
            xw = self.op("Add", [xw, self.const("bias", np.ascontiguousarray(bias))], "xw_biased")
        xw = self.op("Transpose", [xw], "xw_time_major", perm=[1, 0, 2, 3])
        # valid[t, 0, b, 0] = t < lengths[b], in the graph's float type
        steps = self.op(
            "Range",
            [
                self.const("start", np.asarray(0, np.int64)),
                self.op("Squeeze", [seq], "seq_scalar"),
                self.const("delta", np.asarray(1, np.int64)),
            ],
            "steps",
        )
        steps = self.op("Unsqueeze", [steps, self.const("step_axes", i64(1, 2, 3))], "steps4")
        rows = self.op("Unsqueeze", [lengths, self.const("row_axes", i64(0, 1, 3))], "lengths4")
        valid = self.op(
            "Cast", [self.op("Less", [steps, rows], "valid_bool")], "valid", to=self.elem
        )
        if self.h0:
            h0 = self.h0
        else:
            h0_shape = self.op("Concat", [d_name, batch, h_name], "h0_shape", axis=0)
            zero_value = helper.make_tensor("zero", self.elem, [1], [0.0])
            h0 = self.op("ConstantOfShape", [h0_shape], "h0", value=zero_value)
        recurrence = self.const("r_t", np.ascontiguousarray(self.r.transpose(0, 2, 1)))
        h_last, ys = self.op(
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
            helper.make_node("Identity", [y], [y_name or self.fresh("y")], name=self.fresh("Y"))
        )
        if yh_name:
            self.out.append(
                helper.make_node("Identity", [h_last], [yh_name], name=self.fresh("Y_h"))
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
            self.op(
                "Split",
                [ys, self.const("split", np.ones(len(self.directions), np.int64))],
                "y_dir",
                outputs=len(self.directions),
                axis=1,
            )
            if len(self.directions) > 1
            else [ys]
        )
        axis1 = self.const("axis1", np.asarray([1], np.int64))
        restored = []
        for part, direction in zip(parts, self.directions, strict=True):
            if direction == "reverse":
                part = self.op("Squeeze", [part, axis1], "y_reverse")
                part = self.op(
                    "ReverseSequence", [part, lengths], "y_restored", batch_axis=1, time_axis=0
                )
                part = self.op("Unsqueeze", [part, axis1], "y_reverse_4d")
            restored.append(part)
        return restored[0] if len(restored) == 1 else self.op("Concat", restored, "y", axis=1)
