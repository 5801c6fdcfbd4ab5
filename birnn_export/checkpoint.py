"""Save and load models safely; recognise state_dict layouts.

:func:`load_model` reads a ``.pt`` file with ``torch.load(weights_only=True)``, or a
``.safetensors`` file (no code from the file runs), and turns what it finds into a model ready
to export:

* this tool's own checkpoint (written by :func:`save_checkpoint`): a :class:`SequenceTagger`;
* a bare or nested state_dict whose keys and shapes reveal the architecture: the seed article's
  ``forward_*`` / ``backward_*`` / ``output_layer`` classes, or one built-in ``nn.RNN`` /
  ``nn.LSTM`` / ``nn.GRU`` with an optional embedding before it and a linear head after it
  (and optionally a ``torchcrf.CRF``, ``crf.*`` keys, after the head: a BiLSTM-CRF tagger);
* any state_dict loaded into the user's own class (``model_class="pkg.module:Class"``);
* a whole pickled module, only with ``trust_pickle=True``.

Built-in recurrent layers are then swapped for :class:`~birnn_export.modules.BiRNN`
(:func:`birnn_export.conversion.convert`); the unconverted model is kept as the reference.

One cohesive module, over 600 lines: reading model files safely and recognising what
they hold (own checkpoints, state_dict layouts, user classes, trusted pickles).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import logging
import os
import pickle
import re
import reprlib
import stat
import sys
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from birnn_export._files import atomic_path, is_torch_file, size_text
from birnn_export._process import one_at_a_time
from birnn_export.conversion import conversion_report, convert, reserve_hook_ids
from birnn_export.errors import (
    BiRNNExportError,
    ModelLoadError,
    UsageError,
    keywords,
    known_options,
)
from birnn_export.models import (
    CRNN,
    CRNNConfig,
    SequenceTagger,
    SpeechConfig,
    SpeechCTC,
    TaggerConfig,
    TorchReference,
)
from birnn_export.modules import GATES
from birnn_export.spec import InputDecl, check_range

logger = logging.getLogger(__name__)

FORMAT = "birnn-export"
FORMAT_VERSION = 1
#: Architectures a birnn-export checkpoint may name: (config class, model class).
ARCHITECTURES: dict[str, tuple[Any, Any]] = {
    "SequenceTagger": (TaggerConfig, SequenceTagger),
    "CRNN": (CRNNConfig, CRNN),
    "SpeechCTC": (SpeechConfig, SpeechCTC),
}

_ZIP_MAGIC = b"PK\x03\x04"
_RECURRENT_KEY = re.compile(
    r"^(?:(?P<prefix>.+)\.)?(?P<name>(?:weight|bias)_(?:ih|hh|hr)_l(?P<layer>\d+)(?P<rev>_reverse)?)$"
)
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_CELL_BY_GATES = {4: "lstm", 3: "gru"}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
_CRF_KEYS = ("start_transitions", "end_transitions", "transitions")  # torchcrf.CRF


@dataclass(frozen=True)
class LoadedModel:
    """A model read by :func:`load_model`.

    Attributes:
        model: Ready to export: built-in recurrent layers converted to ``BiRNN``, eval mode,
            float32.
        original: The reference for verification, in torch's built-in recurrent layers: the
            model before conversion, or for a rebuilt :class:`SequenceTagger` the same weights
            in a :class:`~birnn_export.models.TorchReference`; ``None`` when the file held a
            model without built-in layers.
        source: One human-readable line saying what the file held and how it was read.
        config: The architecture's config (``to_dict()``) when the file named one of
            :data:`ARCHITECTURES`.
        path: The file read.
        sha256: Hex digest of the file's bytes.
        inputs: The graph inputs the checkpoint declares (``"NAME:DTYPE[DIMS]"``), if any.
        ranges: The (min, opt, max) it declares per named dim, if any.
    """

    model: nn.Module
    original: nn.Module | None
    source: str
    config: dict[str, Any] | None
    path: Path
    sha256: str
    inputs: tuple[str, ...] | None = None
    ranges: dict[str, tuple[int, int, int]] | None = None

    @property
    def reference(self) -> nn.Module:
        """What verification and benchmarks compare against: ``original`` where there is one."""
        return self.original if self.original is not None else self.model


# -- saving ------------------------------------------------------------------------------------


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[str] | None = None,
    ranges: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Write ``model`` in birnn-export's own format, atomically.

    The file is a dict ``{"format": "birnn-export", "format_version": 1, "architecture": ...,
    "config": ..., "state_dict": ...}`` (plus ``"inputs"`` and ``"ranges"`` when given: what
    ``birnn-export MODEL.pt`` then exports with, no flags needed) holding only tensors and plain
    values, so ``torch.load(path, weights_only=True)`` reads it. It is written to a temporary
    file beside ``path`` and renamed over it, so a crash never leaves a partial file.

    Args:
        model: One of :data:`ARCHITECTURES` (:class:`SequenceTagger`, :class:`CRNN`,
            :class:`SpeechCTC`).
        path: The ``.pt`` file.
        inputs: The graph inputs, declared (``"image:float32[batch,1,32,width]"``).
        ranges: (min, opt, max) per named dim.

    Example:
        >>> cfg = TaggerConfig(cell="gru", input_size=4, hidden_size=8, output_size=3)
        >>> save_checkpoint(SequenceTagger(cfg), "tagger.pt")  # doctest: +SKIP
        >>> load_model("tagger.pt").source  # doctest: +SKIP
        'birnn-export checkpoint v1 (SequenceTagger)'
    """
    architecture = next(
        (name for name, (_, cls) in ARCHITECTURES.items() if type(model) is cls), None
    )
    if architecture is None:
        raise UsageError(
            f"model: expected one of {', '.join(ARCHITECTURES)}, got {type(model).__name__}; "
            "save your own model's weights with torch.save(model.state_dict(), path) and load "
            "them with --model-class (model_class=)"
        )
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if inputs is not None:
        payload["inputs"] = [str(InputDecl.parse(str(text))) for text in inputs]
    if ranges is not None:
        payload["ranges"] = {str(k): list(check_range(str(k), v)) for k, v in ranges.items()}
    # A file object, not a path: torch then names the archive "archive/..." whatever the file is
    # called, so the same model always gives the same bytes.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


# -- loading -----------------------------------------------------------------------------------


def load_if_path(model: Any, load_options: Mapping[str, Any] | None = None) -> Any:
    """``model`` read by :func:`load_model` with ``load_options`` where it is a file path, else
    ``model`` itself: how :func:`birnn_export.verify` and :func:`birnn_export.benchmark` take
    their model, as :func:`birnn_export.export_model` takes its file.

    Raises:
        UsageError: an option :func:`load_model` does not take, or ``load_options`` beside a
            model that is not a file.
    """
    if not isinstance(model, (str, os.PathLike)):
        if load_options:
            raise UsageError(
                "load_options: they say how to read a model file, but the model given is not a "
                "file; drop them"
            )
        return model
    known_options("load_options", load_options or {}, keywords(load_model, leaving=("path",)))
    return load_model(model, **dict(load_options or {}))


@one_at_a_time
def load_model(
    path: str | os.PathLike[str],
    *,
    model_class: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    state_key: str | None = None,
    nonlinearity: str | None = None,
    time_major: bool = False,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a model file safely and convert its recurrent layers for export.

    The file is always read first with ``torch.load(path, map_location="cpu",
    weights_only=True)``, which refuses anything but tensors and plain containers, so no code from
    the file runs (a safetensors file, which holds tensors alone, is read as a bare state_dict).
    What it holds decides the rest:

    * birnn-export's own checkpoint (:func:`save_checkpoint`) -> :class:`SequenceTagger`.
    * A state_dict, bare or nested in a training checkpoint (under ``model_state_dict``,
      ``state_dict``, ``model``, ``net``, ``weights``... beside optimizer state, vocabularies and
      metrics): found when exactly one entry is a dict of tensors, else name it with
      ``state_key``. A ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix on
      every key is removed. Without ``model_class`` the keys and shapes must reveal the
      architecture: the seed article's classes (``forward_rnn``/``backward_rnn`` or
      ``forward_lstm``/``backward_lstm`` + ``output_layer``) or one built-in ``nn.RNN`` /
      ``nn.LSTM`` / ``nn.GRU`` (any name, layers, directions, with or without bias) with an
      optional ``nn.Embedding`` before it and an ``nn.Linear`` head after it. These are rebuilt
      as a :class:`SequenceTagger` with ``uses_lengths=True``, because a state_dict does not say
      whether the model took lengths: calling it without ``lengths`` (or with full lengths) gives
      the model that took none. ``original`` is then a :class:`TorchReference` with torch's own
      bidirectional layer and the same weights. The cell comes from the weight shapes
      (``weight_ih`` rows / hidden size: 4 LSTM, 3 GRU, 1 RNN); an RNN's nonlinearity is not in
      the weights and comes from ``nonlinearity``.
    * ``model_class``: the state_dict is loaded (strictly) into ``model_class(**model_kwargs)``.
    * A whole pickled ``nn.Module``: only with ``trust_pickle=True``, which loads the file again
      with ``weights_only=False``. **That runs code from the file** (unpickling can call any
      function): use it only for files you trust. Prefer saving the state_dict.

    Args:
        path: The ``.pt`` file.
        model_class: Your model class as ``"package.module:Class"``, imported with importlib.
        model_kwargs: Keyword arguments for ``model_class``.
        state_key: Key of the state_dict in a nested checkpoint.
        nonlinearity: ``"tanh"`` or ``"relu"``, for ``nn.RNN`` layers of bare state_dicts;
            ``None``: tanh, taken as torch's default (the source line says so).
        time_major: A bare state_dict's model took ``[seq, batch, ...]`` (``batch_first`` is not
            in the weights; batch-first is assumed, and the source line says so).
        trust_pickle: Allow pickled objects, running code from the file (see above).

    Returns:
        A :class:`LoadedModel` whose ``model`` is converted, in eval mode and float32.

    Raises:
        ModelLoadError: with a one-line reason and what to do: missing, empty, truncated or
            non-torch file; pickled code without ``trust_pickle``; unknown layout; ambiguous
            nested checkpoint; weights that do not fit the class.

    Example:
        >>> loaded = load_model("sample_models/bigru_varlen.pt")  # doctest: +SKIP
        >>> loaded.source  # doctest: +SKIP
        'birnn-export checkpoint v1 (SequenceTagger)'
    """
    path = Path(path)
    if nonlinearity not in (None, "tanh", "relu"):
        raise ModelLoadError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    if model_kwargs is not None and model_class is None:
        raise ModelLoadError("model_kwargs: given without model_class; pass --model-class too")
    folder_note = ""
    if path.is_dir():  # a save_pretrained folder: its weights file, and config.json
        path, config_file = _saved_folder(path)
        folder_note = f" ({path.name} of a saved folder"
        if config_file is not None and model_class is not None and model_kwargs is None:
            model_kwargs = _read_config(config_file)
            folder_note += ", its config.json as the class's arguments"
        elif config_file is not None and model_class is None:
            folder_note += "; --model-class builds your class from its config.json"
        folder_note += ")"
    data = _read_bytes(path)
    obj = _deserialize(data, path, trust_pickle=trust_pickle, model_class=model_class)
    try:
        model, original, source, config = _build(
            obj,
            path,
            model_class=model_class,
            model_kwargs=model_kwargs or {},
            state_key=state_key,
            nonlinearity=nonlinearity,
            time_major=time_major,
        )
    except ModelLoadError as exc:
        if "its config.json" not in folder_note:
            raise
        where = f"{path.parent / 'config.json'} (or give --model-kwargs)"
        raise ModelLoadError(str(exc).replace("--model-kwargs", where)) from None
    inputs, ranges = _declared(obj, path)
    source += folder_note + _precision_note(obj)
    model = model.float().eval()
    if original is not None:
        original = original.float().eval()
    for module in (model, original):
        if module is not None:  # an unpickled model's hooks keep the saving process's ids
            reserve_hook_ids(module)
    logger.info("%s: %s", path, source)
    return LoadedModel(
        model=model,
        original=original,
        source=source,
        config=config,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=inputs,
        ranges=ranges,
    )


def _precision_note(obj: Any) -> str:
    """A note where the file's weights are all half precision, or all float64: the model is
    loaded (and the graph written) in float32 unless asked otherwise."""
    kinds = {t.dtype for _, t in _tensors(obj) if t.is_floating_point()}
    if kinds == {torch.float64}:  # trained in float64: said as half precision is (users43 F3)
        return (
            "; its weights are float64: loaded in float32, the graph computes in float32 "
            "(verification judges it against the model in float64)"
        )
    if not kinds or torch.float32 in kinds or torch.float64 in kinds:
        return ""
    names = "/".join(sorted(str(k).removeprefix("torch.") for k in kinds))
    return (
        f"; its weights are {names}: loaded in float32, the graph computes in float32 "
        "(--dtype float16 writes a float16 one)"
    )


def _declared(
    obj: Any, path: Path
) -> tuple[tuple[str, ...] | None, dict[str, tuple[int, int, int]] | None]:
    """The inputs and ranges a birnn-export checkpoint declares (checked), if any."""
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        return None, None
    try:
        inputs = obj.get("inputs")
        if inputs is not None:
            if not isinstance(inputs, list):
                raise BiRNNExportError("'inputs' is not a list")
            inputs = tuple(str(InputDecl.parse(text)) for text in inputs)
        ranges = obj.get("ranges")
        if ranges is not None:
            if not isinstance(ranges, Mapping):
                raise BiRNNExportError("'ranges' is not a dict")
            ranges = {str(k): check_range(str(k), v) for k, v in ranges.items()}
    except BiRNNExportError as exc:
        raise ModelLoadError(f"{path}: bad declaration in birnn-export checkpoint: {exc}") from None
    return inputs, ranges


#: Weights files of a ``save_pretrained`` folder (Hugging Face's ``PreTrainedModel`` and
#: ``huggingface_hub.PyTorchModelHubMixin``), in the order they are looked for.
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
#: The largest config.json read: a model's arguments, not data.
_CONFIG_LIMIT = 1 << 20


def _saved_folder(folder: Path) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) of a folder written by ``save_pretrained``."""
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            config = folder / "config.json"
            return folder / name, config if config.is_file() else None
    sharded = sorted(folder.glob("*.index.json"))
    if sharded:
        raise ModelLoadError(
            f"{folder}: holds sharded weights ({sharded[0].name}), which are not read; save "
            "them in one file (save_pretrained(..., max_shard_size='100GB')) or give that file"
        )
    raise ModelLoadError(
        f"{folder}: is a directory without {' or '.join(_FOLDER_WEIGHTS)} (a save_pretrained "
        "folder); give the model file itself"
    )


def _read_config(path: Path) -> dict[str, Any]:
    """A saved folder's config.json: the keyword arguments of the model's class."""
    try:
        if path.stat().st_size > _CONFIG_LIMIT:
            raise ModelLoadError(f"{path}: over {_CONFIG_LIMIT >> 20} MiB; not a model's config")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: unreadable ({_first_sentence(str(exc))}); give --model-kwargs instead"
        ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of arguments; give --model-kwargs")
    return config


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory; expected a model file written by torch.save")
    if not path.is_file():  # a FIFO would block, a device (/dev/zero) never end
        kind = "a FIFO" if stat.S_ISFIFO(path.stat().st_mode) else "a device or socket"
        raise ModelLoadError(
            f"{path}: is {kind}, not a regular file; expected a model file written by torch.save"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ModelLoadError(f"{path}: is empty (0 bytes); expected a file written by torch.save")
    return data


def _is_torchscript(data: bytes) -> bool:
    """Whether ``data`` is a ``torch.jit.save`` archive (compiled code and constants beside the
    weights) rather than a ``torch.save`` one."""
    import zipfile

    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_safetensors(data: bytes) -> bool:
    """Whether ``data`` is (the start of) a safetensors file: an 8-byte little-endian header
    size, then that many bytes of a JSON object describing the tensors after it."""
    return data[8:10] in (b'{"', b"{}") and 2 <= int.from_bytes(data[:8], "little") < 1 << 32


def _read_safetensors(data: bytes, path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file: a format of tensors alone, so nothing in it can run
    code (no ``--trust-pickle`` applies)."""
    try:
        from safetensors.torch import load
    except ImportError:
        raise ModelLoadError(
            f"{path}: is a safetensors file, and reading it needs the safetensors package: "
            "pip install safetensors"
        ) from None
    try:
        return load(data)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: truncated or corrupted safetensors file ({_first_sentence(str(exc))})"
        ) from None


def _deserialize(
    data: bytes, path: Path, *, trust_pickle: bool, model_class: str | None = None
) -> Any:
    if _is_safetensors(data):
        obj = _read_safetensors(data, path)
        _check_tensors(obj, path, len(data))
        return obj
    if data.startswith(_ZIP_MAGIC) and _is_torchscript(data):
        resave = f"torch.save(torch.jit.load({str(path)!r}).state_dict(), 'weights.pt')"
        then = (
            f"then export weights.pt with --model-class {model_class}"
            if model_class
            else "then export that with --model-class module:Class (the Python class it was "
            "scripted from)"
        )
        # --model-class and --trust-pickle read the same archive the same way (users43 F1)
        raise ModelLoadError(
            f"{path}: is a TorchScript archive (torch.jit.save): its layers are compiled code, "
            "not the nn.LSTM/GRU/RNN modules birnn-export converts, and --model-class or "
            "--trust-pickle cannot read it; re-save its weights, which keep the Python model's "
            f"names, in Python: {resave}; {then}"
        )
    budget = load_budget(len(data))
    try:
        with warnings.catch_warnings(record=True) as said, memory_limit(budget):
            warnings.simplefilter("always")  # torch's deprecations (quantized tensors), logged
            # fairseq's checkpoints keep their args as an argparse.Namespace: plain data
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        for warning in said:
            logger.debug("%s: reading it warned: %s", path, warning.message)
        _refuse_quantized(obj, path)
        _check_tensors(obj, path, len(data))
        return obj
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc)
        if _out_of_memory(exc):
            raise ModelLoadError(
                f"{path}: reading it asks for more than {size_text(budget)} of memory, far more "
                f"than a {size_text(len(data))} file can hold (a memory bomb or corrupted sizes); "
                "refused"
            ) from None
        blocked = _BLOCKED_GLOBAL.search(text)
        if isinstance(exc, pickle.UnpicklingError) and blocked:
            if blocked.group(1) == "torch.ScriptObject" and not trust_pickle:
                raise ModelLoadError(
                    f"{path}: holds TorchScript objects (GLOBAL torch.ScriptObject), as a model "
                    f"quantized by torch saves its packed int8 weights; {_QUANTIZED_ADVICE} "
                    "(if it holds something else and you trust the file, pass --trust-pickle)"
                ) from None
            if trust_pickle:
                return _load_trusted(data, path, model_class)
            raise ModelLoadError(
                f"{path}: holds pickled Python objects (GLOBAL {blocked.group(1)}) that "
                "torch.load(weights_only=True) refuses because unpickling them runs code from the "
                "file; if you trust the file pass --trust-pickle (trust_pickle=True), or re-save "
                "only the model's state_dict"
            ) from None
        if data.startswith(_ZIP_MAGIC):
            sizes = re.search(
                r"record size \((\d+) bytes\) does not match expected size \((\d+)", text
            )
            if sizes:
                raise ModelLoadError(
                    f"{path}: a storage declares {size_text(int(sizes[2]))} but the archive holds "
                    f"{size_text(int(sizes[1]))} for it: corrupted or crafted; refused"
                ) from None
            raise ModelLoadError(
                f"{path}: truncated or corrupted torch.save archive ({_first_sentence(text)})"
            ) from None
        if data[:1] == b"\x80":
            if trust_pickle:
                return _load_trusted(data, path, model_class)
            if _plain_pickle(data):
                raise ModelLoadError(
                    f"{path}: a pickle written by pickle.dump, not torch.save: unpickling it "
                    "runs code from the file; if you trust the file pass --trust-pickle "
                    "(trust_pickle=True), or re-save the model's state_dict with torch.save"
                ) from None
            raise ModelLoadError(
                f"{path}: torch.save's legacy (non-zip) format, which torch.load(weights_only="
                f"True) cannot read ({_last_detail(text)}; pickle protocol 4 and later, or a "
                "corrupted file): if you trust the file pass --trust-pickle, or re-save it with "
                "torch.save's default format"
            ) from None
        if _is_onnx(data):
            raise ModelLoadError(onnx_given(path)) from None
        raise ModelLoadError(
            f"{path}: not a PyTorch file; expected a zip archive written by torch.save (or a "
            "safetensors file), "
            f"but it starts with {data[:16]!r}"
        ) from None


def onnx_given(path: Path) -> str:
    """The error for an ONNX graph given where a PyTorch model belongs."""
    return (
        f"{path}: is an ONNX graph, not a PyTorch model; give the model file it came from "
        f"(birnn-export inspect {path} describes the graph, birnn-export verify {path} "
        "--model MODEL.pt checks it)"
    )


def onnx_named(path: Path) -> str:
    """The error for ``birnn-export MODEL.onnx`` without ``-o``, whose graph would be written
    over the file itself by default: what the file holds decides what it says."""
    if not path.exists():
        return f"{path}: no such file"
    if is_torch_file(path):
        return (
            f"{path}: a PyTorch model file named .onnx, which its graph would be written over "
            "by default; give -o GRAPH.onnx, or name the model file .pt"
        )
    return onnx_given(path)


def _is_onnx(data: bytes) -> bool:
    """Whether ``data`` parses as an ONNX ModelProto with a graph (its first field, the IR
    version, is byte 0x08)."""
    if data[:1] != b"\x08":
        return False
    try:
        import onnx

        return bool(onnx.load_model_from_string(data).graph.node)
    except Exception:
        return False


#: Reading a model file may take this many times its size in memory, plus :data:`LOAD_SLACK`.
LOAD_FACTOR = 4
LOAD_SLACK = 1 << 30


def load_budget(file_size: int) -> int:
    """Bytes of memory a file of ``file_size`` bytes may take to read: 4x its size + 1 GiB (a
    ``torch.save`` file holds its tensors' bytes, so a real model needs about 1x)."""
    return LOAD_FACTOR * file_size + LOAD_SLACK


@contextlib.contextmanager
def memory_limit(extra: int) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra`` bytes for the
    duration (Linux; elsewhere nothing is capped): an allocation past it fails at once with an
    out-of-memory error instead of exhausting the machine."""
    try:
        import resource

        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as handle:
            current = int(handle.read().split()[0]) * page
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        yield
        return
    limit = current + extra
    for cap in (soft, hard):
        if cap != resource.RLIM_INFINITY:
            limit = min(limit, cap)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or ("alloc_cpu" in text)


#: What a model quantized by torch (``torch.ao.quantization.quantize_dynamic``) holds instead of
#: float weights; said where such a file is refused.
_QUANTIZED_ADVICE = (
    "birnn-export converts float nn.LSTM/GRU/RNN weights: export the float model (its "
    "state_dict before quantize_dynamic) and pass --quantize int8 for ONNX Runtime's int8 "
    "graph, verified against the float model"
)


def _refuse_quantized(obj: Any, path: Path) -> None:
    """Refuse a model quantized by torch: its layers hold packed int8 parameters (TorchScript
    objects), which neither convert nor trace to ONNX."""
    if isinstance(obj, nn.Module):
        for name, module in obj.named_modules():
            kind = type(module)
            if kind.__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")):
                where = repr(name) if name else "the model"
                raise ModelLoadError(
                    f"{path}: {where} is a quantized {kind.__name__} ({kind.__module__}), "
                    f"holding packed int8 weights; {_QUANTIZED_ADVICE}"
                )
    for key, value in _leaves(obj):  # a state_dict's, or a module's inside a dict
        packed = isinstance(value, torch.ScriptObject)
        if packed or (isinstance(value, Tensor) and value.is_quantized):
            what = "packed int8 parameters" if packed else f"a {value.dtype} tensor"
            raise ModelLoadError(
                f"{path}: {key} holds {what}, as a model quantized by torch saves them; "
                f"{_QUANTIZED_ADVICE}"
            )


def _leaves(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of everything in nested dicts, lists, tuples and modules' state
    (a quantized Linear keeps its int8 weight in a tuple: ``head._packed_params._packed_params
    [0]``; its dtype and packed parameters beside it)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict(keep_vars=True)
    if isinstance(obj, Mapping):
        children: Any = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        children = [(f"{prefix}[{i}]", v) for i, v in enumerate(obj)]
    else:
        yield prefix, obj
        return
    for key, value in children:
        if depth < 50:
            yield from _leaves(value, key, depth + 1)


def _check_tensors(obj: Any, path: Path, file_size: int) -> None:
    """Refuse what cannot be a model's weights, before anything is built from them: nested,
    sparse or complex tensors, and views that would take far more memory than the file holds
    (a 2 KB file of stride-0 views can ask for gigabytes)."""
    total, biggest = 0, ("", 0, ())
    for name, tensor in _tensors(obj):
        if tensor.is_nested or tensor.layout != torch.strided:
            kind = "a nested tensor" if tensor.is_nested else f"a {tensor.layout} tensor"
            raise ModelLoadError(
                f"{path}: {name} is {kind}; weights must be dense tensors (re-save it dense)"
            )
        if tensor.is_complex():
            raise ModelLoadError(
                f"{path}: {name} is complex ({tensor.dtype}); recurrent models export real "
                "weights only, and a complex weight would be silently made real"
            )
        nbytes = tensor.numel() * tensor.element_size()
        total += nbytes
        if nbytes > biggest[1]:
            biggest = (name, nbytes, tuple(tensor.shape))
    if total > load_budget(file_size):
        name, nbytes, shape = biggest
        raise ModelLoadError(
            f"{path}: its tensors would take {size_text(total)} in memory ({name} {list(shape)} "
            f"alone {size_text(nbytes)}) but the file holds {size_text(file_size)}: views with "
            "zero strides or shared storage; refused (re-save with tensor.clone())"
        )


def _tensors(obj: Any) -> Iterator[tuple[str, Tensor]]:
    for key, value in _leaves(obj):
        if isinstance(value, Tensor):
            yield key or "a tensor", value


def _load_trusted(data: bytes, path: Path, model_class: str | None) -> Any:
    logger.info("%s: unpickling with weights_only=False (trust_pickle): this runs its code", path)
    try:
        unpickler = _main_from(model_class, path)
        with memory_limit(load_budget(len(data))), warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # torch's deprecations, said while unpickling
            if _plain_pickle(data):  # pickle.dump(model, f), which torch.load does not read
                obj = unpickler.load(io.BytesIO(data))
            else:
                obj = torch.load(
                    io.BytesIO(data),
                    map_location="cpu",
                    weights_only=False,
                    pickle_module=unpickler,
                )
        for warning in said:
            logger.debug("%s: unpickling warned: %s", path, warning.message)
        _refuse_quantized(obj, path)
        _check_tensors(obj, path, len(data))
        return obj
    except ModelLoadError:
        raise
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"{path}: the pickled objects need module {exc.name!r}, which cannot be imported; "
            "add the directory that holds it to PYTHONPATH (PYTHONPATH=. in the project that "
            "saved it: the working directory is not searched)"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: unpickling with trust_pickle failed: {type(exc).__name__}: "
            f"{_first_sentence(str(exc))}"
        ) from None


def _plain_pickle(data: bytes) -> bool:
    """Whether ``data`` is a pickle written by ``pickle.dump`` itself: neither torch's zip
    archive nor its legacy format, whose first pickled value is torch's magic number (at any
    pickle protocol)."""
    import pickletools

    if data[:1] != b"\x80":
        return False
    with contextlib.suppress(Exception):  # the first few opcodes of what may be anything
        for opcode, value, _ in pickletools.genops(io.BytesIO(data[:64])):
            if opcode.name not in ("PROTO", "FRAME"):
                return not (opcode.name == "LONG1" and value == torch.serialization.MAGIC_NUMBER)
    return True


def _main_from(model_class: str | None, path: Path) -> Any:
    """A ``pickle`` module for :func:`torch.load` whose unpickler finds a class pickled as
    ``__main__.X`` (a model saved by the training script run directly, which no later process
    defines) in the module of ``model_class``, and says to name it when there is none."""
    module = sys.modules[_user_class(model_class).__module__] if model_class else None

    class Unpickler(pickle.Unpickler):
        def find_class(self, module_name: str, name: str) -> Any:
            if module_name != "__main__":
                return super().find_class(module_name, name)
            if module is not None and hasattr(module, name):
                return getattr(module, name)
            with contextlib.suppress(AttributeError):
                return super().find_class(module_name, name)
            if module is None:
                raise ModelLoadError(
                    f"{path}: was saved by a script run directly, so its class is "
                    f"__main__.{name}, which no module defines now; pass --model-class "
                    f"MODULE:{name} naming the module that defines it (on PYTHONPATH; importing "
                    "it runs its top-level code)"
                )
            raise ModelLoadError(
                f"{path}: the pickle's class __main__.{name} is not in the module of "
                f"--model-class {model_class}; name the module that defines {name}"
            )

    main_from = types.ModuleType("pickle")
    main_from.__dict__.update(pickle.__dict__)
    main_from.Unpickler = Unpickler  # type: ignore[attr-defined]
    main_from.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    return main_from


#: Modules that wrap the model for training (data parallelism, weight averaging): the model is
#: their ``module``.
_WRAPPERS = (
    nn.DataParallel,
    nn.parallel.DistributedDataParallel,
    torch.optim.swa_utils.AveragedModel,
)


def _build(
    obj: Any,
    path: Path,
    *,
    model_class: str | None,
    model_kwargs: dict[str, Any],
    state_key: str | None,
    nonlinearity: str | None,
    time_major: bool = False,
) -> tuple[nn.Module, nn.Module | None, str, dict[str, Any] | None]:
    """``(model, original, source, config)`` from what ``torch.load`` returned."""
    # each with the keyword argument the Python API takes for it (review28 L5)
    bare = [f"--nonlinearity {nonlinearity} (nonlinearity={nonlinearity!r})"] * (
        nonlinearity is not None
    )
    bare += ["--time-major (time_major=True)"] * time_major
    if isinstance(obj, _WRAPPERS):  # its forward(*args, **kwargs) tells nothing of the inputs
        model, original, where, config = _build(
            obj.module,
            path,
            model_class=model_class,
            model_kwargs=model_kwargs,
            state_key=state_key,
            nonlinearity=nonlinearity,
            time_major=time_major,
        )
        return model, original, f"{where}, the module inside its {type(obj).__name__}", config
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        _refuse_bare(bare, path, "a birnn-export checkpoint (its config says)")
        architecture, config = _check_own_format(obj, path)
        state, where = obj.get("state_dict"), f"birnn-export checkpoint v{FORMAT_VERSION}"
        if not _is_tensor_dict(state):
            raise ModelLoadError(
                f"{path}: birnn-export checkpoint without a 'state_dict' of tensors"
            )
        if state_key is not None:
            raise ModelLoadError(
                f"{path}: --state-key {state_key!r} does not apply: the file is a birnn-export "
                "checkpoint with one state_dict; drop the option"
            )
        if model_class is None:
            factory = functools.partial(ARCHITECTURES[architecture][1], config)
            model = _construct(factory, state, f"{architecture}({config})", path)
            if isinstance(model, SequenceTagger):
                return model, model.to_torch(), f"{where} ({architecture})", config.to_dict()
            model.eval()
            return convert(model), model, f"{where} ({architecture})", config.to_dict()
    elif isinstance(obj, nn.Module):
        _refuse_bare(bare, path, "a pickled module (its layers say)")
        if state_key is not None:  # one network of the module's: a prefix of its weights
            state, where = _under_prefix(
                obj.state_dict(), "pickled module's state_dict (trusted)", path, state_key
            )
        elif model_class is None or (not model_kwargs and type(obj) is _user_class(model_class)):
            where = "pickled module (trusted)" + _training_note(obj)
            return (*_from_module(obj), where, _config_of(obj))
        else:
            state, where = obj.state_dict(), "pickled module's state_dict (trusted)"
    else:
        state, where = _find_state_dict(obj, path, state_key)
        while isinstance(state, _WRAPPERS):  # {"model": DataParallel(model)}
            state, where = state.module, f"{where}, the module inside its {type(state).__name__}"
        if isinstance(state, nn.Module):
            _refuse_bare(bare, path, "a pickled module (its layers say)")
            if model_class is None:
                where = where.replace("state_dict", "pickled module", 1) + " (trusted)"
                where += _training_note(state)  # before _from_module puts it in eval mode
                return (*_from_module(state), where, _config_of(state))
            state = state.state_dict()
    if model_class is not None:
        _refuse_bare(bare, path, f"a model built by {model_class} (its layers say)")
        factory, what = _factory(_user_class(model_class), model_class, model_kwargs)
        keys = _call(_on_meta(factory) or factory, what, model_class).state_dict()
        state, stripped = _strip_wrapper_prefix(state, keys)
        if stripped:
            where += f" (prefix {stripped!r} removed)"
        state, pruned = _unpruned(state, keys)
        state, folded = _unparametrized(state, keys, path)
        state, under = _keys_under_one_prefix(state, keys, path)
        where += pruned + folded + under
        try:
            user = _construct(factory, state, model_class, path, what=what)
        except ModelLoadError as exc:
            sized = "shape mismatch" in str(exc) or _layer_count_differs(state, keys)
            if not sized or model_kwargs:
                raise
            raise ModelLoadError(f"{exc}; {_kwargs_hint(obj, _user_class(model_class))}") from None
        model, original = _from_module(user)
        note = _unapplied_note(obj, model_kwargs, _user_class(model_class))
        where = f"{where} loaded into {model_class}{note}"
        return model, original, where, _config_of(user)
    state, stripped = _strip_wrapper_prefix(state, None)
    if stripped:
        where += f" (prefix {stripped!r} removed)"
    # folded as with --model-class (users49 F4: refused "without 2-D weight_ih_l0")
    state, pruned = _unpruned(state, {})
    state, folded = _unparametrized(state, {}, path)
    where += pruned + folded
    config, tagger_state, layout = _recognise(state, nonlinearity or "tanh", path, time_major)
    if nonlinearity is not None and not config.cell.startswith("rnn"):
        # an LSTM's or GRU's gates have fixed activations: the option was ignored (review28 L5)
        raise ModelLoadError(
            f"{path}: {bare[0]} does not apply to nn.{config.cell.upper()} weights: only nn.RNN "
            "has a nonlinearity to choose; drop it"
        )
    if time_major:
        config = dataclasses.replace(config, batch_first=False)
    factory = functools.partial(SequenceTagger, config)
    model = _construct(factory, tagger_state, f"SequenceTagger({config})", path)
    if time_major:
        layout += "; time-major input [seq, batch, ...] (--time-major)"
    elif not layout.startswith("seed article"):  # the article's classes are batch-first
        layout += (
            "; assumed batch-first input [batch, seq, ...] (the weights do not say; "
            "--time-major if it took [seq, batch, ...])"
        )
    if config.cell == "rnn_tanh" and nonlinearity is None and not layout.startswith("seed"):
        # a ReLU RNN built as tanh passed verification against itself, said nowhere (users41)
        layout += "; tanh taken for the RNN (the weights do not say; --nonlinearity relu if ReLU)"
    return model, _reference(config, tagger_state), f"{where}, {layout}", config.to_dict()


def _refuse_bare(given: Sequence[str], path: Path, model: str) -> None:
    """``--nonlinearity`` and ``--time-major`` (``given``) tell what a bare state_dict's
    weights do not; a model that says it itself ignored them without a word (users24)."""
    if given:
        one = len(given) == 1
        raise ModelLoadError(
            f"{path}: {' and '.join(given)} {'does' if one else 'do'} not apply to {model}: "
            f"{'it tells' if one else 'they tell'} what a bare state_dict's weights do not; "
            f"drop {'it' if one else 'them'}"
        )


def _check_own_format(obj: Mapping[str, Any], path: Path) -> tuple[str, Any]:
    """The architecture's name and its checked config."""
    version = obj.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: birnn-export checkpoint format_version {version!r} is not supported (this "
            f"version reads {FORMAT_VERSION}); upgrade birnn-export or re-save the model"
        )
    architecture = obj.get("architecture")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: birnn-export checkpoint architecture {architecture!r} is unknown; "
            f"expected one of {', '.join(ARCHITECTURES)}"
        )
    data = obj.get("config")
    if not isinstance(data, Mapping):
        raise ModelLoadError(f"{path}: bad config in birnn-export checkpoint: expected a dict")
    config_class, model_class = ARCHITECTURES[architecture]
    state = obj.get("state_dict")
    elements = sum(t.numel() for t in state.values()) if _is_tensor_dict(state) else 0
    for key, value in data.items():
        # No size in a real config exceeds the weights' element count (a layer holds at least
        # one): a larger one is refused before anything is built from it.
        if isinstance(value, int) and not isinstance(value, bool) and value > max(elements, 1):
            raise ModelLoadError(
                f"{path}: bad config in birnn-export checkpoint: {key} {value} is larger than its "
                f"weights could hold ({elements} elements in the file)"
            )
    try:
        config = config_class.from_dict(dict(data))
        with torch.device("meta"):  # validates sizes, cell and types without allocating
            model_class(config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path}: bad config in birnn-export checkpoint: {_first_sentence(str(exc))}"
        ) from None
    return architecture, config


def _find_state_dict(obj: Any, path: Path, state_key: str | None) -> tuple[Any, str]:
    """The state_dict (or, for trusted files, a module) inside ``obj``, and where it was."""
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{path}: holds a {type(obj).__name__}, not a state_dict, checkpoint dict or model"
        )
    if state_key is not None:
        if state_key not in obj:  # a prefix of one network's weights in the state_dict
            try:
                state, where = _find_state_dict(obj, path, None)
            except ModelLoadError:
                state, where = {}, ""
            if isinstance(state, nn.Module):
                state = state.state_dict()
            return _under_prefix(state, where, path, state_key, shown=obj)
        value = obj[state_key]
        if not (_is_tensor_dict(value) or isinstance(value, nn.Module)):
            raise ModelLoadError(
                f"state_key: {state_key!r} in {path.name} holds a {type(value).__name__}, "
                "not a state_dict (a dict of tensors)"
            )
        return value, f"state_dict under key {state_key!r}"
    if _is_tensor_dict(obj):
        return obj, "bare state_dict"
    candidates = [k for k, v in obj.items() if _is_tensor_dict(v) or isinstance(v, nn.Module)]
    if len(candidates) == 1:
        return obj[candidates[0]], f"state_dict under key {candidates[0]!r}"
    if not candidates:
        raise ModelLoadError(
            f"{path}: found no state_dict: none of the keys {_preview(obj)} holds a dict of "
            "tensors; pass --state-key KEY (state_key=...) naming the one that holds the weights"
        )
    raise ModelLoadError(
        f"{path}: ambiguous checkpoint: keys {candidates} each hold a dict of tensors; "
        "pass --state-key KEY (state_key=...) to choose one"
    )


def _under_prefix(
    state: Mapping[str, Tensor],
    where: str,
    path: Path,
    state_key: str,
    shown: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Tensor], str]:
    """The weights of ``state`` (found as ``where`` says) whose keys start with ``state_key.``,
    without it: one network of a checkpoint that holds two (DESED's mean teacher,
    ``sed_student.`` and ``sed_teacher.``). ``shown``: the keys a refusal lists (``state``'s)."""
    prefix = state_key.removesuffix(".") + "."
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:  # the prefix past DataParallel's module., as the refusal names it
        state, _ = _strip_wrapper_prefix(state)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ModelLoadError(
            f"state_key: no key {state_key!r} in {path.name}, nor weights whose names start "
            f"with {prefix!r}; keys present: {_preview(state if shown is None else shown)}"
        )
    left = len(state) - len(sub)
    return sub, f"{where}, prefix {prefix!r} ({left} other key(s) left out)"


def _strip_wrapper_prefix(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], str]:
    """Remove a wrapper's prefix from every key, unless the target model's keys carry it too.
    An SWA/EMA ``AveragedModel``'s own ``n_averaged`` count, beside its ``module.`` keys, goes
    with it."""
    removed = ""
    state = dict(state)
    if "n_averaged" in state and all(k.startswith("module.") for k in state if k != "n_averaged"):
        state.pop("n_averaged")
    for prefix in _WRAPPER_PREFIXES:
        if expected and all(k.startswith(prefix) for k in expected):
            continue
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            removed += prefix
    return state, removed


def _unpruned(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[Mapping[str, Tensor], str]:
    """``state`` with each weight ``torch.nn.utils.prune`` saved as ``X_orig`` and ``X_mask``
    (a model pruned and saved before ``prune.remove``) made the plain ``X``, unless the class
    itself holds ``X_orig`` (it prunes in ``__init__``), and a note naming those weights for
    the load line (``""``: none)."""
    names = [
        k.removesuffix("_orig")
        for k in state
        if k.endswith("_orig")
        and f"{k.removesuffix('_orig')}_mask" in state
        and not _held(k, expected)
    ]
    if not names:
        return state, ""
    plain = {
        k: v for k, v in state.items() if k.removesuffix("_orig").removesuffix("_mask") not in names
    }
    for name in names:
        plain[name] = state[f"{name}_orig"] * state[f"{name}_mask"]
    return (
        plain,
        f" (pruned {_preview(names, 3)}: each weight_orig x weight_mask, as prune.remove makes)",
    )


def _held(key: str, expected: Mapping[str, Tensor]) -> bool:
    """Whether the class holds ``key``, also where the file has it under a prefix of its own
    (Lightning's ``model.``): the prefix is found only once the weights are plain (review30
    H1: a class registering its own parametrization no longer loaded such a checkpoint)."""
    parts = key.split(".")
    return any(".".join(parts[i:]) in expected for i in range(len(parts)))


#: A parametrization's keys in a state_dict: ``{module}parametrizations.{name}.{rest}``.
_PARAMETRIZED = re.compile(r"(?P<module>(?:.*\.)?)parametrizations\.(?P<name>\w+)\.(?P<rest>.+)")


#: The older API's keys (``torch.nn.utils.weight_norm`` / ``spectral_norm``) by the suffix of the
#: first: each part of the parametrization as the newer API names it, and its key's suffix.
_OLDER_API = {
    "_g": {"original0": "_g", "original1": "_v"},
    "_orig": {"original": "_orig", "0._u": "_u", "0._v": "_v"},
}


def _unparametrized(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: Path
) -> tuple[Mapping[str, Tensor], str]:
    """``state`` with each weight saved under a parametrization (``weight_norm`` or
    ``spectral_norm``, either API) folded into the plain weight, as eval mode
    computes it, unless the class itself holds the parametrization (it registers it in
    ``__init__``), and a note naming them for the load line (``""``: none). The class's plain
    weight was refused as missing, and renaming the keys, as the refusal advised, loaded
    spectral_norm's weight before its division by sigma without a word (users49 F2).

    Raises:
        ModelLoadError: a parametrization whose function the file does not tell (a custom one).
    """
    groups: dict[str, dict[str, str]] = {}  # weight -> {part: the key holding it}
    for key in state:
        found = _PARAMETRIZED.fullmatch(key)
        if found and not _held(key, expected):
            groups.setdefault(found["module"] + found["name"], {})[found["rest"]] = key
        for suffix, parts in _OLDER_API.items():
            if not key.endswith(suffix) or key.removesuffix(suffix) in state:
                continue
            base = key.removesuffix(suffix)
            keys = {part: base + end for part, end in parts.items()}
            saved = all(k in state and not _held(k, expected) for k in keys.values())
            if saved and (not expected or _held(base, expected)):  # the class's, or no class
                groups[base] = keys
    if not groups:
        return state, ""
    plain = dict(state)
    done: dict[str, list[str]] = {}
    for name, keys in groups.items():
        kind, weight = _fold_parametrization({part: state[key] for part, key in keys.items()})
        if weight is None:
            raise ModelLoadError(
                f"{path}: {name} is saved under a parametrization whose function the file does "
                f"not tell ({_preview(sorted(keys.values()))}; a custom one, or spectral_norm of a "
                "1-D tensor, which saves no u and v): load them into a class that "
                "registers the same parametrization on that layer in its __init__ "
                "(--model-class), or save the weights after "
                "torch.nn.utils.parametrize.remove_parametrizations(layer, name)"
            )
        for key in keys.values():
            del plain[key]
        plain[name] = weight
        done.setdefault(kind, []).append(name)
    said = " and ".join(f"{kind} on {_preview(names, 3)}" for kind, names in done.items())
    return plain, f" ({said}: folded into plain weights, as eval mode computes them)"


def _fold_parametrization(parts: Mapping[str, Tensor]) -> tuple[str, Tensor | None]:
    """The weight a parametrization's saved tensors compute in eval mode, and its kind;
    ``None`` where they are not weight_norm's (``original0`` = g, ``original1`` = v) or
    spectral_norm's (``original``, and its ``0._u`` / ``0._v``)."""
    if set(parts) == {"original0", "original1"}:
        g, v = parts["original0"], parts["original1"]
        # the norm over every axis g does not keep (its dim), as torch._weight_norm takes it
        axes = [a for a in range(v.dim()) if g.dim() != v.dim() or g.shape[a] == 1]
        norm = v.pow(2).sum(dim=axes, keepdim=True).sqrt() if axes else v.abs()
        return "weight_norm", v * (g / norm)
    if set(parts) == {"original", "0._u", "0._v"}:
        return "spectral_norm", _spectral_normed(parts["original"], parts["0._u"], parts["0._v"])
    return "", None


def _spectral_normed(weight: Tensor, u: Tensor, v: Tensor) -> Tensor | None:
    """``weight / sigma`` as spectral_norm computes it in eval mode, with sigma = u . (W v) for
    the matrix ``W`` of ``weight`` with its ``dim`` first. The file does not say that dim: of
    those whose sizes fit u and v, the one the last power iteration left ``v`` pointing along
    ``W^T u`` for (a square weight fits both dims: review30 H2). ``None`` where none fits."""
    fits = []
    for dim in range(weight.dim()):
        matrix = weight.movedim(dim, 0).flatten(1)
        if tuple(matrix.shape) == (u.numel(), v.numel()):
            along = torch.nn.functional.cosine_similarity(matrix.t() @ u, v, dim=0).abs()
            fits.append((float(along), torch.vdot(u, torch.mv(matrix, v))))
    if not fits:
        return None
    _, sigma = max(fits, key=lambda fit: fit[0])
    return weight / sigma


def _keys_under_one_prefix(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: Path
) -> tuple[Mapping[str, Tensor], str]:
    """The keys under the one prefix that holds exactly the model's keys, where the state dict's
    own top-level keys do not: a Lightning module's ``model.`` (beside a loss's buffers, say).
    Failing that, the other way round: the class holds the state's keys under one prefix.
    Returns the state to load and what was done, for the load line (``""``: nothing).

    Raises:
        ModelLoadError: more than one prefix holds them (a teacher and a student): which one is
            meant is not for birnn-export to guess.
    """
    want = set(expected)
    if not want or want <= set(state):  # the top level holds them: loaded (or refused) as is
        return state, ""
    prefixes = {k[: i + 1] for k in state for i, c in enumerate(k) if c == "."}
    subs = {
        prefix: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for prefix in sorted(prefixes)
    }
    found = [prefix for prefix, sub in subs.items() if set(sub) == want]
    if not found:  # the class's modules, of other sizes: a layer count (users49 F1)
        found = [prefix for prefix, sub in subs.items() if _same_modules(sub, want)]
    if not found:
        return _keys_put_under_one_prefix(state, want)
    if len(found) > 1:
        raise ModelLoadError(
            f"{path}: the class's weights are there under {len(found)} prefixes "
            f"({', '.join(repr(p) for p in found)}); pass the one you mean as --state-key "
            f"{found[0].removesuffix('.')!r} (state_key=...)"
        )
    sub = subs[found[0]]
    others = len(state) - len(sub)
    left = f"; {others} other key(s) left out" if others else ""
    return sub, f" (prefix {found[0]!r} removed{left})"


def _keys_put_under_one_prefix(
    state: Mapping[str, Tensor], want: set[str]
) -> tuple[Mapping[str, Tensor], str]:
    """The state's keys each under the one prefix whose keys are exactly the class's: a serving
    wrapper (argmax, softmax) holding the saved model as an attribute, given the model's own
    weights (users45); or are some of the class's, which then refuses them naming only what the
    file lacks (a wrapper's own temperature: review28 L6). Returns the state to load and what
    was done (``""``: nothing)."""
    prefixes = {k[: i + 1] for k in want for i, c in enumerate(k) if c == "."}
    found = [p for p in sorted(prefixes) if {p + k for k in state} == want]
    if not found:
        found = [p for p in sorted(prefixes) if {p + k for k in state} < want]
    if len(found) != 1:
        return state, ""
    prefix = found[0]
    return {prefix + k: v for k, v in state.items()}, (
        f" (its keys put under the class's {prefix!r}: the class holds the saved model as "
        f"{prefix.removesuffix('.')!r})"
    )


def _from_module(module: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(converted, original)``, both in eval mode (before anything reads a computed weight:
    spectral_norm in training mode moves its ``u`` and ``v`` at every read); ``original`` is
    None when nothing needed converting."""
    module.eval()
    if not conversion_report(module):
        return module, None
    return convert(module), module


def _config_of(module: nn.Module) -> dict[str, Any] | None:
    return module.config.to_dict() if isinstance(module, SequenceTagger) else None


def _user_class(spec: str) -> type[nn.Module]:
    """The class named ``package.module:Class``; importing the module runs its code."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model_class: expected 'package.module:Class', got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"model_class: cannot import module {module_name!r} ({exc}); install it, or add the "
            "directory that holds it to PYTHONPATH (the working directory is not searched)"
        ) from None
    except SystemExit as exc:
        raise ModelLoadError(
            f"model_class: importing {module_name!r} called sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"model_class: importing {module_name!r} failed: {type(exc).__name__}: "
            f"{_first_sentence(str(exc))}"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"model_class: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ModelLoadError(f"model_class: {spec!r} is not an nn.Module subclass")
    return target


def _factory(cls: type[nn.Module], name: str, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """(a builder of ``cls`` from ``kwargs``, the call in words). A class built from one config
    object, as Hugging Face's ``PreTrainedModel(config)`` is (its ``config_class`` says which),
    gets that object made from ``kwargs`` (config.json's contents)."""
    config_class = getattr(cls, "config_class", None)
    try:
        params = list(inspect.signature(cls.__init__).parameters)[1:]
    except (TypeError, ValueError):  # no signature to read: called with the arguments as given
        params = []
    takes_dict = params[:1] == ["config"] and not isinstance(config_class, type)
    if takes_dict and kwargs and "config" not in kwargs:
        # huggingface_hub's mixin passes config.json whole to a class taking ``config``
        return functools.partial(cls, config=dict(kwargs)), f"{name}(config={kwargs!r})"
    if not (isinstance(config_class, type) and params[:1] == ["config"]):
        return functools.partial(cls, **kwargs), f"{name}(**{kwargs!r})"
    what = f"{name}({config_class.__name__}(**{kwargs!r}))"
    from_dict = getattr(config_class, "from_dict", None)
    if callable(from_dict):
        config = _call(lambda: from_dict(dict(kwargs)), what)
    else:
        config = _call(lambda: config_class(**kwargs), what)
    return functools.partial(cls, config), what


def _on_meta(factory: Any) -> Any:
    """``factory`` building on the meta device (no memory), or ``None`` if the model's own code
    cannot build there."""

    def build() -> nn.Module:
        with torch.device("meta"):
            return factory()

    try:
        build()
    except (Exception, SystemExit):
        return None
    return build


def _call(factory: Any, what: str, name: str = "") -> nn.Module:
    """``factory()``, with whatever the model's own code raises (``SystemExit`` included) and
    running out of memory turned into one line."""
    label = name or what.partition("(")[0]
    try:
        return factory()
    except SystemExit as exc:
        raise ModelLoadError(f"model_class: {what} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        if _out_of_memory(exc):
            raise ModelLoadError(
                f"{label}: building {what} runs out of memory; check its sizes"
            ) from None
        raise ModelLoadError(
            f"model_class: {what} failed: {type(exc).__name__}: "
            f"{_first_sentence(str(exc))}; check --model-kwargs"
        ) from None


def _construct(
    factory: Any, state: Mapping[str, Tensor], name: str, path: Path, *, what: str = ""
) -> nn.Module:
    """Build a model and load ``state`` into it strictly. Its shapes are compared with the
    file's on the meta device first, so sizes that do not fit the file (a config or kwargs
    asking for a vocabulary of 1e10) are refused before anything is allocated."""
    what = what or name
    probe = _on_meta(factory)
    if probe is not None:
        _compare(probe(), state, name, path)
    module = _call(factory, what, name)
    _load_strict(module, state, name, path)
    return module


def _training_note(module: nn.Module) -> str:
    """A note for a module pickled in training mode (``.eval()`` forgotten before saving)."""
    if not any(m.training for m in module.modules()):
        return ""
    return "; saved in training mode: exported and verified in eval mode (dropout off)"


def _unapplied_note(obj: Any, model_kwargs: Mapping[str, Any], cls: Any) -> str:
    """A note where a checkpoint records ``hyper_parameters`` (Lightning) and the class was
    built without any --model-kwargs: sizes the weights check, but dropout, a padding index or
    a flag they do not show would be the class's defaults, not the checkpoint's. It names those
    the class takes (by name, or by ``**kwargs``) whose saved value is not its default."""
    saved = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if model_kwargs or not isinstance(saved, Mapping) or not saved:
        return ""
    try:
        params = _constructor_parameters(cls)
    except (TypeError, ValueError):  # no signature to read: name them all
        params = {}
    saved = _arguments_saved(saved, params)
    # a class that takes none of them by name takes them another way (one hparams dict)
    rest = any(p.kind is p.VAR_KEYWORD for p in params.values())
    rest = rest or not any(str(name) in params for name in saved)
    differ = []
    for name, value in saved.items():
        param = params.get(str(name))
        if param is None and not rest:
            continue
        default = param.default if param is not None else inspect.Parameter.empty
        try:  # a saved list is the default's tuple (YAML has no tuples)
            same = bool(_plain(default) == _plain(value))
        except Exception:  # an array's ==, or one that raises
            same = False
        if not same:
            differ.append(f"{name}={reprlib.repr(value)}")
    if not differ:
        return ""
    return (
        f"; built with the class's defaults, not the checkpoint's hyper_parameters that differ "
        f"from them ({_preview(differ)[1:-1]}): pass them with --model-kwargs"
    )


def _constructor_parameters(cls: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters ``cls(...)`` takes; for a subclass that only passes ``*args, **kwargs``
    on (the usual way to patch a model), those of the first base class that names its own."""
    params = inspect.signature(cls).parameters
    passing = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not params or any(p.kind not in passing for p in params.values()):
        return params
    for base in getattr(cls, "__mro__", ())[1:]:
        if base in (object, nn.Module):
            break
        if "__init__" in vars(base):
            named = inspect.signature(base).parameters
            if any(p.kind not in passing for p in named.values()):
                return named
    return params


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, for comparing a saved hyper-parameter with a default."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _arguments_saved(saved: Mapping[Any, Any], params: Mapping[str, Any]) -> Mapping[Any, Any]:
    """The hyper_parameters that hold the class's arguments: ``saved``, or the entries of a
    config one level down where the class takes those and none of ``saved``'s names
    (deepspeech.pytorch saves ``{"labels": [...], "model_cfg": {sizes...}}``)."""
    nested = {
        str(k): v
        for value in saved.values()
        if isinstance(value, Mapping)
        for k, v in value.items()
        if str(k) in params
    }
    if nested and not any(str(name) in params for name in saved):
        return nested
    return saved


def _layer_count_differs(state: Iterable[str], keys: Iterable[str]) -> bool:
    """Whether the weights and the class differ only in a recurrent layer's layers
    (``weight_ih_l1``): a layer count, a size to pass (review30 M2: any key named otherwise
    in the same modules was taken for one)."""
    differ = set(state) ^ set(keys)
    return bool(differ) and all(_LAYER_INDEXED.search(key) for key in differ)


#: A recurrent layer's weight of one of its layers: ``weight_ih_l1``, ``bias_hh_l0_reverse``.
_LAYER_INDEXED = re.compile(r"_l\d+(_reverse)?$")


def _same_modules(state: Iterable[str], keys: Iterable[str]) -> bool:
    """Whether two sets of weight names name the same modules (their tensors may differ: a
    recurrent layer's ``_l1`` weights where it has one layer more)."""

    def modules(names: Iterable[str]) -> set[str]:
        return {name.rpartition(".")[0] for name in names}

    return modules(state) == modules(keys)


def _kwargs_hint(obj: Any, cls: Any) -> str:
    """What to do when a class built with its defaults does not fit the weights' sizes: pass
    its arguments, the ones a Lightning checkpoint recorded where it has them."""
    saved = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    simple = (bool, int, float, str, type(None))
    if isinstance(saved, Mapping) and saved:
        params: Mapping[str, Any] = {}
        with contextlib.suppress(TypeError, ValueError):  # no signature to read: as saved
            params = _constructor_parameters(cls)
            saved = _arguments_saved(saved, params)
        known = {str(k): v for k, v in saved.items() if isinstance(v, simple)}
        # a class that names its arguments takes only those (a training run's lr is not one)
        taken = {k: v for k, v in known.items() if k in params}
        if taken and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            text = json.dumps(taken)
            given = text if len(text) <= 300 else "{...}"
            return (
                "the class was built with its defaults; pass the checkpoint's hyper_parameters "
                f"that it takes: --model-kwargs '{given}'"
            )
        text = json.dumps(known)
        if len(text) > 300:
            text = text[:300] + "..."
        return (
            f"the class was built with its defaults; the checkpoint's hyper_parameters are "
            f"{text}: pass the ones it takes with --model-kwargs '{{...}}'"
        )
    return "the class was built with its defaults: pass its sizes with --model-kwargs '{...}'"


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str, path: Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first bad keys."""
    _compare(module, state, what, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path}: weights do not fit {what}: {_first_sentence(str(exc))}"
        ) from None


def _compare(module: nn.Module, state: Mapping[str, Tensor], what: str, path: Path) -> None:
    """Refuse, naming the first bad keys, weights whose keys or shapes differ from the model's."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {_preview(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch:", mismatched),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(
            f"{path}: weights do not fit {what}: "
            + "; ".join(problems)
            + (_QAT_STATE if any(_QAT_KEY.search(k) for k in unexpected) else "")
            + _named_otherwise(missing, unexpected)
        )


#: Keys of quantization-aware training's fake-quant modules and observers (``prepare_qat``).
_QAT_KEY = re.compile(r"(_fake_quant|activation_post_process)\.")
#: What a refusal says of them (users49 F3: it listed the keys alone).
_QAT_STATE = (
    "; those are quantization-aware training's fake-quant and observer state, which birnn-export "
    "does not export: save the float model's state_dict without them (its numbers then lack "
    "the fake quantization), and --quantize int8 writes an int8 graph of it"
)


#: How a refusal says the class names its layers otherwise than the file.
_NAMED_OTHERWISE = "the class names its layers otherwise than the file"


def _named_otherwise(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """Where the keys that differ sit in modules only the file has and modules only the class
    has (Nakdimon's ``lstm1``/``lstm2`` against a class's one ``lstm``: users46 F4), that their
    names differ: a constructor argument may choose them (``mlp_head=True``: review28 M3), else
    the class is not the one the weights were saved from."""

    def modules(keys: Sequence[str]) -> set[str]:
        return {k.rpartition(".")[0] for k in keys}

    only_file = sorted(modules(unexpected) - modules(missing))
    only_class = sorted(modules(missing) - modules(unexpected))
    if not only_file or not only_class or "" in only_file + only_class:
        return ""
    return (
        f"; {_NAMED_OTHERWISE} ({_preview(only_class, 3)} where the file has "
        f"{_preview(only_file, 3)}): where a constructor argument chooses those layers, pass "
        "it with --model-kwargs; else load the weights into the class they were saved from, or "
        "rename the keys to the class's"
    )


# -- recognising bare state_dicts --------------------------------------------------------------


def _recognise(
    state: dict[str, Tensor], nonlinearity: str, path: Path, time_major: bool = False
) -> tuple[TaggerConfig, dict[str, Tensor], str]:
    """Config, state_dict in SequenceTagger names, and a description of the layout found."""
    try:
        return _recognise_layout(state, nonlinearity, time_major)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def _recognise_layout(
    state: dict[str, Tensor], nonlinearity: str, time_major: bool = False
) -> tuple[TaggerConfig, dict[str, Tensor], str]:
    recurrent: dict[str, dict[str, Tensor]] = {}
    others: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _RECURRENT_KEY.match(key)
        if match:
            recurrent.setdefault(match["prefix"] or "", {})[match["name"]] = value
        else:
            module, _, leaf = key.rpartition(".")
            others.setdefault(module, {})[leaf] = value

    crfs = [name for name, leaves in others.items() if set(leaves) == set(_CRF_KEYS)]
    seed = None if crfs else _recognise_seed(recurrent, others, nonlinearity)
    if seed is not None:
        return seed
    if len(recurrent) == 1 and len(crfs) <= 1:
        crf = others.pop(crfs[0]) if crfs else None
        found = _recognise_builtin(recurrent, others, nonlinearity)
        if found is not None:
            return found if crf is None else _with_crf(found, crfs[0], crf)
        if crf is not None:
            others[crfs[0]] = crf
        layer = next(iter(recurrent)) or "<root>"
        reason = (
            f"one recurrent layer {layer!r}, but the other modules {_preview(others)} are not an "
            "optional embedding and one linear head reading its output"
            if others
            else f"one recurrent layer {layer!r} and no linear head after it"
        )
        if not others and not next(iter(recurrent)):  # a bare layer's own: it can be built
            raise ModelLoadError(_bare_layer(recurrent[""], nonlinearity, time_major))
    elif recurrent:
        reason = f"{len(recurrent)} recurrent layers {_preview(recurrent)}"
    else:
        reason = "no recurrent layer"
    raise ModelLoadError(
        f"unrecognised state_dict layout: {reason} ({_describe_keys(state)}); expected "
        "the seed article's forward_*/backward_*/output_layer or one nn.RNN/LSTM/GRU with an "
        "optional embedding and a linear head; pass your class with --model-class module:Class "
        "(model_class=...)"
    )


def _bare_layer(params: dict[str, Tensor], nonlinearity: str, time_major: bool) -> str:
    """The refusal of a bare nn.LSTM/GRU/RNN's own state_dict, with the options that build it
    from its sizes (users41: told to pass a class, not which one); a ReLU RNN and a time-major
    layer go in its keyword arguments, which --nonlinearity and --time-major do not reach."""
    cell, input_size, hidden, layers, bidirectional, bias, proj = _layer_geometry(
        params, nonlinearity, "<root>"
    )
    kwargs: dict[str, Any] = {"input_size": input_size, "hidden_size": hidden}
    if layers > 1:
        kwargs["num_layers"] = layers
    if bidirectional:
        kwargs["bidirectional"] = True
    if not bias:
        kwargs["bias"] = False
    if proj:
        kwargs["proj_size"] = proj
    if cell == "rnn_relu":
        kwargs["nonlinearity"] = "relu"
    kwargs["batch_first"] = not time_major
    name = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    unsaid = "batch_first as it was built" + (
        ', "nonlinearity": "relu" if ReLU' if cell == "rnn_tanh" else ""
    )
    return (
        f"the state_dict of a bare nn.{name} (no model around it): build that layer with "
        f"--model-class torch.nn:{name} --model-kwargs '{json.dumps(kwargs)}' ({unsaid}: the "
        f"weights do not say; Python: model_class='torch.nn:{name}', model_kwargs={{...}})"
    )


def _recognise_seed(
    recurrent: dict[str, dict[str, Tensor]],
    others: dict[str, dict[str, Tensor]],
    nonlinearity: str,
) -> tuple[TaggerConfig, dict[str, Tensor], str] | None:
    """The seed article's classes: two unidirectional layers and ``output_layer``."""
    names = sorted(recurrent)
    if len(names) != 2 or set(others) != {"output_layer"}:
        return None
    backward, forward = names
    if not (forward.startswith("forward_") and backward == "backward_" + forward[8:]):
        return None
    fwd, bwd = recurrent[forward], recurrent[backward]
    if set(fwd) != set(bwd) or any(fwd[k].shape != bwd[k].shape for k in fwd):
        raise ModelLoadError(
            f"seed article layout: {forward} and {backward} have different weights "
            f"({_preview(sorted(fwd))} vs {_preview(sorted(bwd))})"
        )
    cell, input_size, hidden, layers, bidirectional, bias, proj = _layer_geometry(
        fwd, nonlinearity, forward
    )
    if layers != 1 or bidirectional or proj:
        # Two separately stacked directions are not a stacked bidirectional layer: layer 2 of
        # each would read only its own direction's output.
        raise ModelLoadError(
            f"seed article layout: {forward}/{backward} must be single-layer unidirectional "
            f"layers (found {layers} layer(s), bidirectional={bidirectional}); pass --model-class"
        )
    head = _as_head(others["output_layer"], 2 * hidden)
    if head is None:
        return None
    tagger_state = {f"rnn.{k}": v for k, v in fwd.items()}
    tagger_state.update({f"rnn.{k}_reverse": v for k, v in bwd.items()})
    tagger_state.update({f"head.{k}": v for k, v in head.items()})
    config = TaggerConfig(
        cell=cell,
        input_size=input_size,
        hidden_size=hidden,
        output_size=head["weight"].shape[0],
        bias=bias,
        uses_lengths=True,
    )
    layout = f"seed article layout ({forward}/{backward}, {_cell_name(cell)})"
    if forward == "forward_rnn" and cell == "rnn_tanh" and bias:
        state = {f"{forward}.{k}": v for k, v in fwd.items()}
        state |= {f"{backward}.{k}": v for k, v in bwd.items()}
        state |= {f"output_layer.{k}": v for k, v in others["output_layer"].items()}
        difference = _example3_difference(config, tagger_state, state)
        layout += (
            "; rebuilt with per-row reversal (torch's bidirectional RNN on a PackedSequence): "
            "if this is the article's Example 3, its own flip-then-pack forward differs from "
            f"that by {difference:.2f} on a ragged batch (lengths 12, 5, 1, 9)"
        )
    return config, tagger_state, layout


def _example3_difference(
    config: TaggerConfig, tagger_state: dict[str, Tensor], article_state: dict[str, Tensor]
) -> float:
    """Max difference at valid steps between the seed article's Example 3 forward with these
    weights and torch's packed bidirectional RNN with the same weights."""
    from birnn_export.seed import ManualBidirectionalRNNVariableLength

    article = ManualBidirectionalRNNVariableLength(
        config.input_size, config.hidden_size, config.output_size
    )
    article.load_state_dict(article_state)
    reference = _reference(config, tagger_state)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, config.input_size, generator=generator)
    lengths = torch.tensor([12, 5, 1, 9])
    valid = torch.arange(12)[None, :] < lengths[:, None]
    with torch.no_grad():
        difference = (article.eval()(x, lengths) - reference.eval()(x, lengths))[valid]
    return float(difference.abs().max())


def _recognise_builtin(
    recurrent: dict[str, dict[str, Tensor]],
    others: dict[str, dict[str, Tensor]],
    nonlinearity: str,
) -> tuple[TaggerConfig, dict[str, Tensor], str] | None:
    """One built-in recurrent layer, an optional embedding before it, a linear head after it."""
    prefix, params = next(iter(recurrent.items()))
    cell, input_size, hidden, layers, bidirectional, bias, proj = _layer_geometry(
        params, nonlinearity, prefix or "<root>"
    )
    features = (proj or hidden) * (2 if bidirectional else 1)
    if not 1 <= len(others) <= 2:
        return None
    order = list(others)  # state_dict order: registration order, embedding usually first
    solutions = []
    for head_name in order:
        head = _as_head(others[head_name], features)
        rest = [n for n in order if n != head_name]
        if head is None:
            continue
        if not rest:
            solutions.append((None, head_name, head))
        elif _is_embedding(others[rest[0]], input_size):
            solutions.append((rest[0], head_name, head))
    if not solutions:
        return None
    # Both modules fit both roles only when they are weight-only and input_size == features;
    # then the one registered first is the embedding.
    embedding, head_name, head = max(solutions, key=lambda s: order.index(s[1]))
    tagger_state = {f"rnn.{k}": v for k, v in params.items()}
    tagger_state.update({f"head.{k}": v for k, v in head.items()})
    vocab_size = None
    if embedding is not None:
        tagger_state["embedding.weight"] = others[embedding]["weight"]
        vocab_size = others[embedding]["weight"].shape[0]
    config = TaggerConfig(
        cell=cell,
        input_size=input_size,
        hidden_size=hidden,
        output_size=head["weight"].shape[0],
        num_layers=layers,
        bidirectional=bidirectional,
        bias=bias,
        vocab_size=vocab_size,
        uses_lengths=True,
        proj_size=proj,
    )
    shape = f"{layers} layer(s), {'bidirectional' if bidirectional else 'unidirectional'}"
    shape += f", proj_size {proj}" if proj else ""
    parts = [f"built-in {_cell_name(cell)} layer {prefix or '<root>'!r} ({shape})"]
    if embedding is not None:
        parts.append(f"embedding {embedding!r}")
    bias_note = "" if "bias" in others[head_name] else " (no bias)"
    parts.append(f"linear head {head_name!r}{bias_note}")
    # Keys cannot tell a per-step tagger from a classifier on the final state (same weights):
    # say which one was rebuilt, so a wrong guess is visible.
    assumption = "rebuilt as a per-step tagger; for another forward pass use --model-class"
    return config, tagger_state, " + ".join(parts) + f" ({assumption})"


def _with_crf(
    found: tuple[TaggerConfig, dict[str, Tensor], str], name: str, crf: dict[str, Tensor]
) -> tuple[TaggerConfig, dict[str, Tensor], str]:
    """A recognised tagger with the CRF ``name`` (``torchcrf.CRF``'s parameters) after it."""
    config, state, description = found
    tags = config.output_size
    shapes = [tuple(crf[k].shape) for k in _CRF_KEYS]
    if shapes != [(tags,), (tags,), (tags, tags)]:
        raise ModelLoadError(
            f"CRF {name!r}: start/end/transitions of shapes {shapes} do not fit the head's "
            f"{tags} tags; pass your class with --model-class module:Class (model_class=...)"
        )
    state = {**state, **{f"crf.{k}": crf[k] for k in _CRF_KEYS}}
    note = (
        f" + CRF {name!r} ({tags} tags; Viterbi decode over each row's lengths, as "
        "torchcrf's decode with mask = positions < lengths)"
    )
    return (
        dataclasses.replace(config, crf=True),
        state,
        description.replace(" (rebuilt as", note + " (rebuilt as", 1),
    )


def _layer_geometry(
    params: dict[str, Tensor], nonlinearity: str, where: str
) -> tuple[str, int, int, int, bool, bool, int]:
    """``(cell, input_size, hidden_size, num_layers, bidirectional, bias, proj_size)`` from
    weight shapes (an LSTM with ``proj_size`` has ``weight_hr_l*`` ``[proj_size, hidden]``)."""
    w_ih, w_hh = params.get("weight_ih_l0"), params.get("weight_hh_l0")
    if w_ih is None or w_hh is None or w_ih.dim() != 2 or w_hh.dim() != 2 or w_hh.shape[1] < 1:
        raise ModelLoadError(f"{where}: recurrent weights without 2-D weight_ih_l0/weight_hh_l0")
    w_hr = params.get("weight_hr_l0")
    proj = 0
    if w_hr is not None:
        if w_hr.dim() != 2 or w_hr.shape[0] != w_hh.shape[1] or w_hr.shape[1] <= w_hr.shape[0]:
            raise ModelLoadError(
                f"{where}: weight_hr_l0 {tuple(w_hr.shape)} is not an LSTM projection "
                f"[proj_size, hidden_size] for weight_hh_l0 {tuple(w_hh.shape)}"
            )
        proj = w_hr.shape[0]
    hidden = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    gates, rest = divmod(w_ih.shape[0], hidden)
    if rest or gates not in set(GATES.values()):
        raise ModelLoadError(
            f"{where}: weight_ih_l0 has {w_ih.shape[0]} rows for hidden size {hidden}; expected "
            "4 (LSTM), 3 (GRU) or 1 (RNN) times the hidden size"
        )
    cell = _CELL_BY_GATES.get(gates, f"rnn_{nonlinearity}")
    if proj and cell != "lstm":
        raise ModelLoadError(f"{where}: weight_hr_l0 (a projection) on a {_cell_name(cell)}")
    indices = sorted({int(m["layer"]) for k in params if (m := _RECURRENT_KEY.match(k))})
    if indices != list(range(len(indices))):
        raise ModelLoadError(f"{where}: layer indices {indices} are not 0..{len(indices) - 1}")
    bidirectional = any(k.endswith("_reverse") for k in params)
    return cell, w_ih.shape[1], hidden, len(indices), bidirectional, "bias_ih_l0" in params, proj


def _as_head(params: dict[str, Tensor], features: int) -> dict[str, Tensor] | None:
    """``{"weight", "bias"}`` of an ``nn.Linear(features, out)``, zero bias filled in if absent."""
    weight = params.get("weight")
    if set(params) - {"weight", "bias"} or weight is None or weight.dim() != 2:
        return None
    if weight.shape[1] != features:
        return None
    bias = params.get("bias")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    elif tuple(bias.shape) != (weight.shape[0],):
        return None
    return {"weight": weight, "bias": bias}


def _is_embedding(params: dict[str, Tensor], input_size: int) -> bool:
    weight = params.get("weight")
    return set(params) == {"weight"} and weight.dim() == 2 and weight.shape[1] == input_size


def _reference(config: TaggerConfig, state: dict[str, Tensor]) -> TorchReference:
    """torch's own layers with the weights of a rebuilt SequenceTagger."""
    tagger = SequenceTagger(config)
    tagger.load_state_dict(state, strict=True)
    reference = tagger.to_torch()
    reference.rebuilt = True
    return reference


# -- messages ----------------------------------------------------------------------------------


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
    )


def _preview(items: Any, limit: int = 5) -> str:
    names = [str(k) for k in items]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + "]" + more


def _describe_keys(state: Mapping[str, Tensor]) -> str:
    modules = list(dict.fromkeys(k.rpartition(".")[0] or "<root>" for k in state))
    return f"{len(state)} tensors in modules {_preview(modules)}, e.g. {_preview(list(state), 3)}"


def _cell_name(cell: str) -> str:
    return {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN tanh", "rnn_relu": "RNN relu"}[cell]


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    head = line.split(". ")[0]
    return head[:300]


def _last_detail(text: str) -> str:
    """The specific reason in torch's long weights_only message (e.g. 'Unsupported operand 149')."""
    match = re.search(r"(Unsupported operand \d+|Unsupported class [\w.]+)", text)
    return match.group(1) if match else _first_sentence(text)
