"""Which of ONNX Runtime's dynamic-quantization settings is fastest on an exported graph (issue 13).

Quantizes one float32 graph written by birnn-export several ways with
``onnxruntime.quantization.quantize_dynamic`` and times each on ONNX Runtime CPU against the
float graph, each in its own session and block (warm-up, then runs), at every batch size:

* ``birnn_export``: what ``--quantize int8`` writes (:func:`birnn_export.quantize.quantize_weights`:
  7-bit int8 LSTM weights, uint8 weights elsewhere, summed exactly by every x86 CPU);
* ``default``: ONNX Runtime's default, full-range int8 weights per tensor (CPUs without VNNI
  saturate on them: their numbers are not these graphs' anywhere but on CPUs with VNNI);
* ``uint8``: uint8 weights; ``per_channel``: one scale per output channel;
* ``reduce_range``: 7-bit int8 weights everywhere;
* ``lstm_only``: the LSTM nodes quantized, the head left in float32.

Prints median milliseconds and the speed-up over float32 per variant. Speed only: accuracy is
``scripts/measure_int8.py``'s.

``--bare-node SIZE`` times a graph built here instead of a file: one bidirectional ``LSTM``
node (I = H = SIZE, time-major input, no lengths, no head, no other node), what dynamic
quantization gives a BiLSTM with nothing around it, to compare an exported graph's ratios with.

Usage:
    python scripts/make_bench_model.py --cell lstm --size 256 -o /tmp/bilstm256.pt
    birnn-export /tmp/bilstm256.pt -o /tmp/bilstm256.onnx
    python scripts/bench_int8_variants.py /tmp/bilstm256.onnx [--batch 1,32] [--seq 100]
        [--runs 60] [--threads 2]
    python scripts/bench_int8_variants.py --bare-node 256
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _common import timed_ms
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from birnn_export.quantize import quantize_weights
from birnn_export.spec import GraphSpec, make_feed

VARIANTS = {
    "default": {"weight_type": QuantType.QInt8},
    "uint8": {"weight_type": QuantType.QUInt8},
    "per_channel": {"weight_type": QuantType.QInt8, "per_channel": True},
    "reduce_range": {"weight_type": QuantType.QInt8, "reduce_range": True},
    "lstm_only": {"weight_type": QuantType.QInt8, "op_types_to_quantize": ["LSTM"]},
}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _bare_node(size: int, path: Path) -> None:
    """One bidirectional LSTM node, weights in torch's initialisation range."""
    rng = np.random.default_rng(0)
    bound = size**-0.5
    weights = [
        numpy_helper.from_array(rng.uniform(-bound, bound, shape).astype(np.float32), name)
        for name, shape in (
            ("W", (2, 4 * size, size)),
            ("R", (2, 4 * size, size)),
            ("B", (2, 8 * size)),
        )
    ]
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=size, direction="bidirectional"
    )
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", size])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "bare_bilstm", [x], [y], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, nargs="?", help="a float32 graph by birnn-export")
    parser.add_argument(
        "--bare-node", type=_positive, metavar="SIZE", help="time one LSTM node instead"
    )
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.onnx is None) == (args.bare_node is None):
        parser.error("give a graph or --bare-node SIZE")
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice is for image models
    with tempfile.TemporaryDirectory() as folder:
        if args.bare_node is not None:
            args.onnx = Path(folder) / f"bare_bilstm{args.bare_node}.onnx"
            _bare_node(args.bare_node, args.onnx)
        paths = {"float32": args.onnx}
        paths["birnn_export"] = Path(folder) / "birnn_export.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_weights(args.onnx, paths["birnn_export"])
        for name, settings in VARIANTS.items():
            paths[name] = Path(folder) / f"{name}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_dynamic(str(args.onnx), str(paths[name]), **settings)
        print(f"{args.onnx.name}: T={args.seq}, {args.threads} threads, {args.runs} runs each")
        for batch in (int(b) for b in args.batch.split(",")):
            feed = (
                {
                    "X": np.random.default_rng(0).standard_normal(
                        (args.seq, batch, args.bare_node), np.float32
                    )
                }
                if args.bare_node is not None
                else make_feed(GraphSpec.from_onnx(args.onnx), batch, args.seq, seed=0)
            )
            medians = {}
            for name, path in paths.items():  # each in its own session and block
                session = _session(path, args.threads)
                medians[name] = statistics.median(
                    timed_ms(lambda s=session, f=feed: s.run(None, f), args.runs, warmup=10)
                )
                del session
            base = medians["float32"]
            cells = [f"{n} {ms:.2f} ms ({base / ms:.2f}x)" for n, ms in medians.items()]
            print(f"B={batch}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
