"""Runners: ONNX Runtime and eager torch agree with torch's packed reference; provider options;
availability reasons; the factory. GPU tests are marked and skip with the reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export import runners
from birnn_export.base_runner import no_nvidia_gpu
from birnn_export.errors import BiRNNExportError, EngineError, EngineUnavailableError
from birnn_export.runners import (
    ENGINES,
    OrtRunner,
    TorchRunner,
    cuda_provider_options,
    format_profile_shapes,
    make_runner,
    placement_counts,
    recurrent_nodes_on_cpu,
    tensorrt_provider_options,
    unavailable_reason,
)
from birnn_export.spec import METADATA_KEY, GraphSpec, TensorSpec, make_feed

IN, H = 5, 6

#: Why the data-centre TensorRT cannot run here, where it is not installed.
NO_TENSORRT = (
    f"trt: {no_nvidia_gpu()}tensorrt not installed: pip install tensorrt (birnn-export's gpu extra)"
)


def _spec(dtype: str = "float32") -> GraphSpec:
    return GraphSpec(
        inputs=(
            TensorSpec("x", dtype, ("batch", "seq", IN), "features"),
            TensorSpec("lengths", "int64", ("batch",), "lengths", 1, "seq"),
        ),
        outputs=(TensorSpec("output", dtype, ("batch", "seq", 2 * H), "sequence"),),
        example_batch=2,
        example_seq=5,
        dtype=dtype,
    )


def _onnx_lstm_weights(lstm: torch.nn.LSTM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch gate order (i, f, g, o) -> ONNX (i, o, f, c), forward direction first."""
    order = (0, 3, 1, 2)

    def reorder(t: torch.Tensor) -> np.ndarray:
        blocks = t.detach().reshape(4, H, -1)
        return blocks[list(order)].reshape(4 * H, -1).squeeze(-1).numpy()

    ws, rs, bs = [], [], []
    for suffix in ("", "_reverse"):
        ws.append(reorder(getattr(lstm, f"weight_ih_l0{suffix}")))
        rs.append(reorder(getattr(lstm, f"weight_hh_l0{suffix}")))
        bs.append(
            np.concatenate(
                [
                    reorder(getattr(lstm, f"bias_ih_l0{suffix}")),
                    reorder(getattr(lstm, f"bias_hh_l0{suffix}")),
                ]
            )
        )
    return np.stack(ws), np.stack(rs), np.stack(bs)


def lstm_graph(lstm: torch.nn.LSTM) -> onnx.ModelProto:
    """A hand-built graph: one bidirectional ONNX LSTM node with sequence_lens."""
    w, r, b = _onnx_lstm_weights(lstm)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("Cast", ["lengths"], ["lens32"], to=TensorProto.INT32),
        helper.make_node(
            "LSTM",
            ["x_t", "W", "R", "B", "lens32"],
            ["Y"],
            hidden_size=H,
            direction="bidirectional",
        ),
        helper.make_node("Transpose", ["Y"], ["Y_b"], perm=[2, 0, 1, 3]),
        helper.make_node("Reshape", ["Y_b", "shape"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(w.astype(np.float32), "W"),
        numpy_helper.from_array(r.astype(np.float32), "R"),
        numpy_helper.from_array(b.astype(np.float32), "B"),
        numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "bilstm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", IN]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "seq", 2 * H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {METADATA_KEY: _spec().to_json()})
    return model


def packed_reference(lstm: torch.nn.LSTM, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    packed = pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, _ = lstm(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return padded.numpy()


@pytest.fixture(scope="module")
def lstm_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.LSTM, str]:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(IN, H, batch_first=True, bidirectional=True).eval()
    path = tmp_path_factory.mktemp("runners") / "bilstm.onnx"
    onnx.save(lstm_graph(lstm), path)
    return lstm, str(path)


# -- ONNX Runtime CPU against torch ----------------------------------------------------------------


@pytest.mark.parametrize("io_binding", [False, True])
@pytest.mark.parametrize(("batch", "seq"), [(4, 9), (1, 1)])
def test_ort_cpu_matches_packed_torch(lstm_file, io_binding: bool, batch: int, seq: int) -> None:
    lstm, path = lstm_file
    feed = make_feed(_spec(), batch, seq, seed=batch + seq)
    with OrtRunner(path, engine="ort-cpu", threads=1, io_binding=io_binding) as runner:
        out = runner.infer(feed)
        assert runner.providers() == ["CPUExecutionProvider"]
        assert runner.last_inference_time_s is not None
    expected = packed_reference(lstm, feed["x"], feed["lengths"])
    assert out["output"].shape == expected.shape
    np.testing.assert_allclose(out["output"], expected, atol=1e-5, rtol=1e-4)


def test_a_failing_run_raises_without_onnx_runtimes_log_line(tmp_path, capfd) -> None:
    """users64 F1: each failing case of a sweep also printed ONNX Runtime's own red log line
    ("[E:onnxruntime:, sequential_executor.cc ...] Non-zero status code"), 21 of them before
    the verdict; the error is raised, with its message, all the same."""
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    shape = numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])],
        [shape],
    )
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with OrtRunner(path) as runner:
        assert runner.infer({"x": np.zeros(4, np.float32)})["y"].shape == (2, 2)
        capfd.readouterr()
        with pytest.raises(Exception, match="Reshape"):
            runner.infer({"x": np.zeros(3, np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err


def test_a_graph_newer_than_the_runtime_is_refused_as_unavailable_with_its_reason(
    tmp_path,
) -> None:
    """review44 F3: a graph an older ONNX Runtime cannot load (its opset or IR version past the
    runtime's) failed as an engine error, exit 1, its message cut at 300 characters before
    ORT's reason: now exit 2, the reason kept, and what to do. Here an IR version of 99."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 99
    path = tmp_path / "new.onnx"
    onnx.save(model, path)
    with pytest.raises(EngineUnavailableError) as refused:
        OrtRunner(path).__enter__()
    said = str(refused.value)
    assert "Unsupported model IR version: 99" in said and "/onnxruntime_src/" not in said
    assert said.endswith("upgrade onnxruntime, or export with a lower --opset (README, 'Which "
                         "ONNX Runtime loads the graph')")  # fmt: skip
    assert refused.value.exit_code == 2
    assert runners.ort_refuses_opset(18) is None  # the default opset loads here


def test_onnx_runtimes_reason_is_kept_past_its_cpp_signature() -> None:
    """ONNX Runtime 1.20's refusal of opset 22, as it words it: the place in its source and a
    C++ signature, then three sentences before the one that says what it runs."""
    text = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/"
        "onnxruntime/core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::"
        "ValidateOpsetForDomain(const std::unordered_map<std::__cxx11::basic_string<char>, int>&"
        ", const onnxruntime::logging::Logger&, bool, const string&, int) ONNX Runtime only "
        "*guarantees* support for models stamped with official released onnx opset versions. "
        "Opset 22 is under development and support for this is limited. The operator schemas "
        "and or other functionality may change before next ONNX release and in this case ONNX "
        "Runtime will not guarantee backward compatibility. Current official support for domain "
        "ai.onnx is till opset 21."
    )
    said = runners.ort_reason(RuntimeError(text))
    assert said == '"Current official support for domain ai.onnx is till opset 21"'
    signature = text.split(" ONNX Runtime only")[0] + " Unsupported model IR version: 11, max 10"
    assert runners.ort_reason(RuntimeError(signature)).endswith(
        "failed:Unsupported model IR version: 11, max 10"
    )


def test_ort_placement_is_recorded(lstm_file) -> None:
    """onnxruntime >= 1.23 says where each node runs; on the CPU provider, all of them."""
    import onnxruntime as ort

    _, path = lstm_file
    with OrtRunner(path) as runner:
        if not hasattr(ort.InferenceSession, "get_provider_graph_assignment_info"):
            assert runner.placement is None  # pragma: no cover - older onnxruntime
            return
        assert list(runner.placement) == ["CPUExecutionProvider"]
        assert runner.placement["CPUExecutionProvider"]["LSTM"] == 1
        assert runner.cpu_recurrent_nodes == ()  # CPU was asked for


def test_recurrent_nodes_left_to_the_cpu() -> None:
    """What a CUDA session with a relu RNN looks like: the GPU provider is active, the
    recurrent node is not on it."""
    assignment = [
        ("CUDAExecutionProvider", "to_time_major", "Transpose"),
        ("CPUExecutionProvider", "rnn/l0/forward", "RNN"),
        ("CPUExecutionProvider", "shape", "Shape"),
        ("CUDAExecutionProvider", "rnn/l0/backward", "RNN"),
    ]
    assert recurrent_nodes_on_cpu(assignment) == ("rnn/l0/forward",)
    assert placement_counts(assignment) == {
        "CPUExecutionProvider": {"RNN": 1, "Shape": 1},
        "CUDAExecutionProvider": {"RNN": 1, "Transpose": 1},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    from birnn_export.models import SequenceTagger, TaggerConfig
    from birnn_export.pipeline import export_onnx

    torch.manual_seed(1)
    model = SequenceTagger(
        TaggerConfig(cell="gru", input_size=IN, hidden_size=H, output_size=3, uses_lengths=True)
    ).eval()
    path = tmp_path_factory.mktemp("runners") / "tagger.onnx"
    result = export_onnx(model, path, verify=False)
    return model, result


def test_exported_graph_ort_cpu_equals_torch_runner(exported) -> None:
    model, result = exported
    spec = result.spec
    feed = make_feed(spec, 3, 11, seed=3)
    with make_runner("ort-cpu", result.path, threads=1) as ort_runner:
        ort_out = ort_runner.infer(feed)
    with make_runner("torch", result.path, model=model) as torch_runner:
        assert isinstance(torch_runner, TorchRunner)
        torch_out = torch_runner.infer(feed)
    assert set(ort_out) == set(torch_out) == {t.name for t in spec.outputs}
    for name in ort_out:
        np.testing.assert_allclose(ort_out[name], torch_out[name], atol=1e-5, rtol=1e-4)


def test_torch_runner_leaves_the_model_alone() -> None:
    model = torch.nn.Linear(3, 2)
    with TorchRunner(model, ["x"], ["y"], dtype="float64") as runner:
        out = runner.infer({"x": np.ones((1, 3), dtype=np.float32)})
    assert out["y"].dtype == np.float64
    assert model.weight.dtype == torch.float32  # the caller's model was not cast in place


# -- provider activation ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_ort_refuses_when_provider_is_not_active(lstm_file, monkeypatch) -> None:
    """ONNX Runtime drops an unusable provider with a warning; the runner must not run on CPU."""
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    _, path = lstm_file
    monkeypatch.setattr(runners, "unavailable_reason", lambda engine: None)
    runner = OrtRunner(path, engine="ort-cuda")
    with pytest.raises(EngineUnavailableError, match="did not activate CUDAExecutionProvider"):
        runner.activate()
    assert not runner.is_active and runner.session is None


def test_ort_unavailable_engine_raises_with_reason(lstm_file) -> None:
    reason = unavailable_reason("ort-cuda")
    if reason is None:
        pytest.skip("ort-cuda is available here")
    with pytest.raises(EngineUnavailableError) as info:
        OrtRunner(lstm_file[1], engine="ort-cuda").activate()
    assert str(info.value) == reason


# -- availability -------------------------------------------------------------------------------


def test_availability_reasons_on_this_machine() -> None:
    import onnxruntime as ort

    assert unavailable_reason("torch") is None
    assert unavailable_reason("ort-cpu") is None
    assert "unknown engine" in unavailable_reason("tvm")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = unavailable_reason("ort-cuda")
        assert "CUDAExecutionProvider" in reason and "onnxruntime-gpu" in reason
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert "TensorrtExecutionProvider" in unavailable_reason("ort-trt")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert unavailable_reason("trt") == NO_TENSORRT


# -- provider options ---------------------------------------------------------------------------


def test_cuda_provider_options() -> None:
    options = cuda_provider_options()
    assert options == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "use_tf32": "0",
        "do_copy_in_default_stream": "1",
    }
    options = cuda_provider_options(
        device_id=2,
        cudnn_conv_algo_search="HEURISTIC",
        use_tf32=True,
        gpu_mem_limit=2**30,
        arena_extend_strategy="kSameAsRequested",
    )
    assert options["device_id"] == "2" and options["use_tf32"] == "1"
    assert options["gpu_mem_limit"] == str(2**30)
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    with pytest.raises(BiRNNExportError, match="cudnn_conv_algo_search"):
        cuda_provider_options(cudnn_conv_algo_search="FAST")
    with pytest.raises(BiRNNExportError, match="arena_extend_strategy"):
        cuda_provider_options(arena_extend_strategy="grow")
    with pytest.raises(BiRNNExportError, match="device_id"):
        cuda_provider_options(device_id=-1)


def test_tensorrt_provider_options_from_spec(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BIRNN_EXPORT_CACHE", str(tmp_path))
    options = tensorrt_provider_options(_spec(), batch=(1, 4, 16), seq=(2, 32, 128))
    assert options["trt_profile_min_shapes"] == f"x:1x2x{IN},lengths:1"
    assert options["trt_profile_opt_shapes"] == f"x:4x32x{IN},lengths:4"
    assert options["trt_profile_max_shapes"] == f"x:16x128x{IN},lengths:16"
    assert options["trt_fp16_enable"] == "False"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt" / "strict-fp32")
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_timing_cache_path"] == str(tmp_path / "ort-trt" / "strict-fp32")
    assert options["device_id"] == "0"

    fp16 = tensorrt_provider_options(_spec("float16"), engine_cache=False, timing_cache=False)
    assert fp16["trt_fp16_enable"] == "True"
    assert "trt_engine_cache_enable" not in fp16 and "trt_timing_cache_enable" not in fp16
    assert tensorrt_provider_options(_spec("float16"), fp16=False)["trt_fp16_enable"] == "False"

    # No ranges given: the ones the graph declares.
    declared = dataclasses.replace(_spec(), batch_range=(2, 3, 5), seq_range=(7, 9, 11))
    options = tensorrt_provider_options(declared)
    assert options["trt_profile_min_shapes"] == f"x:2x7x{IN},lengths:2"
    assert options["trt_profile_max_shapes"] == f"x:5x11x{IN},lengths:5"

    bare = tensorrt_provider_options(None, device_id=1, max_workspace_size=1 << 30)
    assert not any(k.startswith("trt_profile") for k in bare)
    assert bare["device_id"] == "1" and bare["trt_max_workspace_size"] == str(1 << 30)


def test_tensorrt_ep_engines_with_and_without_tf32_are_kept_apart(tmp_path, monkeypatch) -> None:
    """ONNX Runtime's TensorRT EP names cached engines without the TF32 state."""
    monkeypatch.setenv("BIRNN_EXPORT_CACHE", str(tmp_path))
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    strict = tensorrt_provider_options(_spec())["trt_engine_cache_path"]
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    allowed = tensorrt_provider_options(_spec())["trt_engine_cache_path"]
    assert (strict, allowed) == (
        str(tmp_path / "ort-trt" / "strict-fp32"),
        str(tmp_path / "ort-trt" / "tf32-allowed"),
    )


def test_format_profile_shapes() -> None:
    profile = {"a": ((1, 2), (3, 4), (5, 6)), "b": ((1,), (2,), (3,))}
    assert format_profile_shapes(profile, 0) == "a:1x2,b:1"
    assert format_profile_shapes(profile, 2) == "a:5x6,b:3"


def test_ort_trt_default_options_read_the_spec(lstm_file) -> None:
    runner = OrtRunner(lstm_file[1], engine="ort-trt")
    options = runner.default_provider_options()
    assert options["trt_profile_opt_shapes"] == f"x:8x64x{IN},lengths:8"
    assert runner.io_binding is True
    assert OrtRunner(lstm_file[1]).io_binding is False


# -- factory ------------------------------------------------------------------------------------


def test_make_runner(lstm_file) -> None:
    lstm, path = lstm_file
    from birnn_export.trt import TrtRunner

    kinds = {
        "ort-cpu": OrtRunner,
        "ort-int8": OrtRunner,
        "ort-cuda": OrtRunner,
        "ort-trt": OrtRunner,
        "trt": TrtRunner,
        "trt-rtx": TrtRunner,
    }
    for engine, cls in kinds.items():
        runner = make_runner(engine, path, threads=2, device="cuda:1")
        assert type(runner) is cls and runner.engine == engine and not runner.is_active
    assert make_runner("trt", path).library == "tensorrt"
    assert make_runner("trt-rtx", path).library == "tensorrt_rtx"
    assert make_runner("ort-cuda", path, device="cuda:1").device_id == 1
    assert make_runner("trt", path).device == 0
    torch_runner = make_runner("torch", path, model=lstm, threads=1)
    assert torch_runner.input_names == ["x", "lengths"]
    assert torch_runner.output_names == ["output"]
    assert torch_runner.device == "cpu"
    assert set(ENGINES) == {*kinds, "torch"}

    with pytest.raises(BiRNNExportError, match="model="):
        make_runner("torch", path)
    with pytest.raises(BiRNNExportError, match="input_names"):
        make_runner("torch", model=lstm)
    with pytest.raises(BiRNNExportError, match="onnx_path"):
        make_runner("ort-cpu")
    with pytest.raises(BiRNNExportError, match="unknown engine"):
        make_runner("tvm", path)
    with pytest.raises(BiRNNExportError, match="compile"):
        make_runner("ort-cpu", path, compile=True)
    with pytest.raises(BiRNNExportError, match="device"):
        make_runner("ort-cuda", path, device="cpu")


def test_make_runner_passes_the_tensorrt_profile(lstm_file, tmp_path, monkeypatch) -> None:
    """Both TensorRT engines get the caller's (min, opt, max) ranges, not the defaults, so a
    sweep up to batch 64 and T 300 is inside the profile."""
    monkeypatch.setenv("BIRNN_EXPORT_CACHE", str(tmp_path))
    _, path = lstm_file
    ranges = dict(profile_batch=(1, 64, 64), profile_seq=(1, 300, 300))

    trt_runner = make_runner("trt", path, device="cuda:1", **ranges)
    assert (trt_runner.batch, trt_runner.seq, trt_runner.device) == ((1, 64, 64), (1, 300, 300), 1)
    ort_runner = make_runner("ort-trt", path, device="cuda:1", **ranges)
    options = ort_runner.provider_options
    assert options["trt_profile_min_shapes"] == f"x:1x1x{IN},lengths:1"
    assert options["trt_profile_opt_shapes"] == f"x:64x300x{IN},lengths:64"
    assert options["trt_profile_max_shapes"] == f"x:64x300x{IN},lengths:64"
    assert options["device_id"] == "1"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt" / "strict-fp32")

    # One range given: the other keeps its default.
    only_seq = make_runner("ort-trt", path, profile_seq=(2, 300, 300)).provider_options
    assert only_seq["trt_profile_max_shapes"] == f"x:32x300x{IN},lengths:32"
    _, profile = make_runner("trt", path, profile_batch=(1, 2, 4)).profile()
    assert profile["x"] == ((1, 1, IN), (2, 64, IN), (4, 256, IN))
    # Without ranges: the ranges the graph declares (here export's defaults), read from the
    # spec when the session starts.
    assert make_runner("ort-trt", path).provider_options is None
    assert make_runner("trt", path).profile()[1]["lengths"] == ((1,), (8,), (32,))
    # The other engines ignore the profile.
    assert make_runner("ort-cpu", path, **ranges).provider_options is None
    with pytest.raises(BiRNNExportError, match="batch"):
        make_runner("ort-trt", path, profile_batch=(8, 4, 16))


# -- GPU ----------------------------------------------------------------------------------------


def _skip_unless(engine: str) -> None:
    reason = unavailable_reason(engine)
    if reason:
        pytest.skip(reason)


@pytest.mark.gpu
@pytest.mark.parametrize("io_binding", [False, True])
def test_ort_cuda_matches_packed_torch(lstm_file, io_binding: bool) -> None:
    _skip_unless("ort-cuda")
    lstm, path = lstm_file
    feed = make_feed(_spec(), 4, 9, seed=0)
    with OrtRunner(path, engine="ort-cuda", io_binding=io_binding) as runner:
        out = runner.infer(feed)
        assert runner.providers()[0] == "CUDAExecutionProvider"
    expected = packed_reference(lstm, feed["x"], feed["lengths"])
    np.testing.assert_allclose(out["output"], expected, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_torch_cuda_runner(lstm_file) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    lstm, _ = lstm_file
    x = np.random.default_rng(0).standard_normal((2, 7, IN)).astype(np.float32)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # torch's default: TF32 in cuDNN's LSTM
    try:
        with TorchRunner(lstm, ["x"], ["y", "h", "c"], device="cuda") as runner:
            assert not torch.backends.cudnn.allow_tf32, "strict fp32 while active"
            out = runner.infer({"x": x})
        assert torch.backends.cudnn.allow_tf32, "restored on deactivate"
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    with torch.no_grad():
        expected = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(out["y"], expected, atol=1e-4, rtol=1e-3)


@pytest.mark.tensorrt
def test_ort_trt_matches_packed_torch(lstm_file, tmp_path) -> None:
    _skip_unless("ort-trt")
    lstm, path = lstm_file
    feed = make_feed(_spec(), 4, 9, seed=0)
    options = tensorrt_provider_options(_spec(), cache=tmp_path)
    with OrtRunner(path, engine="ort-trt", provider_options=options) as runner:
        out = runner.infer(feed)
        assert runner.providers()[0] == "TensorrtExecutionProvider"
    expected = packed_reference(lstm, feed["x"], feed["lengths"])
    np.testing.assert_allclose(out["output"], expected, atol=1e-4, rtol=1e-3)


def test_warns_when_two_onnxruntime_builds_are_installed(monkeypatch):
    from birnn_export import runners

    monkeypatch.setattr(
        runners, "installed_onnxruntimes", lambda: ["onnxruntime", "onnxruntime-gpu"]
    )
    monkeypatch.setattr(runners, "_warned_both", False)
    with pytest.warns(RuntimeWarning, match="several onnxruntime builds"):
        runners.unavailable_reason("ort-cpu")
    monkeypatch.setattr(runners, "installed_onnxruntimes", lambda: ["onnxruntime"])
    monkeypatch.setattr(runners, "_warned_both", False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runners.unavailable_reason("ort-cpu")


def test_each_runner_says_whether_it_can_run(tmp_path):
    """available(): None or the exact reason, without building anything."""
    import torch

    from birnn_export import runners
    from birnn_export.trt import TrtRunner

    missing = str(tmp_path / "never-built.onnx")
    assert runners.OrtRunner(missing).unavailable_reason() is None
    cpu = runners.TorchRunner(torch.nn.Identity(), ["x"], ["y"])
    assert cpu.unavailable_reason() is None
    cuda = runners.TorchRunner(torch.nn.Identity(), ["x"], ["y"], device="cuda")
    if not torch.cuda.is_available():
        assert "no CUDA device" in cuda.unavailable_reason()
    gpu_ort = runners.OrtRunner(missing, engine="ort-cuda")
    assert gpu_ort.unavailable_reason() == runners.unavailable_reason("ort-cuda")
    assert TrtRunner(missing).unavailable_reason() == runners.unavailable_reason("trt")


def test_a_model_returning_other_outputs_than_the_graph_is_an_engine_error() -> None:
    runner = TorchRunner(torch.nn.Identity(), input_names=["x"], output_names=["a", "b"])
    with runner, pytest.raises(EngineError, match="model returned 1 tensors, expected 2"):
        runner.infer({"x": np.zeros((1, 2), np.float32)})
