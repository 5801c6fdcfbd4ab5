"""How far verification's criterion separates good exports from planted defects.

For every trained model in a fixtures folder (``scripts/make_trained_models.py``), in both
layouts: export it, verify the good graph, then plant every defect of ``tests/defects.py`` and
verify again, all with the default sweep and criterion. Prints one Markdown row per model,
layout and graph: the worst error over the threshold of any check (below 1 passes), the worst
error over eager PyTorch's own (the noise ratio) for outputs and for recurrent layers, and the
verdict.

    python scripts/measure_verification.py [--models tests/fixtures/trained] [--only NAME ...]
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
from birnn_export.verification import verify  # noqa: E402
from tests.defects import DEFECTS  # noqa: E402


def worst(report, checks: tuple[str, ...], key) -> float:
    values = [key(o) for c in report.cases for o in c.outputs if o.check in checks]
    values = [v for v in values if v is not None]
    return max(values, default=math.nan)


def over_threshold(check) -> float | None:
    if check.threshold is None:
        return None
    return check.max_abs / check.threshold if check.threshold else math.inf


def row(name: str, layout: str, graph: str, report, seconds: float) -> str:
    separation = worst(report, ("values", "padding", "layer", "batch-invariance"), over_threshold)
    outputs = worst(report, ("values",), lambda o: o.ratio)
    layers = worst(report, ("layer",), lambda o: o.ratio)
    verdict = "PASS" if report.passed else "FAIL"
    if report.problems:
        verdict += " (graph problem)"
    return (
        f"| {name} | {layout} | {graph} | {separation:.3g} | {outputs:.3g} | {layers:.3g} | "
        f"{verdict} | {seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "tests" / "fixtures" / "trained")
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    parser.add_argument("--layouts", default="split,fused")
    args = parser.parse_args()
    print(
        "| model | layout | graph | worst error / threshold | outputs: error / eager's | "
        "layers: error / eager's | verdict | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry, loaded in trained_models(args.models, args.only):
            features = entry["kwargs"].get("features")
            for layout in args.layouts.split(","):
                good = Path(tmp) / f"{name}_{layout}.onnx"
                export_onnx(
                    loaded.model,
                    good,
                    layout=layout,
                    input_size=features,
                    verify=False,
                    reference=loaded.original,
                )
                graphs = {"good": good}
                for defect, (plant, _) in DEFECTS.items():
                    planted = plant(good, Path(tmp) / f"{name}_{layout}_{len(graphs)}.onnx")
                    if planted is not None:
                        graphs[defect] = planted
                for graph, path in graphs.items():
                    start = time.perf_counter()
                    report = verify(path, loaded)
                    print(row(name, layout, graph, report, time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main()
