"""Eager speed of birnn_export.modules.BiRNN against torch's own bidirectional layers (issue 2).

For each cell, size, batch and depth this times, in one process and interleaved (A, B, B, A, ...
so drift and thermal effects hit both alike):

* dense:   ``BiRNN(x)``          vs ``nn.LSTM/GRU/RNN(bidirectional=True)(x)``
* lengths: ``BiRNN(x, lengths)`` vs the built-in layer on ``pack_padded_sequence(x, lengths)``
  followed by ``pad_packed_sequence`` (both included, as a user would run it).

Outputs are compared before anything is timed (the two must agree to 1e-5). Reports the median
of N runs of each and the ratio BiRNN / built-in (the issue's target: at most 1.3).

Usage:
    python scripts/bench_eager.py --threads 2 --runs 30
    python scripts/bench_eager.py --cells lstm --sizes 256 --batch 32 --layers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.modules import BiRNN

TARGET = 1.3


def _ints(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _cells(text: str) -> list[str]:
    cells = text.split(",")
    bad = [c for c in cells if c not in ("lstm", "gru", "rnn_tanh", "rnn_relu")]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown cell(s) {bad}; use lstm, gru, rnn_tanh, rnn_relu"
        )
    return cells


def builtin_layer(cell: str, size: int, layers: int) -> nn.RNNBase:
    kwargs = dict(num_layers=layers, batch_first=True, bidirectional=True)
    if cell == "lstm":
        return nn.LSTM(size, size, **kwargs)
    if cell == "gru":
        return nn.GRU(size, size, **kwargs)
    return nn.RNN(size, size, nonlinearity=cell.removeprefix("rnn_"), **kwargs)


def ragged_lengths(batch: int, steps: int, gen: torch.Generator) -> Tensor:
    """Random lengths in [1, steps], one row full length (so the padded size is really used)."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    return lengths


def interleaved_medians(
    first: Callable[[], object], second: Callable[[], object], *, runs: int, warmup: int
) -> tuple[float, float]:
    """Median seconds of each, alternating which goes first on every round."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    calls = (first, second)
    for i in range(runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each (default 3)")
    parser.add_argument("--cells", type=_cells, default=["lstm", "gru", "rnn_tanh"])
    parser.add_argument("--sizes", type=_ints, default=[64, 256], help="I = H (default 64,256)")
    parser.add_argument("--batch", type=_ints, default=[1, 32], help="batch sizes (default 1,32)")
    parser.add_argument("--seq", type=int, default=100, help="time steps T (default 100)")
    parser.add_argument("--layers", type=_ints, default=[1, 2], help="depths (default 1,2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1 or args.seq < 1:
        parser.error("--runs, --threads and --seq must be >= 1")

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.seq}, "
        f"median of {args.runs} interleaved runs after {args.warmup} warm-up; "
        f"ratio = BiRNN / built-in (target <= {TARGET})"
    )
    header = (
        f"{'cell':<9}{'I=H':>5}{'B':>4}{'L':>3}  {'mode':<8}{'BiRNN ms':>10}{'built-in ms':>13}"
        f"{'ratio':>7}{'runs':>6}{'max err':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios: list[float] = []
    worst = 0.0
    with torch.inference_mode():
        for cell in args.cells:
            for size in args.sizes:
                for batch in args.batch:
                    for layers in args.layers:
                        builtin = builtin_layer(cell, size, layers).eval()
                        ours = BiRNN.from_torch(builtin).eval()
                        x = torch.randn(batch, args.seq, size, generator=gen)
                        lengths = ragged_lengths(batch, args.seq, gen)

                        def ours_lengths(x=x, lengths=lengths, ours=ours) -> Tensor:
                            return ours(x, lengths)[0]

                        def builtin_lengths(x=x, lengths=lengths, builtin=builtin) -> Tensor:
                            packed = pack_padded_sequence(
                                x, lengths, batch_first=True, enforce_sorted=False
                            )
                            out, _ = builtin(packed)
                            return pad_packed_sequence(
                                out, batch_first=True, total_length=x.shape[1]
                            )[0]

                        cases = (
                            ("dense", lambda x=x, m=ours: m(x)[0], lambda x=x, m=builtin: m(x)[0]),
                            ("lengths", ours_lengths, builtin_lengths),
                        )
                        for mode, run_ours, run_builtin in cases:
                            err = (run_ours() - run_builtin()).abs().max().item()
                            worst = max(worst, err)
                            if err > 1e-5:
                                print(
                                    f"{cell} {size} {batch} {layers} {mode}: outputs differ "
                                    f"by {err:.2e}; not timed",
                                    file=sys.stderr,
                                )
                                continue
                            t_ours, t_builtin = interleaved_medians(
                                run_ours, run_builtin, runs=args.runs, warmup=args.warmup
                            )
                            ratio = t_ours / t_builtin
                            ratios.append(ratio)
                            flag = "" if ratio <= TARGET else "  > target"
                            print(
                                f"{cell:<9}{size:>5}{batch:>4}{layers:>3}  {mode:<8}"
                                f"{t_ours * 1e3:>10.3f}{t_builtin * 1e3:>13.3f}{ratio:>7.2f}"
                                f"{args.runs:>6}{err:>10.1e}{flag}"
                            )
    if ratios:
        print("-" * len(header))
        over = sum(r > TARGET for r in ratios)
        print(
            f"{len(ratios)} cases: ratio median {statistics.median(ratios):.2f}, "
            f"max {max(ratios):.2f}; {over} above {TARGET}; max abs output difference {worst:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
