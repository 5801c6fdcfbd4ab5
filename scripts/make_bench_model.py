"""Write a SequenceTagger checkpoint of a chosen size, for benchmarks.

python scripts/make_bench_model.py --cell lstm --size 256 -o /tmp/bilstm256.pt
birnn-export /tmp/bilstm256.pt
birnn-export bench /tmp/bilstm256.onnx --model /tmp/bilstm256.pt --batch 1,32 --seq 100
"""

from __future__ import annotations

import argparse

from _common import bench_tagger

from birnn_export.checkpoint import save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    parser.add_argument("--size", type=int, default=256, help="input and hidden size")
    parser.add_argument("--input-size", type=int, help="input size, if not --size")
    parser.add_argument("--proj-size", type=int, default=0, help="LSTM projection (LSTMP)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--outputs", type=int, default=8, help="size of the per-step head")
    parser.add_argument("--no-lengths", action="store_true", help="model takes no lengths input")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    model = bench_tagger(
        args.cell,
        args.size,
        args.layers,
        outputs=args.outputs,
        uses_lengths=not args.no_lengths,
        input_size=args.input_size,
        proj_size=args.proj_size,
    )
    save_checkpoint(model, args.output)
    print(f"wrote {args.output}: {model.config}")


if __name__ == "__main__":
    main()
