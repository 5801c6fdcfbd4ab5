"""ONNX Runtime session-creation time and file size of an export of a 3-layer BiLSTM(256)
with an embedding and an attention head (above the exporter's constant-folding size limit).

    python scripts/bench_session_start.py [--runs 7] [--threads 2]

Run it under two checkouts (``PYTHONPATH=/path/to/other/checkout``) to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import birnn_export
from birnn_export.pipeline import export_onnx
from tests.realistic_models import AttentionClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"birnn_export from {Path(birnn_export.__file__).parent}")
    torch.manual_seed(0)
    model = AttentionClassifier(vocab_size=100, embed_dim=256, hidden=256, classes=15).eval()
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("split", "fused"):
            result = export_onnx(model, Path(tmp) / f"{layout}.onnx", layout=layout, verify=False)
            times = []
            for _ in range(args.runs):
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                start = time.perf_counter()
                ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
                times.append(time.perf_counter() - start)
            print(
                f"{layout}: {sum(result.op_counts.values())} nodes, file "
                f"{result.file_size / 1e6:.2f} MB, session creation median "
                f"{statistics.median(times) * 1e3:.1f} ms of {args.runs}"
            )


if __name__ == "__main__":
    main()
