"""ONNX Runtime CPU time of a graph with and without the empty-batch guard
(birnn_export._rewrites.guard_empty_batch): BiLSTM I = H = 256, T = 100, 2 threads, B = 1 and
32, each graph timed in its own blocks (two each, alternating; the better median is kept).

    python scripts/bench_empty_batch_guard.py [RUNS]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from birnn_export import export as E
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.pipeline import export_onnx
from birnn_export.spec import make_feed

torch.manual_seed(0)
model = SequenceTagger(TaggerConfig("lstm", 256, 256, 16, uses_lengths=True)).eval()
orig = E.guard_empty_batch
paths = {}
for guarded in (False, True):
    E.guard_empty_batch = orig if guarded else (lambda p, s: False)
    r = export_onnx(model, Path(tempfile.mkdtemp()) / f"g{int(guarded)}.onnx", verify=False)
    paths[guarded] = r.path
E.guard_empty_batch = orig
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
for batch in (1, 32):
    feed = make_feed(r.spec, batch, 100, seed=0)
    medians = {}
    for _ in range(2):  # two blocks each, alternating, each engine in its own block
        for guarded, path in paths.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for _ in range(5):
                s.run(None, feed)
            t = []
            for _ in range(runs):
                a = time.perf_counter()
                s.run(None, feed)
                t.append(time.perf_counter() - a)
            medians.setdefault(guarded, []).append(statistics.median(t) * 1e3)
    g, u = min(medians[True]), min(medians[False])
    print(
        f"B={batch}: unguarded {u:.2f} ms, guarded {g:.2f} ms, ratio {g / u:.3f} "
        f"(best of 2 blocks x {runs} runs)"
    )
