"""What the CRF's Viterbi Scans cost: a BiLSTM-CRF tagger with and without its decode.

Times, each engine in its own block (warm-up, then runs; ``--threads`` for torch and ONNX
Runtime alike): the whole tagger and the same tagger returning emissions, on ONNX Runtime CPU
(our graph, Viterbi as two ONNX Scans) and eagerly (``nn.LSTM`` and torchcrf's Python-loop
decode). The difference of each pair is the decode's cost on that engine.

Usage:
    python scripts/bench_crf.py [--model sample_models/bilstm_crf_tagger.pt] [--batch 1,32]
        [--seq 100] [--runs 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import timed_ms

from birnn_export.checkpoint import load_model
from birnn_export.models import SequenceTagger
from birnn_export.pipeline import export_onnx

ROOT = Path(__file__).resolve().parent.parent


def _median_ms(fn, runs: int) -> float:
    return statistics.median(timed_ms(fn, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "sample_models" / "bilstm_crf_tagger.pt"))
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    tagger = loaded.model
    assert isinstance(tagger, SequenceTagger) and tagger.crf is not None, "a CRF tagger"
    emissions_only = copy.deepcopy(tagger)
    emissions_only.crf = None
    reference = loaded.reference
    reference_emissions = copy.deepcopy(reference)
    reference_emissions.crf = None
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in (("tagger", tagger), ("emissions", emissions_only)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path, verify=False)
            sessions[name] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        rng = np.random.default_rng(0)
        print(f"{args.runs} runs each after 5 warm-up, {args.threads} threads, seq {args.seq}")
        print(
            "batch  ort tagger  ort emissions  ort decode | eager tagger  eager emissions  "
            "eager decode"
        )
        for batch in [int(b) for b in args.batch.split(",")]:
            lengths = rng.integers(1, args.seq + 1, batch)
            lengths[0] = args.seq
            ids = rng.integers(1, tagger.config.vocab_size, (batch, args.seq))
            ids[np.arange(args.seq)[None, :] >= lengths[:, None]] = 0
            feed = {"ids": ids}
            row = [batch]
            for name in ("tagger", "emissions"):  # each session in its own block
                session = sessions[name]
                row.append(_median_ms(lambda s=session, f=feed: s.run(None, f), args.runs))
            row.append(row[1] - row[2])
            tensor = torch.from_numpy(ids)
            with torch.inference_mode():
                for model in (reference, reference_emissions):
                    row.append(_median_ms(lambda m=model, t=tensor: m(t), args.runs))
            row.append(row[4] - row[5])
            print("{:5d}  {:10.3f}  {:13.3f}  {:10.3f} | {:12.3f}  {:15.3f}  {:12.3f}".format(*row))


if __name__ == "__main__":
    main()
