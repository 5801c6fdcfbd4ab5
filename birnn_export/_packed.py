"""The ``packed`` layout: each recurrent node with ``sequence_lens`` runs only the rows still
going, as torch's layers on a ``PackedSequence`` do.

ONNX Runtime's LSTM, GRU and RNN kernels compute every row up to the batch's longest, so a
ragged batch pays for its padding (README, "Graph layouts and speed"). Here the rows are
sorted by length, longest first (``TopK``), and time is cut into :data:`CHUNKS` equal spans of
the longest row's length; span ``c`` runs a forward node over only the rows longer than its
start (a prefix of the sorted rows), carrying each row's state from the span before. The
reverse direction is the same over ``ReverseSequence``'d rows, as the node itself reads them.
Outputs are put back in the rows' order. Nothing is unrolled per step: a layer has
``CHUNKS`` nodes per direction whatever the length, and batch and time stay symbolic.

A span past the longest row (a batch shorter than :data:`CHUNKS` steps) runs zero steps on one
row, and its state is discarded (``Where``): ONNX Runtime returns zeros, not the initial state,
for zero steps. There is no ``If`` or ``Loop``: TensorRT cannot build recurrent nodes inside
either (its builder asserts), and it builds this form.

Semantics are the node's: ``Y`` is zero past each row's length and ``Y_h`` (``Y_c``) is the
state at the row's last step, in both directions; ``initial_h`` (``initial_c``) and LSTM's
peepholes are kept. The layer's ``Y`` comes from a ``Gather`` node that keeps the replaced
node's name, marked with :data:`PACKED_KEY`, so layer checks find the layer.
"""

from __future__ import annotations

import json
from typing import Any

from birnn_export._node_rewrite import NodeRewrite, i64, replace_nodes

#: Time spans per layer: more skip more padding, fewer add fewer nodes (4 and 8 measured alike).
CHUNKS = 4
#: ``metadata_props`` key on the node that outputs a packed layer's ``Y``.
PACKED_KEY = "birnn_export.packed"
_STATES = {"LSTM": ("h", "c"), "GRU": ("h",), "RNN": ("h",)}


def is_packed_layer(node: Any) -> bool:
    """Whether ``node`` outputs the ``Y`` of a layer :func:`pack_recurrent_nodes` rewrote."""
    return any(p.key == PACKED_KEY for p in node.metadata_props)


def pack_recurrent_nodes(proto: Any, chunks: int = CHUNKS) -> int:
    """Rewrite every ``LSTM``, ``GRU`` and ``RNN`` node of ``proto``'s main graph that takes
    ``sequence_lens`` into its packed form, in place (a node without lengths runs every row
    to the end anyway and is kept). Returns how many nodes were rewritten.

    Raises:
        ValueError: a node this rewrite cannot express (``layout=1``; weights not constant).
    """

    def rewrite(node: Any, *context: Any) -> list[Any] | None:
        if len(node.input) <= 4 or not node.input[4]:
            return None
        return _Packed(node, *context, chunks=chunks).nodes()

    return replace_nodes(proto, set(_STATES), rewrite)


class _Packed(NodeRewrite):
    def __init__(
        self, node: Any, initializers: dict[str, Any], taken: set[str], graph: Any, chunks: int
    ) -> None:
        super().__init__(node, initializers, taken, graph, "packed")
        if int(self.attrs.get("layout", 0)) != 0:
            raise ValueError(f"{node.op_type} node {self.base!r}: layout=1 is not supported")
        self.chunks = chunks
        self.states = _STATES[node.op_type]
        # Each direction's weights, as initializers of their own: [1, ...] slices of [D, ...].
        self.weights = [
            [
                self.const(f"{role}{d}", array[d : d + 1]) if array is not None else ""
                for role, array in ((r, self.constant(r)) for r in ("w", "r", "b", "p"))
            ]
            for d in range(len(self.directions))
        ]
        if {"activation_alpha", "activation_beta"} & set(self.attrs):
            raise ValueError(
                f"{node.op_type} node {self.base!r}: activation_alpha and _beta are not supported"
            )
        # Each direction's node takes its own share of the activations.
        activations = self.attrs.pop("activations", None)
        shared = {k: v for k, v in self.attrs.items() if k != "direction"}
        per = len(activations) // len(self.directions) if activations else 0
        self.node_attrs = [
            {**shared, **({"activations": activations[d * per : (d + 1) * per]} if per else {})}
            for d in range(len(self.directions))
        ]

    def nodes(self) -> list[Any]:
        import numpy as np
        from onnx import TensorProto

        zero, one = self.const("0", i64(0)), self.const("1", i64(1))
        end = self.const("end", i64(2**62))
        lengths = self.op("Cast", [self.inputs["lengths"]], "lengths", to=TensorProto.INT64)
        batch = self.op("Shape", [lengths], "batch")
        seq = self.op("Slice", [self.op("Shape", [self.inputs["x"]], "x_shape"), zero, one], "seq")
        # Rows longest first; ``inverse`` puts them back.
        as_float = self.op("Cast", [lengths], "lengths_float", to=TensorProto.FLOAT)
        _, order = self.op("TopK", [as_float, batch], "sort", outputs=2, axis=0, sorted=1)
        sorted_lengths = self.op("Gather", [lengths, order], "sorted_lengths", axis=0)
        rows = self.op(
            "Range",
            [
                self.const("start", np.asarray(0, np.int64)),
                self.op("Squeeze", [batch], "batch_scalar"),
                self.const("delta", np.asarray(1, np.int64)),
            ],
            "rows",
        )
        inverse = self.op("ScatterElements", [order, order, rows], "inverse", axis=0)
        x = self.op("Gather", [self.inputs["x"], order], "x_sorted", axis=1)
        inputs = [
            x
            if direction == "forward"
            else self.op(
                "ReverseSequence", [x, sorted_lengths], "x_reversed", batch_axis=1, time_axis=0
            )
            for direction in self.directions
        ]
        longest = self.op("Slice", [sorted_lengths, zero, one], "longest")
        span = self.op(
            "Div",
            [
                self.op("Add", [longest, self.const("chunks_minus_1", i64(self.chunks - 1))], "up"),
                self.const("chunks", i64(self.chunks)),
            ],
            "span",
        )
        state = self._initial_states(order, batch)
        ys: list[list[str]] = [[] for _ in self.directions]
        for c in range(self.chunks):
            start = self.op(
                "Min",
                [self.op("Mul", [span, self.const("c", i64(c))], "start_raw"), longest],
                "start",
            )
            stop = self.op("Min", [self.op("Add", [start, span], "stop_raw"), longest], "stop")
            running = self.op(
                "Cast",
                [self.op("Greater", [sorted_lengths, start], "running")],
                "running_int",
                to=TensorProto.INT64,
            )  # at least one row: a span past the longest runs zero steps on row 0
            n = self.op("Max", [self.op("ReduceSum", [running], "count", keepdims=1), one], "n")
            steps = self.op("Sub", [stop, start], "steps")
            chunk_lengths = self.op(
                "Cast",
                [
                    self.op(
                        "Min",
                        [
                            self.op(
                                "Sub",
                                [self.op("Slice", [sorted_lengths, zero, n], "first_n"), start],
                                "left",
                            ),
                            steps,
                        ],
                        "chunk_lengths_int64",
                    )
                ],
                "chunk_lengths",
                to=TensorProto.INT32,
            )
            ran = self.op("Greater", [stop, start], "ran")
            starts = self.op("Concat", [start, zero], "starts", axis=0)
            ends = self.op("Concat", [stop, n], "ends", axis=0)
            axes = self.const("axes", i64(0, 1))
            for d in range(len(self.directions)):
                part = self.op("Slice", [inputs[d], starts, ends, axes], "x_chunk")
                firsts = [
                    self.op("Slice", [state[s, d], zero, n, one], f"{s}_in") for s in self.states
                ]
                w, r, b, p = self.weights[d]
                node_inputs = [part, w, r, b, chunk_lengths, *firsts]
                if self.node.op_type == "LSTM":
                    node_inputs.append(p)
                outs = self.op(
                    self.node.op_type,
                    node_inputs,
                    f"chunk{c}",
                    outputs=1 + len(self.states),
                    direction="forward",
                    **self.node_attrs[d],
                )
                ys[d].append(self._pad_rows(outs[0], batch, n))
                for s, new in zip(self.states, outs[1:], strict=True):
                    kept = self.op("Where", [ran, new, firsts[self.states.index(s)]], f"{s}_run")
                    rest = self.op("Slice", [state[s, d], n, end, one], f"{s}_rest")
                    state[s, d] = self.op("Concat", [kept, rest], f"{s}_out", axis=1)
        self._outputs(ys, state, seq, longest, sorted_lengths, inverse)
        return self.out

    def _initial_states(self, order: str, batch: str) -> dict[tuple[str, int], str]:
        from onnx import helper

        state = {}
        for s in self.states:
            given = self.inputs[f"{s}0"]
            for d in range(len(self.directions)):
                if given:
                    rows = self.op("Gather", [given, order], f"{s}0_sorted", axis=1)
                    state[s, d] = self.op(
                        "Slice",
                        [
                            rows,
                            self.const("d", i64(d)),
                            self.const("d1", i64(d + 1)),
                            self.const("axis0", i64(0)),
                        ],
                        f"{s}0_{d}",
                    )
                else:
                    shape = self.op(
                        "Concat",
                        [self.const("one", i64(1)), batch, self.const("hidden", i64(self.hidden))],
                        "state_shape",
                        axis=0,
                    )
                    zero = helper.make_tensor("zero", self.elem, [1], [0.0])
                    state[s, d] = self.op("ConstantOfShape", [shape], f"{s}0_{d}", value=zero)
        return state

    def _pad_rows(self, y: str, batch: str, n: str) -> str:
        """A span's [steps, 1, n, H] padded with zero rows to [steps, 1, B, H]."""
        missing = self.op("Sub", [batch, n], "missing_rows")
        pads = self.op(
            "Concat",
            [self.const("no_pads", i64(0, 0, 0, 0, 0, 0)), missing, self.const("no_pad", i64(0))],
            "row_pads",
            axis=0,
        )
        return self.op("Pad", [y, pads], "y_chunk")

    def _outputs(
        self,
        ys: list[list[str]],
        state: dict[tuple[str, int], str],
        seq: str,
        longest: str,
        sorted_lengths: str,
        inverse: str,
    ) -> None:
        """Spans joined, padded to the input's length, reverse rows re-reversed, rows put back
        in their order, under the node's own output names."""
        from onnx import helper

        time_pads = self.op(
            "Concat",
            [
                self.const("no_pads", i64(0, 0, 0, 0)),
                self.op("Sub", [seq, longest], "missing_steps"),
                self.const("no_pads_after", i64(0, 0, 0)),
            ],
            "time_pads",
            axis=0,
        )
        axis1 = self.const("axis1", i64(1))
        directions = []
        for d, direction in enumerate(self.directions):
            y = self.op("Pad", [self.op("Concat", ys[d], "y_spans", axis=0), time_pads], "y_dir")
            if direction == "reverse":
                y = self.op("Squeeze", [y, axis1], "y_reversed")
                y = self.op(
                    "ReverseSequence", [y, sorted_lengths], "y_restored", batch_axis=1, time_axis=0
                )
                y = self.op("Unsqueeze", [y, axis1], "y_restored_4d")
            directions.append(y)
        y = directions[0] if len(directions) == 1 else self.op("Concat", directions, "y", axis=1)
        names = [*self.node.output, "", "", ""][: 1 + len(self.states)]
        final = helper.make_node(
            "Gather", [y, inverse], [names[0] or self.fresh("Y")], name=self.base, axis=2
        )
        record = {"op": self.node.op_type, "y": final.output[0]}
        final.metadata_props.add(key=PACKED_KEY, value=json.dumps(record))
        self.out.append(final)
        for s, name in zip(self.states, names[1:], strict=True):
            if name:
                joined = [state[s, d] for d in range(len(self.directions))]
                stacked = (
                    joined[0] if len(joined) == 1 else self.op("Concat", joined, f"{s}_n", axis=0)
                )
                self.out.append(
                    helper.make_node(
                        "Gather", [stacked, inverse], [name], name=self.fresh(f"Y_{s}"), axis=1
                    )
                )
