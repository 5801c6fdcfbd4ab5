"""Tests for birnn_export.bench and the ``bench`` command.

Timing values are never asserted beyond being positive; what is asserted is the bookkeeping
(rows, statistics consistent with each other, token counts from the lengths actually fed) and the
rule that an engine is checked against eager PyTorch, here torch's own ``nn.LSTM`` on a
``PackedSequence``, before it is timed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

import birnn_export
from birnn_export.base_runner import BaseRunner
from birnn_export.bench import (
    CSV_COLUMNS,
    BenchReport,
    BenchResult,
    _make_runner,
    _measure,
    _served_profile,
    _Timer,
    _untimed,
    benchmark,
    render_table,
)
from birnn_export.checkpoint import TorchReference, save_checkpoint
from birnn_export.cli import main
from birnn_export.errors import BiRNNExportError, EngineUnavailableError
from birnn_export.models import SequenceTagger, TaggerConfig
from birnn_export.pipeline import export_onnx
from birnn_export.runners import unavailable_reason
from birnn_export.spec import GraphSpec, make_feed

SMALL = dict(batch_sizes=(1, 3), seq_lens=(4, 9), warmup=1, iters=3, threads=1, progress=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BiLSTM tagger with lengths: checkpoint, ONNX graph, and a wrongly weighted copy."""
    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    config = TaggerConfig(
        cell="lstm", input_size=4, hidden_size=5, output_size=3, uses_lengths=True
    )
    model = SequenceTagger(config).eval()
    save_checkpoint(model, folder / "tagger.pt")
    # Not verified: no test here reads it; bench's own error against torch is asserted.
    export_onnx(model, folder / "tagger.onnx", verify=False)

    # The same graph with every float weight shifted: it runs fine and is wrong.
    proto = onnx.load(str(folder / "tagger.onnx"))
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            init.CopyFrom(numpy_helper.from_array(array + np.float32(0.05), init.name))
    onnx.save(proto, str(folder / "wrong.onnx"))
    return {
        "pt": folder / "tagger.pt",
        "onnx": folder / "tagger.onnx",
        "wrong": folder / "wrong.onnx",
        "folder": folder,
    }


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> SequenceTagger:
    from birnn_export.checkpoint import load_model

    return load_model(files["pt"]).model


@pytest.fixture(scope="module")
def builtin_model(model: SequenceTagger) -> torch.nn.Module:
    """The same weights in torch's own nn.LSTM, run on a PackedSequence: the real reference."""
    return TorchReference(model.rnn.to_torch(), model.head).eval()


@pytest.fixture(scope="module")
def report(files: dict[str, Path], builtin_model: torch.nn.Module) -> BenchReport:
    # engines as one string, as from Python it reads naturally (users50 F5)
    return benchmark(files["onnx"], builtin_model, engines="torch,ort-cpu", **SMALL)


def _unavailable_engine() -> str:
    for engine in ("ort-cuda", "ort-trt", "trt"):
        if unavailable_reason(engine) is not None:
            return engine
    pytest.skip("every GPU engine is available on this machine")


# -- library -------------------------------------------------------------------------------


def test_report_has_one_ok_row_per_engine_and_shape(report: BenchReport) -> None:
    assert [(r.engine, r.batch, r.seq) for r in report.results] == [
        (e, b, s) for e in ("torch", "ort-cpu") for b in (1, 3) for s in (4, 9)
    ]
    for r in report.results:
        assert r.status == "ok", r.reason
        assert r.runs == 3
        assert r.median_ms > 0 and r.mean_ms > 0 and r.first_run_ms > 0
        assert r.median_ms <= r.p90_ms and r.p99_ms is None  # 3 runs: no p99 (users52 F6)
        assert r.iqr_pct is not None and r.iqr_pct >= 0
        assert r.build_s is not None and r.build_s >= 0
        assert r.max_abs_error is not None and r.max_abs_error < 1e-5
        assert r.seq_per_s == pytest.approx(r.batch / (r.median_ms / 1e3))


def test_tokens_are_the_sum_of_the_lengths_fed(report: BenchReport, files: dict[str, Path]) -> None:
    from birnn_export.spec import GraphSpec

    spec = GraphSpec.from_onnx(files["onnx"])
    for r in report.results:
        lengths = make_feed(spec, r.batch, r.seq, seed=0)["lengths"]
        assert r.tokens_per_s == pytest.approx(lengths.sum() / (r.median_ms / 1e3))
    # Ragged lengths really are ragged: fewer tokens than batch * seq at batch 3.
    row = report.result("ort-cpu", 3, 9)
    assert row.tokens_per_s < 3 * 9 / (row.median_ms / 1e3)


def test_tokens_of_a_token_padded_tagger_are_those_not_padding(tmp_path: Path) -> None:
    """A CRF tagger finds each row's length by its padding id (no lengths input): bench fed it
    ragged rows but counted batch x seq tokens, and said "(batch x seq)" (users27)."""
    pytest.importorskip("torchcrf", reason="pytorch-crf is in the dev extra")
    from birnn_export import export_onnx
    from birnn_export.checkpoint import load_model

    sample = Path(__file__).resolve().parent.parent / "sample_models" / "bilstm_crf_tagger.pt"
    loaded = load_model(sample)
    path = export_onnx(loaded.model, tmp_path / "crf.onnx", verify=False).path
    report = benchmark(path, loaded.reference, engines=("ort-cpu",), **SMALL)
    spec = GraphSpec.from_onnx(path)
    assert spec.token_padding == 0 and report.settings["lengths"] == "ragged"
    for r in report.results:
        ids = make_feed(spec, r.batch, r.seq, seed=0)["ids"]
        assert r.tokens_per_s == pytest.approx((ids != 0).sum() / (r.median_ms / 1e3))
    assert (make_feed(spec, 3, 9, seed=0)["ids"] == 0).any()  # some rows are shorter


def test_speedup_is_torch_median_over_engine_median(report: BenchReport) -> None:
    for b in (1, 3):
        for s in (4, 9):
            torch_row, ort_row = report.result("torch", b, s), report.result("ort-cpu", b, s)
            assert torch_row.speedup_vs_torch == pytest.approx(1.0)
            assert ort_row.speedup_vs_torch == pytest.approx(
                torch_row.median_ms / ort_row.median_ms
            )


def test_environment_and_settings(report: BenchReport, files: dict[str, Path]) -> None:
    env = report.environment
    assert env["birnn_export"] == birnn_export.__version__  # which version made the report
    assert env["threads"] == 1
    assert env["cores"] >= 1
    assert env["cpu"]
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["onnx"] == onnx.__version__
    assert env["onnxruntime"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["onnx_sha256"] == hashlib.sha256(files["onnx"].read_bytes()).hexdigest()
    assert report.settings["iters"] == 3
    assert report.settings["other_dims"] == {}
    assert report.settings["criterion"].startswith("float64 reference; error vs float64 <= 8")
    assert report.settings["tolerances"] is None  # fixed tolerances only when asked for
    # the load the blocks met, before and after (users52 F1)
    assert set(env["load_average"]) == {"before", "after"}
    assert all(v is None or v >= 0 for v in env["load_average"].values())


def test_a_busy_machine_is_said_beside_the_ratios() -> None:
    """A load of other work as the run began moves the ratios between engine blocks, which no
    spread within a block shows: the caption says so (users52 F1)."""
    from birnn_export.bench import BUSY_LOAD, _busy_line

    def line(load: float | None) -> list[str]:
        env = {"cores": 2, "load_average": {"before": load, "after": 2.0}}
        return _busy_line(BenchReport(results=(), environment=env))

    (said,) = line(BUSY_LOAD + 2.5)
    assert said.startswith("the machine was busy as the run began (load average 3.5 over")
    assert line(BUSY_LOAD / 2) == [] and line(None) == []


def test_json_and_csv_hold_every_row(report: BenchReport, tmp_path: Path) -> None:
    data = json.loads(report.to_json())
    keys = {
        "environment",
        "settings",
        "model_file",
        "model_sha256",
        "results",
        "judged_over_the_shapes",
    }
    assert set(data) == keys | {"error", "exit_code"}
    assert len(data["results"]) == len(report.results)
    assert list(data["results"][0]) == list(CSV_COLUMNS)
    assert data["results"][0]["median_ms"] == report.results[0].median_ms

    with report.to_csv(tmp_path / "r.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == list(CSV_COLUMNS)
    # The columns users' scripts read: renaming one breaks them.
    kept = "engine batch seq median_ms p90_ms p99_ms mean_ms runs seq_per_s tokens_per_s"
    kept += " first_run_ms build_s speedup_vs_torch status reason"
    assert set(kept.split()) <= set(reader.fieldnames)
    assert len(rows) == len(report.results)
    assert rows[-1]["engine"] == "ort-cpu" and float(rows[-1]["median_ms"]) > 0
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_plot_writes_a_png(report: BenchReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.plot(tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_plot_names_the_engines_it_could_not_draw(
    report: BenchReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that was not timed at a batch is in that panel's legend with why, where the
    plot used to leave it out without a word (users52 F5)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn: list[Figure] = []
    real = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (drawn.append(self), real(self, *a, **k))[1]
    )
    first, *rest = (r for r in report.results if r.engine == "ort-cpu")
    broken = replace(first, status="mismatch", median_ms=None, runs=0)
    absent = BenchResult("trt", first.batch, first.seq, "unavailable", reason="no GPU")
    other = [r for r in report.results if r.engine != "ort-cpu"]
    changed = replace(report, results=(*other, broken, *rest, absent))
    changed.plot(tmp_path / "p.png")
    legend = drawn[0].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    expected = ["torch", f"ort-cpu (mismatch at seq {first.seq})", "trt (unavailable)"]
    assert sorted(labels) == sorted(expected)
    # a panel where nothing was timed (one engine, wrong): drawn, where the switch to a log
    # axis after its empty legend line raised (review32); each status at its own lengths
    drawn.clear()
    ort = [r for r in report.results if r.engine == "ort-cpu" and r.batch == first.batch]
    wrong = [replace(r, status="mismatch", median_ms=None, runs=0) for r in ort]
    wrong[-1] = replace(wrong[-1], status="error")
    alone = replace(report, results=tuple(wrong))
    assert alone.plot(tmp_path / "alone.png").read_bytes()[:4] == b"\x89PNG"
    (text,) = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert text == "ort-cpu (mismatch, error)"
    assert drawn[0].axes[0].get_yscale() == "log"  # as the docstring says, that panel too
    # where others were timed, each status at its own lengths (review33 M21)
    rows = [replace(first, seq=s, status=k) for s, k in ((64, "mismatch"), (256, "error"))]
    rows.append(replace(first, seq=1024, status="mismatch"))
    assert _untimed(rows, whole=False) == "mismatch at seq 64, 1024; error at seq 256"


def test_each_engine_is_warmed_up_before_it_is_timed() -> None:
    """One checked run, the warm-up, then the timed runs (review33 M06: warmup=0 passed on
    timed a cold engine, and no test saw it)."""
    calls: list[int] = []

    class Counting(BaseRunner):
        def activate_impl(self) -> None:
            pass

        def infer_impl(self, feed: object) -> dict[str, np.ndarray]:
            calls.append(1)
            return {}

    with Counting() as runner:
        timer = _Timer(iters=5, duration=None, warmup=3)
        row = _measure(runner, "torch", 2, 3, {}, lambda actual: [], timer, 6)
    assert row.status == "ok" and row.runs == 5 and len(calls) == 1 + 3 + 5


def test_wrong_engine_is_a_mismatch_and_not_timed(
    files: dict[str, Path], builtin_model: torch.nn.Module
) -> None:
    report = benchmark(
        files["wrong"], builtin_model, engines=("torch", "ort-cpu"), **{**SMALL, "seq_lens": (9,)}
    )
    from birnn_export.spec import GraphSpec

    spec = GraphSpec.from_onnx(files["wrong"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(files["wrong"]), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        assert report.result("torch", b, 9).status == "ok"
        row = report.result("ort-cpu", b, 9)
        assert row.status == "mismatch"
        assert row.runs == 0
        assert row.median_ms is None and row.first_run_ms is None
        assert row.tokens_per_s is None and row.speedup_vs_torch is None
        assert "ort-cpu" in row.reason and "not timed" in row.reason
        # The reported error is the real one: ONNX Runtime vs torch's packed nn.LSTM.
        feed = make_feed(spec, b, 9, seed=0)
        (got,) = session.run(None, feed)
        with torch.no_grad():
            want = builtin_model(torch.from_numpy(feed["x"]), torch.from_numpy(feed["lengths"]))
        assert row.max_abs_error == pytest.approx(np.abs(got - want.numpy()).max(), rel=1e-3)
        assert row.max_abs_error > 1e-2
    assert {r.engine for r in report.failed()} == {"ort-cpu"}


def test_model_that_is_not_the_graph_is_caught(files: dict[str, Path]) -> None:
    """The check really compares: a differently initialised model makes every engine but
    torch (which is the model) a mismatch."""
    torch.manual_seed(123)
    other = SequenceTagger(
        TaggerConfig(cell="lstm", input_size=4, hidden_size=5, output_size=3, uses_lengths=True)
    ).eval()
    report = benchmark(files["onnx"], other, engines=("ort-cpu",), **SMALL)
    assert {r.status for r in report.results} == {"mismatch"}


def test_unavailable_engine_is_skipped_with_its_reason(
    files: dict[str, Path], model: SequenceTagger
) -> None:
    engine = _unavailable_engine()
    report = benchmark(files["onnx"], model, engines=("ort-cpu", engine), **SMALL)
    skipped = [r for r in report.results if r.engine == engine]
    assert len(skipped) == 4
    assert {r.status for r in skipped} == {"unavailable"}
    assert all(r.reason.startswith(engine) and r.runs == 0 for r in skipped)
    assert {r.status for r in report.results if r.engine == "ort-cpu"} == {"ok"}
    assert report.failed() == ()
    # asked for and not run: exit 2, as verify refuses it, the others' rows reported (users47 F7)
    with pytest.raises(EngineUnavailableError, match=f"{engine} could not run here, the other"):
        report.raise_for_failure()
    # but trt-rtx built here without its GPU reports its build, as the README says (review28 L2)
    built = BenchResult("trt-rtx", 1, 8, "unavailable", reason="no GPU", engine_bytes=10)
    ran = [r for r in report.results if r.engine == "ort-cpu"]
    BenchReport((*ran, built), {}, {}).raise_for_failure()


def test_sole_unavailable_engine_raises(files: dict[str, Path], model: SequenceTagger) -> None:
    engine = _unavailable_engine()
    with pytest.raises(EngineUnavailableError, match=engine):
        benchmark(files["onnx"], model, engines=(engine,), **SMALL)


@pytest.mark.tensorrt_rtx
def test_trt_rtx_that_cannot_run_still_reports_its_build(
    files: dict[str, Path], model: SequenceTagger, tmp_path: Path
) -> None:
    """Without an RTX-class GPU, trt-rtx is unavailable with the exact reason, and its
    ahead-of-time build (real TensorRT-RTX, on the CPU) gives the build time and engine size."""
    from birnn_export import trt

    if trt.unavailable_reason("tensorrt_rtx") is None:  # pragma: no cover - an RTX GPU is here
        pytest.skip("trt-rtx can run here: its rows are timed like any engine")
    # Alone it still reports (nothing to time, but the build is a verdict), exit status aside.
    report = benchmark(files["onnx"], model, engines=("trt-rtx",), **SMALL)
    rows = [r for r in report.results if r.engine == "trt-rtx"]
    assert len(rows) == 4 and {r.status for r in rows} == {"unavailable"}
    build = report.settings["offline_builds"]["trt-rtx"]
    assert build["built"] and build["engine_bytes"] > 0
    # The profile covers every measured shape, inside the declared ranges.
    assert build["profile"]["x"] == [[1, 1, 4], [8, 64, 4], [32, 256, 4]]
    for row in rows:
        assert row.reason.startswith("trt-rtx: ") and "built ahead of time here" in row.reason
        assert row.build_s == build["seconds"] and row.engine_bytes == build["engine_bytes"]
        assert row.runs == 0 and row.median_ms is None
    assert report.settings["tensorrt"] == {
        "trt-rtx": f"tensorrt_rtx {trt.import_library('tensorrt_rtx').version}"
    }
    assert report.failed() == ()
    csv_text = report.to_csv(tmp_path / "b.csv").read_text()
    assert "engine_bytes" in csv_text.splitlines()[0]
    assert str(build["engine_bytes"]) in csv_text
    text = _render(report)
    assert "unavailable (built " in text and " MB)" in text


def _render(report: BenchReport) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    return console.export_text()


def test_torch_on_cuda_is_checked_or_reported_unavailable(
    files: dict[str, Path], model: SequenceTagger
) -> None:
    report = benchmark(
        files["onnx"],
        model,
        engines=("torch", "ort-cpu"),
        batch_sizes=(2,),
        seq_lens=(5,),
        iters=3,
        device="cuda",
        progress=False,
    )
    torch_row = next(r for r in report.results if r.engine == "torch")
    if torch.cuda.is_available():
        assert torch_row.status == "ok"
    else:
        assert torch_row.status == "unavailable" and "no CUDA device" in torch_row.reason
        assert next(r for r in report.results if r.engine == "ort-cpu").status == "ok"


def test_duration_gives_at_least_three_runs(files: dict[str, Path], model: SequenceTagger) -> None:
    settings = {**SMALL, "iters": None, "duration": 1e-6, "batch_sizes": (2,), "seq_lens": (5,)}
    report = benchmark(files["onnx"], model, engines=("ort-cpu",), **settings)
    assert report.results[0].status == "ok"
    assert report.results[0].runs >= 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engines": ("tensorflow",)}, "unknown"),
        ({"engines": ()}, "at least one"),
        ({"batch_sizes": (0,)}, "batch_sizes"),
        ({"seq_lens": ()}, "seq_lens"),
        ({"iters": 3, "duration": 1.0}, "not both"),
        ({"warmup": -1}, "warmup"),
        ({"threads": 100000}, "threads: 100000 is not in 1"),
        ({"atol": -1.0}, "atol: expected a finite number"),
        ({"rtol": float("nan")}, "rtol: expected a finite number"),
        ({"batch_sizes": (100000,), "seq_lens": (256,)}, "raise --memory-budget"),
        # review41 F3: both did nothing without the torch engine, and nothing said so
        (
            {"engines": ("ort-cpu",), "device": "cuda"},
            r"^device and engines: the torch engine alone runs on it, and it is not among",
        ),
        (
            {"engines": ("ort-cpu",), "compile": True},
            r"^compile and engines: the torch engine alone runs under it",
        ),
    ],
)
def test_bad_arguments(files: dict[str, Path], model: SequenceTagger, kwargs, match) -> None:
    # One error type for bad input (exit code 2 at the command line), raised before any run.
    with pytest.raises(BiRNNExportError, match=match):
        benchmark(files["onnx"], model, **{**SMALL, **kwargs})


def test_graph_without_spec_is_a_user_error(tmp_path: Path, files: dict[str, Path], model) -> None:
    proto = onnx.load(str(files["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(BiRNNExportError, match="metadata"):
        benchmark(tmp_path / "plain.onnx", model, **SMALL)


def test_model_that_cannot_take_the_inputs_is_a_user_error(files: dict[str, Path]) -> None:
    wrong_size = torch.nn.LSTM(7, 3, batch_first=True)  # expects 7 features, the graph has 4
    with pytest.raises(BiRNNExportError, match="graph's inputs"):
        benchmark(files["onnx"], wrong_size, engines=("ort-cpu",), **SMALL)


def test_timer_rules() -> None:
    fixed = _Timer(iters=5, duration=None, warmup=0)
    assert not fixed.done(4, 100.0) and fixed.done(5, 0.0)
    timed = _Timer(iters=None, duration=2.0, warmup=0)
    assert not timed.done(2, 50.0) and not timed.done(100, 1.9) and timed.done(3, 2.0)
    adaptive = _Timer(iters=None, duration=None, warmup=0)
    assert not adaptive.done(9, 5.0)  # fewer than 10 runs, not yet slow
    assert adaptive.done(10, 1.0)  # 10 runs and 1 s
    assert not adaptive.done(500, 0.5)  # fast: keep going to ~1 s
    assert adaptive.done(1000, 0.5)  # cap
    assert adaptive.done(3, 10.0)  # slow shape: 3 runs in 10 s are enough
    assert not adaptive.done(2, 30.0)


def test_json_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    report = BenchReport(
        (BenchResult("ort-cpu", 1, 8, "mismatch", reason="NaN out", max_abs_error=float("inf")),),
        {"cpu": "Test CPU", "cores": 2, "threads": 1},
        {"duration": float("nan")},
    )
    data = json.loads(report.to_json())
    assert data["results"][0]["max_abs_error"] is None
    assert data["settings"]["duration"] is None


def test_tensorrt_engines_get_a_profile_covering_every_shape(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 64 and T 300 are outside the graph's declared profile (32, 256): the runners bench
    builds keep the declared opt shape and widen the bounds to cover the shapes it measures."""
    monkeypatch.setenv("BIRNN_EXPORT_CACHE", str(tmp_path))
    profile = _served_profile(GraphSpec.from_onnx(files["onnx"]), (2, 64), (16, 300))
    assert profile == ((1, 8, 64), (1, 64, 300))
    args = (None, ["x", "lengths"], ["y"], 1, None, profile)
    trt_runner = _make_runner("trt", files["onnx"], *args, isolate=False)
    assert (trt_runner.batch, trt_runner.seq) == ((1, 8, 64), (1, 64, 300))
    ort_runner = _make_runner("ort-trt", files["onnx"], *args, isolate=False)
    assert ort_runner.threads == 1
    options = ort_runner.provider_options
    assert options["trt_profile_min_shapes"] == "x:1x1x4,lengths:1"
    assert options["trt_profile_opt_shapes"] == "x:8x64x4,lengths:8"
    assert options["trt_profile_max_shapes"] == "x:64x300x4,lengths:64"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt" / "strict-fp32")
    cuda_runner = _make_runner("ort-cuda", files["onnx"], *args, isolate=False)
    assert cuda_runner.threads == 1 and cuda_runner.provider_options is None


def test_other_named_dims_are_timed_at_their_opt_and_say_so(tmp_path: Path) -> None:
    from rich.console import Console

    from tests.test_inputs import WORD_CHAR_INPUTS, WordCharSpeakerTagger

    model = WordCharSpeakerTagger().eval()
    path = tmp_path / "w.onnx"
    export_onnx(model, path, inputs=WORD_CHAR_INPUTS, ranges={"chars": (1, 6, 12)}, verify=False)
    report = benchmark(path, model, engines=("ort-cpu",), **{**SMALL, "seq_lens": (4,)})
    assert report.settings["other_dims"] == {"chars": 6}
    assert all(r.status == "ok" for r in report.results), report.results
    console = Console(record=True, width=220)
    console.print(render_table(report))
    assert "other dims at their declared opt: chars=6" in console.export_text()


def test_a_second_sequence_is_timed_at_the_size_given(tmp_path: Path) -> None:
    """--dim sets a sentence pair's second time dim; its tokens count in tokens/s."""
    from rich.console import Console

    from birnn_export.spec import GraphSpec
    from tests.realistic_models import SiamesePair

    torch.manual_seed(0)
    model = SiamesePair().eval()
    path = tmp_path / "pair.onnx"
    export_onnx(model, path, verify=False)
    widths = []

    class Recorder(torch.nn.Module):  # the reference, seeing what is fed
        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            widths.append(args[2].shape[1])
            return model(*args)

    dims = {"q2_seq": 7}
    report = benchmark(
        path, Recorder(), engines=("ort-cpu",), **{**SMALL, "seq_lens": (4,)}, dims=dims
    )
    assert set(widths) == {7}
    assert report.settings["other_dims"] == dims and report.settings["given_dims"] == ["q2_seq"]
    spec = GraphSpec.from_onnx(path)
    for r in report.results:
        feed = make_feed(spec, r.batch, r.seq, seed=0, dims=dims)
        both = feed["q1_lens"].sum() + feed["q2_lens"].sum()
        assert r.tokens_per_s == pytest.approx(both / (r.median_ms / 1e3))
    console = Console(record=True, width=220)
    console.print(render_table(report))
    assert "other dims as given: q2_seq=7" in console.export_text()
    for bad, message in (
        ({"q2_seq": 999}, "outside its declared range 1..256"),
        ({"x": 3}, "not one of"),
    ):
        with pytest.raises(BiRNNExportError, match=message):
            benchmark(path, model, engines=("ort-cpu",), **SMALL, dims=bad)


def test_render_table_lists_rows_and_reasons() -> None:
    from rich.console import Console

    results = (
        BenchResult(
            "torch",
            1,
            8,
            "ok",
            median_ms=1.0,
            p90_ms=1.2,
            p99_ms=1.5,
            runs=10,
            tokens_per_s=8000.0,
            speedup_vs_torch=1.0,
        ),
        BenchResult(
            "ort-cpu", 1, 8, "mismatch", reason="ort-cpu: output 'y' off", max_abs_error=0.25
        ),
        BenchResult("trt", 1, 8, "unavailable", reason="trt: tensorrt not installed"),
        BenchResult("trt", 1, 16, "unavailable", reason="trt: tensorrt not installed"),
    )
    report = BenchReport(results, {"cpu": "Test CPU", "cores": 2, "threads": 1}, {})
    console = Console(record=True, width=220)
    console.print(render_table(report))
    text = console.export_text()
    for header in (
        "engine",
        "batch",
        "seq",
        "median ms",
        "p90 ms",
        "p99 ms",
        "runs",
        "tokens/s",
        "vs torch",
        "status",
    ):
        assert header in text
    assert "mismatch 2.5e-01" in text
    assert "vs torch = eager torch median / engine median" in text
    assert "trt: tensorrt not installed" in text
    assert text.count("trt: tensorrt not installed") == 1  # reason once, engine once
    assert "Test CPU" in text

    # Recurrent nodes a GPU provider left to the CPU are named under the table.
    settings = {"cpu_recurrent_nodes": {"ort-cuda": ["rnn/l0/forward"]}}
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results[:1], {}, settings)))
    assert "ort-cuda: recurrent nodes left to the CPU" in console.export_text()

    # A torch row that did not run plain CPU eager says so in its label (JSON keeps "torch").
    settings = {"torch_device": "cuda:1", "torch_compile": True}
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results[:1], {}, settings)))
    text = console.export_text()
    assert "torch-cuda:1-compiled" in text and "torch.compile" in text
    assert "vs torch = torch-cuda:1-compiled median" in text  # not "eager" (review41 F8)

    # Where torch could not run there (no CUDA), the caption does not say it ran there; and it
    # says whether ONNX Runtime's threads spun, where it ran (only the JSON said so: users24).
    absent = BenchResult("torch", 1, 8, "unavailable", reason="torch-cuda: no CUDA device")
    for spinning, said in (("default (on)", "spin (its default)"), (False, "sleep")):
        settings = {"torch_device": "cuda", "ort": {"spinning": spinning}}
        console = Console(record=True, width=220)
        console.print(render_table(BenchReport((absent, results[1]), {}, settings)))
        text = console.export_text()
        assert "torch ran on" not in text
        assert f"ONNX Runtime's idle threads {said}" in text
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results[:1], {}, {"ort": {"spinning": True}})))
    assert "idle threads" not in console.export_text()  # no ONNX Runtime row
    # no torch row: no empty "vs torch" column, no footnote for it (users63 F4)
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results[1:], {}, {})))
    text = console.export_text()
    assert "ort-cpu" in text and "vs torch" not in text
    # an engine refused by its task (int8 top-1) shows no abs error, which did not refuse it
    from birnn_export.compare import Check

    lost = Check("y", "scores", "top1", 0.25, 0.1, 0.01, passed=False, top1=0.98)
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results[1:2], judged={"ort-cpu": (lost,)})))
    text = console.export_text()  # it clears what it recorded: read it once
    assert "mismatch" in text and "2.5e-01" not in text
    # a terminal narrower than the table gets whole numbers, not "8,0…" (users66 F1)
    from birnn_export._report import print_table

    console = Console(record=True, width=60)
    print_table(console, render_table(report))
    words = console.export_text().split()
    assert "tokens/s=8,000" in words and "vs_torch=1.00x" in words and "…" not in words


def test_erratic_run_times_are_named_under_the_table() -> None:
    """Run times of which a good part was slowed (another process took the cores) spread their
    middle half over the limit, and the table names that row; steady ones, and ones with a few
    stalls that do not move the median, are not named."""
    from rich.console import Console

    class Runner(BaseRunner):  # the times given, as if the engine took them
        def __init__(self, times_s: list[float]) -> None:
            super().__init__()
            self.activate_time_s, self.times = 0.0, iter(times_s)
            self.is_active = True

        def activate_impl(self) -> None:
            pass

        def infer_impl(self, feed: object) -> dict[str, np.ndarray]:
            return {}

        def infer(self, feed: object) -> dict[str, np.ndarray]:
            self.last_inference_time_s = next(self.times, 1e-3)
            return {}

    def measure(times_s: list[float]) -> BenchResult:
        timer = _Timer(iters=20, duration=None, warmup=0)
        return _measure(Runner(times_s), "torch", 8, 32, {}, lambda actual: [], timer, 256)

    steady = measure([1e-3 * (1 + 0.01 * (i % 3)) for i in range(20)])
    stalled = measure([1e-3] * 18 + [0.5, 2.0])  # two stalls: the median holds
    shared = measure([1e-3 * (1.6 if i % 2 else 1.0) for i in range(20)])  # half the runs slowed
    assert steady.iqr_pct is not None and steady.iqr_pct < 3
    assert stalled.iqr_pct == pytest.approx(0.0) and stalled.median_ms == pytest.approx(1.0)
    assert shared.iqr_pct is not None and shared.iqr_pct > 40

    def caption(*rows: BenchResult) -> str:
        console = Console(record=True, width=400)
        console.print(render_table(BenchReport(rows, {}, {})))
        return " ".join(console.export_text().split())  # the caption wraps to the table

    assert "unstable" not in caption(steady, stalled)
    text = caption(steady, replace(shared, engine="ort-cpu"))
    assert "unstable timings" in text and "ort-cpu batch 8 seq 32" in text
    assert "torch batch 8 seq 32" not in text


# -- CLI -----------------------------------------------------------------------------------


def _bench(*args: str) -> object:
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def test_cli_help() -> None:
    result = _bench("--help")
    assert result.exit_code == 0
    for option in (
        "--engines",
        "--batch",
        "--seq",
        "--iters",
        "--duration",
        "--threads",
        "--json",
        "--csv",
        "--plot",
        "--model-class",
        "--dim",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "1,x"], "--batch"),
        (["--batch", "0"], "--batch"),
        (["--seq", "16,,64"], "--seq"),
        (["--engines", "torch,tf"], "'tf'"),
        (["--iters", "3", "--duration", "1"], "not both"),
        (["--dim", "chars"], "--dim: expected DIM=SIZE"),
        (["--dim", "chars=6"], "dim 'chars': not one of the graph's other named dims (none)"),
    ],
)
def test_cli_usage_errors_are_one_line(files: dict[str, Path], args, message) -> None:
    result = _bench(str(files["onnx"]), "--model", str(files["pt"]), *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_cli_writes_reports(files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = {k: tmp_path / f"bench.{k}" for k in ("json", "csv", "png")}
    result = _bench(
        *f"{files['onnx']} --model {files['pt']} --engines torch,ort-cpu --batch 2 --seq 5,7 "
        f"--warmup 0 --iters 2 --threads 1 --json {out['json']} --csv {out['csv']} "
        f"--plot {out['png']}".split()
    )
    assert result.exit_code == 0, result.output
    assert "ort-cpu" in result.output and "vs torch" in result.output
    data = json.loads(out["json"].read_text())
    assert [(r["engine"], r["seq"], r["status"]) for r in data["results"]] == [
        ("torch", 5, "ok"),
        ("torch", 7, "ok"),
        ("ort-cpu", 5, "ok"),
        ("ort-cpu", 7, "ok"),
    ]
    placement = data["settings"]["placement"]["ort-cpu"]
    assert placement is None or "LSTM" in placement["CPUExecutionProvider"]
    assert data["settings"]["cpu_recurrent_nodes"] == {}
    assert out["csv"].read_text().startswith(",".join(CSV_COLUMNS))
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    assert (data["error"], data["exit_code"]) == (None, 0)  # as the export's JSON says them
    # the model file timed against (users52 F4)
    assert data["model_file"] == str(files["pt"])
    assert data["model_sha256"] == hashlib.sha256(files["pt"].read_bytes()).hexdigest()


def test_cli_json_to_standard_output_says_the_exit(files: dict[str, Path]) -> None:
    """``--json -`` on a mismatch: the report alone on standard output, with the exit code the
    run ends with and its error (users47 F9: bench's JSON had neither; it said "Wrote standard
    output")."""
    args = f"{files['wrong']} --model {files['pt']} --engines ort-cpu --batch 2 --seq 5"
    result = _bench(*args.split(), "--iters", "2", "--warmup", "0", "--json", "-")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["exit_code"] == 1 and data["error"].startswith("1 of 1 measurements failed")
    assert "report written to standard output" in result.stderr


def test_cli_mismatch_exits_1(files: dict[str, Path]) -> None:
    result = _bench(
        *f"{files['wrong']} --model {files['pt']} --engines ort-cpu --batch 2 --seq 5 "
        "--iters 2 --warmup 0".split()
    )
    assert result.exit_code == 1
    assert "mismatch" in result.output.splitlines()[-1]


def test_cli_sole_unavailable_engine_exits_2(files: dict[str, Path]) -> None:
    engine = _unavailable_engine()
    result = _bench(
        str(files["onnx"]),
        "--model",
        str(files["pt"]),
        "--engines",
        engine,
        "--batch",
        "1",
        "--seq",
        "4",
        "--iters",
        "1",
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and engine in lines[0]


@pytest.mark.tensorrt_rtx
def test_cli_trt_rtx_alone_shows_its_build_and_exits_2(files: dict[str, Path]) -> None:
    from birnn_export import trt

    if trt.unavailable_reason("tensorrt_rtx") is None:  # pragma: no cover - an RTX GPU is here
        pytest.skip("trt-rtx can run here: its rows are timed like any engine")
    args = ("--engines", "trt-rtx", "--batch", "1", "--seq", "4", "--iters", "1")
    result = _bench(str(files["onnx"]), "--model", str(files["pt"]), *args)
    assert result.exit_code == 2
    assert "unavailable (built" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: no engine could run here")


def test_cli_missing_files_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    result = _bench(str(tmp_path / "none.onnx"), "--model", str(files["pt"]))
    assert result.exit_code == 2 and "none.onnx" in result.output
    result = _bench(
        str(files["onnx"]),
        "--model",
        str(files["pt"]),
        "--json",
        str(tmp_path / "no" / "such" / "r.json"),
    )
    assert result.exit_code == 2 and "--json" in result.output


@pytest.mark.slow
def test_cli_as_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    # Slow tier: the bench CLI's CSV is guarded by test_cli_writes_reports (in process) and a
    # real `python -m birnn_export` process by test_verification.py::
    # test_cli_subprocess_exit_code and test_check.py::test_cli_subprocess.
    csv_path = tmp_path / "sub.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "birnn_export",
            "bench",
            str(files["onnx"]),
            "--model",
            str(files["pt"]),
            "--engines",
            "ort-cpu",
            "--batch",
            "1",
            "--seq",
            "4",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--csv",
            str(csv_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["engine"], r["status"], r["runs"]) for r in rows] == [("ort-cpu", "ok", "2")]


def test_bench_fails_before_anything_loads(files: dict[str, Path], tmp_path, monkeypatch) -> None:
    """A missing graph, a plot without matplotlib and a plot not named .png are refused before
    the model loads or an engine runs."""
    import importlib.util

    import birnn_export.checkpoint as checkpoint

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(checkpoint, "load_model", no_loading)
    with pytest.raises(BiRNNExportError, match=r"absent\.onnx: no such ONNX file"):
        birnn_export.benchmark(tmp_path / "absent.onnx", files["pt"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    args = ["--model", str(files["pt"]), "--plot", str(tmp_path / "p.png")]
    result = CliRunner().invoke(main, ["bench", str(files["onnx"]), *args])
    assert result.exit_code == 2, result.output
    assert "'--plot': matplotlib is not installed; pip install matplotlib" in result.output
    monkeypatch.setattr(importlib.util, "find_spec", real)
    # the plot is a PNG whatever its name said (users24): another suffix is refused
    args = ["--model", str(files["pt"]), "--plot", str(tmp_path / "p.txt")]
    result = CliRunner().invoke(main, ["bench", str(files["onnx"]), *args])
    assert result.exit_code == 2 and "p.txt must end in .png" in result.output, result.output
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "p.png").exists()


def test_a_fault_of_the_comparison_keeps_its_traceback(
    files: dict[str, Path], model: SequenceTagger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine's own failure is its row's error; a fault of birnn-export's comparison is a
    bug, and became an "error" row with its traceback at debug level only (review20)."""
    import birnn_export.bench as bench

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug in the comparison")

    monkeypatch.setattr(bench, "compare_outputs", broken)
    with pytest.raises(KeyError, match="a bug in the comparison"):
        benchmark(files["onnx"], model, engines=("ort-cpu",), **SMALL)


def test_the_model_may_be_given_as_its_file(files: dict[str, Path]) -> None:
    """bench reads a model file as the CLI does: the torch engine times the model as its author
    wrote it (torch's own nn.LSTM), not the converted one."""
    import birnn_export.bench as bench

    timed: list[object] = []
    real = bench._make_runner

    def recording(engine: str, onnx_path: Path, model: object, *args: object, **kwargs: object):
        timed.append(model)
        return real(engine, onnx_path, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "_make_runner", recording)
        report = bench.benchmark(
            files["onnx"], files["pt"], engines=("torch",), batch_sizes=(2,), seq_lens=(4,),
            iters=2, warmup=0, progress=False, isolate=False,
        )  # fmt: skip
    assert [r.status for r in report.results] == ["ok"]
    assert any(isinstance(m, torch.nn.LSTM) for m in timed[0].modules()), timed[0]


def test_an_unavailable_engines_row_keeps_its_status_column_beside_int8() -> None:
    """With the 'vs ort-cpu' column shown, an engine unavailable everywhere still has its status
    under 'status' (review38: its row was one cell short)."""
    from rich.console import Console

    rows = (
        BenchResult("ort-cpu", 1, 8, "ok", median_ms=2.0, runs=3),
        BenchResult("ort-int8", 1, 8, "ok", median_ms=1.0, runs=3, speedup_vs_ort_cpu=2.0),
        BenchResult("trt-rtx", 1, 8, "unavailable", reason="no RTX GPU"),
    )
    console = Console(record=True, width=220)
    console.print(render_table(BenchReport(results=rows)))
    text = console.export_text().replace("┃", "│")
    lines = [line.split("│") for line in text.splitlines() if "│" in line]
    status = [c.strip() for c in lines[0]].index("status")  # the header
    unavailable = next(cells for cells in lines if "trt-rtx" in cells[1])
    assert unavailable[status].strip() == "unavailable"
    assert next(c for c in lines if "ort-int8" in c[1])[status - 1].strip() == "2.00x"


def test_the_json_judgement_of_a_ctc_output_holds_its_decodes() -> None:
    """An int8 engine's judgement of an output declared CTC (--ctc) is its greedy decodes':
    the JSON keeps their counts beside top-1's."""
    from birnn_export.bench import _judgement
    from birnn_export.compare import Check

    check = Check(
        "log_probs", "sequence", "sweep", 0.1, 0.1, 0.01, False, rel_l2=0.01, rel_l2_limit=0.05,
        top1=0.999, top1_limit=0.995, top1_decisive=900, top1_missed=1, decoded_rows=30,
        decoded_rows_differ=3, decoded_symbols=250, decoded_edits=4, blank=0,
    )  # fmt: skip
    saved = _judgement(check)
    assert (saved["decoded_edits"], saved["decoded_symbols"], saved["ctc_blank"]) == (4, 250, 0)
    assert saved["decoded_rows_differing"] == 3 and not saved["passed"]
    assert (saved["positions"], saved["positions_differing"]) == (900, 1)  # review38 M23
    assert "greedy CTC decodes (blank 0): 4 edits in 250 symbols (1.60%" in saved["text"]
    assert "over the shapes measured" in saved["text"]
