"""TensorRT's verdict on every shipped sample: export x layout x dtype, parsed and built by
TensorRT-RTX (no GPU needed), as a Markdown table.

    python scripts/trt_build_table.py [--samples sample_models] [--library tensorrt_rtx]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from birnn_export.checkpoint import load_model
from birnn_export.pipeline import export_onnx
from birnn_export.spec import LAYOUTS
from birnn_export.trt import build_engine, import_library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path("sample_models"))
    parser.add_argument("--library", default="tensorrt_rtx", choices=["tensorrt_rtx", "tensorrt"])
    args = parser.parse_args()
    if not sorted(args.samples.glob("*.pt")):
        parser.error(f"--samples: no .pt files in {args.samples}")
    library = import_library(args.library)
    print(f"{library}; profile: each graph's declared ranges\n")
    print("| sample | layout | dtype | parsed | built | build s | engine MB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sample in sorted(args.samples.glob("*.pt")):
            loaded = load_model(sample)
            for layout in LAYOUTS:
                for dtype in ("float32", "float16"):
                    path = Path(tmp) / f"{sample.stem}-{layout}-{dtype}.onnx"
                    export_onnx(
                        loaded.model,
                        path,
                        inputs=loaded.inputs,
                        ranges=loaded.ranges,
                        layout=layout,
                        dtype=dtype,
                        verify=False,
                    )
                    build = build_engine(path, library=library)
                    seconds = f"{build.seconds:.2f}" if build.seconds is not None else ""
                    size = f"{build.engine_bytes / 1e6:.1f}" if build.engine_bytes else ""
                    print(
                        f"| {sample.stem} | {layout} | {dtype} | {'yes' if build.parsed else 'NO'}"
                        f" | {'yes' if build.ok else 'NO'} | {seconds} | {size} |"
                    )
                    if not build.ok:
                        print(f"|  | {build.summary()} | | | | | |")


if __name__ == "__main__":
    main()
