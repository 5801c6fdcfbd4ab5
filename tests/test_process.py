"""birnn_export._process: what a public call leaves of the caller's process (users59)."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import birnn_export
from birnn_export._process import one_at_a_time
from birnn_export.pipeline import export_onnx

#: The public calls that change process-wide state while they run, or draw random numbers.
ENTRY_POINTS = (
    "convert",
    "export_onnx",
    "export_model",
    "verify",
    "benchmark",
    "check_compatibility",
    "load_model",
)


class _Packer(nn.Module):
    """A tagger that packs its padded batch, as most trained taggers do."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.head(out)


def test_calls_run_one_at_a_time_and_a_call_within_a_call_goes_on() -> None:
    inside: list[int] = []
    overlapped: list[bool] = []

    @one_at_a_time
    def work(nested: bool) -> str:
        inside.append(1)
        overlapped.append(len(inside) > 1)
        time.sleep(0.05)
        if nested:
            work(False)  # re-entrant: the same thread does not wait for itself
        inside.pop()
        return "done"

    threads = [threading.Thread(target=work, args=(i == 0,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlapped.count(True) == 1  # the nested call alone ran inside another
    assert all(hasattr(getattr(birnn_export, name), "__wrapped__") for name in ENTRY_POINTS)


def test_a_call_leaves_torchs_random_state_as_it_was(tmp_path: Path) -> None:
    """A seeded training loop that exports each epoch trains to the same weights as without
    (users59 F2: converting built layers with a random init, drawn from the global generator)."""
    torch.manual_seed(0)
    model = _Packer(8).eval()
    before = torch.get_rng_state()
    birnn_export.convert(model)
    assert torch.equal(torch.get_rng_state(), before)
    export_onnx(model, tmp_path / "m.onnx", input_size=6)  # its verification included
    assert torch.equal(torch.get_rng_state(), before)


def test_exports_in_two_threads_both_pass_and_leave_torch_as_it_was(tmp_path: Path) -> None:
    """A model registry exporting in worker threads: the calls took turns restoring torch's
    packing functions and sys.stdout, both failed blaming their models, and the process stayed
    broken (users59 F1)."""
    from torch.nn.utils import rnn

    torch.manual_seed(0)
    models = [_Packer(8).eval(), _Packer(12).eval()]
    originals = (rnn.pack_padded_sequence, rnn.pad_packed_sequence, sys.stdout, sys.stderr)
    results: dict[int, object] = {}

    def export(index: int) -> None:
        try:
            path = tmp_path / f"m{index}.onnx"
            results[index] = export_onnx(models[index], path, input_size=6).verification.passed
        except Exception as exc:  # what the thread met is the assertion
            results[index] = exc

    threads = [threading.Thread(target=export, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {0: True, 1: True}
    after = (rnn.pack_padded_sequence, rnn.pad_packed_sequence, sys.stdout, sys.stderr)
    assert all(a is b for a, b in zip(after, originals, strict=True))
    x, lengths = torch.randn(2, 5, 6), torch.tensor([5, 2])
    assert models[0](x, lengths).shape == (2, 5, 3)  # the caller's model runs eagerly still


def test_an_export_leaves_other_threads_output_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's own chatter is dropped, not a serving thread's log lines (users59 F3:
    6 of 112 reached stdout while one export ran)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    written, running = [], threading.Event()
    running.set()

    def beat() -> None:
        while running.is_set():
            print("beat", flush=True)
            written.append(1)
            time.sleep(0.01)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        export_onnx(_Packer(8).eval(), tmp_path / "m.onnx", input_size=6, verify=False)
    finally:
        running.clear()
        thread.join()
    assert len(written) > 20 and out.getvalue().count("beat\n") == len(written)


def test_a_thread_serving_a_packing_model_during_an_export_gets_torchs_functions(
    tmp_path: Path,
) -> None:
    """An export swaps torch's packing functions for traceable ones in its own thread only: a
    thread serving a model that packs its batch failed in 880 of 1,084 calls (users59 F1)."""
    torch.manual_seed(0)
    served, exported = _Packer(8).eval(), _Packer(12).eval()
    x, lengths = torch.randn(3, 7, 6), torch.tensor([7, 2, 5])
    with torch.no_grad():
        want = served(x, lengths)
    calls, failures, running = [], [], threading.Event()
    running.set()

    def serve() -> None:
        while running.is_set() and len(failures) < 100:
            try:
                with torch.no_grad():
                    calls.append(torch.equal(served(x, lengths), want))
            except Exception as exc:  # what the serving thread met is the assertion
                failures.append(repr(exc))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        export_onnx(exported, tmp_path / "m.onnx", input_size=6, verify=False)
    finally:
        running.clear()
        thread.join()
    assert not failures and len(calls) > 10 and all(calls), failures[:1]


def _in_a_thread(function: object) -> list[BaseException]:
    """Run ``function`` in another thread; what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            function()  # type: ignore[operator]
        except BaseException as exc:  # what the thread met is the assertion
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised


def test_quiet_here_drops_this_threads_output_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from birnn_export._process import quiet_here

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with quiet_here():
        print("mine")
        sys.stdout.writelines(["mine too\n"])
        assert not _in_a_thread(lambda: sys.stdout.writelines(["theirs\n"]))
        assert not _in_a_thread(lambda: print("theirs again"))
    assert out.getvalue() == "theirs\ntheirs again\n" and sys.stdout is out
    # where there was no stream (pythonw, daemons), another thread's print is no error (review38)
    monkeypatch.setattr(sys, "stdout", None)
    with quiet_here():
        assert not _in_a_thread(lambda: print("nowhere"))
    assert sys.stdout is None
    # logging.warning() gave a root logger without handlers one of its own, for good
    import logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with quiet_here(root_log_below=logging.ERROR):
        logging.warning("advice meant for image models")
    assert logging.getLogger().handlers == []


def test_int8_quantization_leaves_other_threads_logs_and_output(tmp_path: Path) -> None:
    """ONNX Runtime's quantizer logs on the root logger: its level was set to ERROR, which
    silenced every thread's logs, and a StringIO took every thread's prints (review38 R1)."""
    import logging

    from birnn_export.quantize import quantize_int8

    torch.manual_seed(0)
    path = export_onnx(_Packer(8).eval(), tmp_path / "f.onnx", input_size=6, verify=False).path
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.threadName == "service":
                seen.append(record.getMessage())

    keep = Keep(level=logging.INFO)
    root.addHandler(keep)
    root.setLevel(logging.INFO)
    sent, running = [], threading.Event()
    running.set()

    def serve() -> None:
        while running.is_set():
            logging.info("request %d", len(sent))
            sent.append(1)
            time.sleep(0.002)

    thread = threading.Thread(target=serve, name="service")
    thread.start()
    try:
        quantize_int8(path, tmp_path / "q.onnx")
    finally:
        running.clear()
        thread.join()
        root.removeHandler(keep)
        root.setLevel(level)
    assert len(sent) > 5 and len(seen) == len(sent)
    assert root.handlers == handlers  # no handler of its own left behind
