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

An LSTM with ``proj_size`` (``nn.LSTM(proj_size=...)``, which ONNX's ``LSTM`` cannot express) is
traced as a ``birnn_export.LSTMP`` node and always rewritten here (:func:`scan_lstmp_nodes`), in
every layout: the same loop, with the LSTM cell and its projection ``h = P (o * tanh(c))`` as the
body, and ``c`` a second state held past each row's length like ``h``.

Each Scan keeps the ``RNN`` node's name (``rnn/l0``) and records, in its body's
``metadata_props`` (:data:`SCAN_KEY`), which node it replaces and the name of its ``Y``, so
layer checks and ``inspect`` find the layer as before.
"""

from __future__ import annotations

import json
from typing import Any

from birnn_export._node_rewrite import NodeRewrite, i64, replace_nodes

#: ``metadata_props`` key of a Scan written here: JSON ``{"op": "RNN", "y": ..., "lengths": ...,
#: "hidden_size": ..., "direction": ...}`` (``"op": "LSTM"`` and ``"proj_size"`` for an LSTMP;
#: files before 0.3.0 hold only the first three).
SCAN_KEY = "birnn_export.rnn_scan"
_ACTIVATIONS = {"Tanh", "Relu"}


#: The two Scan nodes of one CRF decoder (:func:`birnn_export.crf.expand_viterbi`) are named
#: ``<path>/viterbi/forward`` and ``<path>/viterbi/backtrace``; graph checks allow exactly
#: these loops.
VITERBI_SCANS = ("/viterbi/forward", "/viterbi/backtrace")


def is_viterbi_scan(node: Any) -> bool:
    """Whether ``node`` is one of the Scans :func:`birnn_export.crf.expand_viterbi` writes."""
    return node.op_type == "Scan" and node.name.endswith(VITERBI_SCANS)


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


def scan_lstmp_nodes(proto: Any) -> int:
    """Replace every ``birnn_export.LSTMP`` node (an LSTM with ``proj_size``) of ``proto``'s
    main graph by its Scan form, in place; returns how many. Every export does this: the node
    is this package's own and no engine runs it."""
    from birnn_export.modules import LSTMP_DOMAIN

    count = replace_nodes(
        proto, {"LSTMP"}, lambda node, *context: _Rewrite(node, *context).nodes(), LSTMP_DOMAIN
    )
    kept = [o for o in proto.opset_import if o.domain != LSTMP_DOMAIN]  # no node of it is left
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return count


class _Rewrite(NodeRewrite):
    """One ``RNN`` node's replacement: initializers go to the graph, nodes are returned."""

    def __init__(self, node: Any, initializers: dict[str, Any], taken: set[str], graph: Any):
        super().__init__(node, initializers, taken, graph, "scan")
        self.x, self.lengths_in, self.h0 = (self.inputs[k] for k in ("x", "lengths", "h0"))
        self.w, self.r, self.b = (self.constant(role) for role in ("w", "r", "b"))
        self.lstmp = node.op_type == "LSTMP"
        self.gates = 4 if self.lstmp else 1
        if self.lstmp:
            self.proj = self.constant("p")  # [D, proj_size, hidden]
            self.units = int(self.attrs["proj_size"])
            return
        self.units = self.hidden
        activations = [
            a.decode() if isinstance(a, bytes) else a
            for a in self.attrs.get("activations", [b"Tanh"] * len(self.directions))
        ]
        if "clip" in self.attrs or int(self.attrs.get("layout", 0)) != 0:
            raise ValueError(f"RNN node {self.base!r}: clip and layout=1 are not supported")
        if len(set(activations)) != 1 or activations[0] not in _ACTIVATIONS:
            raise ValueError(f"RNN node {self.base!r}: activations {activations} not supported")
        self.activation = activations[0]

    def nodes(self) -> list[Any]:
        import numpy as np
        from onnx import TensorProto, helper

        d, h, gh, units = len(self.directions), self.hidden, self.gates * self.hidden, self.units
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
        d_name, gh_name = self.const("d", i64(d)), self.const("gh", i64(gh))
        xw_shape = self.op("Concat", [d_name, seq_batch, gh_name], "xw_shape", axis=0)
        xw = self.op("Reshape", [projected, xw_shape], "xw")
        if self.b is not None:  # both biases act on every step alike: outside the loop
            bias = (self.b[:, :gh].astype(np.float32) + self.b[:, gh:]).reshape(d, 1, 1, gh)
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
        states = [self._initial(self.h0, "h0", units, batch)]
        outer = {"r_t": self.const("r_t", np.ascontiguousarray(self.r.transpose(0, 2, 1)))}
        if self.lstmp:
            states.append(self._initial(self.inputs["c0"], "c0", h, batch))
            outer["p_t"] = self.const("p_t", np.ascontiguousarray(self.proj.transpose(0, 2, 1)))
            outer["gate_sizes"] = self.const("gate_sizes", i64(h, h, h, h))
        *finals, ys = self.op(
            "Scan",
            [*states, xw, valid],
            "scan",
            outputs=len(states) + 1,
            num_scan_inputs=2,
            body=self._lstmp_body(outer) if self.lstmp else self._body(outer["r_t"]),
        )
        scan = self.out[-1]
        scan.name = self.base
        y_name, *state_names = ([*self.node.output, "", "", ""])[: 1 + len(states)]
        y = self._outputs(ys, lengths)
        self.out.append(
            helper.make_node("Identity", [y], [y_name or self.fresh("y")], name=self.fresh("Y"))
        )
        for final, name, label in zip(finals, state_names, ("Y_h", "Y_c"), strict=False):
            if name:
                self.out.append(
                    helper.make_node("Identity", [final], [name], name=self.fresh(label))
                )
        direction = self.attrs.get("direction", b"forward")
        info: dict[str, Any] = {
            "op": "LSTM" if self.lstmp else "RNN",
            "x": self.node.input[0],
            "y": y_name,
            "lengths": bool(self.lengths_in),
            "hidden_size": h,
            "direction": direction.decode() if isinstance(direction, bytes) else direction,
        }
        if self.lstmp:
            info["proj_size"] = units
        body = next(a.g for a in scan.attribute if a.name == "body")
        body.metadata_props.add(key=SCAN_KEY, value=json.dumps(info))
        return self.out

    def _initial(self, given: str, suffix: str, units: int, batch: str) -> str:
        """The node's initial state input, or zeros ``[D, B, units]``."""
        from onnx import helper

        if given:
            return given
        dims = [self.const("d", i64(len(self.directions))), batch, self.const("units", i64(units))]
        shape = self.op("Concat", dims, f"{suffix}_shape", axis=0)
        zero = helper.make_tensor("zero", self.elem, [1], [0.0])
        return self.op("ConstantOfShape", [shape], suffix, value=zero)

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

    def _lstmp_body(self, outer: dict[str, str]) -> Any:
        """One LSTM step with its projection, in ONNX gate order (i, o, f, c): ``c`` and the
        projected ``h`` are held past each row's length, where ``y`` is zero."""
        from onnx import helper

        d = len(self.directions)
        prefix = f"{self.base}/step/"
        kept = set(outer.values())

        def node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
            names = [name if name in kept else prefix + name for name in inputs]
            return helper.make_node(op, names, [prefix + o for o in outputs], **attrs)

        def value(name: str, units: int) -> Any:
            return helper.make_tensor_value_info(prefix + name, self.elem, [d, "batch", units])

        gates = ["i", "o", "f", "g"]
        nodes = [
            node("MatMul", ["h", outer["r_t"]], ["hr"]),
            node("Add", ["hr", "xw"], ["pre"]),
            node("Split", ["pre", outer["gate_sizes"]], [f"{g}_pre" for g in gates], axis=2),
            *(node("Sigmoid", [f"{g}_pre"], [g]) for g in gates[:3]),
            node("Tanh", ["g_pre"], ["g"]),
            node("Mul", ["f", "c"], ["fc"]),
            node("Mul", ["i", "g"], ["ig"]),
            node("Add", ["fc", "ig"], ["c_new"]),
            node("Tanh", ["c_new"], ["c_act"]),
            node("Mul", ["o", "c_act"], ["m"]),
            node("MatMul", ["m", outer["p_t"]], ["h_new"]),
        ]
        for state in ("h", "c"):  # past a row's length: unchanged
            nodes += [
                node("Sub", [f"{state}_new", state], [f"{state}_change"]),
                node("Mul", [f"{state}_change", "valid"], [f"{state}_kept"]),
                node("Add", [state, f"{state}_kept"], [f"{state}_out"]),
            ]
        nodes.append(node("Mul", ["h_new", "valid"], ["y"]))  # ... and zeros written
        valid = helper.make_tensor_value_info(prefix + "valid", self.elem, [1, "batch", 1])
        return helper.make_graph(
            nodes,
            f"{self.base}/step",
            [value("h", self.units), value("c", self.hidden), value("xw", 4 * self.hidden), valid],
            [value("h_out", self.units), value("c_out", self.hidden), value("y", self.units)],
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
