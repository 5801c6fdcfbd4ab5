"""Static compatibility check: each defect the engines reject is found, clean graphs pass."""

from __future__ import annotations

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


#: Every LSTM/GRU graph built by hand here lacks birnn-export's empty-batch guard; for ONNX
#: Runtime targets check says so (tested on its own below), the other findings are the point.
EMPTY_BATCH = "an empty batch (0 rows) crashes"


def _messages(report: CheckReport, severity: str) -> list[str]:
    return [
        f.message
        for f in report.findings
        if f.severity == severity and not f.message.startswith(EMPTY_BATCH)
    ]


def _warnings(report: CheckReport) -> tuple:
    return tuple(f for f in report.warnings if not f.message.startswith(EMPTY_BATCH))


def static_check(model: object, *, target: str) -> CheckReport:
    """The static rules alone (the real parser's verdicts are tested below, against them)."""
    return check_compatibility(model, target=target, tensorrt="static")


# -- clean graphs -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clean_recurrent_graph_passes(op: str, target: str) -> None:
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    report = static_check(recurrent_graph(op, **attrs), target=target)
    assert report.ok, report.lines()
    assert _warnings(report) == ()


def test_graphs_without_the_empty_batch_guard_are_flagged_for_onnx_runtime(
    exported: dict[str, str],
) -> None:
    """Foreign LSTM graphs lack the guard (ONNX Runtime 1.32 crashes on batch 0): ort-cuda
    warns; TensorRT, whose profiles start at batch 1, does not; our exports carry the guard."""
    (warning,) = [
        f
        for f in static_check(recurrent_graph("LSTM"), target="ort-cuda").warnings
        if f.message.startswith(EMPTY_BATCH)
    ]
    assert "SIGSEGV" in warning.message and warning.node == "graph"
    assert static_check(recurrent_graph("LSTM"), target="tensorrt").warnings == ()
    assert static_check(recurrent_graph("RNN"), target="ort-cuda").warnings == ()
    for path in exported.values():
        assert static_check(path, target="ort-cuda").warnings == ()


def test_int64_input_is_info_for_tensorrt() -> None:
    report = static_check(recurrent_graph(), target="tensorrt")
    assert [m for m in _messages(report, "info") if "int64" in m] == [
        "'lengths' is int64: TensorRT 10+ takes int64 as is (older versions cast it down to int32)"
    ]
    report = static_check(recurrent_graph(elem=TensorProto.INT64), target="tensorrt")
    assert [m for m in _messages(report, "info") if "int64" in m] == [  # one line (users66 F15)
        "'x', 'lengths', 'output' are int64: TensorRT 10+ takes int64 as is (older versions cast "
        "it down to int32)"
    ]


def test_an_int8_graph_is_told_first_that_it_runs_on_the_cpu_alone() -> None:
    """check --target tensorrt on a --quantize int8 graph listed five parser errors, one per
    int8 node, where the export had said in one line that it runs on ONNX Runtime CPU only
    (users61 F5): that line comes first."""
    from birnn_export.spec import INT8

    model = recurrent_graph()
    int8 = replace(_spec(), quantization=INT8).to_json()
    helper.set_model_props(model, {METADATA_KEY: int8})
    for target in ("tensorrt", "ort-cuda"):
        first = static_check(model, target=target).findings[0]
        assert (first.severity, first.node) == ("error", "graph")
        assert first.message.startswith(
            f"an int8 graph (written with --quantize int8) runs on ONNX Runtime CPU only "
            f"(engine ort-cpu), not on {target}: check the float graph"
        )
    float_graph = static_check(recurrent_graph(), target="ort-cuda")
    assert not any("int8" in f.message for f in float_graph.findings)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Graphs written by the real exporter, fused and split (the split one has ReverseSequence)."""
    from birnn_export.pipeline import export_onnx

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
    report = static_check(exported[layout], target=target)
    assert report.ok, report.lines()
    assert report.warnings == (), report.lines()
    ops = {n.op_type for n in onnx.load(exported[layout]).graph.node}
    assert ops <= TENSORRT_OPS
    if layout == "split":
        assert "ReverseSequence" in ops


# -- recurrent attributes -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
def test_layout_1_is_an_error(target: str) -> None:
    report = static_check(recurrent_graph(layout=1), target=target)
    assert not report.ok
    assert any("layout=1" in m for m in _messages(report, "error"))


def test_input_forget() -> None:
    trt = static_check(recurrent_graph(input_forget=1), target="tensorrt")
    assert any("input_forget=1" in m for m in _messages(trt, "error"))
    cuda = static_check(recurrent_graph(input_forget=1), target="ort-cuda")
    assert cuda.ok
    assert any("input_forget=1" in m and "CPU" in m for m in _messages(cuda, "warning"))


def test_mismatched_activations_rejected_by_tensorrt() -> None:
    model = recurrent_graph(
        activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"],
    )
    report = static_check(model, target="tensorrt")
    errors = _messages(report, "error")
    assert len(errors) == 1 and "activations" in errors[0]
    # equal but non-default activations are fine for TensorRT
    same = recurrent_graph(activations=["Sigmoid", "Relu", "Relu"] * 2)
    assert static_check(same, target="tensorrt").ok


def test_relu_rnn_falls_back_to_cpu_on_ort_cuda() -> None:
    model = recurrent_graph("RNN", activations=["Relu", "Relu"])
    cuda = static_check(model, target="ort-cuda")
    assert cuda.ok
    warnings = _messages(cuda, "warning")
    assert len(warnings) == 1 and "CPU" in warnings[0] and "Relu" in warnings[0]
    assert cuda.warnings[0].node == "rnn"
    trt = static_check(model, target="tensorrt")
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
    report = static_check(recurrent_graph(op, **kwargs), target="ort-cuda")
    assert report.ok
    assert any(needle in m and "CPU" in m for m in _messages(report, "warning"))


def test_gru_without_linear_before_reset_stays_on_cudnn() -> None:
    """The CUDA EP checks the attribute only when present: a GRU without it (ONNX default 0)
    stays on cuDNN, which computes linear_before_reset=1 alone."""
    report = static_check(recurrent_graph("GRU"), target="ort-cuda")
    (warning,) = _messages(report, "warning")
    assert "without linear_before_reset" in warning and "cuDNN" in warning
    explicit = recurrent_graph("GRU", linear_before_reset=1)
    assert _warnings(static_check(explicit, target="ort-cuda")) == ()
    assert static_check(recurrent_graph("GRU"), target="tensorrt").warnings == ()


@pytest.mark.parametrize("name", ["activation_alpha", "activation_beta"])
def test_mismatched_alpha_or_beta_rejected_by_tensorrt(name: str) -> None:
    model = recurrent_graph("RNN", activations=["HardSigmoid"] * 2, **{name: [0.1, 0.2]})
    (error,) = _messages(static_check(model, target="tensorrt"), "error")
    assert name in error and "per direction" in error
    same = recurrent_graph("RNN", activations=["HardSigmoid"] * 2, **{name: [0.1, 0.1]})
    assert static_check(same, target="tensorrt").ok


def test_activation_tensorrt_does_not_know() -> None:
    model = recurrent_graph("RNN", activations=["Affine", "Affine"])
    (error,) = _messages(static_check(model, target="tensorrt"), "error")
    assert "['Affine']" in error and "knows only" in error
    assert static_check(model, target="ort-cuda").ok


def test_fp16_node_falling_back_to_cpu_is_flagged() -> None:
    model = recurrent_graph("RNN", elem=TensorProto.FLOAT16, activations=["Relu", "Relu"])
    report = static_check(model, target="ort-cuda")
    assert report.ok
    assert any("fp16 RNN on the CPU" in m for m in _messages(report, "warning"))
    clean = recurrent_graph("RNN", elem=TensorProto.FLOAT16)
    assert static_check(clean, target="ort-cuda").warnings == ()


# -- ReverseSequence, ops, dtypes, Loop, dims ---------------------------------------------------


@pytest.mark.parametrize("target", ["tensorrt", "ort-cuda"])
def test_reverse_sequence_equal_axes(target: str) -> None:
    report = static_check(reverse_sequence_graph(batch_axis=0, time_axis=0), target=target)
    assert any("batch_axis == time_axis" in m for m in _messages(report, "error"))
    good = static_check(reverse_sequence_graph(batch_axis=1, time_axis=0), target=target)
    assert good.ok


def test_reverse_sequence_rank_1_lengths_required() -> None:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[1].CopyFrom(
        helper.make_tensor_value_info("lens", TensorProto.INT64, ["batch", 1])
    )
    report = static_check(model, target="tensorrt")
    assert any("rank 2; needs 1" in m for m in _messages(report, "error"))


def test_unsupported_op_for_tensorrt() -> None:
    model = single_op_graph("Unique")
    report = static_check(model, target="tensorrt")
    assert [f.node for f in report.errors] == ["the_op"]
    # not "no importer": the parser's own verdict, beside it, is that its check failed, which
    # read as if the op were imported (users55 F6)
    assert report.errors[0].message == (
        "op Unique is not among the ops TensorRT's ONNX parser imports (onnx-tensorrt's "
        "operator matrix; the parser's check of such a node fails)"
    )
    assert static_check(model, target="ort-cuda").ok


def test_custom_domain_op_needs_plugin() -> None:
    report = static_check(single_op_graph("MyOp", domain="my.domain"), target="tensorrt")
    assert any("plugin" in m for m in _messages(report, "error"))


@pytest.mark.parametrize(("target", "needle"), [("tensorrt", "down to float32"), ("ort-cuda", "")])
def test_double_input_is_a_warning(target: str, needle: str) -> None:
    """TensorRT casts float64 down to float32 rather than rejecting it."""
    report = static_check(single_op_graph("Relu", elem=TensorProto.DOUBLE), target=target)
    assert any("float64" in m and needle in m for m in _messages(report, "warning"))
    assert report.ok


@pytest.mark.parametrize("elem", [TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT64])
def test_types_tensorrt_lacks(elem: int) -> None:
    report = static_check(single_op_graph("Relu", elem=elem), target="tensorrt")
    name = helper.tensor_dtype_to_np_dtype(elem).name
    assert any(f"is {name}" in m for m in _messages(report, "error"))


def test_opset_outside_tensorrt_parser_range() -> None:
    model = single_op_graph("Relu")
    model.opset_import[0].version = 8
    report = static_check(model, target="tensorrt")
    assert any("opset 8" in m for m in _messages(report, "warning"))
    assert static_check(single_op_graph("Relu"), target="tensorrt").warnings == ()


def test_reverse_sequence_lengths_must_be_int64() -> None:
    """ONNX's rule: an error for ONNX Runtime, a portability warning for TensorRT, whose parser
    accepts int32 lengths (confirmed below)."""
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[1].CopyFrom(helper.make_tensor_value_info("lens", TensorProto.INT32, ["b"]))
    cuda = static_check(model, target="ort-cuda")
    assert any("must be int64" in m for m in _messages(cuda, "error"))
    trt = static_check(model, target="tensorrt")
    assert trt.ok and any(
        "must be int64" in m and "accepts" in m for m in _messages(trt, "warning")
    )


def test_reverse_sequence_axes_beyond_1() -> None:
    model = reverse_sequence_graph(batch_axis=2, time_axis=0)
    assert any(
        "must be 0 and 1" in m for m in _messages(static_check(model, target="ort-cuda"), "error")
    )
    trt = static_check(model, target="tensorrt")
    assert trt.ok and any("must be 0 and 1" in m for m in _messages(trt, "warning"))


def test_lengths_range_note_once_per_graph() -> None:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.node.append(
        helper.make_node("ReverseSequence", ["y", "lens"], ["z"], name="rev2", batch_axis=1)
    )
    model.graph.output[0].name = "z"
    notes = [m for m in _messages(static_check(model, target="ort-cuda"), "info")]
    assert sum("range-check" in m for m in notes) == 1


def test_loop_scan_outputs_need_a_trip_count() -> None:
    """onnx-tensorrt: scan output length cannot be dynamic."""

    def loop_model(trip: str, *, scan: bool = True) -> onnx.ModelProto:
        # A loop-carried value keeps the graph valid ONNX without scan outputs.
        body_outputs = [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.INT64, []),
        ]
        nodes = [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ]
        if scan:
            nodes.append(helper.make_node("Identity", ["i"], ["step"]))
            body_outputs.append(helper.make_tensor_value_info("step", TensorProto.INT64, []))
        body = helper.make_graph(
            nodes,
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_in", TensorProto.INT64, []),
            ],
            body_outputs,
        )
        outputs = ["v_final", "steps"] if scan else ["v_final"]
        node = helper.make_node("Loop", [trip, "cond", "M"], outputs, body=body, name="loop")
        inits = [numpy_helper.from_array(np.array(3, dtype=np.int64), "M")]
        graph = helper.make_graph(
            [node],
            "g",
            [
                helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                helper.make_tensor_value_info("n", TensorProto.INT64, []),
            ],
            [
                helper.make_tensor_value_info("v_final", TensorProto.INT64, []),
                *(helper.make_tensor_value_info(o, TensorProto.INT64, ["k"]) for o in outputs[1:]),
            ],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    report = static_check(loop_model(""), target="tensorrt")
    assert [f.node for f in report.errors] == ["loop"]
    assert "trip count" in report.errors[0].message
    for fine in (loop_model("M"), loop_model("", scan=False)):
        report = static_check(fine, target="tensorrt")
        assert report.ok and report.warnings == (), report.lines()
    runtime = static_check(loop_model("n"), target="tensorrt")  # TensorRT sizes them at run time
    assert runtime.ok and runtime.warnings == (), runtime.lines()


def test_static_dim_where_spec_says_dynamic() -> None:
    model = recurrent_graph(x_dims=("batch", 30, IN))
    report = static_check(model, target="tensorrt")
    warnings = _messages(report, "warning")
    assert any("'x' axis 1 is declared static (30)" in m and "'seq'" in m for m in warnings)


def test_no_spec_is_info() -> None:
    report = static_check(recurrent_graph(with_spec=False), target="tensorrt")
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
    report = static_check(model, target="tensorrt")
    assert "inner_unique" in {f.node for f in report.errors}


# -- every TensorRT rule against TensorRT's own parser ---------------------------------------------
#
# TensorRT-RTX's parser is onnx-tensorrt, TensorRT 10/11's importer, and builds without a GPU:
# each static rule for target="tensorrt" is confirmed here against what it does. A rule it
# disagrees with was corrected (ReverseSequence's ONNX-only rules are warnings for TensorRT; a
# Loop trip count computed at run time is fine) or is kept on purpose and shown why (layout=1).


def _loop_graph(trip: str, cond: bool = True) -> onnx.ModelProto:
    """Loop with one scan output; ``trip``: "" (none), "M" (constant) or "shape" (computed);
    without ``cond`` the Loop has no condition input (its body still reads it)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            helper.make_node("Identity", ["i"], ["step"], name="body_step"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
        ],
    )
    nodes = []
    if trip == "shape":
        nodes += [
            helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
            helper.make_node("Squeeze", ["x_shape"], ["n"], name="n"),
        ]
    count = {"": "", "M": "M", "shape": "n"}[trip]
    condition = "cond" if cond else ""
    nodes.append(helper.make_node("Loop", [count, condition], ["steps"], body=body, name="loop"))
    inits = [
        numpy_helper.from_array(np.array(3, dtype=np.int64), "M"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("steps", TensorProto.INT64, ["k"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _with_lengths_type(model: onnx.ModelProto, elem: int) -> onnx.ModelProto:
    for node in model.graph.node:
        if node.op_type == "Cast":
            node.attribute[0].i = elem
    return model


def _rs_one_input() -> onnx.ModelProto:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    del model.graph.node[0].input[1:]
    return model


def _rs_input_rank_1() -> onnx.ModelProto:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq"]))
    return model


def _rs_lengths(elem: int = TensorProto.INT64, dims: tuple = ("batch",)) -> onnx.ModelProto:
    model = reverse_sequence_graph(batch_axis=1, time_axis=0)
    model.graph.input[1].CopyFrom(helper.make_tensor_value_info("lens", elem, list(dims)))
    return model


# (graph, words of the static error, words of the parser's message or None)
REJECTED = {
    "input_forget": (lambda: recurrent_graph(input_forget=1), "input_forget=1", "Coupled input"),
    "activations per direction": (
        lambda: recurrent_graph(activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"]),
        "different activations per direction",
        "reverse pass",
    ),
    "alpha per direction": (
        lambda: recurrent_graph(
            "RNN", activations=["HardSigmoid"] * 2, activation_alpha=[0.1, 0.2]
        ),
        "different activation_alpha per direction",
        "reverse pass",
    ),
    "beta per direction": (
        lambda: recurrent_graph("RNN", activations=["HardSigmoid"] * 2, activation_beta=[0.1, 0.2]),
        "different activation_beta per direction",
        "reverse pass",
    ),
    "unknown activation": (
        lambda: recurrent_graph("RNN", activations=["Affine", "Affine"]),
        "knows only",
        "Unknown activation type: Affine",
    ),
    "lower-case activation": (
        lambda: recurrent_graph("RNN", activations=["relu", "relu"]),
        "knows only",
        "Unknown activation type: relu",
    ),
    "fp16 with sequence_lens": (
        lambda: recurrent_graph(elem=TensorProto.FLOAT16),
        "float16 LSTM with sequence_lens",
        "ISelectLayer must have `thenInput` and `elseInput` of same types",
    ),
    "int64 sequence_lens": (
        lambda: _with_lengths_type(recurrent_graph(), TensorProto.INT64),
        "sequence_lens must be int32",
        "must have same input types",
    ),
    "ReverseSequence equal axes": (
        lambda: reverse_sequence_graph(batch_axis=0, time_axis=0),
        "batch_axis == time_axis",
        "cannot be the same",
    ),
    "ReverseSequence rank-2 lengths": (
        lambda: _rs_lengths(dims=("batch", 1)),
        "rank 2; needs 1",
        "Rank of sequence_lens must be one",
    ),
    "ReverseSequence one input": (
        lambda: _rs_one_input(),
        "needs 2 inputs, has 1",
        "expects two input tensors",
    ),
    "ReverseSequence rank-1 input": (
        lambda: _rs_input_rank_1(),
        "input has rank 1; needs >= 2",
        "Rank of input must be at least two",
    ),
    "op without importer": (lambda: single_op_graph("Unique"), "op Unique", None),
    "custom domain": (
        lambda: single_op_graph("MyOp", domain="my.domain"),
        "needs a plugin",
        "Plugin not found",
    ),
    **{
        f"{name} tensors": (
            lambda elem=elem: single_op_graph("Relu", elem=elem),
            "TensorRT has no such tensors",
            "Failed to convert ONNX",
        )
        for name, elem in [
            ("int16", TensorProto.INT16),
            ("uint16", TensorProto.UINT16),
            ("uint32", TensorProto.UINT32),
            ("uint64", TensorProto.UINT64),
            ("string", TensorProto.STRING),
            ("complex64", TensorProto.COMPLEX64),
        ]
    },
    "Loop without trip count": (lambda: _loop_graph(""), "without a trip count", None),
    "Loop body reading an absent condition": (
        lambda: _loop_graph("M", cond=False),
        "reads its condition",
        "Node input was not registered",
    ),
}

# (graph, words of the static warning or None): the parser takes these and builds an engine.
ACCEPTED = {
    "bidirectional LSTM": (recurrent_graph, None),
    "GRU": (lambda: recurrent_graph("GRU", linear_before_reset=1), None),
    "tanh RNN": (lambda: recurrent_graph("RNN"), None),
    "relu RNN": (lambda: recurrent_graph("RNN", activations=["Relu", "Relu"]), None),
    "equal non-default activations": (
        lambda: recurrent_graph(activations=["Sigmoid", "Relu", "Relu"] * 2),
        None,
    ),
    "equal alphas": (
        lambda: recurrent_graph(
            "RNN", activations=["HardSigmoid"] * 2, activation_alpha=[0.1, 0.1]
        ),
        None,
    ),
    "clip": (lambda: recurrent_graph(clip=5.0), None),
    "peepholes": (lambda: recurrent_graph(peepholes=True), None),
    "fp16 without sequence_lens": (lambda: _fp16_without_lengths(), None),
    "float64 input": (lambda: single_op_graph("Relu", elem=TensorProto.DOUBLE), "float64"),
    "opset 8": (lambda: _opset(single_op_graph("Relu"), 8), "opset 8"),
    "ReverseSequence int32 lengths": (lambda: _rs_lengths(TensorProto.INT32), "must be int64"),
    "ReverseSequence axis 2": (
        lambda: reverse_sequence_graph(batch_axis=2, time_axis=0),
        "must be 0 and 1",
    ),
    "Loop with constant trip count": (lambda: _loop_graph("M"), None),
    "Loop with computed trip count": (lambda: _loop_graph("shape"), None),
}


def _opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    model.opset_import[0].version = version
    return model


def _fp16_without_lengths() -> onnx.ModelProto:
    model = recurrent_graph(elem=TensorProto.FLOAT16)
    rnn = next(n for n in model.graph.node if n.op_type == "LSTM")
    del rnn.input[4:]
    return model


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rule_confirmed_by_the_parser(case: str) -> None:
    make, rule_words, parser_words = REJECTED[case]
    rules = static_check(make(), target="tensorrt")
    assert any(rule_words in m for m in _messages(rules, "error")), rules.lines()
    report = check_compatibility(make(), target="tensorrt", tensorrt="tensorrt_rtx")
    assert report.build is not None and not report.build.parsed, report.lines()
    assert report.checked_with.startswith("tensorrt_rtx ")
    parser = [f for f in report.errors if f.message.startswith("TensorRT's ONNX parser")]
    assert parser, report.lines()
    if parser_words is not None:
        assert any(parser_words in f.message for f in parser), report.lines()
    # The static rule is in the report too, as the explanation.
    assert any(rule_words in m for m in _messages(report, "error"))


@pytest.mark.tensorrt_rtx
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_parser_accepts_what_the_rules_pass(case: str) -> None:
    make, warning_words = ACCEPTED[case]
    report = check_compatibility(make(), target="tensorrt", tensorrt="tensorrt_rtx")
    assert report.build is not None and report.build.ok, report.lines()
    assert report.ok and report.build.engine_bytes > 0
    infos = _messages(report, "info")
    assert any("parsed the graph and built" in m for m in infos)
    warnings = _messages(report, "warning")
    if warning_words is None:
        assert warnings == [], report.lines()
    else:
        assert any(warning_words in m for m in warnings), report.lines()


@pytest.mark.tensorrt_rtx
def test_layout_1_is_accepted_by_the_parser_but_misread() -> None:
    """Why layout=1 stays an error although TensorRT's parser takes it: the importer ignores the
    attribute and reads [batch, seq, ...] as [seq, batch, ...], so Y's declared shape comes out
    in layout-0 order."""
    import tensorrt_rtx as trt

    def lstm(layout: int) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        inits = [
            numpy_helper.from_array(rng.standard_normal((1, 4 * H, IN)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
        ]
        node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H, layout=layout)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 7, IN])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    shapes = {}
    for layout in (0, 1):
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        assert parser.parse(lstm(layout).SerializeToString())
        shapes[layout] = tuple(network.get_output(0).shape)
    # ONNX: layout 0 gives Y [seq, dirs, batch, H]; layout 1 gives Y [batch, seq, dirs, H].
    assert shapes[0] == (5, 1, 7, H)
    assert shapes[1] == (5, 1, 7, H) != (5, 7, 1, H)
    assert any(
        "layout=1" in m for m in _messages(static_check(lstm(1), target="tensorrt"), "error")
    )


@pytest.mark.tensorrt_rtx
def test_op_list_matches_the_parser() -> None:
    """TENSORRT_OPS is what the parser imports: no false errors, no false passes, for every op
    of the default ONNX domain."""
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    schemas = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
    # DeformConv: in TensorRT 10's operator matrix, not in TensorRT-RTX 1.7's parser.
    assert sorted(op for op in TENSORRT_OPS if not parser.supports_operator(op)) == ["DeformConv"]
    assert sorted(op for op in schemas - TENSORRT_OPS if parser.supports_operator(op)) == []


@pytest.mark.tensorrt_rtx
def test_modelproto_is_built_from_a_saved_copy() -> None:
    report = check_compatibility(recurrent_graph(), target="tensorrt", tensorrt="tensorrt_rtx")
    assert report.ok and report.build.ok
    assert report.to_dict()["build"]["engine_bytes"] == report.build.engine_bytes
    # A spec's declared ranges are the profile.
    assert report.build.profile["x"] == ((1, 1, IN), (8, 64, IN), (32, 256, IN))


@pytest.mark.tensorrt_rtx
def test_failed_build_with_a_guessed_profile_is_a_warning() -> None:
    """A graph without declared ranges and a shape input (a scalar trip count) the guessed
    profile cannot cover: TensorRT parses it; the build fails for want of a profile, which is
    not the graph's fault for certain."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["i"], ["step"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond"], ["steps"], body=body, name="loop")],
        "g",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("steps", TensorProto.INT64, ["k"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = check_compatibility(model, target="tensorrt", tensorrt="tensorrt_rtx")
    assert report.build.parsed and not report.build.ok and report.build.guessed_profile
    assert report.ok, report.lines()
    assert any("guessed optimisation profile failed" in m for m in _messages(report, "warning"))


@pytest.mark.tensorrt_rtx
def test_op_the_parser_imports_is_not_flagged_by_the_list(monkeypatch) -> None:
    """Where the real parser read the graph, its verdict on ops replaces the static list."""
    from birnn_export import check

    monkeypatch.setattr(check, "TENSORRT_OPS", check.TENSORRT_OPS - {"Relu"})
    model = single_op_graph("Relu")
    assert not static_check(model, target="tensorrt").ok
    report = check_compatibility(model, target="tensorrt", tensorrt="tensorrt_rtx")
    assert report.ok and report.build.ok, report.lines()


def test_auto_without_any_tensorrt_falls_back_to_the_rules(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    report = check_compatibility(recurrent_graph(input_forget=1), target="tensorrt")
    assert report.build is None and report.checked_with.startswith("static rules (no TensorRT")
    assert not report.ok and "checked by static rules" in report.summary()
    with pytest.raises(BiRNNExportError, match="tensorrt_rtx not installed"):
        check_compatibility(recurrent_graph(), target="tensorrt", tensorrt="tensorrt_rtx")
    with pytest.raises(BiRNNExportError, match="tensorrt"):
        check_compatibility(recurrent_graph(), target="tensorrt", tensorrt="nvidia")


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
    # the summary line, and the exit the command ends with, as every report's JSON (users53 F2)
    assert data["summary"] == report.summary() and "NOT compatible" in data["summary"]
    assert (data["error"], data["exit_code"]) == (report.summary(), 1)
    clean = json.loads(check_compatibility(recurrent_graph(), target="trt").to_json())
    assert (clean["ok"], clean["error"], clean["exit_code"]) == (True, None, 0)
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


def test_trtexec_command_builds_the_profile_checked() -> None:
    """`check` prints the trtexec command that builds its engine on a serving machine: strongly
    typed, TF32 off, the same profile; a path is quoted for the shell, and input names with a
    comma, which trtexec's shape lists split on, get none."""
    import shlex

    from birnn_export.check import trtexec_command

    profile = {"x": ((1, 1, 40), (8, 64, 40), (32, 256, 40)), "lengths": ((1,), (8,), (32,))}
    command = trtexec_command("my models/m.onnx", profile)
    assert shlex.split(command) == [
        "trtexec",
        "--onnx=my models/m.onnx",
        "--stronglyTyped",
        "--noTF32",
        "--minShapes=x:1x1x40,lengths:1",
        "--optShapes=x:8x64x40,lengths:8",
        "--maxShapes=x:32x256x40,lengths:32",
        "--saveEngine=my models/m.plan",
    ]
    assert trtexec_command("m.onnx", {"a,b": ((1,), (1,), (1,))}) is None
    assert trtexec_command("m.onnx", {"it's": ((1,), (1,), (1,))}) is None  # review45 F4
    assert "Shapes" not in trtexec_command("m.onnx", {})  # static shapes: no profile


@pytest.mark.tensorrt_rtx
def test_cli_real_parser_verdict(tmp_path) -> None:
    rejected, clean = tmp_path / "fp16.onnx", tmp_path / "clean.onnx"
    onnx.save(recurrent_graph(elem=TensorProto.FLOAT16), rejected)
    onnx.save(recurrent_graph(), clean)
    runner = CliRunner()
    out = tmp_path / "r.json"
    result = runner.invoke(
        main, ["check", str(rejected), "--target", "tensorrt", "--json", str(out)]
    )
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "trtexec" not in result.output  # no command for an engine not built
    assert lines[0].startswith("error: rnn: TensorRT's ONNX parser (tensorrt_rtx ")
    assert "ISelectLayer" in lines[0] and "float16 LSTM with sequence_lens" in lines[1]
    assert "checked by tensorrt_rtx" in lines[-1]
    data = json.loads(out.read_text())
    assert data["build"]["parsed"] is False and data["checked_with"].startswith("tensorrt_rtx")
    result = runner.invoke(main, ["check", str(clean), "--target", "tensorrt"])
    assert result.exit_code == 0 and "parsed the graph and built a" in result.output
    # the same engine's trtexec command, with the profile built (a ModelProto has no path)
    command = f"trtexec --onnx={clean} --stronglyTyped --noTF32 --minShapes=x:1x1x{IN},lengths:1"
    assert f"info: graph: the same engine with trtexec: {command}" in result.output
    assert f"lengths:32 --saveEngine={tmp_path / 'clean.plan'}" in result.output
    assert "trtexec" not in " ".join(
        check_compatibility(recurrent_graph(), target="tensorrt").lines()
    )
    result = runner.invoke(
        main, ["check", str(rejected), "--target", "tensorrt", "--tensorrt", "static"]
    )
    assert result.exit_code == 1 and "TensorRT's ONNX parser (" not in result.output
    assert result.output.splitlines()[-1].endswith("checked by static rules)")
    # --tensorrt chooses TensorRT's checker: with another target it has nothing to choose.
    result = runner.invoke(
        main, ["check", str(clean), "--target", "ort-cuda", "--tensorrt", "tensorrt_rtx"]
    )
    assert result.exit_code == 2 and "drop --tensorrt" in result.output


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


def test_a_failed_build_of_a_birnn_export_graph_names_the_other_layouts(tmp_path) -> None:
    """A nested sleep-staging model's split graph failed in TensorRT's Myelin compiler, where
    --layout fused built; the failure named no way out."""
    from birnn_export import check as check_module
    from birnn_export.modules import BiRNN
    from birnn_export.pipeline import export_onnx
    from birnn_export.trt import EngineBuild

    result = export_onnx(BiRNN(3, 4), tmp_path / "g.onnx", verify=False)
    layout = check_module._layout(onnx.load(str(result.path)))
    assert layout == result.spec.layout == "split"
    failed = EngineBuild("tensorrt_rtx", "1.7", "g.onnx", {}, True, build_error="Myelin: boom")
    (finding,) = check_module._build_findings(failed, layout)
    assert finding.severity == "error" and finding.message.endswith(
        "Myelin: boom; the graph is in the split layout: export it with --layout fused (or "
        "scan, packed), the same model in other nodes, which may build"
    )
    (other,) = check_module._build_findings(failed, None)  # another tool's graph
    assert other.message.endswith("failed to build it: Myelin: boom")
    # a DeepSpeech2 cut to its longest row (pad_packed_sequence without total_length) failed
    # in every layout and built with total_length: that comes first (users40)
    assert check_module._run_time_dim(onnx.load(str(result.path))) is None
    cut = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "u2", 29])
    graph = onnx.helper.make_graph([], "g", [], [cut])
    run_time = check_module._run_time_dim(onnx.helper.make_model(graph))
    assert run_time == "'y' [batch, u2, 29]"
    (finding,) = check_module._build_findings(failed, layout, run_time)
    assert finding.message.endswith(
        "Myelin: boom; the graph sizes 'y' [batch, u2, 29] by a value known only at run time (a "
        "longest row: pad_packed_sequence without total_length), which TensorRT's builder may "
        "fail on in every layout: pass total_length (the padded length, x.size(1)) to "
        "pad_packed_sequence in the model; also, it is in the split layout: export it with "
        "--layout fused (or scan, packed), the same model in other nodes, which may build"
    )
    named = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["longest(seq)", 3])
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [named]))
    assert check_module._run_time_dim(model) == "'y' [longest(seq), 3]"
    # a builder out of memory (under ulimit -v, users34) is no verdict on the graph's nodes
    starved = replace(failed, build_error="Unexpected exception std::bad_alloc")
    (finding,) = check_module._build_findings(starved, layout)
    assert finding.severity == "warning" and "--layout" not in finding.message
    assert "its builder ran out of memory (Unexpected exception std::bad_alloc)" in finding.message


def test_a_graph_with_external_data_is_checked_from_any_folder(tmp_path, monkeypatch) -> None:
    """The ONNX checker ran on the graph held in memory, and looked for its external data in
    the working directory: a right graph checked from another folder was NOT compatible
    (users31). It is checked where it lies."""
    from tests.test_spec import _external_graph

    folder = tmp_path / "sub"
    folder.mkdir()
    path = _external_graph(folder)
    monkeypatch.chdir(tmp_path)
    report = check_compatibility(Path("sub") / path.name, target="ort-cuda")
    assert not any("onnx.checker" in f.message for f in report.findings), report.lines()


def test_an_old_birnn_export_float16_graph_is_told_to_export_again() -> None:
    """users48 F2: a float16 graph birnn-export 0.1.0 wrote (sequence_lens on a float16 node)
    was told to put Casts in by hand; this version's float16 exports have them."""
    model = recurrent_graph(elem=TensorProto.FLOAT16)
    model.producer_name, model.producer_version = "birnn-export", "0.1.0"
    report = check_compatibility(model, target="tensorrt", tensorrt="static")
    told = "written by birnn-export 0.1.0, whose float16 graphs did not: export it again"
    assert not report.ok and any(told in f.message for f in report.errors), report.lines()


def test_metadata_this_version_cannot_read_is_a_warning_not_a_refusal() -> None:
    """users48 F3: a graph whose metadata an older birnn-export wrote and this one refuses
    (':index(batch)') was refused by check whole, without the file's name."""
    from onnx import helper

    from birnn_export.spec import METADATA_KEY

    model = recurrent_graph()
    helper.set_model_props(model, {METADATA_KEY: '{"inputs": 7}'})
    report = check_compatibility(model, target="tensorrt", tensorrt="static")
    told = [f for f in report.warnings if f"unreadable {METADATA_KEY} metadata" in f.message]
    assert told and told[0].message.endswith("dynamic dims were not checked"), report.lines()


@pytest.mark.tensorrt_rtx
def test_check_builds_the_profile_asked_for(tmp_path: Path) -> None:
    """A server of one row at a time builds a profile of max batch 1, which check could not
    be asked to build: only the graph's recorded range was (users56 F5)."""
    from birnn_export.models import SequenceTagger, TaggerConfig
    from birnn_export.pipeline import export_onnx

    torch.manual_seed(0)
    config = TaggerConfig(cell="gru", input_size=4, hidden_size=6, output_size=3,
                          uses_lengths=True)  # fmt: skip
    path = export_onnx(SequenceTagger(config).eval(), tmp_path / "m.onnx", verify=False).path
    args = ["check", str(path), "--target", "tensorrt", "--batch-range", "1,1,1"]
    result = CliRunner().invoke(main, [*args, "--seq-range", "1,5,9"])
    assert result.exit_code == 0, result.output
    assert "x 1x1x4/1x5x4/1x9x4, lengths 1/1/1" in result.output
    loaded = check_compatibility(onnx.load(str(path)), target="tensorrt", batch=(1, 1, 1))
    assert "x 1x1x4/1x64x4/1x256x4, lengths 1/1/1" in " ".join(loaded.lines())  # a ModelProto
    recorded = check_compatibility(path, target="tensorrt")
    assert "x 1x1x4/8x64x4/32x256x4, lengths 1/8/32" in " ".join(recorded.lines())
    for target, tensorrt in (("ort-cuda", "auto"), ("tensorrt", "static")):
        with pytest.raises(BiRNNExportError, match="--batch-range and --seq-range"):
            check_compatibility(path, target=target, tensorrt=tensorrt, batch=(1, 1, 1))


def test_a_profile_without_tensorrt_is_said_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a TensorRT to build it, the profile asked for was dropped without a word
    (review35 R7)."""
    from birnn_export import check as check_module

    monkeypatch.setattr(check_module, "_tensorrt_library", lambda choice: None)
    report = check_compatibility(recurrent_graph(), target="tensorrt", batch=(1, 1, 1))
    assert any("the profile asked for was not built" in f.message for f in report.findings)
    assert not any(
        "not built" in f.message
        for f in check_compatibility(recurrent_graph(), target="tensorrt").findings
    )
