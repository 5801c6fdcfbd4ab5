"""Declared and inferred graph inputs (birnn_export._inputs, spec.InputDecl): images, audio on
[batch, features, time] with lengths through a strided front end, time-major layers, named dims,
derived output dims, and the one-line errors for declarations that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.cli import main
from birnn_export.errors import BiRNNExportError, ExportError
from birnn_export.models import CRNN, CRNNConfig, SpeechConfig, SpeechCTC
from birnn_export.pipeline import export_onnx
from birnn_export.spec import GraphSpec, InputDecl, make_feed
from birnn_export.trt_plan import derive_profile
from birnn_export.verification import verify

SPEECH_INPUTS = ["features:float32[batch,40,time]", "feature_lens:int64[batch]:lengths(time)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x:float33[batch,seq]", "unknown dtype 'float33'"),
        ("x:float32[batch,2.5]", "dim '2.5' is neither"),
        ("x float32 [batch]", "expected NAME:DTYPE"),
        ("lens:float32[batch]:lengths(time)", "a lengths input is int64"),
        ("lens:int64[batch,time]:lengths(time)", "a lengths input is int64"),
    ],
)
def test_bad_declarations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BiRNNExportError, match=message.replace("[", r"\[")):
        InputDecl.parse(text)


def test_declarations_round_trip() -> None:
    decl = InputDecl.parse(" lens : int64 [ batch ] : lengths( time ) ")
    assert (decl.name, decl.dims, decl.measures) == ("lens", ("batch",), "time")
    assert str(decl) == "lens:int64[batch]:lengths(time)"
    assert InputDecl.parse(str(InputDecl.parse("image:float32[batch,1,64,width]"))).dims == (
        "batch",
        1,
        64,
        "width",
    )


def test_crnn_on_images_exports_with_a_derived_time_dim(tmp_path) -> None:
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(height=32)).eval()
    result = export_onnx(
        model,
        tmp_path / "crnn.onnx",
        inputs=["image:float32[batch,1,32,width]"],
        ranges={"width": (32, 128, 512)},
    )
    spec = result.spec
    (image,) = spec.inputs
    (output,) = spec.outputs
    assert image.dims == ("batch", 1, 32, "width") and image.time_axis == 3
    assert spec.time_dim == "width" and spec.seq_range == (32, 128, 512)
    assert 32 <= spec.example_seq <= 512
    # Time-major output [width // 4, batch, classes], named after its source.
    assert output.dims == ("(width//4)", "batch", 11)
    assert (output.time_axis, output.batch_axis, output.role) == (0, 1, "sequence")
    report = result.verification
    assert report.passed, report.summary()
    checks = {o.check for c in report.cases for o in c.outputs}
    assert {"values", "batch-invariance", "layer"} <= checks
    assert {c.seq for c in report.cases} <= set(range(32, 513))  # within the declared range
    assert max(c.seq for c in report.cases) == 512
    assert derive_profile(spec)["image"] == ((1, 1, 32, 32), (8, 1, 32, 128), (32, 1, 32, 512))


def test_an_image_without_declared_inputs_gets_a_one_line_hint(tmp_path) -> None:
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(height=64)).eval()
    with pytest.raises(ExportError, match="declare them") as caught:
        export_onnx(model, tmp_path / "a.onnx")
    assert "\n" not in str(caught.value)
    # The positional guess [batch, seq, ...] makes dim 1 (the channel) dynamic: refused, with
    # what to declare.
    with pytest.raises(ExportError, match="cannot vary it") as caught:
        export_onnx(model, tmp_path / "b.onnx", example_inputs=(torch.randn(3, 1, 64, 211),))
    assert "\n" not in str(caught.value) and "as the number 1" in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_speech_lengths_through_a_strided_front_end(tmp_path) -> None:
    torch.manual_seed(0)
    model = SpeechCTC(SpeechConfig()).eval()
    result = export_onnx(model, tmp_path / "speech.onnx", inputs=SPEECH_INPUTS)
    spec = result.spec
    log_probs, out_lengths = spec.outputs
    assert log_probs.dims == ("batch", "(((time - 1)//2)) + 1", 12)
    assert (out_lengths.dims, out_lengths.dtype) == (("batch",), "int64")
    assert spec.lengths_input.name == "feature_lens" and spec.lengths_input.high == "time"
    report = result.verification
    assert report.passed, report.summary()
    padding = [o for c in report.cases for o in c.outputs if o.check == "padding"]
    assert padding and all(o.passed for o in padding)
    # Padding is judged on the lengths after the front end: a row of length 9 has 5 valid steps.
    feed = make_feed(spec, 2, 9, seed=0)
    feed["feature_lens"] = np.array([9, 4])
    assert np.all(make_feed(spec, 3, 9, seed=1)["features"][..., 9:] == 0)  # nothing past T
    with torch.no_grad():
        _, lens = model(torch.from_numpy(feed["features"]), torch.from_numpy(feed["feature_lens"]))
    assert lens.tolist() == [5, 2]
    from birnn_export.compare import output_lengths

    assert output_lengths(spec, log_probs, np.array([9, 4])).tolist() == [5, 2]


def test_features_past_each_length_are_padding_on_their_own_time_axis() -> None:
    spec = GraphSpec.from_json(
        GraphSpec(
            inputs=(*(t for t in _speech_spec_inputs()),),
            outputs=(),
            example_batch=3,
            example_seq=7,
            time_dim="time",
        ).to_json()
    )
    feed = make_feed(spec, 3, 10, seed=0)
    lengths = feed["feature_lens"]
    for row, n in enumerate(lengths):
        assert np.all(feed["features"][row, :, n:] == 0)
        assert np.any(feed["features"][row, :, :n] != 0)


def _speech_spec_inputs():
    from birnn_export.spec import TensorSpec

    return (
        TensorSpec("features", "float32", ("batch", 40, "time"), "features", batch_at=0, time_at=2),
        TensorSpec("feature_lens", "int64", ("batch",), "lengths", 1, "time", batch_at=0),
    )


class TimeMajorWithLengths(nn.Module):
    """Takes time-major features [seq, batch, F] and lengths, like torchaudio-style encoders."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 8, num_layers=2, bidirectional=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], total_length=x.shape[0])
        return self.head(out)


def test_time_major_inputs_and_outputs_are_named_by_their_axes(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_onnx(
        TimeMajorWithLengths().eval(),
        tmp_path / "tm.onnx",
        inputs=["x:float32[seq,batch,6]", "lengths:int64[batch]:lengths(seq)"],
    )
    (x, _), (out,) = result.spec.inputs, result.spec.outputs
    assert (x.time_axis, x.batch_axis) == (0, 1)
    assert out.dims == ("seq", "batch", 4) and (out.time_axis, out.batch_axis) == (0, 1)
    report = result.verification
    assert report.passed, report.summary()
    invariance = [o for c in report.cases for o in c.outputs if o.check == "batch-invariance"]
    assert invariance and all(o.passed for o in invariance)  # no false FAIL on time-major rows
    assert derive_profile(result.spec)["x"] == ((1, 1, 6), (64, 8, 6), (256, 32, 6))


def test_a_time_major_state_dict_is_not_guessed_silently(tmp_path) -> None:
    torch.manual_seed(0)
    state = {
        "gru": nn.GRU(6, 8, bidirectional=True),  # batch_first=False: not in the weights
        "head": nn.Linear(16, 3),
    }
    weights = tmp_path / "tm.pt"
    torch.save(nn.ModuleDict(state).state_dict(), weights)
    runner = CliRunner()
    guessed = runner.invoke(main, [str(weights), "-o", str(tmp_path / "a.onnx")])
    assert guessed.exit_code == 0, guessed.output
    assert "assumed batch-first input [batch, seq, ...]" in guessed.output
    assert "--time-major" in guessed.output
    out = tmp_path / "b.onnx"
    told = runner.invoke(main, [str(weights), "-o", str(out), "--time-major"])
    assert told.exit_code == 0, told.output
    assert "time-major input [seq, batch, ...] (--time-major)" in told.output
    spec = GraphSpec.from_onnx(out)
    assert spec.inputs[0].dims == ("seq", "batch", 6) and spec.outputs[0].dims[:2] == (
        "seq",
        "batch",
    )
    # Fed time-major data, the graph equals torch's time-major GRU on a PackedSequence.
    import onnxruntime as ort

    feed = make_feed(spec, 3, 9, seed=2)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
    x, lengths = torch.from_numpy(feed["x"]), torch.from_numpy(feed["lengths"])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    states, _ = pad_packed_sequence(state["gru"](packed)[0], total_length=9)
    want = state["head"](states).detach().numpy()
    valid = (np.arange(9)[:, None] < feed["lengths"][None, :])[..., None]
    np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, want, 0), atol=1e-5)


class Conv1dSpeech(nn.Module):
    """The issue's speech model: Conv1d on [B, 40, T] -> BiLSTM -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(torch.relu(self.conv(x)).transpose(1, 2))[0])


def test_cli_declared_inputs_and_one_line_errors(tmp_path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "speech.pt"
    torch.save(Conv1dSpeech().state_dict(), weights)
    base = [str(weights), "--model-class", "tests.test_inputs:Conv1dSpeech"]
    out = tmp_path / "s.onnx"
    runner = CliRunner()

    def refused(*extra: str) -> str:
        result = runner.invoke(main, [*base, "-o", str(out), *extra])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
        return result.output

    assert "--input" in refused("--input-size", "40")  # the conv front end fails: one line
    assert "failed on example inputs x float32 [7, 11, 13]" in refused(
        "--input", "x:float32[batch,time,feat]"
    )
    assert "unknown dtype" in refused("--input", "x:float3[batch,40,time]")
    assert "no declared input has a dim named 'widht'" in refused(
        "--input", "x:float32[batch,40,time]", "--range", "widht=1,2,3"
    )
    assert "declared with 2 dims" not in refused("--input", "x:float32[batch,40]")
    done = runner.invoke(
        main,
        [*base, "-o", str(out), "--input", "x:float32[batch,40,time]", "--range", "time=4,50,300"],
    )
    assert done.exit_code == 0, done.output
    assert "(declared with --input)" in done.output and "Verified PASS" in done.output
    spec = GraphSpec.from_onnx(out)
    assert spec.time_dim == "time" and spec.seq_range == (4, 50, 300)
    assert spec.outputs[0].dims == ("batch", "time", 5)
    inspected = runner.invoke(main, ["inspect", str(out)])
    assert "batch 1,8,32, time 4,50,300" in inspected.output
    assert "time dim 'time'" in inspected.output


def test_a_model_that_raises_is_reported_in_one_line(tmp_path) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 4, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("no such vocabulary entry")

    with pytest.raises(ExportError, match="Broken failed on example inputs x float32") as caught:
        export_onnx(Broken(), tmp_path / "x.onnx")
    assert "KeyError" in str(caught.value) and "\n" not in str(caught.value)


def test_loaded_speech_sample_verifies_against_torch(tmp_path) -> None:
    from birnn_export.checkpoint import load_model

    loaded = load_model("sample_models/speech_ctc.pt")
    assert loaded.inputs == tuple(SPEECH_INPUTS) and loaded.ranges == {"time": (1, 200, 800)}
    result = export_onnx(
        loaded.model,
        tmp_path / "s.onnx",
        reference=loaded.original,
        inputs=loaded.inputs,
        ranges=loaded.ranges,
        verify=False,
    )
    report = verify(result.path, loaded, batch_sizes=(3,), seq_lens=(1, 2, 33))
    assert report.passed, report.summary()
