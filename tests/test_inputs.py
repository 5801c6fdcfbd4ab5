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
from birnn_export.modules import BiRNN
from birnn_export.pipeline import export_onnx
from birnn_export.runners import OrtRunner
from birnn_export.spec import GraphSpec, InputDecl, make_feed
from birnn_export.trt_plan import derive_profile
from birnn_export.verification import verify
from tests.realistic_models import AbsoluteLengthsLSTM, RelativeLengthsLSTM, TutorialEncoder

SPEECH_INPUTS = ["features:float32[batch,40,time]", "feature_lens:int64[batch]:lengths(time)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x:float33[batch,seq]", "unknown dtype 'float33'"),
        ("x:float32[batch,2.5]", "dim '2.5' is neither"),
        ("x float32 [batch]", "expected NAME:DTYPE"),
        ("lens:float32[batch]:lengths(time)", "a lengths input is int64"),
        ("lens:float32[batch]:lengths(time)", r"held as floats \(20.0\) are declared int64"),
        ("wav_lens:float32[batch]:lengths(time)", "relative to the padded length"),
        ("lens:int64[batch,time]:lengths(time)", "a lengths input is int64"),
        ("lens:int64[batch,seq,4]:lengths(chars)", "a lengths input is int64"),
        ("lens:int64[batch,4]:lengths(chars)", "or [batch,OUTER] for a sequence nested"),
        ("m:bool[batch]:mask", "a mask is [batch, TIME]"),
        ("m:bool[batch,seq,4]:padding_mask", "a mask is [batch, TIME]"),
        ("m:bool[batch,4]:mask", "a mask is [batch, TIME]"),
        ("m:bool[seq,chars,batch]:mask", "or [batch, OUTER, DIM] for a sequence nested"),
        ("m:bool[batch,seq,chars,x]:mask", "or [batch, OUTER, DIM] for a sequence nested"),
        ("m:bool[batch,seq,seq]:mask", "relates steps to steps"),
        ("w:float32[batch,seq]:index(words)", "an index into 'words''s steps is int64 or int32"),
        ("w:int64[batch,seq]:index(words):mask", "expected NAME:DTYPE"),
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


def test_mask_declarations_round_trip() -> None:
    decl = InputDecl.parse("attention_mask : int64[batch, time] : mask")
    assert (decl.dims, decl.mask, decl.measures) == (("batch", "time"), "mask", None)
    assert str(decl) == "attention_mask:int64[batch,time]:mask"
    assert InputDecl.parse("pad:bool[time,batch]:padding_mask").mask == "padding_mask"
    nested = InputDecl.parse("char_mask:bool[batch, words, chars]:mask")
    assert (nested.within, nested.nests) == ("words", "chars")
    assert str(nested) == "char_mask:bool[batch,words,chars]:mask"
    assert InputDecl.parse("m:bool[words,batch,chars]:padding_mask").within == "words"


def test_index_declarations_round_trip() -> None:
    decl = InputDecl.parse("word_ids : int32[batch, seq] : index( words )")
    assert (decl.dims, decl.indexes, decl.measures, decl.mask) == (
        ("batch", "seq"),
        "words",
        None,
        None,
    )
    assert str(decl) == "word_ids:int32[batch,seq]:index(words)"


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
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
    with pytest.raises(ExportError, match="declare the one") as caught:
        export_onnx(model, tmp_path / "a.onnx")
    assert "\n" not in str(caught.value)
    assert "--input 'image:float32[batch,1,64,time]' (at time 52)" in str(caught.value)
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
    assert log_probs.dims == ("batch", "((time - 1)//2) + 1", 12)
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


class _TimeMajorInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, bidirectional=True)  # batch_first=False
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [seq, batch, 8], as the layer
        return self.out(self.rnn(x)[0])


class _ProjectedFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(5, 8)
        self.rnn = nn.GRU(8, 16, bidirectional=True)  # batch_first=False
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, 5], transposed inside
        return self.out(self.rnn(self.proj(x).transpose(0, 1))[0]).transpose(0, 1)


@pytest.mark.parametrize(
    ("model", "dims", "how"),
    [
        (_TimeMajorInside, ("seq", "batch", 8), "recurrent layer [seq, batch]: the model runs"),
        (_ProjectedFirst, ("batch", "seq", 5), "before the model's first layer, a Linear"),
    ],
)
def test_a_time_major_layer_inside_a_model_gets_the_order_the_model_runs_on(
    tmp_path, model, dims, how
):
    """The model may transpose before its time-major layer or not: the example run tells."""
    torch.manual_seed(0)
    # Not verified: time-major graphs are verified in
    # test_time_major_inputs_and_outputs_are_named_by_their_axes.
    result = export_onnx(model().eval(), tmp_path / "a.onnx", verify=False)
    assert result.spec.inputs[0].dims == dims
    assert how in result.inputs, result.inputs


@pytest.mark.slow
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


def test_cli_declared_inputs_and_one_line_errors(tmp_path, static_tensorrt) -> None:
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


def test_two_lengths_of_one_time_dim_are_refused_with_what_to_do_instead(tmp_path) -> None:
    inputs = [
        "a:float32[batch,seq,4]",
        "a_len:int64[batch]:lengths(seq)",
        "b:float32[batch,seq,4]",
        "b_len:int64[batch]:lengths(seq)",
    ]
    with pytest.raises(ExportError, match=r"two lengths inputs measure 'seq'.*lengths\(b_len\)"):
        export_onnx(BiRNN(4, 4), tmp_path / "two.onnx", inputs=inputs)
    masks = ["a:float32[batch,seq,4]", "m1:bool[batch,seq]:mask", "m2:bool[batch,seq]:mask"]
    with pytest.raises(ExportError, match=r"two masks cover 'seq'"):
        export_onnx(BiRNN(4, 4), tmp_path / "two.onnx", inputs=masks)


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
def test_a_lengths_input_declared_without_what_it_measures_is_told(tmp_path) -> None:
    from tests.realistic_models import SiamesePair

    inputs = [
        "q1:int64[batch,a]",
        "q1_lens:int64[batch]:lengths(a)",
        "q2:int64[batch,b]",
        "q2_lens:int64[batch]",  # ':lengths(b)' left off: fed as token ids
    ]
    with pytest.raises(ExportError, match=r"'q2_lens' is named as lengths but declared without"):
        export_onnx(SiamesePair().eval(), tmp_path / "p.onnx", inputs=inputs)
    inputs[-1] += ":lengths(b)"
    assert export_onnx(SiamesePair().eval(), tmp_path / "p.onnx", inputs=inputs).verification.passed


def test_the_first_sequence_declared_gives_the_time_dim() -> None:
    """The sweep varies the first sequence's time dim, whether it has a mask or lengths; a dim
    named 'seq' must be that one (files of older versions find the time axis by the name)."""
    from birnn_export._inputs import plan_inputs

    declared = [
        "a:int64[batch,a_len]",
        "a_mask:bool[batch,a_len]:mask",
        "b:int64[batch,b_len]",
        "b_lens:int64[batch]:lengths(b_len)",
    ]
    model = _signature("a", "a_mask", "b", "b_lens")
    assert plan_inputs(model, inputs=declared, example_inputs=None, **PLANNING).time_dim == "a_len"
    declared = [d.replace("b_len", "seq") for d in declared]
    with pytest.raises(ExportError, match="a dim named 'seq' that is not the time dim"):
        plan_inputs(model, inputs=declared, example_inputs=None, **PLANNING)


class MaskedPair(nn.Module):
    """A pair of feature sequences, each with a bool mask (1 at valid steps), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 3, batch_first=True, bidirectional=True)

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lens = mask.sum(1)
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return out[0].sum(1) / lens[:, None]

    def forward(self, left, left_mask, right, right_mask):
        return self.pool(left, left_mask) - self.pool(right, right_mask)


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
def test_a_pair_of_masked_sequences_is_inferred_and_ragged_in_both(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_onnx(MaskedPair().eval(), tmp_path / "pair.onnx")
    spec = result.spec
    assert [(t.name, t.role, t.dims) for t in spec.inputs] == [
        ("left", "features", ("batch", "seq", 4)),
        ("left_mask", "mask", ("batch", "seq")),
        ("right", "features", ("batch", "right_seq", 4)),
        ("right_mask", "mask", ("batch", "right_seq")),
    ]
    assert "'right' read as the same, each sequence with its own mask" in result.inputs
    assert result.verification.passed, result.verification.summary()
    feed = make_feed(spec, 6, 9, seed=2)
    assert feed["right"].shape == (6, 64, 4)  # the second time dim at its opt
    rows = feed["right_mask"].sum(1)
    assert rows.max() == 64 and rows.min() == 1 and len(set(rows.tolist())) > 2
    assert np.array_equal(feed["right_mask"], np.arange(64)[None, :] < rows[:, None])
    padded = ~feed["right_mask"]
    assert np.all(feed["right"][padded] == 0) and np.all(feed["right"][~padded] != 0)
    assert not np.array_equal(rows, feed["left_mask"].sum(1))


#: plan_inputs's other arguments, as the export passes them by default (inferred inputs).
PLANNING = {
    "lengths": None,
    "input_size": None,
    "input_names": None,
    "ranges": None,
    "batch_range": (1, 8, 32),
    "seq_range": (1, 64, 256),
    "taken": set(),
}


def _signature(*names: str) -> nn.Module:
    """A token model whose forward takes ``names``."""
    import inspect

    class Signed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(30, 4)
            self.rnn = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.embedding(args[0]))[0]

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in ("self", *names)]
    Signed.forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return Signed()


@pytest.mark.parametrize(
    ("names", "declared"),
    [
        (  # the sequences first, then their lengths
            ("a", "b", "a_len", "b_len"),
            [
                "a:int64[batch,seq]",
                "b:int64[batch,b_seq]",
                "a_len:int64[batch]:lengths(seq)",
                "b_len:int64[batch]:lengths(b_seq)",
            ],
        ),
        (  # Hugging Face names with a pair's _a / _b ending
            ("input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b"),
            [
                "input_ids_a:int64[batch,seq]",
                "attention_mask_a:int64[batch,seq]:mask",
                "input_ids_b:int64[batch,input_ids_b_seq]",
                "attention_mask_b:int64[batch,input_ids_b_seq]:mask",
            ],
        ),
        (  # three sequences
            ("q", "q_len", "p", "p_len", "o", "o_len"),
            [
                "q:int64[batch,seq]",
                "q_len:int64[batch]:lengths(seq)",
                "p:int64[batch,p_seq]",
                "p_len:int64[batch]:lengths(p_seq)",
                "o:int64[batch,o_seq]",
                "o_len:int64[batch]:lengths(o_seq)",
            ],
        ),
        (  # lengths in another order than their sequences: paired by name
            ("a", "b", "b_len", "a_len"),
            [
                "a:int64[batch,seq]",
                "b:int64[batch,b_seq]",
                "b_len:int64[batch]:lengths(b_seq)",
                "a_len:int64[batch]:lengths(seq)",
            ],
        ),
        (  # padding masks (True past each row's end) by their _pad_mask ending
            ("a", "a_pad_mask", "b", "b_pad_mask"),
            [
                "a:int64[batch,seq]",
                "a_pad_mask:bool[batch,seq]:padding_mask",
                "b:int64[batch,b_seq]",
                "b_pad_mask:bool[batch,b_seq]:padding_mask",
            ],
        ),
        (  # each word's characters, by the name: nested in the words, a length per word
            ("words", "lengths", "chars", "char_lengths"),
            [
                "words:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chars:int64[batch,seq,chars_seq]",
                "char_lengths:int64[batch,seq]:lengths(chars_seq)",
            ],
        ),
        (
            ("word_ids", "word_lens", "char_ids", "char_lens"),
            [
                "word_ids:int64[batch,seq]",
                "word_lens:int64[batch]:lengths(seq)",
                "char_ids:int64[batch,seq,char_ids_seq]",
                "char_lens:int64[batch,seq]:lengths(char_ids_seq)",
            ],
        ),
        (  # the characters of the second sequence's words nest in its time dim
            ("a", "a_lens", "b", "b_lens", "b_chars", "b_char_lens"),
            [
                "a:int64[batch,seq]",
                "a_lens:int64[batch]:lengths(seq)",
                "b:int64[batch,b_seq]",
                "b_lens:int64[batch]:lengths(b_seq)",
                "b_chars:int64[batch,b_seq,b_chars_seq]",
                "b_char_lens:int64[batch,b_seq]:lengths(b_chars_seq)",
            ],
        ),
        (  # 'chart' is not characters: a second sequence
            ("ids", "lengths", "chart_ids", "chart_ids_lens"),
            [
                "ids:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chart_ids:int64[batch,chart_ids_seq]",
                "chart_ids_lens:int64[batch]:lengths(chart_ids_seq)",
            ],
        ),
        (  # a sequence already named ..._seq names its dim so
            ("tokens", "lengths", "char_seq", "char_seq_lens"),
            [
                "tokens:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "char_seq:int64[batch,seq,char_seq]",
                "char_seq_lens:int64[batch,seq]:lengths(char_seq)",
            ],
        ),
        (  # a mask for the words, lengths for each word's characters
            ("input_ids", "attention_mask", "char_ids", "char_lens"),
            [
                "input_ids:int64[batch,seq]",
                "attention_mask:int64[batch,seq]:mask",
                "char_ids:int64[batch,seq,char_ids_seq]",
                "char_lens:int64[batch,seq]:lengths(char_ids_seq)",
            ],
        ),
        (  # a mask of each word's characters, and of the words: masks nest too
            ("input_ids", "attention_mask", "char_ids", "char_mask"),
            [
                "input_ids:int64[batch,seq]",
                "attention_mask:int64[batch,seq]:mask",
                "char_ids:int64[batch,seq,char_ids_seq]",
                "char_mask:bool[batch,seq,char_ids_seq]:mask",
            ],
        ),
        (
            ("words", "lengths", "chars", "char_padding_mask"),
            [
                "words:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chars:int64[batch,seq,chars_seq]",
                "char_padding_mask:bool[batch,seq,chars_seq]:padding_mask",
            ],
        ),
        (  # a char-CNN's characters: nested in the words, without lengths of their own
            ("words", "lengths", "chars"),
            [
                "words:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chars:int64[batch,seq,chars_seq]",
            ],
        ),
        (
            ("input_ids", "attention_mask", "char_ids"),
            [
                "input_ids:int64[batch,seq]",
                "attention_mask:int64[batch,seq]:mask",
                "char_ids:int64[batch,seq,char_ids_seq]",
            ],
        ),
        (  # one sequence of sequences: a document's sentences, each sentence's words
            ("docs", "doc_lengths", "sentence_lengths"),
            [
                "docs:int64[batch,seq,sentence_seq]",
                "doc_lengths:int64[batch]:lengths(seq)",
                "sentence_lengths:int64[batch,seq]:lengths(sentence_seq)",
            ],
        ),
        (  # the same as the HAN tutorials name it (users37: refused)
            ("documents", "sentences_per_document", "words_per_sentence"),
            [
                "documents:int64[batch,seq,words_seq]",
                "sentences_per_document:int64[batch]:lengths(seq)",
                "words_per_sentence:int64[batch,seq]:lengths(words_seq)",
            ],
        ),
        (
            ("docs", "doc_mask", "sentence_mask"),
            [
                "docs:int64[batch,seq,sentence_seq]",
                "doc_mask:bool[batch,seq]:mask",
                "sentence_mask:bool[batch,seq,sentence_seq]:mask",
            ],
        ),
        (  # lengths for one sequence, a mask for the other
            ("a", "a_lens", "b", "b_mask"),
            [
                "a:int64[batch,seq]",
                "a_lens:int64[batch]:lengths(seq)",
                "b:int64[batch,b_seq]",
                "b_mask:bool[batch,b_seq]:mask",
            ],
        ),
        (("sent1", "sent1_length", "sent2", "sent2_length"), None),  # checked below
    ],
)
def test_sequence_pairs_are_inferred_from_forwards_names(names, declared) -> None:
    from birnn_export._inputs import plan_inputs

    planned = plan_inputs(_signature(*names), inputs=None, example_inputs=None, **PLANNING)
    assert [d.name for d in planned.decls] == list(names)
    if declared is not None:
        assert [str(d) for d in planned.decls] == declared
    else:
        assert [d.measures for d in planned.decls] == [None, "seq", None, "sent2_seq"]
    assert planned.time_dim == "seq"


@pytest.mark.parametrize(
    "names",
    [
        ("q1", "q2"),  # no lengths: a second sequence or an id? Not guessed
        ("x", "max_len"),  # a number, not lengths
        ("a", "x_lens", "y_lens", "b"),  # not in turn, nor sequences first, nor named alike
        ("ids", "lengths", "attention_mask"),  # two of one sequence, not a nested one
        ("ids", "lengths", "speaker"),  # not lengths
        ("x", "x_lens", "frames_per_second"),  # a rate, not lengths
        ("x", "x_lens", "frames_per_chunk"),  # a size (review24)
        ("values", "masks", "deltas", "lengths"),  # GRU-D: one sequence (users37: two)
    ],
)
def test_other_signatures_are_not_read_as_pairs(names) -> None:
    from birnn_export._inputs import plan_inputs

    with pytest.raises(ExportError, match="declare each, in forward's order") as caught:
        plan_inputs(_signature(*names), inputs=None, example_inputs=None, **PLANNING)
    assert "it infers lengths and masks named as such" in str(caught.value)  # not "only"


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            [
                "words:int64[batch,seq]",
                "chars:int64[batch,seq,chars]",
                "char_lengths:int64[batch,seq]:lengths(chars)",
            ],
            r"'char_lengths': it measures 'chars' within each step of 'seq', which has no "
            r"lengths or mask of its own; declare one, e.g. 'lengths:int64\[batch\]",
        ),
        (
            [
                "words:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chars:int64[batch,chars,seq]",
                "char_lengths:int64[batch,seq]:lengths(chars)",
            ],
            r"no input has 'seq' and then 'chars' as dims; declare the nested sequence so, e.g. "
            r"'chars:int64\[batch,seq,chars\]'",
        ),
        (
            [
                "words:int64[batch,seq]",
                "lengths:int64[batch]:lengths(seq)",
                "chars:int64[batch,seq,chars]",
                "char_mask:bool[batch,chars,seq]:mask",
            ],
            r"'char_mask': it measures 'seq' within each step of 'chars', which has no lengths",
        ),
        (
            [
                "docs:int64[batch,seq,w,c]",
                "lengths:int64[batch]:lengths(seq)",
                "sentence_lengths:int64[batch,seq]:lengths(w)",
                "word_lengths:int64[batch,w]:lengths(c)",
            ],
            r"'word_lengths': it measures 'c' within each step of 'w', itself nested in another "
            r"dim: nesting goes one level deep",
        ),
    ],
)
def test_a_nested_sequence_needs_its_outer_lengths_and_an_input_of_both(declared, message):
    from birnn_export._inputs import plan_inputs

    model = _signature("words", "lengths", "chars", "char_lengths")
    with pytest.raises(ExportError, match=message):
        plan_inputs(model, inputs=declared, example_inputs=None, **PLANNING)


def test_lengths_of_each_words_characters_declared_per_row_are_told(tmp_path) -> None:
    from tests.realistic_models import CharWordTagger

    inputs = [
        "words:int64[batch,seq]",
        "lengths:int64[batch]:lengths(seq)",
        "chars:int64[batch,seq,chars]",
        "char_lengths:int64[batch]:lengths(chars)",  # one per row, where the model wants a word's
    ]
    told = r"if it holds a length per step of 'seq' \(each word's characters\), declare --input "
    told += r"'char_lengths:int64\[batch,seq\]:lengths\(chars\)'"
    with pytest.raises(ExportError, match=told):
        export_onnx(CharWordTagger().eval(), tmp_path / "c.onnx", inputs=inputs)
    assert not (tmp_path / "c.onnx").exists()


def test_nested_lengths_in_example_inputs_ask_for_declarations(tmp_path) -> None:
    from tests.realistic_models import CharWordTagger

    example = (
        torch.randint(1, 60, (3, 4)),
        torch.tensor([4, 2, 1]),
        torch.randint(1, 30, (3, 4, 5)),
        torch.randint(1, 6, (3, 4)),
    )
    told = r"example_inputs\[3\] \('char_lengths'\): lengths of shape \(3, 4\), one per row "
    with pytest.raises(ExportError, match=told + r"and step .* declare the inputs"):
        export_onnx(CharWordTagger().eval(), tmp_path / "c.onnx", example_inputs=example)


def test_the_first_layer_is_found_past_a_dropout() -> None:
    """NCRF++ registers its char encoder first, and it starts with a Dropout."""
    from birnn_export._inputs import first_leaf

    class CharFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.char_drop = nn.Dropout(0.5)
            self.char_embedding = nn.Embedding(30, 4)

    assert isinstance(first_leaf(CharFirst()), nn.Embedding)


class _FairseqDropout(nn.Module):
    """fairseq's own dropout module (fairseq/modules/fairseq_dropout.py): no weights."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, self.p, training=self.training)


class _FairseqLikeEncoder(nn.Module):
    """fairseq's ``LSTMEncoder`` registers its ``dropout_in_module`` before ``embed_tokens``."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout_in_module = _FairseqDropout(0.1)
        self.embed_tokens = nn.Embedding(100, 16, padding_idx=1)
        self.lstm = nn.LSTM(16, 32, batch_first=True, bidirectional=True)

    def forward(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout_in_module(self.embed_tokens(src_tokens))
        packed = pack_padded_sequence(x, src_lengths.cpu(), True, enforce_sorted=False)
        return pad_packed_sequence(self.lstm(packed)[0], True, total_length=x.shape[1])[0]


def test_a_librarys_own_dropout_registered_first_tells_nothing_of_the_input(tmp_path) -> None:
    """fairseq's encoders: inference stopped at ``FairseqDropout`` and told float features for
    token ids; a weightless module named a dropout is passed like ``nn.Dropout``."""
    torch.manual_seed(0)
    # Not verified: the inputs inferred are the point; token ids with lengths are verified in
    # test_export.py::test_every_sample_exports_and_verifies[token_tagger.pt].
    result = export_onnx(_FairseqLikeEncoder().eval(), tmp_path / "f.onnx", verify=False)
    tokens, lengths = result.spec.inputs
    assert (tokens.name, tokens.role, tokens.dtype) == ("src_tokens", "tokens", "int64")
    assert (lengths.name, lengths.role) == ("src_lengths", "lengths")


def test_a_model_holding_an_embedding_is_told_a_token_ids_declaration(tmp_path) -> None:
    """Where the first layer tells nothing, a model with an Embedding is shown token ids first,
    not float features; a weightless module that is no dropout still stops inference."""

    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = _FairseqLikeEncoder().eval()
    model.dropout_in_module = Scale()
    told = r"first layer is Scale\); declare them, e\.g\. --input 'src_tokens:int64\[batch,time\]'"
    with pytest.raises(ExportError, match=told):
        export_onnx(model, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


class NumericMaskTagger(nn.Module):
    """Computes with its mask as numbers (``1.0 - mask``), as models fed float masks do."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 3, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = pad_packed_sequence(
            self.rnn(pack_padded_sequence(x, mask.sum(1).long(), True, False))[0],
            True,
            total_length=x.shape[1],
        )[0]
        return out + (1.0 - mask)[..., None] * -1e4


def test_a_mask_the_model_computes_with_is_made_float32(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_onnx(NumericMaskTagger().eval(), tmp_path / "f.onnx")
    mask = result.spec.inputs[1]
    assert (mask.name, mask.role, mask.dtype) == ("mask", "mask", "float32")
    assert "masks as numbers (float), as the model computes with them" in result.inputs
    assert result.verification.passed, result.verification.summary()
    assert _ragged(result.verification)


def test_lengths_and_masks_named_after_their_sequence_are_inferred(tmp_path) -> None:
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

        def forward(self, feats, feats_lens):
            packed = pack_padded_sequence(feats, feats_lens, batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0]

    # Not verified: the roles inferred are the point; a packed LSTM with lengths is verified
    # by many default tests (test_time_major_inputs_and_outputs_are_named_by_their_axes).
    result = export_onnx(Named().eval(), tmp_path / "named.onnx", verify=False)
    assert [(t.name, t.role) for t in result.spec.inputs] == [
        ("feats", "features"),
        ("feats_lens", "lengths"),
    ]


def test_a_keyword_only_input_is_refused_with_the_signature_to_write(tmp_path) -> None:
    class KeywordOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 4, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor, *, lengths: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    inputs = ["x:float32[batch,seq,4]", "lengths:int64[batch]:lengths(seq)"]
    for given in ({}, {"inputs": inputs}):
        with pytest.raises(ExportError, match=r"takes 'lengths' by keyword only") as caught:
            export_onnx(KeywordOnly(), tmp_path / "k.onnx", **given)
        assert "def forward(self, x, lengths)" in str(caught.value)
    assert not (tmp_path / "k.onnx").exists()


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


# -- masks ------------------------------------------------------------------------------------


class MaskTagger(nn.Module):
    """A Hugging Face-style tagger: token ids and an int64 ``attention_mask`` (1 at each row's
    tokens); it packs by the mask's row sums."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.rnn = nn.LSTM(16, 24, batch_first=True, bidirectional=True)
        self.out = nn.Linear(48, 5)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).cpu()
        packed = pack_padded_sequence(
            self.emb(ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return self.out(out)


class UnmaskedTagger(MaskTagger):
    """The same weights, the mask ignored: its backward direction starts in the padding."""

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.emb(ids))[0])


class PaddingMaskPooler(nn.Module):
    """Features and a bool ``key_padding_mask`` (True past each row's end, as
    ``nn.MultiheadAttention`` takes it): a packed BiGRU and a mean over the valid steps."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 10, batch_first=True, bidirectional=True)
        self.head = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        keep = ~key_padding_mask
        packed = pack_padded_sequence(x, keep.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        weights = keep.unsqueeze(-1).to(x.dtype)
        return self.head((out * weights).sum(1) / weights.sum(1))


class FloatMaskTagger(nn.Module):
    """A BiLSTM on the padded batch whose float mask, time-major ``[time, batch]``, zeroes its
    outputs past each row's end."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0] * m.t().unsqueeze(-1)


def _ragged(report) -> bool:
    return any(c.lengths and min(c.lengths) < c.seq for c in report.cases)


def test_an_attention_mask_is_inferred_by_name_and_verified_on_ragged_rows(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_onnx(MaskTagger().eval(), tmp_path / "m.onnx")
    mask = result.spec.inputs[1]
    assert (mask.name, mask.role, mask.dtype, mask.dims, mask.low, mask.high) == (
        "attention_mask",
        "mask",
        "int64",
        ("batch", "seq"),
        0,
        1,
    )
    assert result.verification.passed, result.verification.summary()
    assert _ragged(result.verification)  # rows shorter than the batch were checked
    padding = [o for c in result.verification.cases for o in c.outputs if o.check == "padding"]
    assert padding and all(o.passed for o in padding)


def test_a_graph_that_ignores_the_mask_fails_verification(tmp_path) -> None:
    torch.manual_seed(0)
    model = MaskTagger().eval()
    path = export_onnx(model, tmp_path / "m.onnx", verify=False).path
    unmasked = UnmaskedTagger().eval()
    unmasked.load_state_dict(model.state_dict())
    report = verify(path, unmasked, batch_sizes=(3,), seq_lens=(9,))
    assert not report.passed  # the feeds' masks are ragged, so the two models differ


def test_a_bool_key_padding_mask_is_inferred_with_its_sense(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_onnx(PaddingMaskPooler().eval(), tmp_path / "p.onnx")
    assert [(t.name, t.role, t.dtype) for t in result.spec.inputs] == [
        ("x", "features", "float32"),
        ("key_padding_mask", "padding_mask", "bool"),
    ]
    assert result.verification.passed, result.verification.summary()
    assert _ragged(result.verification)


def test_a_declared_float_mask_with_any_name_and_time_major_axes(tmp_path) -> None:
    torch.manual_seed(0)
    inputs = ["x:float32[batch,time,4]", "m:float32[time,batch]:mask"]
    result = export_onnx(FloatMaskTagger().eval(), tmp_path / "f.onnx", inputs=inputs)
    assert result.spec.inputs[1].role == "mask" and result.spec.time_dim == "time"
    assert result.verification.passed, result.verification.summary()
    assert _ragged(result.verification)


def test_a_mask_beside_lengths_of_its_dim_is_data_unless_marked() -> None:
    """An ICU model's forward(values, mask, lengths): mask says which values were observed,
    zeros inside each row. Declared plainly, it was made a padding mask by its name (metadata
    "1 at each row's valid steps", fed only as such); beside lengths it is data now, and
    ':mask' still makes it the padding mask."""
    from birnn_export._inputs import plan_inputs

    class ICU(nn.Module):
        def forward(self, values, mask, lengths):
            return values

    common = {**PLANNING, "example_inputs": None}
    declared = ["values:float32[batch,seq,5]", "mask:float32[batch,seq]"]
    lengths = "lengths:int64[batch]:lengths(seq)"
    plain = plan_inputs(ICU(), inputs=[*declared, lengths], **common)
    assert plain.roles == ("features", "features", "lengths")
    marked = plan_inputs(ICU(), inputs=[declared[0], f"{declared[1]}:mask", lengths], **common)
    assert marked.roles[1] == "mask"
    alone = plan_inputs(ICU(), inputs=declared, **common)
    assert alone.roles[1] == "mask"  # no lengths: the name still says a padding mask


class _MissingValues(nn.Module):
    """A GRU-D-style ICU model: forward(values, mask), mask [batch, seq, 5] saying which of the
    5 values were observed, both joined before a Linear(10, 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 6)
        self.gru = nn.GRU(6, 4, batch_first=True, bidirectional=True)

    def forward(self, values, mask):
        return self.gru(torch.relu(self.inp(torch.cat([values * mask, mask], -1))))[0]


def test_a_per_feature_mask_that_fails_by_shape_is_told_its_feature_dim(tmp_path) -> None:
    """Inferred as a [batch, seq] padding mask, it failed by shape and was told to flip the
    mask's sense and to give a --range, neither of which fits; it is told the FEATURES dim."""
    torch.manual_seed(0)
    model = _MissingValues().eval()
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "m.onnx")
    message = str(caught.value)
    assert "declare it --input 'mask:float32[batch,seq,FEATURES]'" in message
    assert "other way round" not in message and "--range" not in message
    inputs = ["values:float32[batch,seq,5]", "mask:float32[batch,seq,5]"]
    result = export_onnx(model, tmp_path / "m.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()


class _FlairTagger(nn.Module):
    """Flair's SequenceTagger: ``embeddings`` registered first but run outside ``forward``,
    which takes the embedded sentences [batch, seq, 12] into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict({"word": nn.Embedding(100, 12)})
        self.embedding2nn = nn.Linear(12, 12)
        self.rnn = nn.LSTM(12, 8, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(16, 5)

    def forward(self, sentence_tensor, lengths):
        x = self.embedding2nn(sentence_tensor)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return self.linear(pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0])


def test_a_first_module_forward_never_runs_tells_nothing_of_the_input(tmp_path) -> None:
    """Its Embedding made the input token ids, and the model failed on them (mat1 and mat2
    must have the same dtype); the Linear forward does run first tells the features."""
    torch.manual_seed(0)
    # Not verified: the input inferred is the point; float features with lengths are verified
    # in test_time_major_inputs_and_outputs_are_named_by_their_axes and many others.
    result = export_onnx(_FlairTagger().eval(), tmp_path / "f.onnx", verify=False)
    first = result.spec.inputs[0]
    assert (first.name, first.dtype, first.dims) == (
        "sentence_tensor",
        "float32",
        ("batch", "seq", 12),
    )


def test_example_sizes_avoid_the_declared_fixed_sizes() -> None:
    """ETT's 7 variables declared [batch, seq, 7]: the example batch was 7 as well, so the
    graph's 7 looked like a baked example batch."""
    from birnn_export._inputs import plan_inputs

    class Forecaster(nn.Module):
        def forward(self, x, lengths):
            return x

    common = {**PLANNING, "example_inputs": None}
    inputs = ["x:float32[batch,seq,7]", "lengths:int64[batch]:lengths(seq)"]
    planned = plan_inputs(Forecaster(), inputs=inputs, **common)
    assert 7 not in planned.examples.values(), planned.examples
    assert planned.tensors[0].shape[2] == 7


def test_an_int64_attention_mask_beside_lengths_stays_a_mask() -> None:
    """Only a float "mask" beside lengths is data (an observation mask); an int64 one had
    become token ids (review15)."""
    from birnn_export._inputs import plan_inputs

    class Tagger(nn.Module):
        def forward(self, ids, attention_mask, lengths):
            return ids

    common = {**PLANNING, "example_inputs": None}
    inputs = [
        "ids:int64[batch,seq]",
        "attention_mask:int64[batch,seq]",
        "lengths:int64[batch]:lengths(seq)",
    ]
    assert plan_inputs(Tagger(), inputs=inputs, **common).roles[1] == "mask"


def test_a_mask_of_the_wrong_sense_is_named_in_the_error(tmp_path) -> None:
    inputs = ["ids:int64[batch,seq]", "attention_mask:int64[batch,seq]:padding_mask"]
    hint = r"declare --input 'attention_mask:int64\[batch,seq\]:mask'"
    with pytest.raises(ExportError, match=hint):
        export_onnx(MaskTagger().eval(), tmp_path / "m.onnx", inputs=inputs)
    assert not (tmp_path / "m.onnx").exists()


def test_example_masks_are_told_by_name_or_by_their_values(tmp_path) -> None:
    from birnn_export._inputs import plan_inputs

    lengths = torch.tensor([5, 2, 4])
    valid = torch.arange(5)[None, :] < lengths[:, None]
    common = {"inputs": None, **PLANNING}
    ids = torch.randint(1, 50, (3, 5))
    by_name = plan_inputs(MaskTagger(), example_inputs=(ids, valid.long()), **common)
    assert by_name.roles == ("tokens", "mask")

    class Unnamed(nn.Module):
        def forward(self, x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
            return x

    x = torch.randn(3, 5, 4)
    assert plan_inputs(Unnamed(), example_inputs=(x, valid), **common).roles[1] == "mask"
    assert plan_inputs(Unnamed(), example_inputs=(x, ~valid), **common).roles[1] == "padding_mask"
    no_padding = torch.zeros(3, 5, dtype=torch.bool)  # the usual example of a padding mask
    assert plan_inputs(Unnamed(), example_inputs=(x, no_padding), **common).roles[1] == (
        "padding_mask"
    )


def test_an_optional_mask_parameter_is_not_made_an_input(tmp_path) -> None:
    class OptionalMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 6, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            out = self.rnn(x)[0]
            return out if mask is None else out.masked_fill(mask.unsqueeze(-1), 0.0)

    # Not verified: only the inputs are asserted (result.inputs is set before verification).
    result = export_onnx(OptionalMask().eval(), tmp_path / "o.onnx", verify=False)
    assert [t.name for t in result.spec.inputs] == ["x"]
    # ... and the inferred-inputs line says it was seen, and how to feed it.
    assert "optional 'mask' left out" in result.inputs
    assert "--input 'mask:bool[batch,seq]:mask' feeds it" in result.inputs


def test_an_optional_hugging_face_attention_mask_is_an_input(tmp_path) -> None:
    """``forward(input_ids=None, attention_mask=None)``, as every ``PreTrainedModel`` writes it:
    its users always pass the tokenizer's mask, so the graph takes it, and the export is checked
    against the model called with it (here the mask packs the rows, so leaving it out changes
    every padded row's output)."""

    class HubTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8, padding_idx=0)
            self.rnn = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
            self.head = nn.Linear(12, 3)

        def forward(self, input_ids=None, attention_mask=None):
            x = self.embed(input_ids)
            if attention_mask is not None:
                lengths = attention_mask.sum(1).cpu()
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                out = self.rnn(packed)[0]
                out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
            else:
                out = self.rnn(x)[0]
            return self.head(out)

    torch.manual_seed(0)
    model = HubTagger().eval()
    result = export_onnx(model, tmp_path / "o.onnx")
    inputs = {t.name: t for t in result.spec.inputs}
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert inputs["attention_mask"].role == "mask" and inputs["attention_mask"].dtype == "int64"
    assert result.verification is not None and result.verification.passed
    assert "left out" not in result.inputs


def test_an_optional_attention_mask_after_another_optional_parameter_is_fed_by_keyword(
    tmp_path,
) -> None:
    """``forward(input_ids, token_type_ids=None, attention_mask=None)`` (BERT's order): the
    graph takes the mask, the model is called with it by keyword (export, verify), and the
    graph matches the model called so, not the model without its mask."""

    class BertOrder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8, padding_idx=0)
            self.types = nn.Embedding(2, 8)
            self.rnn = nn.GRU(8, 6, batch_first=True, bidirectional=True)

        def forward(self, input_ids, token_type_ids=None, attention_mask=None):
            x = self.embed(input_ids)
            if token_type_ids is not None:
                x = x + self.types(token_type_ids)
            if attention_mask is None:
                return self.rnn(x)[0]
            lengths = attention_mask.sum(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out = self.rnn(packed)[0]
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    torch.manual_seed(0)
    model = BertOrder().eval()
    # The export's own sweep is not run: the verify() below feeds the mask by keyword; a full
    # sweep of a keyword mask stays in test_an_optional_hugging_face_attention_mask_is_an_input.
    result = export_onnx(model, tmp_path / "o.onnx", verify=False)
    assert [t.name for t in result.spec.inputs] == ["input_ids", "attention_mask"]
    assert result.spec.container["kind"] == "keywords"
    assert "forward is called as forward(input_ids=, attention_mask=...)" in result.inputs
    assert verify(tmp_path / "o.onnx", model, batch_sizes=(3,), seq_lens=(7,)).passed
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    with OrtRunner(tmp_path / "o.onnx") as runner:
        got = runner.infer({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = model(ids, attention_mask=mask)
    np.testing.assert_allclose(got["output"][1, :3], want[1, :3].numpy(), atol=1e-5)
    assert not np.allclose(want[1, :3].numpy(), model(ids)[1, :3].detach().numpy(), atol=1e-3)


# -- token inputs with their own vocabularies -------------------------------------------------


class WordCharSpeakerTagger(nn.Module):
    """Word ids, character ids per word (a char-CNN, as BiLSTM-CNN-CRF taggers have) and a
    speaker id per row: three Embeddings of different sizes, the word one first."""

    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(500, 16, padding_idx=0)
        self.char = nn.Embedding(30, 4, padding_idx=0)
        self.speaker = nn.Embedding(3, 8)
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.rnn = nn.LSTM(32, 12, batch_first=True, bidirectional=True)
        self.out = nn.Linear(24, 5)

    def forward(self, words, chars, speaker, lengths):
        b, t, c = chars.shape
        per_word = self.conv(self.char(chars.reshape(b * t, c)).transpose(1, 2))
        per_word = per_word.max(dim=2).values.reshape(b, t, -1)
        who = self.speaker(speaker)[:, None, :].expand(b, t, -1)
        x = torch.cat([self.word(words), per_word, who], dim=-1)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)
        return self.out(out)


#: :class:`WordCharSpeakerTagger`'s inputs, declared.
WORD_CHAR_INPUTS = (
    "words:int64[batch,seq]",
    "chars:int64[batch,seq,chars]",
    "speaker:int64[batch]",
    "lengths:int64[batch]:lengths(seq)",
)


def test_each_token_input_takes_the_vocabulary_of_the_embedding_that_reads_it(tmp_path):
    torch.manual_seed(0)
    model = WordCharSpeakerTagger().eval()
    result = export_onnx(
        model, tmp_path / "w.onnx", inputs=WORD_CHAR_INPUTS, ranges={"chars": (1, 6, 12)}
    )
    highs = {t.name: t.high for t in result.spec.inputs if t.role == "tokens"}
    assert highs == {"words": 499, "chars": 29, "speaker": 2}
    report = result.verification
    assert report.passed, report.summary()
    labels = [c.label for c in report.cases]  # words of 1 and of 12 characters were checked
    assert any("chars=1 " in x for x in labels) and any("chars=12 " in x for x in labels)
    feed = make_feed(result.spec, 16, 20, seed=1)
    assert feed["words"].max() > 29  # word ids beyond the smaller vocabularies are exercised


# -- forward signatures inference cannot fill -------------------------------------------------


class _Speaker(nn.Module):
    """Features and a speaker id per row, the speaker Embedding registered first."""

    def __init__(self) -> None:
        super().__init__()
        self.speaker = nn.Embedding(4, 3)
        self.rnn = nn.GRU(7, 6, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        who = self.speaker(speaker)[:, None, :].expand(-1, x.shape[1], -1)
        return self.rnn(torch.cat([x, who], dim=-1))[0]


def test_a_forward_with_more_inputs_than_inferred_asks_for_each_declaration(tmp_path) -> None:
    with pytest.raises(ExportError, match=r"_Speaker.forward takes 2 inputs \(x, speaker\)") as e:
        export_onnx(_Speaker().eval(), tmp_path / "s.onnx")
    assert "--input 'x:DTYPE[DIMS]' --input 'speaker:DTYPE[DIMS]'" in str(e.value)
    # the initial state's shape too: [layers x directions, batch, hidden] (users51 F4)
    assert "an initial state of its layer 'rnn' 'h0:float32[2,batch,6]'" in str(e.value)
    assert not (tmp_path / "s.onnx").exists()
    inputs = ["x:float32[batch,seq,4]", "speaker:int64[batch]"]
    result = export_onnx(_Speaker().eval(), tmp_path / "s.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()


class _ReadsDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=True)

    def forward(self, batch):  # a collate function's dict, as a training loop passes it
        return self.rnn(batch["x"])[0]


class _ReadsAttribute(_ReadsDict):
    def forward(self, batch):
        return self.rnn(batch.x)[0]


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        # Slow: a forward reading a dict, fed by verification, is guarded by test_export.py::
        # test_a_forward_reading_one_batch_by_key_is_fed_its_keys_and_matches_torch
        # [DictBatchTagger].
        pytest.param(_ReadsDict, "dict", marks=pytest.mark.slow),
        (_ReadsAttribute, "attributes"),
    ],
)
def test_a_forward_that_takes_a_container_is_fed_its_keys(tmp_path, recwarn, model, kind) -> None:
    result = export_onnx(model().eval(), tmp_path / "d.onnx")
    assert result.verification.passed, result.verification.summary()
    assert result.spec.container == {"param": "batch", "kind": kind, "keys": ["x"]}
    assert [t.name for t in result.spec.inputs] == ["x"]
    assert not [w for w in recwarn if "multidimensional indexing" in str(w.message)]


@pytest.mark.parametrize(
    ("model", "told"),
    [(_ReadsDict, "by key, so it takes a dict"), (_ReadsAttribute, "by attribute")],
)
def test_example_tensors_for_a_container_are_told_to_export_a_subclass(
    tmp_path, model, told
) -> None:
    example = (torch.randn(2, 5, 4),)  # tensors given for a forward that reads a container
    with pytest.raises(ExportError, match=f"forward reads its input {told}") as caught:
        export_onnx(model().eval(), tmp_path / "d.onnx", example_inputs=example)
    assert f"class Export{model.__name__}({model.__name__})" in str(caught.value)


class _LengthsNamed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)

    def forward(self, xs: torch.Tensor, ilens: torch.Tensor) -> torch.Tensor:  # as ESPnet names
        packed = pack_padded_sequence(xs, ilens, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0]


def test_lengths_named_as_speech_toolkits_name_them_are_inferred(tmp_path) -> None:
    # Not verified: the roles inferred are the point (features with lengths verified widely).
    result = export_onnx(_LengthsNamed().eval(), tmp_path / "l.onnx", verify=False)
    assert [t.role for t in result.spec.inputs] == ["features", "lengths"]


class _HFTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.rnn = nn.GRU(8, 6, batch_first=True, bidirectional=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(input_ids))[0] * attention_mask[..., None]


class _CharTagger(_HFTagger):
    def forward(self, chars: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(chars), seq_len, batch_first=True,
                                      enforce_sorted=False)  # fmt: skip
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                   total_length=chars.shape[1])[0]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "names", "roles"),
    [
        (_HFTagger, ["input_ids", "attention_mask"], ["tokens", "mask"]),
        (_CharTagger, ["chars", "seq_len"], ["tokens", "lengths"]),
    ],
)
def test_inferred_inputs_keep_forwards_parameter_names(tmp_path, model, names, roles) -> None:
    """A caller feeds the graph by forward's names (a tokenizer's dict: input_ids, ...)."""
    result = export_onnx(model().eval(), tmp_path / "n.onnx")
    assert [t.name for t in result.spec.inputs] == names
    assert [t.role for t in result.spec.inputs] == roles
    assert result.verification.passed, result.verification.summary()


class _Subsampled(nn.Module):
    """Two stride-2 convolutions before the BiLSTM, lengths recomputed as the convolutions
    shorten time, as speech front ends do: no row may be shorter than 7 frames."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(6, 8, 3, stride=2), nn.ReLU(), nn.Conv1d(8, 8, 3, 2))
        self.rnn = nn.LSTM(8, 5, batch_first=True, bidirectional=True)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats.transpose(1, 2)).transpose(1, 2)
        lens = ((feat_lens - 3) // 2 + 1 - 3) // 2 + 1
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                   total_length=x.shape[1])[0]  # fmt: skip


def test_the_time_dims_minimum_is_the_shortest_row_fed(tmp_path) -> None:
    inputs = ["feats:float32[batch,time,6]", "feat_lens:int64[batch]:lengths(time)"]
    told = r"the example's time was \d+, with a row of 1 step.*--range time=MIN,64,256"
    with pytest.raises(ExportError, match=told):
        export_onnx(_Subsampled().eval(), tmp_path / "s.onnx", inputs=inputs)
    result = export_onnx(
        _Subsampled().eval(), tmp_path / "s.onnx", inputs=inputs, ranges={"time": (7, 40, 120)}
    )
    assert result.verification.passed, result.verification.summary()
    assert result.verification.cases  # rows alone included: none shorter than 7
    lengths = next(t for t in result.spec.inputs if t.role == "lengths")
    assert (lengths.low, lengths.high) == (7, "time")  # the graph's metadata says so too
    for seq in (7, 9, 40):
        for mode in ("ragged", "equal"):
            feed = make_feed(result.spec, 5, seq, seed=seq, lengths=mode)
            assert feed["feat_lens"].min() >= 7 and feed["feat_lens"].max() <= seq


class _TimeMajorTagger(TutorialEncoder):
    def forward(self, src: torch.Tensor) -> torch.Tensor:  # [seq, batch], nothing packed
        return self.rnn(self.embed(src))[0]


class _TransposingTagger(TutorialEncoder):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [batch, seq], moved to time-major
        return self.rnn(self.embed(ids).transpose(0, 1))[0].transpose(0, 1)


@pytest.mark.parametrize(
    ("model", "dims"),
    [
        (TutorialEncoder, ("seq", "batch")),
        pytest.param(_TimeMajorTagger, ("seq", "batch"), marks=pytest.mark.slow),
        pytest.param(_TransposingTagger, ("batch", "seq"), marks=pytest.mark.slow),
    ],
)
def test_token_ids_for_a_time_major_layer_take_the_order_the_model_runs_on(
    tmp_path, model, dims
) -> None:
    result = export_onnx(model().eval(), tmp_path / "t.onnx")
    first = result.spec.inputs[0]
    assert first.dims == dims and (first.batch_axis, first.time_axis) == (
        dims.index("batch"),
        dims.index("seq"),
    )
    assert result.verification.passed, result.verification.summary()


@pytest.mark.slow
def test_a_convolution_first_is_refused_with_the_layout_it_runs_on(tmp_path) -> None:
    """Which axis of a convolution's input is time cannot be told: the refusal tries the
    layouts on the model and names the one it runs on (it transposes [batch, time, 8] itself),
    with its lengths by forward's names, and that declaration exports."""
    from tests.realistic_models import ConvBiGRUCTC

    model = ConvBiGRUCTC().eval()
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "ctc.onnx")
    message = str(caught.value)
    assert "its first layer is Conv1d(8, ...)" in message
    inputs = ["x:float32[batch,time,8]", "lengths:int64[batch]:lengths(time)"]
    assert f"it runs on --input '{inputs[0]}' --input '{inputs[1]}' (at time 52), tried" in message
    assert "[batch,8,time]" not in message  # it does not run on that
    result = export_onnx(model, tmp_path / "ctc.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()


class _SpeakerInChannels(nn.Module):
    """AutoVC's content encoder: forward(x [batch, time, 8], c_org [batch, 6]), the speaker
    vector repeated along time and concatenated into the Conv1d's 14 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8 + 6, 4, 5, padding=2)
        self.lstm = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

    def forward(self, x, c_org):
        x = x.transpose(2, 1)
        c = c_org.unsqueeze(-1).expand(-1, -1, x.size(-1))
        return self.lstm(torch.relu(self.conv(torch.cat((x, c), dim=1))).transpose(1, 2))[0]


def test_a_convolution_first_with_a_second_input_asks_for_both(tmp_path) -> None:
    """The refusal gave a one-input declaration (and --input-size 14), which failed when
    followed: forward() missing 'c_org'. It now names every input forward takes."""
    model = _SpeakerInChannels().eval()
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "vc.onnx")
    message = str(caught.value)
    assert "--input 'x:float32[batch,14,time]' --input 'c_org:DTYPE[DIMS]'" in message
    assert "forward takes 2 inputs, x, c_org" in message and "--input-size" not in message
    inputs = ["x:float32[batch,time,8]", "c_org:float32[batch,6]"]
    result = export_onnx(model, tmp_path / "vc.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()


class _MelsFirst(nn.Module):
    """DESED's sound event detector: forward(x [batch, mels, time]) makes the Conv2d's channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.GRU(4 * 20, 5, batch_first=True, bidirectional=True)

    def forward(self, x):
        x = torch.relu(self.conv(x.transpose(1, 2).unsqueeze(1)))  # [B, 4, T, 80]
        x = nn.functional.avg_pool2d(x, (1, 4)).permute(0, 2, 1, 3).flatten(2)
        return self.rnn(x)[0]


class _Waveform(nn.Module):
    """torchlibrosa's STFT as a Conv1d on forward(input [batch, samples]), reflect-padded by
    half its window: it runs from 129 samples."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Conv1d(1, 6, 256, stride=64)
        self.rnn = nn.GRU(6, 5, batch_first=True, bidirectional=True)

    def forward(self, input):
        x = nn.functional.pad(input[:, None, :], (128, 128), mode="reflect")
        return self.rnn(self.stft(x).transpose(1, 2))[0]


class _Clips(nn.Module):
    """A video classifier: each frame of forward(clips [batch, time, 3, H, W]) through a conv
    trunk folded into the batch, then a BiLSTM over the frames."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1))
        self.rnn = nn.LSTM(4, 5, batch_first=True, bidirectional=True)

    def forward(self, clips):
        b, t = clips.shape[:2]
        return self.rnn(self.trunk(clips.flatten(0, 1)).view(b, t, 4))[0]


class _BinsNormFirst(nn.Module):
    """ByteDance's piano transcription: a BatchNorm2d over the 229 mel bins of [batch, 1, time,
    229] first, then convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(229)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.rnn = nn.GRU(2 * 229, 5, batch_first=True, bidirectional=True)

    def forward(self, logmel):
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        return self.rnn(self.conv(x).transpose(1, 2).flatten(2))[0]


class _LipReader(nn.Module):
    """LipNet: a Conv3d over mouth crops [batch, 3, time, 50, 100] (time in depth), each
    frame's features flattened into a BiGRU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 2, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2))
        self.pool = nn.MaxPool3d((1, 5, 5))
        self.rnn = nn.GRU(2 * 5 * 10, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))  # [B, 2, T, 5, 10]
        return self.rnn(x.permute(0, 2, 1, 3, 4).flatten(2))[0]


class _StridedSpectrogram(nn.Module):
    """deepspeech.pytorch's front end: 161 spectrogram bins [batch, 1, 161, time] through two
    convolutions of stride 2 over the bins, 41 rows each of 32 channels into the LSTM (any of
    161-164 bins makes 41 rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, (41, 11), stride=(2, 2), padding=(20, 5)),
            nn.Conv2d(32, 32, (21, 11), stride=(2, 1), padding=(10, 5)),
        )
        self.rnn = nn.LSTM(32 * 41, 4, bidirectional=True)

    def forward(self, x):
        x = self.conv(x)
        return self.rnn(x.flatten(1, 2).permute(2, 0, 1))[0]


class _FloorPooled(nn.Module):
    """Bins pooled by MaxPool2d((2, 1)) twice, rounding down: 84-87 bins make 21 rows, 83
    does not (review18: the probe had stopped trying 84)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d((2, 1)), nn.MaxPool2d((2, 1))
        )
        self.rnn = nn.LSTM(8 * 21, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        h = self.cnn(x)
        return self.rnn(h.permute(0, 3, 1, 2).flatten(2))[0]


class _VGG2L(nn.Module):
    """ESPnet's VGG2L front end: [batch, time, 83] (80 filterbanks + 3 pitch) as one channel,
    pooled by 2 twice with ceil_mode (any of 81-84 features makes 21 rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.LSTM(4 * 21, 4, batch_first=True, bidirectional=True)

    def forward(self, xs):
        x = self.conv(xs.unsqueeze(1))
        x = nn.functional.max_pool2d(x, 2, stride=2, ceil_mode=True)
        x = nn.functional.max_pool2d(x, 2, stride=2, ceil_mode=True)
        return self.rnn(x.transpose(1, 2).flatten(2))[0]


class _NormedWaveform(nn.Module):
    """pyannote's PyanNet front end: [batch, 1, samples] normed, then a 251-tap Conv1d of stride
    10 (some 1,261 samples at least): told only "declare them" (users40)."""

    def __init__(self) -> None:
        super().__init__()
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv = nn.Conv1d(1, 6, 251, stride=10)
        self.pool = nn.MaxPool1d(3, stride=3)
        self.lstm = nn.LSTM(6, 4, batch_first=True, bidirectional=True)

    def forward(self, waveforms):
        x = self.pool(self.conv(self.wav_norm1d(waveforms)))
        return self.lstm(x.transpose(1, 2))[0]


@pytest.mark.parametrize(
    ("model", "runs_on"),
    [
        (_NormedWaveform, "waveforms:float32[batch,1,time]' (at time 16000)"),
        (_LipReader, "x:float32[batch,3,time,50,100]' (at time 8)"),
        (_VGG2L, "xs:float32[batch,time,83]' (at time 52)"),
        (_FloorPooled, "x:float32[batch,1,84,time]' (at time 52)"),
        # told at 164 bins (41 rows x 4), which the user's 161-bin input then did not fit
        (_StridedSpectrogram, "x:float32[batch,1,161,time]' (at time 52)"),
        (_MelsFirst, "x:float32[batch,80,time]' (at time 52)"),
        (_Waveform, "input:float32[batch,time]' (at time 16000)"),
        (
            _Clips,
            "clips:float32[batch,time,3,H,W]' (at time 4, and at H,W = 32,32 and 64,64: put "
            "your input's size there, or --range each of H,W from the least the front end takes)",
        ),
        (_BinsNormFirst, "logmel:float32[batch,1,time,229]' (at time 52)"),
    ],
)
def test_a_front_end_of_no_time_axis_is_told_the_layout_it_runs_on(model, runs_on) -> None:
    """Audio and video front ends were told an image's or a transposed declaration, which fail:
    the layouts are tried on the model (mels first, a waveform, clips, bins normed first)."""
    with pytest.raises(ExportError) as caught:
        export_onnx(model().eval(), "unused.onnx")
    message = str(caught.value)
    assert f"it runs on --input '{runs_on}, tried" in message
    assert message.count("--input") == 1, message


def test_the_layout_a_front_end_runs_on_exports(tmp_path) -> None:
    inputs = ["x:float32[batch,80,time]"]
    result = export_onnx(_MelsFirst().eval(), tmp_path / "m.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()


def test_an_example_too_short_for_a_window_is_told_the_range(tmp_path) -> None:
    """A waveform model reflect-pads by half its window: the example of 11 samples fails in
    the model, whose inputs were declared right; the hint was to declare them again."""
    with pytest.raises(ExportError) as caught:
        export_onnx(_Waveform().eval(), tmp_path / "w.onnx", inputs=["input:float32[batch,time]"])
    assert "the example's time was 11" in str(caught.value)
    assert "--range time=MIN,64,256" in str(caught.value)


class _StftLengths(nn.Module):
    """A log-spectrogram by torch.stft on forward(wav, wav_lens), frames packed by their count,
    as speech models without torchaudio write it (users55)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(33, 4, batch_first=True, bidirectional=True)
        self.register_buffer("window", torch.hann_window(64))

    def forward(self, wav, wav_lens):
        spec = torch.stft(wav, 64, 16, window=self.window.to(wav.dtype), return_complex=True)
        frames = spec.abs().transpose(1, 2)
        packed = pack_padded_sequence(frames, wav_lens // 16 + 1, True, enforce_sorted=False)
        return pad_packed_sequence(self.rnn(packed)[0], True, total_length=frames.shape[1])[0]


_WAV = ["wav:float32[batch,time]", "wav_lens:int64[batch]:lengths(time)"]


def test_a_waveform_front_end_is_told_its_own_faults_not_its_declarations(tmp_path) -> None:
    """users55 F1, F3, F4: float16 failed in torch.stft (the CPU's FFT has no float16 kernel)
    and was told to edit its declarations, which fails the same way; a minimum too short for
    the STFT's padding, with lengths, got no range; both were told of lengths as fractions of
    the padded length (SpeechBrain's wav_lens), which neither error was about."""
    model = _StftLengths().eval()
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "h.onnx", inputs=_WAV, dtype="float16",
                    ranges={"time": (200, 800, 4000)})  # fmt: skip
    message = str(caught.value)
    assert "has no float16 kernel on the CPU" in message and "torch.stft(x.float()" in message
    assert "edit those" not in message and "relative to the padded length" not in message
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "s.onnx", inputs=_WAV, ranges={"time": (16, 800, 4000)})
    message = str(caught.value)
    assert "the example's time was 17, its rows from 16" in message
    assert "--range time=MIN,800,4000" in message
    assert "relative to the padded length" not in message
    assert not list(tmp_path.iterdir())


class _ConvFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 9)
        self.rnn = nn.LSTM(3, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.rnn(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]


def test_the_length_told_is_the_example_that_ran(tmp_path) -> None:
    """Given example inputs of 4 steps, the hint said the planned example's 11 (review33)."""
    with pytest.raises(ExportError) as caught:
        export_onnx(
            _ConvFirst().eval(), tmp_path / "c.onnx", example_inputs=(torch.randn(2, 4, 3),)
        )
    assert "x float32 [2, 4, 3]" in str(caught.value)
    assert "the example's seq was 4:" in str(caught.value)


class _PooledInstanceNorm(nn.Module):
    """pyannote's SincNet shape: pools, then an InstanceNorm1d, which needs 2 steps or more."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool1d(16)
        self.norm = nn.InstanceNorm1d(1, affine=True)
        self.lstm = nn.LSTM(1, 8, batch_first=True, bidirectional=True)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.pool(waveforms))
        return self.lstm(x.transpose(1, 2))[0]


def test_an_example_too_short_for_an_instance_norm_is_told_the_range(tmp_path) -> None:
    """torch's "Expected more than 1 spatial element when training" (in eval too) after the
    pools left one step: it was shown alone, without the range to declare (users37)."""
    with pytest.raises(ExportError) as caught:
        export_onnx(
            _PooledInstanceNorm().eval(),
            tmp_path / "n.onnx",
            inputs=["waveforms:float32[batch,1,time]"],
            ranges={"time": (16, 64, 256)},
        )
    assert "more than 1 spatial element" in str(caught.value)
    assert "the example's time was 17" in str(caught.value)
    assert "--range time=MIN,64,256" in str(caught.value)


class _TwoStreams(nn.Module):
    """A sign-language model: hand keypoints (84 features) and body keypoints (50), each with
    its own lengths and its own packed BiLSTM block."""

    class Block(nn.Module):
        def __init__(self, features: int) -> None:
            super().__init__()
            self.rnn = nn.LSTM(features, 6, batch_first=True, bidirectional=True)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out = pad_packed_sequence(
                self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
            )
            return out[0].sum(1) / lengths[:, None]

    def __init__(self) -> None:
        super().__init__()
        self.hand, self.body = self.Block(84), self.Block(50)

    def forward(self, hand, hand_lengths, body, body_lengths):
        return self.hand(hand, hand_lengths) + self.body(body, body_lengths)


@pytest.mark.slow
def test_each_stream_takes_the_features_of_its_own_module(tmp_path) -> None:
    """The body keypoints were declared with the hand's 84 features."""
    result = export_onnx(_TwoStreams().eval(), tmp_path / "s.onnx")
    dims = {i.name: i.dims for i in result.spec.inputs}
    assert dims["hand"] == ("batch", "seq", 84) and dims["body"] == ("batch", "body_seq", 50)
    assert result.verification.passed, result.verification.summary()


class _FixedLength(nn.Module):
    """DanQ: one-hot DNA [batch, 4, 60], a convolution, a BiLSTM, every step flattened into a
    Linear: it takes one length only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.rnn = nn.LSTM(6, 3, batch_first=True, bidirectional=True)
        self.head = nn.Linear(60 * 6, 2)

    def forward(self, x):
        return self.head(self.rnn(self.conv(x).transpose(1, 2))[0].flatten(1))


@pytest.mark.slow
def test_a_model_of_one_length_is_told_the_dim_to_name_and_the_way_out(tmp_path) -> None:
    """The refusal suggested 'x:float32[batch,seq,40]' to a [batch, 4, 60] model; the way out
    it names, torch.onnx.export with the batch dynamic, exports this model."""
    import re

    model = _FixedLength().eval()
    with pytest.raises(ExportError) as caught:
        export_onnx(model, tmp_path / "f.onnx", inputs=["x:float32[batch,4,60]"])
    message = str(caught.value)
    assert "e.g. 'x:float32[batch,4,time]'" in message
    call = re.search(r"torch\.onnx\.export\((.*)\) exports such a model", message)[1]
    x = torch.randn(3, 4, 60)
    eval(f"torch.onnx.export({call}).save(r'{tmp_path / 'stock.onnx'}')")  # as the user would
    runner = OrtRunner(str(tmp_path / "stock.onnx"))
    runner.activate()
    for batch in (1, 5):
        x = torch.randn(batch, 4, 60)
        (got,) = runner.infer({"x": x.numpy()}).values()
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    runner.deactivate()


class _SharedEncoder(nn.Module):
    """A siamese matcher: one encoder over both sequences, then a projection per sequence named
    after it, which reads the encoder's output, not the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(12, 4, batch_first=True, bidirectional=True)
        self.query_proj, self.doc_proj = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, query, query_lengths, doc, doc_lengths):
        q = self.query_proj(self.encoder(query)[0].mean(1))
        return q * self.doc_proj(self.encoder(doc)[0].mean(1))


def test_a_module_named_after_a_stream_but_reading_the_encoder_says_nothing_of_it(tmp_path):
    result = export_onnx(_SharedEncoder().eval(), tmp_path / "s.onnx", verify=False)
    assert [t.dims[-1] for t in result.spec.inputs if t.role == "features"] == [12, 12]


class _AveragesBins(nn.Module):
    """A CRNN on [batch, 1, 64, time] that averages its bins away: it runs on any number."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.rnn(self.conv(x).mean(2).transpose(1, 2))[0]


def test_a_number_the_model_runs_at_any_size_of_is_left_to_the_user() -> None:
    """It was told [batch,1,1,time] (one bin: the recurrent layer's size over the channels)."""
    with pytest.raises(ExportError) as caught:
        export_onnx(_AveragesBins().eval(), "unused.onnx")
    message = str(caught.value)
    told = "--input 'x:float32[batch,1,FEATURES,time]' (at time 52, and at FEATURES = 8 and 64: "
    assert told + "put your input's size there, or --range FEATURES=MIN,OPT,MAX from" in message
    assert "[batch,1,1," not in message


def test_the_range_is_not_advised_for_an_error_that_only_names_a_size(tmp_path) -> None:
    """A per-bin bias [80, 1] over features declared [batch, seq, 80]: a broadcast error, which
    a longer minimum cannot fix."""

    class Biased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(80, 1))
            self.rnn = nn.GRU(80, 5, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.rnn(x + self.bias)[0]

    with pytest.raises(ExportError) as caught:
        export_onnx(Biased().eval(), tmp_path / "b.onnx", inputs=["x:float32[batch,seq,80]"])
    assert "must match the size" in str(caught.value) and "--range" not in str(caught.value)


def test_a_nested_dims_default_range_is_for_characters_only() -> None:
    """A declared token input with a characters dim after the time dim (a char-CNN's) takes a
    nested dim's default range; other dims there, and the time dim itself, keep theirs."""
    from birnn_export._inputs import plan_inputs

    model = _signature("words", "lengths", "other")
    base = ["words:int64[batch,seq]", "lengths:int64[batch]:lengths(seq)"]
    for third, dim, expected in [
        ("chars:int64[batch,seq,chars]", "chars", (1, 16, 64)),
        ("ngrams:int64[batch,seq,k]", "k", (1, 64, 256)),
        ("arcs:int64[batch,seq,seq]", "seq", (1, 64, 256)),
    ]:
        planned = plan_inputs(model, inputs=[*base, third], example_inputs=None, **PLANNING)
        assert planned.ranges[dim] == expected, third
    # a second sequence's characters (a question's beside a context's, BiDAF's) too (users35)
    pair = _signature("words", "lengths", "chars", "question", "question_lengths", "q_char")
    second = ["question:int64[batch,qseq]", "question_lengths:int64[batch]:lengths(qseq)"]
    declared = [*base, "chars:int64[batch,seq,chars]", *second, "q_char:int64[batch,qseq,q_chars]"]
    planned = plan_inputs(pair, inputs=declared, example_inputs=None, **PLANNING)
    assert planned.ranges["q_chars"] == planned.ranges["chars"] == (1, 16, 64)
    assert planned.ranges["qseq"] == (1, 64, 256)


@pytest.mark.slow
def test_every_dim_the_trace_narrowed_is_told_in_one_message(tmp_path) -> None:
    """BiDAF's two char-CNNs each need 3 characters: both ranges to declare are said at once
    (users35: a run each), and with them the model exports."""

    class TwoCharCNNs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 4)
            self.conv = nn.Conv1d(4, 4, 3)
            self.rnn = nn.GRU(4, 3, batch_first=True, bidirectional=True)

        def words(self, chars: torch.Tensor) -> torch.Tensor:
            batch, steps, width = chars.shape
            flat = self.embedding(chars).reshape(batch * steps, width, 4).transpose(1, 2)
            return self.conv(flat).amax(-1).reshape(batch, steps, 4)

        def forward(self, chars, lengths, q_char, q_lengths):
            return self.rnn(self.words(chars))[0], self.rnn(self.words(q_char))[0]

    inputs = ["chars:int64[batch,seq,chars]", "lengths:int64[batch]:lengths(seq)"]
    inputs += ["q_char:int64[batch,qseq,q_chars]", "q_lengths:int64[batch]:lengths(qseq)"]
    with pytest.raises(ExportError) as caught:
        export_onnx(TwoCharCNNs().eval(), tmp_path / "t.onnx", inputs=inputs, verify=False)
    told = str(caught.value)
    assert told.startswith("dims 'chars', 'q_chars': the traced graph holds only for chars in 3")
    assert "declare them: --range chars=3,16,64 --range q_chars=3,16,64;" in told, told
    ranges = {"chars": (3, 16, 64), "q_chars": (3, 16, 64)}
    export_onnx(TwoCharCNNs().eval(), tmp_path / "t.onnx", inputs=inputs, ranges=ranges)


def test_the_shortest_row_hint_is_only_for_errors_about_sizes(tmp_path) -> None:
    """A model failing on the example for another reason (characters it wants per word) is
    not told to raise the time dim's minimum."""

    class Spelled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(30, 4)
            self.rnn = nn.LSTM(4, 3, batch_first=True, bidirectional=True)

        def forward(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            batch, steps, width = chars.shape
            return self.rnn(self.embedding(chars).reshape(batch, steps * width, 4))[0]

    with pytest.raises(ExportError, match="not enough values to unpack") as caught:
        export_onnx(Spelled().eval(), tmp_path / "s.onnx")
    assert "a row of 1 step" not in str(caught.value)


def test_relative_lengths_are_told_the_subclass_that_keeps_every_step(tmp_path) -> None:
    """SpeechBrain's wav_lens (fractions of the padded length) were inferred as lengths and
    the failure said nothing of them; the advice it gave elsewhere (lengths / x.shape[1]) made
    a model that truncates 3 / 37 * 37 to 2 steps. The subclass advised now runs every row
    over its own length: the graph matches torch's LSTM on a PackedSequence of the lengths."""
    model = RelativeLengthsLSTM().eval()
    with pytest.raises(ExportError, match="if 'wav_lens' holds lengths relative") as caught:
        export_onnx(model, tmp_path / "relative.onnx")
    assert "(lengths + 0.25) / x.shape[1]" in str(caught.value)
    assert not (tmp_path / "relative.onnx").exists()

    torch.manual_seed(0)
    absolute = AbsoluteLengthsLSTM().eval()
    result = export_onnx(absolute, tmp_path / "absolute.onnx")
    assert result.verification.passed, result.verification.summary()
    x = np.random.default_rng(0).normal(size=(3, 37, 6)).astype(np.float32)
    lengths = np.array([37, 3, 1], dtype=np.int64)
    with OrtRunner(result.path) as runner:
        got = runner.infer({"x": x, "lengths": lengths})["output"]
    reference = absolute.rnn.double()
    packed = pack_padded_sequence(
        torch.from_numpy(x).double(), torch.from_numpy(lengths), True, enforce_sorted=False
    )
    with torch.no_grad():
        want = pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=37)[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


class _SqueezesChannels(nn.Module):
    """torchaudio's DeepSpeech: Linear layers on [N, 1, T, F], then squeeze(1) and a BiRNN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 8)
        self.rnn = nn.RNN(8, 6, bidirectional=True, nonlinearity="relu")

    def forward(self, x):
        return self.rnn(self.fc(x).squeeze(1).transpose(0, 1))[0]


def test_a_graph_onnx_cannot_type_from_inferred_inputs_asks_for_declarations(tmp_path) -> None:
    """Traced on the inferred [batch, seq, 20], squeeze(1) of an [N, 1, T, F] model made a
    graph the ONNX checker rejects; the refusal quoted the checker alone. It now says the
    inputs were inferred and how to declare them, and the declared model exports."""
    with pytest.raises(ExportError, match=r"onnx\.checker") as caught:
        export_onnx(_SqueezesChannels().eval(), tmp_path / "deepspeech.onnx")
    assert "its inputs were inferred" in str(caught.value)
    assert "--input 'x:float32[batch,seq,20]': edit those" in str(caught.value)
    declared = ["x:float32[batch,1,time,20]"]
    result = export_onnx(_SqueezesChannels().eval(), tmp_path / "ds.onnx", inputs=declared)
    assert result.verification.passed, result.verification.summary()


class _VGGFrontEnd(nn.Module):
    """ESPnet's VGG2L: forward(xs_pad [B, T, D], ilens) views the features as one channel of a
    Conv2d, pools them, and runs a BiLSTM over what is left of time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.LSTM(4 * 10, 6, batch_first=True, bidirectional=True)

    def forward(self, xs_pad, ilens):
        b, t, d = xs_pad.shape
        x = torch.relu(self.conv(xs_pad.view(b, t, 1, d).transpose(1, 2)))
        x = x.transpose(1, 2).reshape(b, t, -1)
        return self.rnn(x)[0]


@pytest.mark.slow
def test_a_conv2d_front_end_of_one_channel_is_told_it_may_make_that_view_itself(tmp_path) -> None:
    """A Conv2d(1, ...) first was told to declare [batch, 1, H, time]; ESPnet's VGG2L takes
    [batch, time, features] and makes that view itself: the refusal names that layout, with the
    feature size the recurrent layer's input suggests, and that declaration exports."""
    with pytest.raises(ExportError) as caught:
        export_onnx(_VGGFrontEnd().eval(), tmp_path / "vgg.onnx")
    message = str(caught.value)
    declared = ["xs_pad:float32[batch,time,10]", "ilens:int64[batch]:lengths(time)"]
    assert f"it runs on --input '{declared[0]}' --input '{declared[1]}' (at time 52)" in message
    result = export_onnx(_VGGFrontEnd().eval(), tmp_path / "vgg.onnx", inputs=declared)
    assert result.verification.passed, result.verification.summary()


def test_a_range_of_one_size_says_what_to_declare_or_that_one_length_is_not_exported(tmp_path):
    """`--range time=N,N,N` was told to declare the dim as a number, which is refused in turn
    where it is the only dim besides the batch (Demucs applied on fixed segments)."""
    layer = BiRNN(4, 5)
    with pytest.raises(ExportError) as caught:
        declared = ["x:float32[batch,time,4]"]
        export_onnx(layer, tmp_path / "a.onnx", inputs=declared, ranges={"time": (9, 9, 9)})
    assert str(caught.value) == (
        "range of 'time': min and max are both 9, and no other dim besides the batch varies: "
        "birnn-export exports recurrent layers over a time dim that varies, and does not export "
        "a model that takes one fixed length (DanQ flattens its 1000 steps into a Linear): "
        "torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("
        "'batch')},)) exports such a model with its batch dynamic"
    )
    # a streaming model served one row at a time: a dynamic batch serves 1 too
    with pytest.raises(ExportError) as caught:
        export_onnx(layer, tmp_path / "c.onnx", inputs=declared, batch_range=(1, 1, 1))
    assert str(caught.value) == (
        "range of 'batch': min and max are both 1; birnn-export exports a batch dim that "
        "varies, and such a graph serves a batch of 1 too: give a range, e.g. --batch-range "
        "1,1,8; to build TensorRT's engine for that batch alone: birnn-export check GRAPH "
        "--target tensorrt --batch-range 1,1,1 (users56)"
    )
    with pytest.raises(ExportError, match=r"declare a fixed dim as a number instead$"):
        export_onnx(
            layer,
            tmp_path / "b.onnx",
            inputs=["x:float32[batch,time,feats]"],
            ranges={"feats": (4,) * 3},
        )
    assert not list(tmp_path.iterdir())


class _NormFirst(nn.Module):
    """Runs on no input: which layout is tried and found is another test's."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.rnn = nn.InstanceNorm1d(4), nn.LSTM(3, 5, bidirectional=True)


class _Waveforms(_NormFirst):
    def forward(self, waveforms):
        return self.rnn(self.norm(waveforms))[0]


class _Images(_NormFirst):
    def forward(self, images):
        return self.rnn(self.norm(images))[0]


class _Feats(_NormFirst):
    def forward(self, feats):
        return self.rnn(self.norm(feats))[0]


class _ImageLengths(_NormFirst):
    def forward(self, images, lengths):
        return self.rnn(self.norm(images))[0]


class _WavLengths(_NormFirst):
    def forward(self, wav, wav_lens):
        return self.rnn(self.norm(wav))[0]


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        (_Waveforms, "--input 'waveforms:float32[batch,time]' (or [batch,channels,time])"),
        (_Images, "--input 'images:float32[batch,1,64,width]' (Python"),
        (_Feats, "--input 'feats:float32[batch,time,FEATURES]' (or 'image:float32["),
        (  # an image's lengths measure its width
            _ImageLengths,
            "--input 'images:float32[batch,1,64,width]' --input "
            "'lengths:int64[batch]:lengths(width)' (Python",
        ),
        (  # its lengths too, and a waveform's range in samples (users55 F2)
            _WavLengths,
            "--input 'wav:float32[batch,time]' --input 'wav_lens:int64[batch]:lengths(time)' "
            "(or [batch,channels,time]), with the lengths in samples: --range time=MIN,OPT,MAX",
        ),
    ],
)
def test_inputs_that_cannot_be_inferred_are_shown_after_forwards_parameter(model, shown):
    """pyannote's PyanNet (an InstanceNorm1d first, forward(waveforms)) and asteroid's
    DPRNNTasNet (forward(wav)) were shown an image's declaration."""
    with pytest.raises(ExportError) as caught:
        export_onnx(model(), "unused.onnx")
    message = str(caught.value)
    assert f"cannot infer the inputs of {model.__name__} (its first layer is Inst" in message
    assert shown in message


class _VarArgs(nn.Module):
    """forward(self, x, *args, **kwargs), its lengths taken from args (users30)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 6, batch_first=True, bidirectional=True)

    def forward(self, x, *args, **kwargs):
        lengths = args[0] if args else kwargs.get("lengths")
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = self.gru(packed)[0]
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def test_inputs_a_forward_takes_by_star_args_are_declared(tmp_path) -> None:
    """Declared lengths that forward takes by *args failed inside torch.export, told as an
    IndexError with packing advice: their dynamic shapes go as the tuple *args binds."""
    inputs = ["x:float32[batch,seq,8]", "lengths:int64[batch]:lengths(seq)"]
    result = export_onnx(_VarArgs().eval(), tmp_path / "v.onnx", inputs=inputs)
    assert result.verification.passed, result.verification.summary()
    assert [t.name for t in result.spec.inputs] == ["x", "lengths"]


@pytest.mark.parametrize(
    ("names", "inferred"),
    [
        (("words", "mask"), ["words", "mask"]),
        (("src", "src_lengths"), ["src", "src_lengths"]),  # were ids, lengths (review26)
        (("x", "lengths"), ["ids", "lengths"]),  # a generic name: by its role
    ],
)
def test_inputs_of_example_tensors_take_forwards_names(names, inferred) -> None:
    """Inputs guessed from example tensors are named as those inferred without them are,
    after forward's parameters but generic ones: the Python API's export of forward(words,
    mask) named its first input 'ids', the CLI's 'words', so serving code fed one of them by a
    name it did not have (users41)."""
    from birnn_export._inputs import plan_inputs

    model = _signature(*names)
    ids, second = torch.randint(1, 30, (3, 7)), torch.ones(3, 7, dtype=torch.bool)
    if names[1].endswith("lengths"):
        second = torch.tensor([7, 4, 2])
    planned = plan_inputs(model, inputs=None, example_inputs=(ids, second), **PLANNING)
    assert [d.name for d in planned.decls] == inferred
    if names[1] == "mask":  # the same names as without examples
        without = plan_inputs(model, inputs=None, example_inputs=None, **PLANNING)
        assert [d.name for d in without.decls] == inferred


@pytest.mark.parametrize("mark", ["lengths", "mask"])
def test_characters_before_the_words_lengths_are_not_guessed_against_a_lengths_option(mark):
    """forward(words, chars, lengths|mask) is inferred in forward's order (users38), but not
    where --lengths/--no-lengths says otherwise: it asked for input_names no one gave, or took
    a mask for lengths (review26). Those are refused with the declarations to write."""
    from birnn_export._inputs import plan_inputs

    model = _signature("words", "chars", mark)
    planned = plan_inputs(model, inputs=None, example_inputs=None, **PLANNING)
    assert [d.name for d in planned.decls] == ["words", "chars", mark]
    for forced in (False, True):  # --no-lengths against a lengths parameter: the flag is told
        said = "--no-lengths" if mark == "lengths" and not forced else "declare each, in forward's"
        with pytest.raises(ExportError, match=said):
            plan_inputs(model, inputs=None, example_inputs=None, **{**PLANNING, "lengths": forced})


class _ConvMaskTagger(nn.Module):
    """A Conv1d front end over [batch, time, 3] features it transposes, with a bool mask."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.rnn = nn.GRU(8, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        lengths = mask.sum(1)  # a mask of padding alone fails: the probe feeds valid steps
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.head(out[0])


def test_a_convolution_first_with_a_mask_is_refused_with_the_mask_declared(tmp_path) -> None:
    """users65 F1: with `forward(x, mask)` the layouts were tried without the mask (none ran)
    and the refusal offered [batch,3,time], on which the model fails, and 'mask:DTYPE[DIMS]';
    the mask is fed as its name says, and the layout it runs on is named with it."""
    with pytest.raises(ExportError) as caught:
        export_onnx(_ConvMaskTagger().eval(), tmp_path / "m.onnx", verify=False)
    said = str(caught.value)
    assert (
        "it runs on --input 'x:float32[batch,time,3]' --input 'mask:bool[batch,time]:mask' "
        "(at time" in said
    ), said
    assert "DTYPE" not in said and "[batch,3,time]" not in said


def test_no_lengths_on_a_forward_that_takes_lengths_names_the_flag(tmp_path) -> None:
    """users65 F2: --no-lengths on forward(ids, lengths) said the tool infers lengths "named as
    such: lengths", which this parameter is; the flag left it out, and the error says so."""
    said = r"^--no-lengths \(lengths=False\): RelativeLengthsLSTM\.forward takes 'wav_lens', a"
    with pytest.raises(ExportError, match=said):
        export_onnx(RelativeLengthsLSTM().eval(), tmp_path / "m.onnx", lengths=False)
    assert not (tmp_path / "m.onnx").exists()
