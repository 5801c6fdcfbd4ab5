"""How long runs say they are running (birnn_export._progress)."""

from __future__ import annotations

import time

import pytest

from birnn_export import _progress
from birnn_export._progress import Progress


def test_the_time_left_weighs_each_step_by_its_work() -> None:
    progress = Progress("verify", [5, 10, 85], enabled=False)
    progress.advance("B=1 T=1")
    assert progress.left(60.0) == ""  # 5% done: the start-up would dominate an estimate
    progress.advance("B=1 T=2")
    assert progress.left(3.0) == ", about 17 s left"  # not 1.5 s: the last step is 85% the work
    progress.advance("B=7 T=14")
    assert progress.left(100.0) == ""


@pytest.mark.parametrize(
    ("tty", "term", "plain"),
    [
        (True, "xterm", False),
        (True, "dumb", True),
        (True, "DUMB", True),
        (True, "unknown", True),
        (False, "xterm", True),
    ],
)
def test_a_dumb_terminal_gets_the_plain_lines(
    monkeypatch: pytest.MonkeyPatch, tty: bool, term: str, plain: bool
) -> None:
    """users66 F10: with TERM=dumb rich draws no bar, and a 72 s verify said nothing."""
    monkeypatch.setattr(_progress.sys.stderr, "isatty", lambda: tty)
    monkeypatch.setenv("TERM", term)
    with Progress("verify", [1], enabled=True) as progress:
        assert progress._plain is plain


@pytest.mark.slow
def test_a_long_step_is_said_to_be_running_while_it_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain lines came only between steps: one case of 100,000 steps ran for minutes without
    a line, and bench said nothing at all where stderr was not a terminal (users32)."""
    monkeypatch.setattr(_progress, "PLAIN_PROGRESS_EVERY", 0.5)
    progress = Progress("bench", [1, 1, 1], enabled=True)
    try:
        progress.advance("torch b=1 t=4")
        time.sleep(2.5)  # the second step runs long
        progress.now("ort-cpu b=1 t=100000")
        time.sleep(1.5)
    finally:
        progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert any("bench: 1/3 steps, the next still running" in line for line in lines), lines
    assert "bench: 1/3 steps, ort-cpu b=1 t=100000 still running" in lines[-1], lines
    quiet = len(lines)
    time.sleep(1.5)
    assert len(capsys.readouterr().err.splitlines()) == 0 and quiet  # closed: no more lines


def test_restarting_the_clock_does_not_silence_the_lines_and_leaving_ends_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify restarts the run's clock once the engines have started: the lines were timed by
    it, so after a long start-up none came for as long again; and the thread went on writing
    where verify failed before the sweep (review21)."""
    monkeypatch.setattr(_progress, "PLAIN_PROGRESS_EVERY", 0.5)
    with pytest.raises(RuntimeError), Progress("verify", [1, 1], enabled=True) as progress:
        progress.start -= 100.0  # a start-up of 100 s
        progress.restart()
        time.sleep(1.6)
        assert "verify: 0/2 steps, the next still running" in capsys.readouterr().err
        raise RuntimeError("an engine failed to start")
    time.sleep(1.5)
    assert capsys.readouterr().err == ""
