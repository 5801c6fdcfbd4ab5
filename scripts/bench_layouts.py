"""Fused vs split ONNX layout under ONNX Runtime CPU, measured side by side in one run.

Exports the same model twice (``layout="fused"``: one bidirectional node per layer;
``layout="split"``: forward node + ReverseSequence/forward/ReverseSequence) and times both
sessions interleaved on identical inputs, after checking their outputs agree.

    python scripts/bench_layouts.py --threads 2 --runs 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from birnn_export.export import export_onnx
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.spec import make_feed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh"])
    parser.add_argument("--size", type=int, default=256, help="input and hidden size")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = TaggerConfig(
        cell=args.cell,
        input_size=args.size,
        hidden_size=args.size,
        output_size=8,
        num_layers=args.layers,
        uses_lengths=True,
    )
    model = SequenceTagger(config).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for layout in ("fused", "split"):
            path = Path(tmp) / f"{layout}.onnx"
            spec = export_onnx(model, path, layout=layout).spec
            sessions[layout] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        print(
            f"{args.cell} I=H={args.size} layers={args.layers} T={args.seq} "
            f"threads={args.threads} runs={args.runs} (median, ms)"
        )
        for batch in (int(b) for b in args.batch.split(",")):
            feed = make_feed(spec, batch, args.seq, seed=0)
            outs = {k: s.run(None, feed)[0] for k, s in sessions.items()}
            assert np.allclose(outs["fused"], outs["split"], atol=1e-5), "layouts disagree"
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for _ in range(3):
                for s in sessions.values():
                    s.run(None, feed)
            for _ in range(args.runs):
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feed)
                    times[name].append((time.perf_counter() - start) * 1e3)
            fused, split = (statistics.median(times[k]) for k in ("fused", "split"))
            print(
                f"  B={batch:<3} fused {fused:8.2f}  split {split:8.2f}  "
                f"split/fused {split / fused:5.2f}x"
            )


if __name__ == "__main__":
    main()
