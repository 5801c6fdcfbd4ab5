"""Could a Scan loop beat ONNX Runtime's RNN and GRU kernels? One bidirectional layer both ways.

ONNX Runtime's RNN and GRU nodes run slower than eager torch at B >= 8 (README, "Graph layouts
and speed"; issue 13). The one other dynamic form ONNX offers is a loop: here a ``Scan`` whose
body is one batched MatMul of both directions' states ([2, B, H] x [2, H, gates]) and the gate
arithmetic, with the input projection of every step hoisted out of the loop as one MatMul. For
RNN the Scan graph is birnn-export's own ``scan`` layout (the node rewritten by
``birnn_export._scan``); GRU's is built here the same way. Both graphs take ``lengths`` and are
exact for variable lengths: the node through ``sequence_lens``, the Scan through
``ReverseSequence`` and a per-step mask that holds each row's state past its length and writes
zeros there. Both are checked against torch's layer on a ``PackedSequence`` first; eager torch
(on that PackedSequence), the node and the Scan graph are each timed in their own block (eager
first, before any ONNX Runtime session exists), with the same thread count. Prints medians
and ratios.

    python scripts/bench_scan_form.py --cell rnn|gru [--size 256] [--seq 100] [--batch 1,8,32]
        [--lengths ragged|full] [--runs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnx
import onnxruntime as ort
import torch
from _common import timed_ms
from onnx import TensorProto, helper, numpy_helper
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export._scan import scan_rnn_nodes
from birnn_export.spec import make_lengths

SIDES = ("", "_reverse")


def _to_onnx_gates(w: np.ndarray, cell: str) -> np.ndarray:
    if cell == "rnn":
        return w
    r, z, n = np.split(w, 3, axis=0)  # torch (r, z, n) -> ONNX (z, r, h)
    return np.concatenate([z, r, n], 0)


def _value(name: str, dims: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _model(nodes: list, inputs: list, consts: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "bidirectional",
        inputs,
        [_value("Y", None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def node_graph(cell: str, state: dict[str, np.ndarray], size: int) -> onnx.ModelProto:
    """The bidirectional node birnn-export's fused layout emits (without lengths)."""
    weights = {
        "W": np.stack([_to_onnx_gates(state[f"weight_ih_l0{s}"], cell) for s in SIDES]),
        "R": np.stack([_to_onnx_gates(state[f"weight_hh_l0{s}"], cell) for s in SIDES]),
        "B": np.stack(
            [
                np.concatenate(
                    [_to_onnx_gates(state[f"bias_{k}_l0{s}"], cell) for k in ("ih", "hh")]
                )
                for s in SIDES
            ]
        ),
    }
    extra = {"linear_before_reset": 1} if cell == "gru" else {}
    nodes = [
        helper.make_node("Cast", ["lengths"], ["lengths32"], to=TensorProto.INT32),
        helper.make_node(
            cell.upper(), ["X", *weights, "lengths32"], ["Y"], hidden_size=size,
            direction="bidirectional", **extra,
        ),
    ]  # fmt: skip
    return _model(nodes, _inputs(size), weights)


def _inputs(size: int) -> list[onnx.ValueInfoProto]:
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
    return [_value("X", ["seq", "batch", size]), lengths]


def _gru_step(size: int) -> onnx.GraphProto:
    """One GRU time step of both directions: state ``h`` [2, batch, H], input projection ``xw``."""
    n = helper.make_node
    nodes = [
        n("MatMul", ["h", "Rh"], ["hw0"]),
        n("Add", ["hw0", "bh"], ["hw"]),
        n("Split", ["xw", "thirds"], ["xr", "xz", "xn"], axis=2),
        n("Split", ["hw", "thirds"], ["hr", "hz", "hn"], axis=2),
        n("Add", ["xr", "hr"], ["ar"]),
        n("Sigmoid", ["ar"], ["r"]),
        n("Add", ["xz", "hz"], ["az"]),
        n("Sigmoid", ["az"], ["z"]),
        n("Mul", ["r", "hn"], ["rhn"]),
        n("Add", ["xn", "rhn"], ["an"]),
        n("Tanh", ["an"], ["cand"]),
        n("Sub", ["h", "cand"], ["diff"]),
        n("Mul", ["z", "diff"], ["zd"]),
        n("Add", ["cand", "zd"], ["h_next"]),  # (1 - z) * cand + z * h
    ]
    gates = 3 * size
    held = [  # past its length a row keeps its state and writes zeros
        n("Sub", ["h_next", "h"], ["step"]),
        n("Mul", ["step", "valid"], ["kept"]),
        n("Add", ["h", "kept"], ["h_out"]),
        n("Mul", ["h_next", "valid"], ["y"]),
    ]
    return helper.make_graph(
        [*nodes, *held],
        "step",
        [
            _value("h", [2, "batch", size]),
            _value("xw", [2, "batch", gates]),
            _value("valid", [1, "batch", 1]),
        ],
        [_value("h_out", [2, "batch", size]), _value("y", [2, "batch", size])],
    )


def scan_graph(cell: str, state: dict[str, np.ndarray], size: int) -> onnx.ModelProto:
    """Both directions in one Scan over [seq, 2, batch, gates]. For RNN that is birnn-export's
    own ``scan`` layout, the node graph rewritten by :func:`birnn_export._scan.scan_rnn_nodes`;
    GRU's is built here the same way (it is slower than the node, so nothing ships it)."""
    if cell == "rnn":
        model = node_graph(cell, state, size)
        scan_rnn_nodes(model)
        return model
    gates = 3 * size
    input_bias = [state[f"bias_ih_l0{s}"] for s in SIDES]
    consts = {
        "Wi": np.stack([state[f"weight_ih_l0{s}"].T for s in SIDES]),
        "bi": np.stack(input_bias)[:, None, None, :],
        "Rh": np.stack([state[f"weight_hh_l0{s}"].T for s in SIDES]),
        "axis0": np.array([0], np.int64),
        "flat": np.array([2, -1, size], np.int64),
        "one": np.array([1], np.int64),
        "two": np.array([2], np.int64),
        "gates": np.array([gates], np.int64),
        "hidden": np.array([size], np.int64),
        "zero": np.array([0], np.int64),
        "time_axes": np.array([1, 2, 3], np.int64),
        "batch_axes": np.array([0, 1, 3], np.int64),
    }
    # b_hn sits inside r * (h R_n + b_hn): the recurrent biases stay in the loop
    consts["bh"] = np.stack([state[f"bias_hh_l0{s}"] for s in SIDES])[:, None, :]
    consts["thirds"] = np.array([size] * 3, np.int64)
    n = helper.make_node
    nodes = [
        n("ReverseSequence", ["X", "lengths"], ["Xr"], batch_axis=1, time_axis=0),
        n("Unsqueeze", ["X", "axis0"], ["X0"]),
        n("Unsqueeze", ["Xr", "axis0"], ["X1"]),
        n("Concat", ["X0", "X1"], ["Xb"], axis=0),
        n("Reshape", ["Xb", "flat"], ["Xf"]),
        n("MatMul", ["Xf", "Wi"], ["XW0"]),  # every step's input projection at once
        n("Shape", ["X"], ["shape"]),
        n("Slice", ["shape", "zero", "two"], ["seq_batch"]),
        n("Concat", ["two", "seq_batch", "gates"], ["xw_shape"], axis=0),
        n("Reshape", ["XW0", "xw_shape"], ["XW1"]),
        n("Add", ["XW1", "bi"], ["XW"]),
        n("Transpose", ["XW"], ["XWt"], perm=[1, 0, 2, 3]),
        n("Slice", ["shape", "one", "two"], ["batch"]),
        n("Concat", ["two", "batch", "hidden"], ["h0_shape"], axis=0),
        n("ConstantOfShape", ["h0_shape"], ["h0"]),
        # valid[t, 0, b, 0] = t < lengths[b]
        n("Slice", ["shape", "zero", "one"], ["seq"]),
        n("Squeeze", ["seq"], ["seq_scalar"]),
        n("Range", ["zero_scalar", "seq_scalar", "one_scalar"], ["steps"]),
        n("Unsqueeze", ["steps", "time_axes"], ["steps4"]),
        n("Unsqueeze", ["lengths", "batch_axes"], ["lengths4"]),
        n("Less", ["steps4", "lengths4"], ["valid_bool"]),
        n("Cast", ["valid_bool"], ["valid"], to=TensorProto.FLOAT),
        n("Scan", ["h0", "XWt", "valid"], ["h_last", "Ys"], num_scan_inputs=2,
          body=_gru_step(size)),
        # the backward direction back in original time
        n("Split", ["Ys", "one_one"], ["Yf", "Yb"], axis=1),
        n("Squeeze", ["Yb", "one"], ["Yb3"]),
        n("ReverseSequence", ["Yb3", "lengths"], ["Yb3r"], batch_axis=1, time_axis=0),
        n("Unsqueeze", ["Yb3r", "one"], ["Ybr"]),
        n("Concat", ["Yf", "Ybr"], ["Y"], axis=1),
    ]  # fmt: skip
    consts |= {
        "zero_scalar": np.array(0, np.int64),
        "one_scalar": np.array(1, np.int64),
        "one_one": np.array([1, 1], np.int64),
    }
    return _model(nodes, _inputs(size), consts)


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="rnn", choices=["rnn", "gru"])
    parser.add_argument("--size", type=int, default=256, help="input and hidden size")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--lengths", default="ragged", choices=["ragged", "full"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    layer_class = torch.nn.RNN if args.cell == "rnn" else torch.nn.GRU
    layer = layer_class(args.size, args.size, bidirectional=True).eval()
    state = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    graphs = {
        "node": node_graph(args.cell, state, args.size),
        "scan": scan_graph(args.cell, state, args.size),
    }
    size, seq = args.size, args.seq
    print(
        f"bidirectional {args.cell.upper()} I=H={size}, T={seq}, {args.threads} threads, "
        f"{args.lengths} lengths, each in its own block, median of {args.runs} runs"
    )
    for batch in (int(b) for b in args.batch.split(",")):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((seq, batch, size), np.float32)
        lengths = make_lengths(batch, seq, rng, args.lengths)
        x[np.arange(seq)[:, None] >= lengths[None, :]] = 0  # a padded batch
        feed = {"X": x, "lengths": lengths}
        packed = pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), enforce_sorted=False
        )
        with torch.no_grad():
            medians = {"eager": statistics.median(timed_ms(lambda p=packed: layer(p), args.runs))}
            want = pad_packed_sequence(layer(packed)[0], total_length=seq)[0].numpy()
        errors = {}
        for name, graph in graphs.items():  # each in its own session and block
            session = _session(graph, args.threads)
            y = session.run(None, feed)[0]  # [seq, 2, batch, H]
            errors[name] = float(np.abs(np.concatenate([y[:, 0], y[:, 1]], -1) - want).max())
            medians[name] = statistics.median(
                timed_ms(lambda s=session, f=feed: s.run(None, f), args.runs)
            )
            del session
        node = medians["node"]
        cells = [f"{k} {v:.2f} ms ({node / v:.2f}x the node)" for k, v in medians.items()]
        worst = max(errors.values())
        print(f"B={batch}: " + ", ".join(cells) + f"; max error vs torch's layer {worst:.1e}")


if __name__ == "__main__":
    main()
