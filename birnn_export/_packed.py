"""The ``packed`` layout: each LSTM and GRU node with ``sequence_lens`` runs only the rows still
going, as torch's layers on a ``PackedSequence`` do.

ONNX Runtime's LSTM and GRU kernels compute every row up to the batch's longest, so a ragged
batch pays for its padding (README, "Graph layouts and speed"). Here the rows are sorted by
length, longest first (``TopK``), and time is cut into :data:`CHUNKS` spans at the lengths of
the rows at the batch's quartiles, so about 1, 3/4, 1/2 and 1/4 of the rows run in them (a
prefix of the sorted rows each); span ``c`` is one forward node per direction over those rows,
starting from their states at the end of span ``c - 1``. Equal lengths (B = 1, or every row
full) make one span and three empty ones. Nothing is unrolled per step: a layer has
:data:`CHUNKS` nodes per direction whatever the length, and batch and time stay symbolic.

Data moves twice. One ``Gather`` per span reads its rows' input steps from ``x`` (the reverse
direction reads each row's valid steps backwards, as the node does); one ``Gather`` writes
``Y`` from all spans' outputs straight into time order and the rows' own order, with a zero row
past each length. ``Y_h`` (``Y_c``) is each row's state from the last span it ran in (zeros
for a row of length 0, as the node gives). An empty span reads one step, with lengths 0, of its
rows (of one row where none runs: no node meets an empty sequence, which engines treat
unevenly), and passes its rows' states on (``Where``: the node returns zeros for zero steps).
There is no ``If`` or ``Loop``: TensorRT's builder fails on recurrent nodes inside either
(measured), and it builds this form.

Semantics are the node's, ``initial_h``/``initial_c``, LSTM's peepholes and per-direction
activations included (``activation_alpha``/``_beta`` are refused). The layer's ``Y`` comes from
a ``Gather`` that keeps the replaced node's name, marked with :data:`PACKED_KEY`, so layer
checks and ``inspect`` find the layer.
"""

from __future__ import annotations

import json
from typing import Any

from birnn_export._node_rewrite import NodeRewrite, i64, replace_nodes

#: Time spans per layer: more skip more of a ragged batch's padding, and add nodes.
CHUNKS = 4
#: ``metadata_props`` key on the node that outputs a packed layer's ``Y``.
PACKED_KEY = "birnn_export.packed"
_STATES = {"LSTM": ("h", "c"), "GRU": ("h",)}


def is_packed_layer(node: Any) -> bool:
    """Whether ``node`` outputs the ``Y`` of a layer :func:`pack_recurrent_nodes` rewrote."""
    return any(p.key == PACKED_KEY for p in node.metadata_props)


def packed_info(node: Any) -> dict[str, Any]:
    """What :func:`pack_recurrent_nodes` recorded on a layer's ``Y`` node: the replaced node's
    op, ``hidden_size``, ``direction``, ``inputs`` and ``Y``, and the number of time spans."""
    return dict(json.loads(next(p.value for p in node.metadata_props if p.key == PACKED_KEY)))


def pack_recurrent_nodes(proto: Any, chunks: int = CHUNKS) -> int:
    """Rewrite every ``LSTM`` and ``GRU`` node of ``proto``'s main graph that takes
    ``sequence_lens`` into its packed form, in place (a node without lengths runs every row
    to the end anyway and is kept). Returns how many nodes were rewritten.

    ``RNN`` nodes are left alone: the export's packed layout writes them as Scan loops
    (:mod:`birnn_export._scan`), which were faster than packed ``RNN`` nodes on ragged batches
    (BiRNN(256), T = 100, B = 32: 10.5 ms against 16.8 ms) and than packed Scan loops at B <= 8.

    Raises:
        ValueError: a node this rewrite cannot express (``layout=1``, ``activation_alpha`` or
            ``activation_beta``, weights that are not initializers).
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
        if {"activation_alpha", "activation_beta"} & set(self.attrs):
            raise ValueError(
                f"{node.op_type} node {self.base!r}: activation_alpha and _beta are not supported"
            )
        self.chunks = chunks
        self.width = int(self.constant("w").shape[2])  # the input's feature size
        self.states = _STATES[node.op_type]
        # Each direction's weights, as initializers of their own: [1, ...] slices of [D, ...].
        self.weights = [
            [
                self.const(f"{role}{d}", array[d : d + 1]) if array is not None else ""
                for role, array in ((r, self.constant(r)) for r in ("w", "r", "b", "p"))
            ]
            for d in range(len(self.directions))
        ]
        # Each direction's node takes its own share of the activations.
        activations = self.attrs.pop("activations", None)
        shared = {k: v for k, v in self.attrs.items() if k != "direction"}
        per = len(activations) // len(self.directions) if activations else 0
        self.node_attrs = [
            {**shared, **({"activations": activations[d * per : (d + 1) * per]} if per else {})}
            for d in range(len(self.directions))
        ]

    def nodes(self) -> list[Any]:
        from onnx import TensorProto

        zero, one = self.const("0", i64(0)), self.const("1", i64(1))
        lengths = self.op("Cast", [self.inputs["lengths"]], "lengths", to=TensorProto.INT64)
        batch = self.op("Shape", [lengths], "batch")
        # Rows longest first (``order``); ``position[b]``: where row b went.
        as_float = self.op("Cast", [lengths], "lengths_float", to=TensorProto.FLOAT)
        _, sorted_rows = self.op("TopK", [as_float, batch], "sort", outputs=2, axis=0, sorted=1)
        # At most the last row: a no-op when it runs, but TensorRT's builder takes a value it
        # cannot bound as 1, and at batch 1 Gather's index 1 failed every profile of max batch
        # 1 (users56 F1)
        last_row = self.op("Sub", [batch, one], "last_row")
        order = self.op("Min", [sorted_rows, last_row], "order")
        lengths_sorted = self.op("Gather", [lengths, order], "lengths_sorted", axis=0)
        rows = self.op("Range", [self.scalar(0), self.squeeze(batch), self.scalar(1)], "rows")
        position = self.op("ScatterElements", [order, order, rows], "position", axis=0)
        spans = _Spans(self, lengths_sorted, batch)
        # x_index[k][t, j]: the row of x (as [T * B, I]) direction k reads at its step t for the
        # j-th longest row; the reverse direction reads row j's valid steps backwards.
        # One step past the longest: an empty span reads one (ignored) step.
        beyond = self.op("Add", [spans.longest, one], "beyond")
        times = self.op("Unsqueeze", [self.range(beyond), one], "times")  # [T' + 1, 1]
        ahead = self.op("Unsqueeze", [lengths_sorted, zero], "lengths_ahead")  # [1, B]
        back = self.op("Sub", [self.op("Sub", [ahead, one], "last"), times], "back")
        last_step = self.op("Max", [self.op("Sub", [spans.longest, one], "last_raw"), zero],
                            "last_step")  # fmt: skip
        steps_read = {
            "forward": self.op("Min", [times, last_step], "ahead_steps"),
            "reverse": self.op("Max", [back, zero], "back_steps"),
        }
        orders = self.op("Unsqueeze", [order, zero], "order_row")
        x_index = [
            self.op(
                "Add", [self.op("Mul", [steps_read[k], batch], f"{k}_time"), orders], f"{k}_index"
            )
            for k in self.directions
        ]
        rows_shape = self.const("rows_shape", i64(-1, self.width))
        x_rows = self.op("Reshape", [self.inputs["x"], rows_shape], "x_rows")
        previous = self._initial_states(order)
        ys: list[list[str]] = [[] for _ in self.directions]  # each direction's spans
        states: dict[tuple[str, int], list[str]] = {key: [] for key in previous}
        for c in range(self.chunks):
            lo, hi, n, chunk_lengths, ran = spans.at(c)
            for d in range(len(self.directions)):
                index = self.op("Slice", [x_index[d], lo, hi, self.const("axes", i64(0, 1))],
                                "x_index")  # fmt: skip
                x = self.op("Gather", [x_rows, index], "x_span", axis=0)  # [steps, n, I]
                first = [
                    self.op("Slice", [previous[s, d], zero, n, one], f"{s}_in")
                    if previous[s, d]
                    else ""
                    for s in self.states
                ]
                w, r, b, p = self.weights[d]
                inputs = [x, w, r, b, chunk_lengths, *first]
                if self.node.op_type == "LSTM":
                    inputs.append(p)
                outs = self.op(self.node.op_type, inputs, f"span{c}", outputs=1 + len(self.states),
                               direction="forward", **self.node_attrs[d])  # fmt: skip
                flat = self.const("y_rows", i64(-1, self.hidden))
                ys[d].append(self.op("Reshape", [outs[0], flat], "y_span"))  # [steps * n, H]
                for s, out, start in zip(self.states, outs[1:], first, strict=True):
                    if start:  # an empty span passes its rows' states on (the node gives zeros)
                        out = self.op("Where", [ran, out, start], f"{s}_out")
                    states[s, d].append(out)
                    previous[s, d] = out
        self._y(ys, spans, lengths, position)
        self._states(states, spans, position)
        return self.out

    def scalar(self, value: int) -> str:
        import numpy as np

        return self.const("scalar", np.asarray(value, np.int64))

    def zeros(self, shape: Any, suffix: str) -> str:
        """A block of zeros of the node's element type and the constant ``shape``."""
        from onnx import helper

        value = helper.make_tensor("zero", self.elem, [1], [0.0])
        return self.op("ConstantOfShape", [self.const("shape", shape)], suffix, value=value)

    def squeeze(self, name: str) -> str:
        axes = self.const("axis0", i64(0))  # explicit: TensorRT refuses a Squeeze without axes
        return self.op("Squeeze", [name, axes], f"{name.rsplit('/', 1)[-1]}_scalar")

    def range(self, stop: str) -> str:
        """``[0, 1, ..., stop - 1]`` for a [1]-shaped int64 ``stop``."""
        return self.op("Range", [self.scalar(0), self.squeeze(stop), self.scalar(1)], "range")

    def _initial_states(self, order: str) -> dict[tuple[str, int], str]:
        """Each direction's given initial states in the sorted rows' order ("" where none is
        given: the first span's node starts from zeros, as the node did)."""
        previous = {}
        for s in self.states:
            given = self.inputs[f"{s}0"]
            rows = self.op("Gather", [given, order], f"{s}0_sorted", axis=1) if given else ""
            for d in range(len(self.directions)):  # axes given: TensorRT's parser needs them
                at = (
                    self.const("d", i64(d)),
                    self.const("d1", i64(d + 1)),
                    self.const("0", i64(0)),
                )
                previous[s, d] = self.op("Slice", [rows, *at], f"{s}0_{d}") if rows else ""
        return previous

    def _y(self, ys: list[list[str]], spans: _Spans, lengths: str, position: str) -> None:
        """``Y`` as one Gather from every span's output rows (and a zero row for padding),
        straight into time order and the rows' own order."""
        import numpy as np
        from onnx import TensorProto, helper

        d, h = len(self.directions), self.hidden
        zero, one = self.const("0", i64(0)), self.const("1", i64(1))
        padding = self.zeros(i64(1, h), "padding")
        rows = self.op("Concat", [*(y for spans_d in ys for y in spans_d), padding], "y_rows",
                       axis=0)  # fmt: skip
        # index[t, k, b]: the row of ``rows`` holding direction k's output at time t of row b;
        # past the row's length, the zero row.
        seq = self.op("Slice", [self.op("Shape", [self.inputs["x"]], "x_shape"), zero, one], "seq")
        t = self.op("Unsqueeze", [self.range(seq), self.const("t_axes", i64(1, 2))], "t")
        row_lengths = self.op("Unsqueeze", [lengths, self.const("l_axes", i64(0, 1))], "l")
        valid = self.op("Less", [t, row_lengths], "valid")  # [T, 1, B]
        back = self.op("Sub", [self.op("Sub", [row_lengths, one], "last"), t], "back")
        reverse = self.const("reverse", np.asarray([[[k == "reverse"] for k in self.directions]]))
        step = self.op("Max", [self.op("Where", [reverse, back, t], "step_raw"), zero], "step")
        # The span holding step s: how many inner bounds are <= s (an empty span holds none).
        passed = self.op(
            "GreaterOrEqual",
            [self.op("Unsqueeze", [step, self.const("last", i64(3))], "step_4d"), spans.inner],
            "passed",
        )
        which = self.op(
            "ReduceSum",
            [
                self.op("Cast", [passed], "passed_int", to=TensorProto.INT64),
                self.const("axis3", i64(3)),
            ],
            "which",
            keepdims=0,
        )
        start = self.op("Gather", [spans.starts, which], "span_start")
        within = self.op("Mul", [self.op("Sub", [step, start], "offset"),
                                 self.op("Gather", [spans.counts, which], "span_rows")],
                         "within")  # fmt: skip
        total = self.op("ReduceSum", [spans.sizes], "total", keepdims=1)
        bases = self.const("direction_base", np.arange(d, dtype=np.int64).reshape(1, d, 1))
        base = self.op("Add", [self.op("Mul", [bases, total], "direction_base"),
                               self.op("Gather", [spans.offsets, which], "span_base")],
                       "base")  # fmt: skip
        index = self.op("Add", [base, self.op("Add", [within, position], "row")], "index_valid")
        past = self.op("Mul", [self.const("directions", i64(d)), total], "zero_row")
        index = self.op("Where", [valid, index, past], "index")
        names = [*self.node.output, "", "", ""][: 1 + len(self.states)]
        final = helper.make_node(
            "Gather", [rows, index], [names[0] or self.fresh("Y")], name=self.base, axis=0
        )
        record = {
            "op": self.node.op_type,
            "y": final.output[0],
            "inputs": list(self.node.input),  # the replaced node's, "" for one not given
            "hidden_size": h,
            "direction": "bidirectional" if d == 2 else self.directions[0],
            "chunks": self.chunks,
        }
        final.metadata_props.add(key=PACKED_KEY, value=json.dumps(record))
        self.out.append(final)

    def _states(self, states: dict[tuple[str, int], list[str]], spans: _Spans,
                position: str) -> None:  # fmt: skip
        """``Y_h`` (``Y_c``): each row's state from the last span it ran in, in its order."""
        import numpy as np
        from onnx import TensorProto, helper

        names = [*self.node.output, "", "", ""][1 : 1 + len(self.states)]
        if not any(names):
            return
        d, h = len(self.directions), self.hidden
        zero, one = self.const("0", i64(0)), self.const("1", i64(1))
        # The last span row j ran in: how many spans start before its length, less one.
        ran = self.op("Cast", [spans.running], "ran", to=TensorProto.INT64)
        run = self.op("Gather", [self.op("ReduceSum", [ran, zero], "spans_run", keepdims=0),
                                 position], "row_spans")  # [B], each row's own  # fmt: skip
        last = self.op("Max", [self.op("Sub", [run, one], "last_raw"), zero], "last_span")
        firsts = self.op("CumSum", [spans.counts, self.scalar(0)], "state_offsets", exclusive=1)
        total = self.op("ReduceSum", [spans.counts], "state_total", keepdims=1)
        bases = self.const("direction_base", np.arange(d, dtype=np.int64).reshape(d, 1))
        index = self.op(
            "Add",
            [self.op("Add", [self.op("Mul", [bases, total], "base"),
                             self.op("Gather", [firsts, last], "span_base")], "bases"),
             position],
            "state_index_ran",
        )  # [D, B]  # fmt: skip
        # A row of length 0 ran in no span: its states are zeros, as the node gives.
        past = self.op("Mul", [self.const("directions", i64(d)), total], "zero_state")
        index = self.op("Where", [self.op("Greater", [run, zero], "has_run"), index, past],
                        "state_index")  # fmt: skip
        padding = self.zeros(i64(1, 1, h), "zero_states")
        for s, name in zip(self.states, names, strict=True):
            if not name:
                continue
            pieces = [piece for k in range(d) for piece in states[s, k]]
            joined = self.op("Concat", [*pieces, padding], f"{s}_spans", axis=1)
            picked = self.op("Gather", [joined, index], f"{s}_picked", axis=1)  # [1, D, B, H]
            self.out.append(
                helper.make_node(
                    "Reshape", [picked, self.const("state_shape", i64(d, -1, h))], [name],
                    name=self.fresh(f"Y_{s}"),
                )
            )  # fmt: skip


class _Spans:
    """The time spans of one packed layer, all at once ([CHUNKS] each): where each starts and
    stops, how many rows run in it (a prefix of the sorted rows), and where its output rows
    begin among all spans'."""

    def __init__(self, rewrite: _Packed, lengths_sorted: str, batch: str) -> None:
        from onnx import TensorProto

        r, k = rewrite, rewrite.chunks
        zero, one = r.const("0", i64(0)), r.const("1", i64(1))
        self.rewrite, self.lengths_sorted = r, lengths_sorted
        self.longest = r.op("Slice", [lengths_sorted, zero, one], "longest")
        # Span c >= 1 starts at the length of the row at sorted position (K - c) * B // K, so
        # about (K - c) / K of the rows run in it: the spans follow the batch's own lengths.
        # Equal rows (B = 1, or all full) make one span and K - 1 empty ones.
        at = r.op(
            "Div",
            [r.op("Mul", [r.const("quantiles", i64(*range(k - 1, 0, -1))), batch], "at_raw"),
             r.const("k", i64(k))],
            "at",
        )  # fmt: skip
        self.inner = r.op("Gather", [lengths_sorted, at], "inner_bounds")  # [K - 1], rising
        self.starts = r.op("Concat", [zero, self.inner], "starts", axis=0)
        stops = r.op("Concat", [self.inner, self.longest], "stops", axis=0)
        steps = r.op("Sub", [stops, self.starts], "steps")
        ahead = r.op("Unsqueeze", [lengths_sorted, zero], "lengths_ahead")  # [1, B]
        starts_down = r.op("Unsqueeze", [self.starts, one], "starts_down")  # [K, 1]
        self.running = r.op("Greater", [ahead, starts_down], "running")  # [K, B]
        count = r.op(
            "ReduceSum",
            [r.op("Cast", [self.running], "running_int", to=TensorProto.INT64), one],
            "count",
            keepdims=0,
        )
        # An empty span still reads one step of one row (lengths 0: ignored), so that no node
        # or loop meets an empty sequence (ONNX Runtime's Scan refuses one).
        self.counts = r.op("Max", [count, one], "counts")
        read = r.op("Max", [steps, one], "steps_read")
        self.sizes = r.op("Mul", [read, self.counts], "sizes")
        self.offsets = r.op("CumSum", [self.sizes, r.scalar(0)], "offsets", exclusive=1)
        ends = r.op("Add", [self.starts, read], "ends")
        down = [r.op("Unsqueeze", [v, one], f"{name}_down")
                for v, name in ((ends, "ends"), (self.counts, "counts"))]  # fmt: skip
        zeros = r.op("Mul", [starts_down, zero], "zeros")
        self.lo = r.op("Concat", [starts_down, zeros], "lo", axis=1)  # [K, 2]: (start, 0)
        self.hi = r.op("Concat", down, "hi", axis=1)  # [K, 2]: (start + steps read, rows)
        self.n = down[1]  # [K, 1]
        self.ran = r.op("Greater", [stops, self.starts], "ran")  # [K]
        left = r.op("Max", [r.op("Sub", [ahead, starts_down], "left_raw"), zero], "left")
        steps_down = r.op("Unsqueeze", [steps, one], "steps_down")
        self.lengths = r.op("Cast", [r.op("Min", [left, steps_down], "span_lengths_int64")],
                            "span_lengths", to=TensorProto.INT32)  # [K, B]  # fmt: skip

    def at(self, c: int) -> tuple[str, str, str, str, str]:
        """Span ``c``'s Slice starts and ends over (time, rows), its row count [1], its rows'
        step counts [n] (the node's ``sequence_lens``), and whether it has any steps."""
        r = self.rewrite
        index = r.scalar(c)
        lo, hi, n = (r.op("Gather", [v, index], name)
                     for v, name in ((self.lo, "lo"), (self.hi, "hi"), (self.n, "n")))  # fmt: skip
        lengths = r.op("Gather", [self.lengths, index], "lengths_all")
        lengths = r.op("Slice", [lengths, r.const("0", i64(0)), n], "span_lengths")
        return lo, hi, n, lengths, r.op("Gather", [self.ran, index], "ran_span")
