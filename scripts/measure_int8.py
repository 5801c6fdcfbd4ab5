"""What int8 dynamic quantization costs in accuracy, on trained-like models.

For every trained model in a fixtures folder (``scripts/make_trained_models.py``; real-size ones
with ``--size 256``): export the float32 graph, then run verification's default sweep on ONNX
Runtime CPU for the float graph (``ort-cpu``) and its int8 form (``ort-int8``) against the
float64 model. Prints one Markdown row per model: what ONNX Runtime quantized and what it left in
float32, the int8 graph's relative L2 error pooled over the sweep and in its worst case, its
top-1 agreement over the sweep's valid positions, and both verdicts.

    python scripts/measure_int8.py [--models tests/fixtures/trained] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))

from _common import trained_models  # noqa: E402

from birnn_export import export_onnx  # noqa: E402
from birnn_export.quantize import quantize_int8  # noqa: E402
from birnn_export.verification import verify  # noqa: E402


def int8_outputs(report, check: str) -> list:
    """The int8 graph's output checks of one kind (``values`` or ``sweep``)."""
    cases = [c for c in report.cases if c.engine == "ort-int8"]
    return [o for c in cases for o in c.outputs if o.check == check]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "tests" / "fixtures" / "trained")
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    args = parser.parse_args()
    print(
        "| model | int8 ops | left in float32 | int8 rel. L2 over the sweep | worst case | "
        "int8 top-1 over the sweep | "
        "float verdict | int8 verdict | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry, loaded in trained_models(args.models, args.only):
            graph = Path(tmp) / f"{name}.onnx"
            export_onnx(
                loaded.model,
                graph,
                input_size=entry["kwargs"].get("features"),
                verify=False,
                reference=loaded.original,
            )
            quantized = quantize_int8(graph, Path(tmp) / f"{name}.int8.onnx")
            start = time.perf_counter()
            report = verify(graph, loaded, engines=("ort-cpu", "ort-int8"))
            seconds = time.perf_counter() - start
            int8 = int8_outputs(report, "values")
            worst = max((o.rel_l2 for o in int8 if o.rel_l2 is not None), default=math.nan)
            swept = int8_outputs(report, "sweep")
            top1 = min((o.top1 for o in swept if o.top1 is not None), default=math.nan)
            pooled = max((o.rel_l2 for o in swept if o.rel_l2 is not None), default=math.nan)
            positions = sum(o.top1_decisive for o in swept)
            verdicts = {
                engine: "PASS"
                if all(o.passed for c in report.cases if c.engine == engine for o in c.outputs)
                else "FAIL"
                for engine in ("ort-cpu", "ort-int8")
            }
            ops = ", ".join(f"{op} x{n}" for op, n in quantized.quantized.items()) or "-"
            left = ", ".join(f"{op} x{n}" for op, n in quantized.left_float.items()) or "-"
            print(
                f"| {name} | {ops} | {left} | {pooled:.3g} | {worst:.3g} | "
                f"{100 * top1:.2f}% of {positions} | "
                f"{verdicts['ort-cpu']} | {verdicts['ort-int8']} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
