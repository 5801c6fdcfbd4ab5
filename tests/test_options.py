"""birnn_export.options: what a user types, read into the library's keyword arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest

from birnn_export import options
from birnn_export.errors import BiRNNExportError, UsageError


def test_sizes_keep_order_and_drop_duplicates() -> None:
    assert options.parse_sizes(" 8, 1,8 ,32", "--batch-sizes") == (8, 1, 32)


@pytest.mark.parametrize("text", ["", "1,,2", "0", "-1", "1.5", "a,b"])
def test_sizes_refuse_what_is_not_positive_integers(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--seq-lens: expected comma-separated positive"):
        options.parse_sizes(text, "--seq-lens")


def test_range_and_named_ranges() -> None:
    assert options.parse_range("1,64,256", "--seq-range") == (1, 64, 256)
    assert options.parse_named_ranges(["width=32,256,1024", " time =1,2,3"]) == {
        "width": (32, 256, 1024),
        "time": (1, 2, 3),
    }
    with pytest.raises(UsageError, match=r"^--seq-range: expected MIN,OPT,MAX"):
        options.parse_range("64,1,256", "--seq-range")
    with pytest.raises(UsageError, match="largest size"):
        options.parse_range("1,2,99999999999", "--batch-range")
    with pytest.raises(UsageError, match=r"^--range: expected DIM=MIN,OPT,MAX"):
        options.parse_named_ranges(["1,2,3"])
    with pytest.raises(UsageError, match=r"^--range width: expected"):
        options.parse_named_ranges(["width=1,2"])


def test_names_split_on_commas_and_refuse_empty_odd_or_repeated_ones() -> None:
    assert options.parse_names("log_probs, out_lens", "--output-names") == (
        "log_probs",
        "out_lens",
    )
    for text, message in (
        ("a,,b", "got ''"),
        ("1st", "not starting with a digit"),
        ("a b", "got 'a b'"),
        ("a,a", "'a' is given twice"),
    ):
        with pytest.raises(UsageError, match=message):
            options.parse_names(text, "--output-names")


def test_engines_split_on_commas_and_refuse_unknown_names() -> None:
    assert options.parse_engines(["torch, ort-cpu", "ort-cpu", "trt-rtx"]) == (
        "torch",
        "ort-cpu",
        "trt-rtx",
    )
    with pytest.raises(UsageError, match=r"unknown 'tensorflow'; expected .*ort-cpu"):
        options.parse_engines(["ort-cpu,tensorflow"])
    with pytest.raises(UsageError, match="empty list"):
        options.parse_engines([" , "])


def test_tolerance_forms() -> None:
    assert options.parse_tolerance([], "--atol") is None
    assert options.parse_tolerance(["1e-4"], "--atol") == 1e-4
    assert options.parse_tolerance(["1e-4", "h_n:0.5"], "--atol") == {"*": 1e-4, "h_n": 0.5}
    # An output name may itself hold a colon: the number is after the last one.
    assert options.parse_tolerance(["a:b:2"], "--rtol") == {"a:b": 2.0}
    for bad in ("x", "h_n:", "-1", "inf", "nan"):
        with pytest.raises(UsageError, match=r"^--rtol: expected"):
            options.parse_tolerance([bad], "--rtol")


def test_model_kwargs() -> None:
    assert options.parse_model_kwargs(None) is None
    assert options.parse_model_kwargs('{"vocab_size": 100}') == {"vocab_size": 100}
    for text, message in (
        ("{", "not valid JSON"),
        ("[1]", "expected a JSON object, got list"),
        ("[" * 100_000, "nested too deeply"),
    ):
        with pytest.raises(UsageError, match=message):
            options.parse_model_kwargs(text)


def test_check_files_refuses_an_output_over_an_input(tmp_path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    with pytest.raises(BiRNNExportError, match=r"^--json: .* is also the MODEL.pt"):
        options.check_files({"MODEL.pt": model}, {"--json": model})
    with pytest.raises(BiRNNExportError, match=r"^-o: m.onnx.txt must end in .onnx"):
        options.check_files({}, {"-o": tmp_path / "m.onnx.txt"}, suffixes={"-o": ".onnx"})
    with pytest.raises(BiRNNExportError, match=r"^--csv: folder .* does not exist"):
        options.check_files({}, {"--csv": tmp_path / "absent" / "t.csv"})
    options.check_files({"MODEL.pt": model, "--model": None}, {"-o": tmp_path / "m.onnx"})


def test_imports_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, birnn_export.options\n"
        "heavy = {'torch', 'onnx', 'onnxruntime', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ctc_names_outputs_and_their_blanks() -> None:
    assert options.parse_ctc("log_probs") == {"log_probs": 0}
    assert options.parse_ctc("log_probs=27, b = 3") == {"log_probs": 27, "b": 3}
    for bad in ("x=", "x=a", "x=-1", "x=1=2", "=3"):
        with pytest.raises(UsageError, match=r"--ctc: expected NAME or NAME=BLANK"):
            options.parse_ctc(bad)
    with pytest.raises(UsageError, match="--ctc: 'a' is given twice"):
        options.parse_ctc("a,a=1")


def test_scores_name_outputs_or_none() -> None:
    assert options.parse_scores("logits,tags") == ("logits", "tags")
    assert options.parse_scores("none") == ()
    with pytest.raises(UsageError, match="--scores"):
        options.parse_scores("a,,b")
