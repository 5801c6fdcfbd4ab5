"""Static compatibility check: each defect the engines reject is found, clean graphs pass."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from birnn_export.check import TENSORRT_OPS, CheckReport, Finding, check_compatibility
from birnn_export.cli import main
from birnn_export.errors import BiRNNExportError, ModelLoadError
from birnn_export.spec import METADATA_KEY, GraphSpec, TensorSpec

IN, H = 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _spec(out_dim: int = 2 * H, dtype: str = "float32") -> GraphSpec:
    return GraphSpec(
        inputs=(
            TensorSpec("x", dtype, ("batch", "seq", IN), "features"),
            TensorSpec("lengths", "int64", ("batch",), "lengths", 1, "seq"),
        ),
        outputs=(TensorSpec("output", dtype, ("batch", "seq", out_dim), "sequence"),),
        example_batch=2,
        example_seq=5,
        dtype=dtype,
    )


def recurrent_graph(
    op: str = "LSTM",
    *,
    direction: str = "bidirectional",
    elem: int = TensorProto.FLOAT,
    x_dims: tuple = ("batch", "seq", IN),
    peepholes: bool = False,
    with_spec: bool = True,
    **attrs: object,
) -> onnx.ModelProto:
    """x [b, t, IN] + lengths [b] -> Transpose -> <op>(sequence_lens) -> [b, t, D*H]."""
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((dirs, g * H, IN)).astype(np_dtype), "W"),
        numpy_helper.from_array(rng.standard_normal((dirs, g * H, H)).astype(np_dtype), "R"),
        numpy_helper.from_array(rng.standard_normal((dirs, 2 * g * H)).astype(np_dtype), "B"),
        numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "out_shape"),
    ]
    rnn_inputs = ["x_t", "W", "R", "B", "lens32"]
    if peepholes:
        inits.append(numpy_helper.from_array(np.zeros((dirs, 3 * H), dtype=np_dtype), "P"))
        rnn_inputs += ["", "", "P"]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2], name="to_time_major"),
        helper.make_node("Cast", ["lengths"], ["lens32"], to=TensorProto.INT32, name="cast_lens"),
        helper.make_node(
            op,
            rnn_inputs,
            ["Y"],
            name="rnn",
            hidden_size=H,
            direction=direction,
            **attrs,
        ),
        helper.make_node("Transpose", ["Y"], ["Y_b"], perm=[2, 0, 1, 3], name="to_batch_major"),
        helper.make_node("Reshape", ["Y_b", "out_shape"], ["output"], name="merge_dirs"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", elem, list(x_dims)),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("output", elem, ["batch", "seq", dirs * H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if with_spec:
        dtype = "float16" if elem == TensorProto.FLOAT16 else "float32"
        helper.set_model_props(model, {METADATA_KEY: _spec(dirs * H, dtype).to_json()})
    return model


def reverse_sequence_graph(**attrs: object) -> onnx.ModelProto:
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], name="rev", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 3]),
            helper.make_tensor_value_info("lens", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", "batch", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def single_op_graph(op: str, domain: str = "", elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="the_op", domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", elem, ["n"])],
        [helper.make_tensor_value_info("y", elem, ["n"])],
    )
    opsets = [helper.make_opsetid("", 18)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


def _messages(report: CheckReport, severity: str) -> list[str]:
    return [f.message for f in report.findings if f.severity == severity]


# -- clean graphs -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clean_recurrent_graph_passes(op: str, target: str) -> None:
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    report = check_compatibility(recurrent_graph(op, **attrs), target=target)
    assert report.ok, report.lines()
    assert report.warnings == ()


def test_int64_input_is_info_for_tensorrt() -> None:
    report = check_compatibility(recurrent_graph(), target="tensorrt")
    assert any("'lengths' is int64" in m for m in _messages(report, "info"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Graphs written by the real exporter, fused and split (the split one has ReverseSequence)."""
    from birnn_export.export import export_onnx

    lstm = torch.nn.LSTM(IN, H, batch_first=True, bidirectional=True)
    x = torch.randn(2, 5, IN)
    lengths = torch.tensor([5, 3])

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = lstm

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    paths = {}
    for layout in ("fused", "split"):
        path = tmp_path_factory.mktemp("check") / f"{layout}.onnx"
        try:
            export_onnx(
                Model(),
                path,
                example_inputs=(x, lengths),
                layout=layout,
                lengths=True,
                verify=False,
            )
        except BiRNNExportError as exc:  # pragma: no cover - depends on the exporter
            pytest.fail(f"export_onnx failed: {exc}")
        paths[layout] = str(path)
    return paths


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
@pytest.mark.parametrize("layout", ["fused", "split"])
def test_exported_graphs_pass(exported: dict[str, str], layout: str, target: str) -> None:
    report = check_compatibility(exported[layout], target=target)
    assert report.ok, report.lines()
    assert report.warnings == (), report.lines()
    ops = {n.op_type for n in onnx.load(exported[layout]).graph.node}
    assert ops <= TENSORRT_OPS
    if layout == "split":
        assert "ReverseSequence" in ops


# -- recurrent attributes -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
def test_layout_1_is_an_error(target: str) -> None:
    report = check_compatibility(recurrent_graph(layout=1), target=target)
    assert not report.ok
    assert any("layout=1" in m for m in _messages(report, "error"))


def test_input_forget() -> None:
    trt = check_compatibility(recurrent_graph(input_forget=1), target="tensorrt")
    assert any("input_forget=1" in m for m in _messages(trt, "error"))
    cuda = check_compatibility(recurrent_graph(input_forget=1), target="ort-cuda")
    assert cuda.ok
    assert any("input_forget=1" in m and "CPU" in m for m in _messages(cuda, "warning"))


def test_mismatched_activations_rejected_by_tensorrt() -> None:
    model = recurrent_graph(
        activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"],
    )
    report = check_compatibility(model, target="tensorrt")
    errors = _messages(report, "error")
    assert len(errors) == 1 and "activations" in errors[0]
    # equal but non-default activations are fine for TensorRT
    same = recurrent_graph(activations=["Sigmoid", "Relu", "Relu"] * 2)
    assert check_compatibility(same, target="tensorrt").ok


def test_relu_rnn_falls_back_to_cpu_on_ort_cuda() -> None:
    model = recurrent_graph("RNN", activations=["Relu", "Relu"])
    cuda = check_compatibility(model, target="ort-cuda")
    assert cuda.ok
    warnings = _messages(cuda, "warning")
    assert len(warnings) == 1 and "CPU" in warnings[0] and "Relu" in warnings[0]
    assert cuda.warnings[0].node == "rnn"
    trt = check_compatibility(model, target="tensorrt")
    assert trt.ok and trt.warnings == ()


@pytest.mark.parametrize(
    ("op", "kwargs", "needle"),
    [
        ("LSTM", {"clip": 5.0}, "clip"),
        ("LSTM", {"peepholes": True}, "peepholes"),
        ("GRU", {"linear_before_reset": 0}, "linear_before_reset=0"),
        ("LSTM", {"activation_alpha": [1.0] * 6}, "activation_alpha"),
        ("RNN", {"activation_beta": [0.5, 0.5]}, "activation_beta"),
    ],
)
def test_other_cuda_fallbacks(op: str, kwargs: dict, needle: str) -> None:
    report = check_compatibility(recurrent_graph(op, **kwargs), target="ort-cuda")
    assert report.ok
    assert any(needle in m and "CPU" in m for m in _messages(report, "warning"))


def test_gru_without_linear_before_reset_stays_on_cudnn() -> None:
    """The CUDA EP checks the attribute only when present: a GRU without it (ONNX default 0)
    stays on cuDNN, which computes linear_before_reset=1 alone."""
    report = check_compatibility(recurrent_graph("GRU"), target="ort-cuda")
    (warning,) = _messages(report, "warning")
    assert "without linear_before_reset" in warning and "cuDNN" in warning
    explicit = recurrent_graph("GRU", linear_before_reset=1)
    assert check_compatibility(explicit, target="ort-cuda").warnings == ()
    assert check_compatibility(recurrent_graph("GRU"), target="tensorrt").warnings == ()


@pytest.mark.parametrize("name", ["activation_alpha", "activation_beta"])
def test_mismatched_alpha_or_beta_rejected_by_tensorrt(name: str) -> None:
    model = recurrent_graph("RNN", activations=["Affine", "Affine"], **{name: [0.1, 0.2]})
    (error,) = _messages(check_compatibility(model, target="tensorrt"), "error")
    assert name in error and "per direction" in error
    same = recurrent_graph("RNN", activations=["Affine", "Affine"], **{name: [0.1, 0.1]})
    assert check_compatibility(same, target="tensorrt").ok


def test_fp16_node_falling_back_to_cpu_is_flagged() -> None:
    model = recurrent_graph("RNN", elem=TensorProto.FLOAT16, activations=["Relu", "Relu"])
    report = check_compatibility(model, target="ort-cuda")
    assert report.ok
    assert any("fp16 RNN on the CPU" in m for m in _messages(report, "warning"))
    clean = recurrent_graph("RNN", elem=TensorProto.FLOAT16)
    assert check_compatibility(clean, target="ort-cuda").warnings == ()


# -- ReverseSequence, ops, dtypes, Loop, dims ---------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
def test_reverse_sequence_equal_axes(target: str) -> None:
    report = check_compatibility(reverse_sequence_graph(batch_axis=0, time_axis=0), target=target)
    assert any("batch_axis == time_axis" in m for m in _messages(report, "error"))
    good = check_compatibility(reverse_sequence_graph(batch_axis=1, time_axis=0), target=target)
    assert good.ok


def test_reverse_sequence_rank_1_lengths_required() -> None:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[1].CopyFrom(
        helper.make_tensor_value_info("lens", TensorProto.INT64, ["batch", 1])
    )
    report = check_compatibility(model, target="tensorrt")
    assert any("rank 2; needs 1" in m for m in _messages(report, "error"))


def test_unsupported_op_for_tensorrt() -> None:
    model = single_op_graph("Unique")
    report = check_compatibility(model, target="tensorrt")
    assert [f.node for f in report.errors] == ["the_op"]
    assert "Unique" in report.errors[0].message
    assert check_compatibility(model, target="ort-cuda").ok


def test_custom_domain_op_needs_plugin() -> None:
    report = check_compatibility(single_op_graph("MyOp", domain="my.domain"), target="tensorrt")
    assert any("plugin" in m for m in _messages(report, "error"))


@pytest.mark.parametrize(("target", "needle"), [("tensorrt", "down to float32"), ("ort-cuda", "")])
def test_double_input_is_a_warning(target: str, needle: str) -> None:
    """TensorRT casts float64 down to float32 rather than rejecting it."""
    report = check_compatibility(single_op_graph("Relu", elem=TensorProto.DOUBLE), target=target)
    assert any("float64" in m and needle in m for m in _messages(report, "warning"))
    assert report.ok


@pytest.mark.parametrize("elem", [TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT64])
def test_types_tensorrt_lacks(elem: int) -> None:
    report = check_compatibility(single_op_graph("Relu", elem=elem), target="tensorrt")
    name = helper.tensor_dtype_to_np_dtype(elem).name
    assert any(f"is {name}" in m for m in _messages(report, "error"))


def test_opset_outside_tensorrt_parser_range() -> None:
    model = single_op_graph("Relu")
    model.opset_import[0].version = 8
    report = check_compatibility(model, target="tensorrt")
    assert any("opset 8" in m for m in _messages(report, "warning"))
    assert check_compatibility(single_op_graph("Relu"), target="tensorrt").warnings == ()


def test_reverse_sequence_lengths_must_be_int64() -> None:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[1].CopyFrom(helper.make_tensor_value_info("lens", TensorProto.INT32, ["b"]))
    report = check_compatibility(model, target="tensorrt")
    assert any("must be int64" in m for m in _messages(report, "error"))


def test_lengths_range_note_once_per_graph() -> None:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.node.append(
        helper.make_node("ReverseSequence", ["y", "lens"], ["z"], name="rev2", batch_axis=1)
    )
    model.graph.output[0].name = "z"
    notes = [m for m in _messages(check_compatibility(model, target="ort-cuda"), "info")]
    assert sum("range-check" in m for m in notes) == 1


def test_loop_scan_outputs_need_a_trip_count() -> None:
    """onnx-tensorrt: scan output length cannot be dynamic."""

    def loop_model(trip: str, *, scan: bool = True) -> onnx.ModelProto:
        body_outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
        nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"])]
        if scan:
            nodes.append(helper.make_node("Identity", ["i"], ["step"]))
            body_outputs.append(helper.make_tensor_value_info("step", TensorProto.INT64, []))
        body = helper.make_graph(
            nodes,
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            ],
            body_outputs,
        )
        outputs = ["steps"] if scan else []
        node = helper.make_node("Loop", [trip, "cond"], outputs, body=body, name="loop")
        inits = [numpy_helper.from_array(np.array(3, dtype=np.int64), "M")]
        graph = helper.make_graph(
            [node],
            "g",
            [
                helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                helper.make_tensor_value_info("n", TensorProto.INT64, []),
            ],
            [helper.make_tensor_value_info(o, TensorProto.INT64, ["k"]) for o in outputs],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    report = check_compatibility(loop_model(""), target="tensorrt")
    assert [f.node for f in report.errors] == ["loop"]
    assert "trip count" in report.errors[0].message
    for fine in (loop_model("M"), loop_model("", scan=False)):
        report = check_compatibility(fine, target="tensorrt")
        assert report.ok and report.warnings == (), report.lines()
    runtime = check_compatibility(loop_model("n"), target="tensorrt")
    assert runtime.ok and [f.node for f in runtime.warnings] == ["loop"]


def test_static_dim_where_spec_says_dynamic() -> None:
    model = recurrent_graph(x_dims=("batch", 30, IN))
    report = check_compatibility(model, target="tensorrt")
    warnings = _messages(report, "warning")
    assert any("'x' axis 1 is declared static (30)" in m and "'seq'" in m for m in warnings)


def test_no_spec_is_info() -> None:
    report = check_compatibility(recurrent_graph(with_spec=False), target="tensorrt")
    assert report.ok
    assert any("metadata" in m for m in _messages(report, "info"))


def test_nodes_inside_subgraphs_are_checked() -> None:
    inner = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="inner_unique")],
        "then",
        [],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["n"])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner, name="if")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = check_compatibility(model, target="tensorrt")
    assert "inner_unique" in {f.node for f in report.errors}


# -- input handling, report -----------------------------------------------------------------------


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        check_compatibility(tmp_path / "missing.onnx", target="tensorrt")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a protobuf at all\xff" * 10)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        check_compatibility(junk, target="tensorrt")
    with pytest.raises(BiRNNExportError, match="target"):
        check_compatibility(recurrent_graph(), target="openvino")


def test_report_lines_and_json() -> None:
    report = check_compatibility(recurrent_graph(layout=1), target="trt")
    assert report.target == "tensorrt"
    assert any(line.startswith("error: rnn: LSTM layout=1") for line in report.lines())
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["target"] == "tensorrt"
    assert any(f["severity"] == "error" and f["node"] == "rnn" for f in data["findings"])
    assert str(Finding("info", "graph", "hello")) == "info: graph: hello"


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_exit_codes(tmp_path) -> None:
    clean, bad = tmp_path / "clean.onnx", tmp_path / "bad.onnx"
    onnx.save(recurrent_graph(), clean)
    onnx.save(recurrent_graph(layout=1), bad)
    runner = CliRunner()

    result = runner.invoke(main, ["check", str(clean), "--target", "tensorrt"])
    assert result.exit_code == 0, result.output
    assert "compatible with tensorrt" in result.output

    out = tmp_path / "report.json"
    result = runner.invoke(main, ["check", str(bad), "--target", "ort-cuda", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "error: rnn: LSTM layout=1" in result.output
    assert json.loads(out.read_text())["ok"] is False

    result = runner.invoke(main, ["check", str(tmp_path / "nope.onnx"), "--target", "tensorrt"])
    assert result.exit_code == 2
    assert "no such file" in result.output
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    result = runner.invoke(main, ["check", str(junk), "--target", "tensorrt"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output

    result = runner.invoke(main, ["check", str(clean), "--target", "openvino"])
    assert result.exit_code == 2
    result = runner.invoke(main, ["check", "--help"])
    assert result.exit_code == 0 and "--target" in result.output


def test_cli_subprocess(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    onnx.save(recurrent_graph(input_forget=1), bad)
    proc = subprocess.run(
        [sys.executable, "-m", "birnn_export", "check", str(bad), "--target", "tensorrt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "input_forget=1" in proc.stdout
