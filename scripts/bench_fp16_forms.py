"""Two fp16 forms of one model under ONNX Runtime CPU, each timed in its own block.

"fp16-nodes": every recurrent node in float16 with ``sequence_lens`` (what birnn-export wrote
before; TensorRT's parser rejects it). "fp32-ragged" (what it writes now): the recurrent nodes
that take ``sequence_lens`` compute in float32 between Casts, the rest of the graph stays
float16. Both are checked against the fp32 model first; TensorRT-RTX's parser and builder say
which form it takes, where ``tensorrt_rtx`` is installed.

    python scripts/bench_fp16_forms.py --size 256 --batch 1,32 --seq 100 --threads 2 --runs 30
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import bench_tagger, timed_ms

from birnn_export import modules
from birnn_export.pipeline import export_onnx
from birnn_export.spec import make_feed


def export_form(model: torch.nn.Module, path: Path, form: str) -> None:
    original = modules.recurrent_dtype
    if form == "fp16-nodes":
        modules.recurrent_dtype = lambda dtype, *, ragged: dtype
    try:
        export_onnx(model, path, dtype="float16", verify=False)
    finally:
        modules.recurrent_dtype = original


def tensorrt_verdict(path: Path) -> str:
    try:
        from birnn_export.trt import build_engine

        build = build_engine(path, library="tensorrt_rtx")
    except Exception as exc:  # tensorrt_rtx missing: say so and go on timing
        return f"not checked ({exc})"
    return "parsed and built" if build.ok else "rejected: " + build.summary().split(": ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh"])
    parser.add_argument("--size", type=int, default=256, help="input and hidden size")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    model = bench_tagger(args.cell, args.size, args.layers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    forms = ("fp16-nodes", "fp32-ragged")
    with tempfile.TemporaryDirectory() as tmp:
        sessions, spec = {}, None
        for form in forms:
            path = Path(tmp) / f"{form}.onnx"
            export_form(model, path, form)
            print(f"{form}: TensorRT-RTX {tensorrt_verdict(path)}")
            sessions[form] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        from birnn_export.spec import GraphSpec

        spec = GraphSpec.from_onnx(str(Path(tmp) / "fp32-ragged.onnx"))
        print(
            f"{args.cell} I=H={args.size} layers={args.layers} T={args.seq} ragged lengths, "
            f"threads={args.threads}, {args.runs} runs per form after {args.warmup} warm-up, "
            "each form in its own block (median / p90, ms)"
        )
        for batch in (int(b) for b in args.batch.split(",")):
            feed = make_feed(spec, batch, args.seq, seed=0)
            with torch.no_grad():
                args_ = [torch.from_numpy(feed[t.name]) for t in spec.inputs]
                args_ = [a.float() if a.is_floating_point() else a for a in args_]
                want = model(*args_).numpy()
            stats = {}
            for form, session in sessions.items():
                got = session.run(None, feed)[0].astype(np.float32)
                error = float(np.abs(got - want).max())
                times = timed_ms(lambda s=session, f=feed: s.run(None, f), args.runs, args.warmup)
                stats[form] = (float(np.median(times)), float(np.percentile(times, 90)), error)
            before, after = stats["fp16-nodes"][0], stats["fp32-ragged"][0]
            cells = "  ".join(
                f"{form} {m:8.2f} / {p:8.2f} (max err vs fp32 {e:.1e})"
                for form, (m, p, e) in stats.items()
            )
            print(f"  B={batch:<3} {cells}  after/before {after / before:5.2f}x")


if __name__ == "__main__":
    main()
