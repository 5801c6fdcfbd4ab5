"""Hostile and careless input (issue 12): every case a one-line error with its exit code, or the
right behaviour; no traceback, no file lost or left behind, no allocation before the input is
judged plausible. ``scripts/hostile_inputs.py`` runs the same cases as a user would and
tabulates them; the fuzz tests at the end explore around them."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from birnn_export import runners
from birnn_export._isolation import IsolatedRunner
from birnn_export.checkpoint import load_model
from birnn_export.cli import main
from birnn_export.errors import BiRNNExportError, EngineError, ModelLoadError
from birnn_export.spec import GraphSpec
from tests.conftest import static_tensorrt_rules

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "token_tagger.pt"
#: For the tests of the files an export writes: the sample exported and checked fastest.
SMALL = ROOT / "sample_models" / "bigru_varlen.pt"
FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("good")
    model = folder / "m.pt"
    model.write_bytes(SAMPLE.read_bytes())
    with static_tensorrt_rules():  # a graph for the refusals: nothing of TensorRT is asserted
        args = [str(model), "-o", str(folder / "g.onnx"), "--no-verify"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return model, folder / "g.onnx"


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def python(*args: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The command as a user runs it: a new process, the working directory not on sys.path."""
    return subprocess.run(
        [sys.executable, "-P", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


# -- engines -----------------------------------------------------------------------------------


def test_an_empty_batch_returns_empty_outputs(good: tuple[Path, Path], tmp_path: Path) -> None:
    """ONNX Runtime 1.32 crashed (SIGSEGV) on batch 0 in LSTM/GRU graphs."""
    _, graph = good
    code = (
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(graph)!r}, providers=['CPUExecutionProvider'])\n"
        "empty = {'ids': np.zeros((0, 5), np.int64), 'lengths': np.zeros(0, np.int64)}\n"
        "(out,) = s.run(None, empty)\n"
        "(one,) = s.run(None, {'ids': np.ones((1, 5), np.int64), 'lengths': np.array([5])})\n"
        "print(out.shape, one.shape)\n"
    )
    done = python("-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(0,", "5,", "9)", "(1,", "5,", "9)"]


class CrashingRunner(runners.BaseRunner):
    """Segfaults on a batch of 3 rows, answers otherwise (run in a child process)."""

    engine = "ort-cpu"

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed):
        if len(feed["lengths"]) == 3:
            os.kill(os.getpid(), signal.SIGSEGV)
        return {"output": np.zeros((len(feed["lengths"]), 2), np.float32)}


def test_an_engine_crash_is_a_one_line_error_and_the_next_call_works() -> None:
    runner = IsolatedRunner("ort-cpu", CrashingRunner)
    with runner:
        ok = runner.infer({"lengths": np.array([1, 2])})
        assert ok["output"].shape == (2, 2) and runner.last_inference_time_s >= 0
        with pytest.raises(EngineError, match=r"ort-cpu crashed \(signal SIGSEGV\)") as caught:
            runner.infer({"ids": np.zeros((3, 7)), "lengths": np.array([7, 1, 2])})
        assert "ids [3, 7]" in str(caught.value)
        assert runner.infer({"lengths": np.array([4])})["output"].shape == (1, 2)


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
def test_a_script_without_a_main_guard_exports_and_runs_once(tmp_path: Path) -> None:
    """Engines run in spawned children, and spawn runs the parent's script again unless it is
    hidden: a script without ``if __name__ == "__main__":`` would export again in the child,
    which then fails ("ort-cpu crashed (exit 1) while starting")."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import torch\n"
        "from torch import nn\n"
        "from birnn_export import export_onnx\n"
        "print('TOP LEVEL RAN', flush=True)\n"
        "torch.manual_seed(0)\n"
        "model = nn.GRU(4, 5, batch_first=True, bidirectional=True).eval()\n"
        f"result = export_onnx(model, {str(tmp_path / 'g.onnx')!r})\n"
        "print('PASSED', result.verification.passed)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("TOP LEVEL RAN") == 1 and "PASSED True" in done.stdout
    assert "bootstrapping" not in done.stderr


def test_a_graph_onnx_runtime_cannot_load_fails_bench_with_exit_1(
    good: tuple[Path, Path], tmp_path: Path
) -> None:
    model, graph = good
    proto = onnx.load(str(graph))
    next(n for n in proto.graph.node if n.op_type == "LSTM").op_type = "NoSuchOp"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    args = ["--batch", "1", "--seq", "4", "--iters", "1"]
    result = cli("bench", tmp_path / "bad.onnx", "--model", model, *args)
    assert "could not load" in one_line_error(result, 1) or "error" in result.output


# -- paths and files ---------------------------------------------------------------------------


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
def test_model_class_does_not_import_from_the_working_directory(tmp_path: Path) -> None:
    weights = tmp_path / "g.pt"
    torch.save(nn.GRU(4, 5, batch_first=True, bidirectional=True).state_dict(), weights)
    (tmp_path / "sympy.py").write_text("open('PLANTED_RAN', 'w').write('x')\n")
    kwargs = '{"input_size": 4, "hidden_size": 5, "batch_first": true, "bidirectional": true}'
    args = [str(weights), "--model-class", "torch.nn:GRU", "--model-kwargs", kwargs, "-q"]
    done = python("-m", "birnn_export", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PLANTED_RAN").exists()
    # A module there is importable only when the user says so, and raising SystemExit(0) in
    # it is no success.
    (tmp_path / "quitter.py").write_text("raise SystemExit(0)\n")
    weights = weights.rename(tmp_path / "q.pt")
    refused = python("-m", "birnn_export", str(weights), "--model-class", "quitter:M", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot import module 'quitter'" in refused.stderr
    said = python(
        "-m",
        "birnn_export",
        str(weights),
        "--model-class",
        "quitter:M",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert said.returncode == 2 and "called sys.exit(0)" in said.stderr
    assert "Traceback" not in said.stderr and not (tmp_path / "q.onnx").exists()


def test_paths_that_coincide_are_refused_before_any_work(tmp_path: Path) -> None:
    model = tmp_path / "a.pt"
    model.write_bytes(SAMPLE.read_bytes())
    assert "also the MODEL.pt" in one_line_error(cli(model, "-o", model))
    assert "must end in .onnx" in one_line_error(cli(model, "-o", tmp_path / "a.json"))
    assert "also the -o" in one_line_error(
        cli(model, "-o", tmp_path / "x.onnx", "--json", tmp_path / "x.onnx")
    )
    assert "also the MODEL.pt" in one_line_error(cli(model, "--json", model))
    assert model.read_bytes() == SAMPLE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_a_name_too_long_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    message = one_line_error(cli(model, "-o", tmp_path / ("x" * 300 + ".onnx")))
    assert "choose a shorter name" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_a_full_disk_is_one_line_and_leaves_the_old_graph(tmp_path: Path, monkeypatch) -> None:
    """onnx.save_model running out of space: a 50-line traceback and exit 1 (users24); now one
    line, exit 2, the staging folder removed and an earlier graph at the path kept."""
    import errno

    import onnx

    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    (tmp_path / "a.onnx").write_bytes(b"the earlier graph")

    def full(proto, path, **kwargs):
        Path(path).write_bytes(b"half a gra")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    message = one_line_error(cli(model, "-o", tmp_path / "a.onnx", "--no-verify"))
    assert message.endswith("cannot write it (No space left on device); nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.pt"]
    assert (tmp_path / "a.onnx").read_bytes() == b"the earlier graph"


def test_a_summary_that_cannot_be_written_says_the_graph_was(
    tmp_path: Path, monkeypatch, static_tensorrt
) -> None:
    """--json on a full disk after the graph was written: the error said nothing of the graph
    left in place (users24)."""
    import errno

    from birnn_export import _files

    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    replace = os.replace

    def full(source, target):
        if str(target).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(_files.os, "replace", full)
    result = cli(model, "-o", tmp_path / "a.onnx", "--json", tmp_path / "r.json", "--no-verify")
    message = one_line_error(result)
    assert "r.json: cannot write it (No space left on device)" in message
    assert message.endswith(f"; the graph was written: {tmp_path / 'a.onnx'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.pt"]


def test_a_stale_staging_folder_of_a_dead_process_is_removed(
    tmp_path: Path, static_tensorrt
) -> None:
    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".a.onnx.birnn-export-{dead.stdout.strip()}-abc12345"
    stale.mkdir()
    (stale / "a.onnx").write_bytes(b"half a graph")
    (stale / "a.onnx.data").write_bytes(b"weights")
    (stale / ".birnn-export-layers-x1y2.onnx").write_bytes(b"the layer probe's copy")
    # its lock free, the folder is stale whatever its process id says: an id from another
    # container or host ran here (users34: a live export's folder was removed, by its id)
    unlocked = tmp_path / f".a.onnx.birnn-export-{os.getpid()}-free0000"
    unlocked.mkdir()
    (unlocked / ".lock").touch()
    result = cli(model, "-o", tmp_path / "a.onnx", "--no-verify", "-q")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not unlocked.exists()


@pytest.mark.slow  # heavy: the slow tier runs it (CI's 15 minutes)
def test_a_second_export_to_the_same_file_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Two exports to one output both said PASS, and the one whose graph was replaced described
    the other's (users34): the second is refused in one line while the first holds its lock."""
    import fcntl

    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    running = tmp_path / ".a.onnx.birnn-export-9999997-live0000"  # an id from elsewhere
    running.mkdir()
    with open(running / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cli(model, "-o", tmp_path / "a.onnx", "--no-verify", "-q")
    assert result.exit_code == 2, result.output
    told = "another birnn-export is writing it now (process 9999997, staging in .a.onnx.birnn"
    assert told in result.output and "write elsewhere with -o" in result.output
    assert running.exists() and not (tmp_path / "a.onnx").exists()
    result = cli(model, "-o", tmp_path / "a.onnx", "--no-verify", "-q")  # the lock is free
    assert result.exit_code == 0, result.output
    assert not running.exists()
    # a lock that is a pipe (planted in a downloaded folder) is not opened: it would block
    planted = tmp_path / ".a.onnx.birnn-export-9999996-pipe0000"
    planted.mkdir()
    os.mkfifo(planted / ".lock")
    result = cli(model, "-o", tmp_path / "a.onnx", "--no-verify", "-q")
    assert result.exit_code == 0, result.output
    assert (planted / ".lock").exists()  # not the export's: left as it was


def test_only_a_real_staging_folder_of_our_files_is_removed(
    tmp_path: Path, static_tensorrt
) -> None:
    """A folder of downloaded files (a zip, a clone) may hold a link named like a dead
    process's staging folder: the export removed every file in the folder it pointed to
    (users31). Links are left, and so is a folder holding files the export does not write."""
    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine")
    (elsewhere / "a.onnx").write_text("mine too")
    link = tmp_path / ".a.onnx.birnn-export-9999998-aaaaaaaa"  # pids above any pid_max
    link.symlink_to(elsewhere, target_is_directory=True)
    foreign = tmp_path / ".a.onnx.birnn-export-9999999-bbbbbbbb"
    foreign.mkdir()
    (foreign / "a.onnx").write_bytes(b"half a graph")
    (foreign / "thesis.tex").write_text("not the export's")
    result = cli(model, "-o", tmp_path / "a.onnx", "--no-verify", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["a.onnx", "notes.txt"]
    assert link.is_symlink() and (foreign / "thesis.tex").exists()


def test_written_files_get_normal_permissions_and_symlinks_are_written_through(
    tmp_path: Path,
) -> None:
    model = tmp_path / "a.pt"
    model.write_bytes(SMALL.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(elsewhere / "report.json")
    (elsewhere / "graph.onnx").write_text("an old graph")
    (tmp_path / "link.onnx").symlink_to(elsewhere / "graph.onnx")
    result = cli(
        model, "-o", tmp_path / "link.onnx", "--json", tmp_path / "link.json", "-q", "--no-verify"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.json").is_symlink()
    # -o as --json: the link stays and the file it points to is the graph (users24: it was
    # replaced by a file of its own)
    assert (tmp_path / "link.onnx").is_symlink()
    assert onnx.load(str(elsewhere / "graph.onnx")).graph.node
    assert json.loads((elsewhere / "report.json").read_text())["model"] == str(model)
    mask = os.umask(0)
    os.umask(mask)
    for path in (elsewhere / "graph.onnx", elsewhere / "report.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert sorted(p.name for p in elsewhere.iterdir()) == ["graph.onnx", "report.json"]


def test_a_link_to_a_device_or_pipe_and_a_planted_default_output_link_are_refused(
    tmp_path: Path, static_tensorrt
) -> None:
    """Written through a link to a pipe (or, as root, to /dev/full), the node itself was
    replaced by a file; and a link planted at the default output name (a folder of downloaded
    files beside the model) replaced a file anywhere, the tool saying only "Wrote m.onnx"
    (users31). A target that is not a regular file is refused, and the default output is not
    written through a link: named by -o it is."""
    model = tmp_path / "m.pt"
    model.write_bytes(SMALL.read_bytes())
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "to_pipe.onnx").symlink_to(pipe)
    (tmp_path / "to_pipe.json").symlink_to(pipe)
    result = cli(model, "-o", tmp_path / "to_pipe.onnx", "-q", "--no-verify")
    assert result.exit_code == 2 and "not a regular file" in result.output, result.output
    result = cli(model, "-o", tmp_path / "a.onnx", "--json", tmp_path / "to_pipe.json", "-q")
    assert result.exit_code == 2 and "--json: " in result.output, result.output
    assert "not a regular file" in result.output and not (tmp_path / "a.onnx").exists()
    assert pipe.exists() and not pipe.is_file()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "m.onnx").symlink_to(notes)
    result = cli(model, "-q", "--no-verify")
    assert result.exit_code == 2 and "is a link (to " in result.output, result.output
    assert notes.read_text() == "mine"
    assert cli(model, "-o", tmp_path / "m.onnx", "-q", "--no-verify").exit_code == 0
    assert onnx.load(str(notes)).graph.node


# -- model files -------------------------------------------------------------------------------


def _zip(path: Path, payload: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A torch.save-style zip archive holding ``payload``: the script's own builder."""
    import importlib.util

    location = Path(__file__).resolve().parent.parent / "scripts" / "hostile_inputs.py"
    script = sys.modules.get("hostile_inputs_script")
    if script is None:  # its dataclasses need it in sys.modules while it loads
        spec = importlib.util.spec_from_file_location("hostile_inputs_script", location)
        script = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    return script.zip_pickle(path, payload, records)


def test_files_that_ask_for_far_more_memory_than_they_hold_are_refused(tmp_path: Path) -> None:
    views = tmp_path / "views.pt"
    torch.save({"rnn.weight_ih_l0": torch.zeros(1).expand(120000, 30000)}, views)
    with pytest.raises(ModelLoadError, match="zero strides"):
        load_model(views)
    bomb = b"\x80\x02cbuiltins\nbytearray\n" + pickle.dumps((10**10,), 2)[2:-1] + b"R."
    with pytest.raises(ModelLoadError, match="memory bomb"):
        load_model(_zip(tmp_path / "bytearray.pt", bomb))
    for key, value in (("vocab_size", 10**10), ("num_layers", 10**6)):
        checkpoint = torch.load(SAMPLE, weights_only=True)
        checkpoint["config"][key] = value
        torch.save(checkpoint, tmp_path / "big.pt")
        started = time.perf_counter()
        with pytest.raises(ModelLoadError, match=f"{key} {value} is larger than its weights"):
            load_model(tmp_path / "big.pt")
        assert time.perf_counter() - started < 10  # refused, not built


def test_user_class_sizes_are_checked_before_allocating(tmp_path: Path) -> None:
    weights = tmp_path / "e.pt"
    torch.save(nn.Embedding(10, 4).state_dict(), weights)
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        load_model(
            weights,
            model_class="torch.nn:Embedding",
            model_kwargs={"num_embeddings": 10**10, "embedding_dim": 4},
        )


def test_devices_fifos_and_odd_tensors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a device or socket"):
        load_model("/dev/zero")
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(ModelLoadError, match="is a FIFO"):
        load_model(tmp_path / "fifo.pt")
    state = nn.ModuleDict({"rnn": nn.GRU(4, 5, batch_first=True), "head": nn.Linear(5, 3)})
    complex_state = dict(state.state_dict())
    complex_state["head.weight"] = complex_state["head.weight"].to(torch.complex64)
    torch.save(complex_state, tmp_path / "c.pt")
    with pytest.raises(ModelLoadError, match="is complex"):
        load_model(tmp_path / "c.pt")
    nested_state = dict(state.state_dict())
    with warnings.catch_warnings():  # torch's prototype warning, shown once per process
        warnings.simplefilter("ignore")
        nested_state["head.bias"] = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(1)])
    torch.save(nested_state, tmp_path / "n.pt")
    with pytest.raises(ModelLoadError, match="nested tensor"):
        load_model(tmp_path / "n.pt")


def test_a_nondeterministic_model_is_refused(tmp_path: Path) -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 5, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.rnn(x)[0]
            return out + torch.rand_like(out)

    from birnn_export.pipeline import export_onnx

    with pytest.raises(BiRNNExportError, match="not deterministic in eval mode") as caught:
        export_onnx(Noisy().eval(), tmp_path / "n.onnx")
    assert not list(tmp_path.iterdir()) and "functional dropout" not in str(caught.value)

    class Dropping(Noisy):  # F.dropout trains by default: the line is named (users30)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(nn.functional.dropout(x, 0.2))[0]

    with pytest.raises(BiRNNExportError) as caught:
        export_onnx(Dropping().eval(), tmp_path / "d.onnx")
    told = "(return self.rnn(nn.functional.dropout(x, 0.2))[0]) a functional dropout is given no"
    assert "; at test_hostile_inputs.py:" in str(caught.value) and told in str(caught.value)
    assert str(caught.value).endswith("pass training=self.training")


# -- graphs and their metadata -----------------------------------------------------------------


def _with_spec(graph: Path, dst: Path, text: str) -> Path:
    proto = onnx.load(str(graph))
    for prop in proto.metadata_props:
        if prop.key == "birnn_export.spec":
            prop.value = text
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("not JSON", lambda s: "{not json"),
        ("deeply nested", lambda s: "[" * 100000 + "]" * 100000),
        ("wrong types", lambda s: json.dumps({**json.loads(s), "inputs": 5})),
        (
            "missing outputs",
            lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "outputs"}),
        ),
        (
            "negative dim",
            lambda s: json.dumps(
                {
                    **json.loads(s),
                    "outputs": [{**json.loads(s)["outputs"][0], "dims": ["batch", "seq", -9]}],
                }
            ),
        ),
        ("seq max 1e9", lambda s: json.dumps({**json.loads(s), "seq_range": [1, 64, 10**9]})),
    ],
)
@pytest.mark.parametrize("command", ["verify", "bench", "inspect"])
def test_crafted_metadata_is_one_line(
    good: tuple[Path, Path], tmp_path: Path, name: str, edit, command: str
) -> None:
    model, graph = good
    text = next(
        p.value for p in onnx.load(str(graph)).metadata_props if p.key == "birnn_export.spec"
    )
    bad = _with_spec(graph, tmp_path / "bad.onnx", edit(text))
    args = {
        "verify": ["verify", bad, "--model", model, "--batch", "1", "--seq", "3"],
        "bench": ["bench", bad, "--model", model, "--batch", "1", "--seq", "3", "--iters", "1"],
        "inspect": ["inspect", bad],
    }[command]
    assert "birnn_export.spec metadata" in one_line_error(cli(*args))


@pytest.mark.parametrize("command", ["check", "inspect"])
def test_attributes_of_the_wrong_type_or_not_utf8(
    good: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    _, graph = good
    proto = onnx.load(str(graph))
    node = next(n for n in proto.graph.node if n.op_type == "LSTM")
    for attr in node.attribute:
        if attr.name == "direction":
            attr.s = b"\xff\xfe"
        if attr.name == "hidden_size":
            attr.type = onnx.AttributeProto.STRING
            attr.s = b"thirty-two"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    if command == "check":
        result = cli("check", tmp_path / "bad.onnx", "--target", "ort-cuda")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "not a valid ONNX graph" in result.output
    else:
        result = cli("inspect", tmp_path / "bad.onnx")
        assert result.exit_code == 0 and "\ufffd" in result.output


# -- options -----------------------------------------------------------------------------------


def test_huge_work_is_refused_early(good: tuple[Path, Path]) -> None:
    model, graph = good
    assert "raise --memory-budget" in one_line_error(
        cli("verify", graph, "--model", model, "--seq", "100000000", "--batch", "1")
    )
    assert "raise --memory-budget" in one_line_error(
        cli("bench", graph, "--model", model, "--batch", "100000", "--seq", "256")
    )
    # the library's parameter names are told as the flags that give them (users27)
    assert one_line_error(cli("bench", graph, "--model", model, "--threads", "100000")).startswith(
        "Error: --threads: 100000 is not in 1"
    )
    both = cli("bench", graph, "--model", model, "--iters", "3", "--duration", "1")
    assert one_line_error(both).startswith("Error: --iters and --duration: give one of them")
    assert one_line_error(cli("bench", graph, "--model", model, "--device", "tpu")).startswith(
        "Error: --device: expected cpu"
    )
    assert "the largest size birnn-export declares" in one_line_error(
        cli(model, "--batch-range", "1,8,999999999", "-o", graph.with_name("x.onnx"))
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", "-1"], "--seed"),
        (["--atol", "-1"], "atol"),
    ],
)
def test_bad_numbers_are_usage_errors(good: tuple[Path, Path], args, needle: str) -> None:
    model, graph = good
    for command in ("verify", "bench"):
        message = one_line_error(cli(command, graph, "--model", model, *args))
        assert needle in message


def test_bench_refuses_nan_tolerance(good: tuple[Path, Path]) -> None:
    model, graph = good
    assert "finite" in one_line_error(cli("bench", graph, "--model", model, "--atol", "nan"))


@pytest.mark.parametrize(
    "kwargs", ["[" * 50000 + "]" * 50000, '{"input_size": ' + "9" * 5000 + "}", "{bad"]
)
def test_model_kwargs_that_cannot_be_read(tmp_path: Path, kwargs: str) -> None:
    weights = tmp_path / "g.pt"
    torch.save(nn.GRU(4, 5).state_dict(), weights)
    message = one_line_error(
        cli(weights, "--model-class", "torch.nn:GRU", "--model-kwargs", kwargs)
    )
    assert "--model-kwargs" in message


@pytest.mark.slow
def test_save_inputs_needs_a_known_suffix(good: tuple[Path, Path], tmp_path: Path) -> None:
    model, graph = good
    result = cli("verify", graph, "--model", model, "--save-inputs", tmp_path / "cases")
    assert "must end in .json" in one_line_error(result)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_ends_by_its_signal_and_leaves_nothing(
    good: tuple[Path, Path], tmp_path: Path, signum: signal.Signals
) -> None:
    """After cleanup the process ends by the signal (a shell reports 130 or 143 and stops its own
    loop), wherever it lands: in an import, in torch.export (which wraps it), or in a run. Ctrl-C
    and SIGTERM (``timeout``, a cancelled CI job) leave no graph, staging or temporary folder."""
    model, _ = good
    out = tmp_path / "x.onnx"
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "birnn_export", str(model), "-o", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
        # as a shell starts it: pytest-xdist's workers ignore SIGINT, and a child keeps an
        # ignored SIGINT (as a shell's background job does), so the export ran to its end
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(3)  # tracing or verifying by then
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the export finished before the interrupt")
    if proc.returncode == -signal.SIGABRT and "nanobind::python_error" in err:
        # A native extension's import (onnxscript's nanobind module) turns the interrupt into
        # std::terminate: no Python code runs there to end by the signal.
        pytest.skip("the interrupt landed in a native extension's import, which aborts")
    assert proc.returncode == -signum, err
    assert "Traceback" not in err and "Aborted!" in err
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]  # no graph, no staging folder
    assert not [p for p in temp.iterdir() if not p.name.startswith("torchinductor_")]  # torch's


# -- fuzzing -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048), st.integers(0, 200), st.integers(0, 255))
def test_fuzz_the_checkpoint_loader(tmp_path_factory, noise: bytes, at: int, value: int) -> None:
    """Random bytes and single-byte mutations of a real checkpoint: loaded, or refused with a
    ModelLoadError; never anything else."""
    folder = tmp_path_factory.mktemp("fuzz")
    sample = bytearray(SAMPLE.read_bytes())
    sample[at * 97 % len(sample)] = value
    for data in (noise, bytes(sample)):
        path = folder / "m.pt"
        path.write_bytes(data)
        with contextlib.suppress(ModelLoadError):
            load_model(path)


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_fuzz_the_spec_reader(value) -> None:
    for text in (
        json.dumps(value),
        json.dumps({"inputs": value, "outputs": [], "example_batch": 3, "example_seq": 5}),
    ):
        try:
            spec = GraphSpec.from_json(text)
        except BiRNNExportError:
            continue
        spec.ranges()


@FUZZ
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_the_onnx_readers(
    good: tuple[Path, Path], tmp_path_factory, at: int, value: int
) -> None:
    """A real export with one byte changed: inspect, check and verify's reader answer with
    their result or a one-line error (exit 0, 1 or 2), never a traceback."""
    _model, graph = good
    data = bytearray(graph.read_bytes())
    data[at * 31 % len(data)] = value
    path = tmp_path_factory.mktemp("fuzz") / "g.onnx"
    path.write_bytes(bytes(data))
    for args in (["inspect", path], ["check", path, "--target", "ort-cuda"]):
        result = cli(*args)
        assert result.exit_code in (0, 1, 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert "Traceback" not in result.output


OPTIONS = [
    "--layout",
    "--dtype",
    "--opset",
    "--input",
    "--range",
    "--batch-range",
    "--seq-range",
    "--input-size",
    "--json",
    "-o",
    "--lengths",
    "--no-lengths",
    "--quiet",
    "--no-verify",
    "--model-kwargs",
    "--state-key",
    "--nonlinearity",
    "--time-major",
]
VALUES = [
    "",
    "0",
    "-1",
    "1,2",
    "1,8,32",
    "x",
    "split",
    "float16",
    "17",
    "nan",
    "1e9",
    "{}",
    "x:float32[batch,seq,8]",
    "width=1,2,3",
    "out.onnx",
    "out.json",
    "\u00e9\u00e9",
    "a" * 300,
]


@settings(FUZZ, max_examples=15)
@given(st.lists(st.sampled_from(OPTIONS + VALUES), max_size=6))
def test_fuzz_the_command_line(good: tuple[Path, Path], tmp_path_factory, args: list[str]) -> None:
    """Random option lists after the model: exit 0, 1 or 2, one-line errors, no traceback, and
    nothing left in the folder but what a success writes."""
    model, _ = good
    folder = tmp_path_factory.mktemp("cli")
    here = os.getcwd()
    os.chdir(folder)
    try:
        with static_tensorrt_rules():  # exit codes and files are asserted, nothing of TensorRT
            result = CliRunner().invoke(main, [str(model), "--no-verify", *args])
    finally:
        os.chdir(here)
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert not [p for p in folder.iterdir()], (args, list(folder.iterdir()))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11's")
def test_an_engine_child_imports_nothing_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """Spawn starts a child as ``python -c``, with the working directory first on its path
    while it imports multiprocessing's modules: a ``selectors.py`` planted in a folder of
    downloaded files ran in every engine child, silently (users31)."""
    marker = tmp_path / "ran"
    (tmp_path / "selectors.py").write_text(
        f"open({str(marker)!r}, 'a').write('planted module ran')\n"
        "import importlib, os, sys\n"
        "sys.path = [p for p in sys.path if p not in ('', os.getcwd())]\n"
        "del sys.modules[__name__]\n"
        "sys.modules[__name__] = importlib.import_module(__name__)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    with IsolatedRunner("ort-cpu", CrashingRunner) as runner:
        assert runner.infer({"lengths": np.array([1, 2])})["output"].shape == (2, 2)
    assert not marker.exists()
    assert "PYTHONSAFEPATH" not in os.environ  # this process's own environment is as it was
