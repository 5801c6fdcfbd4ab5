"""birnn_export.describe: what inspect shows, as data and as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from birnn_export.describe import describe_lines, describe_onnx
from birnn_export.errors import BiRNNExportError
from birnn_export.pipeline import export_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def crf_graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("describe") / "crf.onnx"
    export_model(SAMPLES / "bilstm_crf_tagger.pt", path, verify=False)
    return path


def test_crf_graph_lists_its_scans_and_padding(crf_graph: Path) -> None:
    info = describe_onnx(crf_graph)
    scans = [n for n in info["recurrent_nodes"] if n["op"] == "Scan"]
    assert [n["name"] for n in scans] == ["crf/viterbi/forward", "crf/viterbi/backtrace"]
    assert all("body" not in n["attributes"] for n in scans)  # JSON-ready
    lines = describe_lines(info)
    assert lines[0].startswith(str(crf_graph)) and "  tags         int64    [batch, seq]" in lines
    assert "  token rows are padded with id 0 (no lengths input)" in lines
    assert "  output tags: CRF tags, -1 past each row's length" in lines


def test_inspect_reads_a_graph_without_torch_and_says_each_record_once(crf_graph: Path) -> None:
    """users66 F11, F12: inspect took 8 s, 3 of them importing torch it does not use, and
    printed the tool version, layout and source hash twice."""
    code = (
        "import sys; from birnn_export.cli import main\n"
        f"try:\n    main(['inspect', {str(crf_graph)!r}])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'inspect imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "  source sha256 " in done.stdout and ", tool " in done.stdout
    for key in ("version", "layout", "source_sha256"):
        assert f"birnn_export.{key}:" not in done.stdout
    lines = describe_lines(describe_onnx(crf_graph))
    assert sum("sha256" in line for line in lines) == 1


def test_unreadable_metadata_is_one_error(crf_graph: Path, tmp_path: Path) -> None:
    proto = onnx.load(crf_graph)
    for prop in proto.metadata_props:
        if prop.key == "birnn_export.spec":
            prop.value = "[1, 2]"
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, broken)
    with pytest.raises(BiRNNExportError, match=r"unreadable birnn_export\.spec metadata"):
        describe_lines(describe_onnx(broken))


@pytest.mark.parametrize(
    ("sample", "layout", "op"),
    [("bigru_varlen.pt", "split", "GRU "), ("seed_example3_varlen_rnn.pt", "scan", "RNN (scan)")],
)
def test_float32_recurrent_nodes_of_a_float16_graph_are_said(
    tmp_path: Path, sample: str, layout: str, op: str
) -> None:
    """Nodes that take sequence_lens stay float32 in a float16 graph, and so do the scan
    layout's loops written from them: inspect says so (it said nothing of the loops, users63
    F4), and says nothing of the kind for a float32 graph."""
    for dtype in ("float16", "float32"):
        path = tmp_path / f"{dtype}.onnx"
        export_model(SAMPLES / sample, path, dtype=dtype, layout=layout, verify=False)
        lines = [line for line in describe_lines(describe_onnx(path)) if f"  {op}" in line]
        assert lines and all(
            ("computes in float32" in line) == (dtype == "float16") for line in lines
        )


def test_an_int8_graphs_recurrent_nodes_and_quantization_are_said(tmp_path: Path) -> None:
    """users63 F2: inspect listed none of an int8 graph's DynamicQuantizeLSTM nodes and called
    the graph float32."""
    path = tmp_path / "q.onnx"
    export_model(SAMPLES / "bilstm_2layer.pt", path, quantize="int8", verify=False)
    info = describe_onnx(path)
    quantized = [n for n in info["recurrent_nodes"] if n["op"] == "DynamicQuantizeLSTM"]
    assert len(quantized) == 4 and all(n["dtype"] == "int8" for n in quantized)
    lines = describe_lines(info)
    assert any(line.startswith("  DynamicQuantizeLSTM") and "computes in int8" in line
               for line in lines)  # fmt: skip
    assert any("dtype float32 (int8-dynamic), padding value" in line for line in lines)


def test_a_time_major_output_is_noted_for_servers(tmp_path: Path) -> None:
    """A server batching requests on the first axis would cut a time-major output along time:
    inspect says so, as the export does (users56 F2)."""
    import torch
    from torch import nn

    from birnn_export.pipeline import export_onnx

    class TimeMajor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.transpose(0, 1))[0]  # [seq, batch, 8], as a CTC loss takes it

    torch.manual_seed(0)
    path = tmp_path / "t.onnx"
    # declared CTC (review40 M31, M32): a recurrent layer's own output is no linear head's
    # class scores until declared so, and inspect says what it was declared
    export_onnx(
        TimeMajor().eval(), path, inputs=["x:float32[batch,seq,3]"], verify=False,
        ctc={"output": 2},
    )  # fmt: skip
    from birnn_export.spec import GraphSpec

    assert GraphSpec.from_onnx(path).outputs[0].classes is True
    lines = describe_lines(describe_onnx(path))
    assert (
        "  output output: CTC scores, blank 2 (an int8 graph is judged by their greedy decodes)"
        in lines
    )
    notes = [line for line in lines if line.startswith("  note:")]
    assert notes == [
        "  note: the batch is not the first axis of 'output': a server that batches requests on "
        "the first axis (Triton with max_batch_size > 0) would cut them along another; serve the "
        'graph with max_batch_size 0 and the batch among the dims (README, "Serving the graph")'
    ]


def test_json_to_standard_output(crf_graph: Path) -> None:
    """``--json -``: the JSON alone on standard output (for a pipe), the text on standard
    error; no file named '-'."""
    import json

    from click.testing import CliRunner

    from birnn_export.cli import main

    result = CliRunner().invoke(main, ["inspect", str(crf_graph), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(crf_graph)
    assert "recurrent nodes:" in result.stderr and not Path("-").exists()
    result = CliRunner().invoke(
        main, ["check", str(crf_graph), "--target", "ort-cuda", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True and "compatible" in result.stderr


def test_an_output_without_a_rank_is_not_shown_as_a_scalar(tmp_path: Path) -> None:
    """A foreign graph's output with no shape at all was shown as ``[]``, a scalar's dims; a dim
    with neither size nor name as 0 (users24)."""
    from onnx import TensorProto, helper

    unknown = onnx.ValueInfoProto()
    unknown.name, unknown.type.tensor_type.elem_type = "y", TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", None, 4])],
        [unknown],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), path)
    info = describe_onnx(path)
    assert info["inputs"][0]["dims"] == ["T", "?", 4] and info["outputs"][0]["dims"] is None
    lines = describe_lines(info)
    assert "  x            float32  [T, ?, 4]" in lines
    assert "  y            float32  unknown rank" in lines


def test_attribute_bytes_and_lists_of_bytes_are_text() -> None:
    from birnn_export.describe import _text

    assert _text(b"forward") == "forward"
    assert _text([b"Sigmoid", b"Tanh"]) == ["Sigmoid", "Tanh"]
    assert _text([1.0, 2.0]) == [1.0, 2.0] and _text(3) == 3
