"""Every graph form of one model under ONNX Runtime CPU, and eager PyTorch, measured fairly.

Forms: birnn-export's ``split``, ``fused``, ``scan`` and ``packed`` layouts (``scan`` differs
from ``fused`` only for RNN cells: their nodes become Scan loops; ``packed`` runs only the rows
still going, as a PackedSequence does), the stock legacy exporter
(``torch.onnx.export(..., dynamo=False)`` of the model in torch's own layers, packing included),
and eager PyTorch (torch's own layers on a PackedSequence). Every form is timed in its own
block (warm-up, then the runs), never interleaved with another: ONNX Runtime's spinning thread
pool slows anything run beside it. ONNX Runtime runs with ``--threads`` intra-op threads and
spinning on or off, sequentially, and for the split layout also with the parallel executor
(``inter_op = threads``, ``intra_op = 1``: the two directions of a layer on their own cores);
torch runs with the same thread count. Outputs are checked against eager before timing.
Prints medians (ms) and each form's ratio to eager's median (> 1: faster), with the number of
runs.

    python scripts/bench_graph_forms.py --cell lstm --size 256 --batch 1,8,32 --seq 100 \\
        --threads 2 --runs 30 [--spinning on,off] [--lengths ragged|full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import bench_tagger, timed_ms

from birnn_export.pipeline import export_onnx
from birnn_export.spec import make_feed


def session(path: Path, threads: int, spinning: bool, parallel: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if parallel else threads
    options.inter_op_num_threads = threads if parallel else 1
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    flag = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", flag)
    options.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def stock_export(reference: torch.nn.Module, path: Path, feed: dict) -> Path:
    x, lengths = (torch.from_numpy(feed[k]) for k in ("x", "lengths"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            reference,
            (x, lengths),
            str(path),
            dynamo=False,
            input_names=["x", "lengths"],
            output_names=["output"],
            dynamic_axes={"x": {0: "batch", 1: "seq"}, "lengths": {0: "batch"}},
            opset_version=17,
        )
    return path


GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


def recurrent_flops(cell: str, size: int, layers: int, steps: int) -> float:
    """Multiply-adds x 2 of the recurrent layers' matrix products (input and recurrent weights,
    both directions) over ``steps`` valid row-steps (the sum of the rows' lengths): the work
    torch does on a PackedSequence. Forms that run every row to the longest (ONNX Runtime's
    nodes) do more; ``--lengths full`` makes the two the same."""
    gates = GATES[cell] * size
    first = 2 * steps * gates * (size + size)
    later = 2 * steps * gates * (2 * size + size)
    return 2 * (first + (layers - 1) * later)


def sgemm_rate(threads: int) -> float:
    """GFLOP/s of torch's float32 matrix product (square 1024 and 2048, best of 5)."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh"])
    parser.add_argument("--size", type=int, default=256, help="input and hidden size")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--seq", default="100")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--spinning", default="on,off")
    parser.add_argument(
        "--lengths",
        default="ragged",
        choices=["ragged", "full", "equal"],
        help="rows' lengths (birnn_export.spec.make_lengths): ragged as a real batch, or all T",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = bench_tagger(args.cell, args.size, args.layers)
    reference = model.to_torch().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for layout in ("split", "fused", "scan", "packed"):
            result = export_onnx(model, Path(tmp) / f"{layout}.onnx", layout=layout, verify=False)
            paths[layout] = result.path
        spec = result.spec
        paths["stock"] = stock_export(reference, Path(tmp) / "stock.onnx", make_feed(spec, 3, 9))
        print(
            f"{args.cell} I=H={args.size} layers={args.layers} threads={args.threads}, each "
            f"form in its own block, median of {args.runs} runs after 5 warm-up (ms), "
            f"{args.lengths} lengths"
        )
        for seq in (int(s) for s in args.seq.split(",")):
            for batch in (int(b) for b in args.batch.split(",")):
                feed = make_feed(spec, batch, seq, seed=0, lengths=args.lengths)
                x, lengths = (torch.from_numpy(feed[k]) for k in ("x", "lengths"))
                with torch.inference_mode():
                    want = reference(x, lengths).numpy()
                    eager = statistics.median(
                        timed_ms(lambda x=x, lengths=lengths: reference(x, lengths), args.runs)
                    )
                medians = {"eager": eager}
                for spinning in (s == "on" for s in args.spinning.split(",")):
                    forms = [(name, path, False) for name, path in paths.items()]
                    forms.append(("split-parallel", paths["split"], True))
                    for name, path, parallel in forms:
                        s = session(path, args.threads, spinning, parallel)
                        (got,) = s.run(None, feed)
                        valid = np.arange(seq)[None, :] < feed["lengths"][:, None]
                        error = float(np.abs(got - want)[valid].max())
                        assert error < 1e-4, f"{name}: off by {error}"
                        times = timed_ms(lambda s=s, feed=feed: s.run(None, feed), args.runs)
                        medians[f"{name} spin={'on' if spinning else 'off'}"] = statistics.median(
                            times
                        )
                        del s
                # the ratio its docstring promises: eager's median over the form's (users52 F8)
                line = ", ".join(f"{k} {v:.2f} ({eager / v:.2f}x)" for k, v in medians.items())
                steps = int(feed["lengths"].sum())
                flops = recurrent_flops(args.cell, args.size, args.layers, steps)
                best = min(medians.values())
                print(
                    f"  B={batch} T={seq}: {line}; best {flops / best / 1e6:.0f} GFLOP/s "
                    f"of useful work ({steps} of {batch * seq} row-steps valid)"
                )
                rows.append({"batch": batch, "seq": seq, "median_ms": medians, "flops": flops,
                             "valid_steps": steps})  # fmt: skip
    rate = sgemm_rate(args.threads)
    print(f"this machine's SGEMM rate (torch, {args.threads} threads): {rate:.0f} GFLOP/s")
    if args.json:
        record = {"args": vars(args) | {"json": None}, "rows": rows, "sgemm_gflops": rate}
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
