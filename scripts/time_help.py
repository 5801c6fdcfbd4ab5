"""How fast `birnn-export --help` starts compared with `import torch` (it must not import torch).

python scripts/time_help.py --runs 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cli = median_seconds([sys.executable, "-m", "birnn_export", "--help"], args.runs)
    torch = median_seconds([sys.executable, "-c", "import torch"], args.runs)
    print(
        f"birnn-export --help {cli * 1e3:.0f} ms, python -c 'import torch' {torch * 1e3:.0f} ms: "
        f"--help is {torch / cli:.1f}x faster (median of {args.runs} runs each)"
    )


if __name__ == "__main__":
    main()
