"""Numerical verification of an exported graph against eager PyTorch, across shapes.

:func:`verify` reads the graph's contract (:class:`~birnn_export.spec.GraphSpec`) from the ONNX
file, builds valid inputs for a sweep of batch sizes and sequence lengths (ragged and equal
lengths, unit-scale and large-magnitude features), runs every requested engine and the eager
reference, and compares:

* each output at its valid time steps (``t < lengths[b]``) when the graph takes lengths, the whole
  tensor otherwise; final states (role ``"state"``) in full;
* the padded positions separately: if the reference writes exactly the padding value there, the
  engine must too, otherwise the engine must match the reference there;
* batch invariance: every row run alone (batch 1, its own length) equals its row in the batch.

On a mismatch of a bidirectional layer's own outputs, the forward and backward halves are
compared separately, with the first diverging step of every row, so a reversal bug (backward half
wrong from step 0 in the short rows only) reads differently from numeric drift. For a model
with later layers (e.g. a head), whose outputs are no longer split by direction, the last
recurrent layer's own output is compared instead: its ONNX ``Y`` (an in-memory copy of the graph
with ``Y`` added as outputs, on ONNX Runtime CPU) against a forward hook on the reference's layer.

Example:
    >>> report = verify("model.onnx", model, engines=("ort-cpu",))  # doctest: +SKIP
    >>> report.passed, report.summary()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birnn_export._diagnose import LayerProbe, diagnose_directions, diagnose_layer
from birnn_export._files import atomic_path
from birnn_export._report import abs_errors, environment, json_safe, outside_tolerance
from birnn_export._report import render_report as render_report
from birnn_export.errors import BiRNNExportError, VerificationError
from birnn_export.spec import (
    GraphSpec,
    TensorSpec,
    Tolerance,
    covering_range,
    default_tolerance,
    load_onnx,
    make_feed,
)

logger = logging.getLogger(__name__)

#: Batch sizes of the default sweep.
DEFAULT_BATCH_SIZES = (1, 3, 16)
#: Batch sizes and length factors of :func:`quick_verify`.
QUICK_BATCH_SIZES = (1, 3)
#: Scale of the large-magnitude feature case (N(0, 1) times this).
LARGE_SCALE = 10.0


# -- tolerances ------------------------------------------------------------------------------


ToleranceOverride = float | Mapping[str, float] | None


def resolve_tolerance(
    output: TensorSpec, engine: str, atol: ToleranceOverride, rtol: ToleranceOverride
) -> Tolerance:
    """Default tolerance for ``output`` on ``engine`` with the user's overrides applied.

    ``atol`` / ``rtol`` are a number (all outputs) or a mapping from output name to number; the
    key ``"*"`` in a mapping sets the value for outputs not named.
    """
    base = default_tolerance(output.dtype, engine)
    return Tolerance(
        _override(atol, output.name, base.atol),
        _override(rtol, output.name, base.rtol),
        base.rel_l2,
    )


def _override(value: ToleranceOverride, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        return float(value.get(name, value.get("*", default)))
    return float(value)


def _check_overrides(spec: GraphSpec, **overrides: ToleranceOverride) -> None:
    names = {t.name for t in spec.outputs}
    for option, value in overrides.items():
        if value is None:
            continue
        items = value.items() if isinstance(value, Mapping) else [("*", value)]
        for key, number in items:
            if key != "*" and key not in names:
                raise BiRNNExportError(
                    f"{option}: the graph has no output {key!r}; its outputs are "
                    f"{', '.join(sorted(names))}"
                )
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
                raise BiRNNExportError(f"{option}: expected a finite number >= 0, got {number!r}")


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputResult:
    """One check of one output in one case.

    ``check`` is ``"values"`` (valid time steps, or the whole tensor), ``"padding"`` (positions
    past each row's length) or ``"batch-invariance"`` (rows run alone vs in the batch).
    ``max_rel`` is taken over elements whose expected value is not 0.
    """

    name: str
    role: str
    check: str
    max_abs: float
    max_rel: float
    mean_abs: float
    atol: float
    rtol: float
    passed: bool
    rel_l2: float | None = None
    rel_l2_limit: float | None = None
    elements: int = 0
    note: str = ""


@dataclass(frozen=True)
class CaseResult:
    """One engine at one input shape: the outputs' checks, or the error the engine raised."""

    engine: str
    batch: int
    seq: int
    lengths_mode: str
    scale: float
    seed: int
    lengths: tuple[int, ...] | None
    outputs: tuple[OutputResult, ...]
    error: str | None = None
    diagnosis: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(o.passed for o in self.outputs)

    @property
    def label(self) -> str:
        scale = f" x{self.scale:g}" if self.scale != 1.0 else ""
        return f"{self.engine} B={self.batch} T={self.seq} {self.lengths_mode}{scale}"


@dataclass(frozen=True)
class VerifyReport:
    """Everything :func:`verify` compared; ``passed`` only if every case and check passed."""

    onnx_path: str
    reference: str
    reference_dtype: str
    engines: tuple[str, ...]
    providers: dict[str, tuple[str, ...]]
    cases: tuple[CaseResult, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    saved_inputs: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.cases)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if not c.passed)

    def summary(self) -> str:
        """One line: PASS/FAIL, counts, and the worst failing check."""
        total, failed = len(self.cases), self.failures
        if self.passed:
            return (
                f"PASS: {total} case(s) on {', '.join(self.engines)} match {self.reference} "
                "within tolerance"
            )
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {total} case(s) failed")
            first = failed[0]
            if first.error is not None:
                parts.append(f"first: {first.label}: engine error: {first.error}")
            else:
                bad = max(
                    (o for o in first.outputs if not o.passed),
                    key=lambda o: o.max_abs if math.isfinite(o.max_abs) else math.inf,
                )
                parts.append(
                    f"first: {first.label}: output {bad.name!r} {bad.check}: max abs "
                    f"{bad.max_abs:.3g}, max rel {bad.max_rel:.3g} (atol {bad.atol:g}, "
                    f"rtol {bad.rtol:g}){' - ' + bad.note if bad.note else ''}"
                )
        if self.problems:
            parts.append(f"graph problems: {'; '.join(self.problems)}")
        return "FAIL: " + "; ".join(parts)

    def raise_for_failure(self) -> None:
        """Raise :class:`~birnn_export.errors.VerificationError` (exit code 1) unless passed."""
        if self.passed:
            return
        message = self.summary()
        diagnosis = self.diagnosis()
        if diagnosis:
            message += " | " + " ".join(diagnosis.splitlines()[0].split())
        raise VerificationError(message)

    def diagnosed_failures(self) -> tuple[CaseResult, ...]:
        """Failing cases that carry a diagnosis, most telling first: ragged lengths with a
        full-length row and a batch above one, since they separate reversal from weights."""

        def rank(case: CaseResult) -> tuple[bool, bool, bool]:
            full = case.lengths is not None and case.seq in case.lengths
            return (case.lengths_mode != "ragged", not full, case.batch == 1)

        return tuple(sorted((c for c in self.failures if c.diagnosis), key=rank))

    def diagnosis(self) -> str | None:
        """The direction diagnosis of the most telling failing case (see
        :meth:`diagnosed_failures`)."""
        ranked = self.diagnosed_failures()
        return ranked[0].diagnosis if ranked else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        for case, result in zip(data["cases"], self.cases, strict=True):
            case["passed"] = result.passed
        return json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as strict JSON (non-finite numbers become ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# -- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input shape of the sweep; :func:`case_feed` turns it into arrays."""

    batch: int
    seq: int
    lengths_mode: str
    scale: float
    seed: int


def default_seq_lens(spec: GraphSpec) -> tuple[int, ...]:
    """T in {1, 2, example_seq, 4 x example_seq, the declared maximum ``seq_range[2]``}."""
    return tuple(sorted({1, 2, spec.example_seq, 4 * spec.example_seq, spec.seq_range[2]}))


def plan_cases(
    spec: GraphSpec,
    *,
    batch_sizes: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    seed: int = 0,
    large_scale: float | None = LARGE_SCALE,
) -> list[Case]:
    """The sweep: every batch size x length, ragged and equal lengths (when the graph takes
    lengths), plus a large-magnitude ragged case (when it takes float features)."""
    batches = _check_sizes(
        "batch_sizes", DEFAULT_BATCH_SIZES if batch_sizes is None else batch_sizes
    )
    seqs = _check_sizes("seq_lens", default_seq_lens(spec) if seq_lens is None else seq_lens)
    modes = ("ragged", "equal") if spec.lengths_input is not None else ("full",)
    floats = any(t.role == "features" and t.dtype.startswith("float") for t in spec.inputs)
    cases = []
    for batch in batches:
        for seq in seqs:
            variants = [(mode, 1.0) for mode in modes]
            if floats and large_scale:
                variants.append((modes[0], float(large_scale)))
            for mode, scale in variants:
                cases.append(Case(batch, seq, mode, scale, seed + len(cases)))
    return cases


def _check_sizes(option: str, values: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(dict.fromkeys(values))
    if not sizes or any(not isinstance(v, (int, np.integer)) or v < 1 for v in sizes):
        raise BiRNNExportError(f"{option}: expected positive integers, got {list(values)}")
    return tuple(int(v) for v in sizes)


def case_feed(spec: GraphSpec, case: Case) -> dict[str, np.ndarray]:
    """The inputs of ``case``, reproducible from its seed."""
    return make_feed(
        spec, case.batch, case.seq, seed=case.seed, lengths=case.lengths_mode, scale=case.scale
    )


def row_feed(
    spec: GraphSpec, feed: Mapping[str, np.ndarray], row: int, length: int
) -> dict[str, np.ndarray]:
    """Row ``row`` of ``feed`` alone (batch 1), cut to ``length`` time steps."""
    single = {}
    for tensor in spec.inputs:
        value = feed[tensor.name]
        if tensor.batch_axis is not None:
            value = np.take(value, [row], axis=tensor.batch_axis)
        if tensor.time_axis is not None:
            value = np.take(value, np.arange(length), axis=tensor.time_axis)
        if tensor.role == "lengths":
            value = np.full_like(value, length)
        single[tensor.name] = np.ascontiguousarray(value)
    return single


# -- comparison ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stats:
    max_abs: float
    max_rel: float
    mean_abs: float
    rel_l2: float | None
    elements: int
    passed: bool


def _stats(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> _Stats:
    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if a.size == 0:
        return _Stats(0.0, 0.0, 0.0, None, 0, True)
    diff = abs_errors(a, e)
    nonzero = np.abs(e) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff[nonzero] / np.abs(e[nonzero])
    passed = not bool(outside_tolerance(a, e, tol.atol, tol.rtol).any())
    rel_l2 = None
    if tol.rel_l2 is not None:
        norm = float(np.linalg.norm(e))
        err = float(np.linalg.norm(np.where(np.isfinite(diff), diff, 0.0)))
        rel_l2 = err / norm if norm > 0 else (0.0 if err == 0 else math.inf)
        if not np.isfinite(diff).all():
            rel_l2 = math.inf
        passed = passed and rel_l2 < tol.rel_l2
    return _Stats(
        max_abs=float(diff.max()),
        max_rel=float(rel.max()) if rel.size else 0.0,
        mean_abs=float(diff.mean()) if np.isfinite(diff).all() else math.inf,
        rel_l2=rel_l2,
        elements=int(a.size),
        passed=passed,
    )


def _result(
    tensor: TensorSpec, check: str, stats: _Stats, tol: Tolerance, note: str = ""
) -> OutputResult:
    return OutputResult(
        name=tensor.name,
        role=tensor.role,
        check=check,
        max_abs=stats.max_abs,
        max_rel=stats.max_rel,
        mean_abs=stats.mean_abs,
        atol=tol.atol,
        rtol=tol.rtol,
        passed=stats.passed,
        rel_l2=stats.rel_l2,
        rel_l2_limit=tol.rel_l2,
        elements=stats.elements,
        note=note,
    )


def _failed_result(tensor: TensorSpec, check: str, tol: Tolerance, note: str) -> OutputResult:
    return OutputResult(
        tensor.name,
        tensor.role,
        check,
        math.inf,
        math.inf,
        math.inf,
        tol.atol,
        tol.rtol,
        False,
        note=note,
    )


def valid_mask(
    tensor: TensorSpec, shape: tuple[int, ...], lengths: np.ndarray
) -> np.ndarray | None:
    """True at ``t < lengths[b]``, broadcast to ``shape``; ``None`` without batch and time axes."""
    t_axis, b_axis = tensor.time_axis, tensor.batch_axis
    if t_axis is None or b_axis is None or len(shape) != len(tensor.dims):
        return None
    steps = np.arange(shape[t_axis])
    mask = steps[None, :] < np.asarray(lengths).reshape(-1, 1)  # [B, T]
    if b_axis > t_axis:
        mask = mask.T
    expand = [1] * len(shape)
    expand[b_axis], expand[t_axis] = shape[b_axis], shape[t_axis]
    return np.broadcast_to(mask.reshape(expand), shape)


def compare_outputs(
    spec: GraphSpec,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    tolerances: Mapping[str, Tolerance],
) -> list[OutputResult]:
    """``values`` and ``padding`` checks of every output in ``spec``."""
    results = []
    for tensor in spec.outputs:
        tol = tolerances[tensor.name]
        if tensor.name not in actual:
            results.append(_failed_result(tensor, "values", tol, "the engine did not return it"))
            continue
        got, want = np.asarray(actual[tensor.name]), np.asarray(expected[tensor.name])
        if got.shape != want.shape:
            note = f"shape {list(got.shape)}, reference {list(want.shape)}"
            results.append(_failed_result(tensor, "values", tol, note))
            continue
        mask = valid_mask(tensor, want.shape, lengths) if lengths is not None else None
        if mask is None:
            results.append(_result(tensor, "values", _stats(got, want, tol), tol))
            continue
        results.append(
            _result(tensor, "values", _stats(got[mask], want[mask], tol), tol, "valid steps")
        )
        padded = ~mask
        if padded.any():
            pad = np.float64(spec.padding_value)
            if np.all(want[padded] == pad):
                # The reference writes exactly the padding value: the engine must too.
                stats = _stats(got[padded], np.full(int(padded.sum()), pad), tol)
                note = f"must equal padding value {spec.padding_value:g}"
            else:
                stats = _stats(got[padded], want[padded], tol)
                note = "vs reference (the reference does not write the padding value here)"
            results.append(_result(tensor, "padding", stats, tol, note))
    return results


# -- runners ---------------------------------------------------------------------------------


def _root_bidirectional_hidden(*modules: Any) -> int | None:
    """``hidden_size`` if one of ``modules`` is itself a bidirectional recurrent layer."""
    from torch import nn

    from birnn_export.modules import BiRNN

    for module in modules:
        if isinstance(module, (BiRNN, nn.RNNBase)) and module.bidirectional:
            return int(module.hidden_size)
    return None


def _packed_reference(layer: Any, padding_value: float) -> Any:
    """Wrap a bare ``nn.RNN/LSTM/GRU`` to run on ``pack_padded_sequence`` input: torch's own
    reference for a graph that takes lengths."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class PackedReference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Any, lengths: Any) -> Any:
            first = self.layer.batch_first
            packed = pack_padded_sequence(
                x, lengths.cpu().long(), batch_first=first, enforce_sorted=False
            )
            out, hidden = self.layer(packed)
            out, _ = pad_packed_sequence(
                out,
                batch_first=first,
                padding_value=padding_value,
                total_length=x.shape[1 if first else 0],
            )
            return out, hidden

    return PackedReference()


def _resolve_models(model: Any, reference: Any) -> tuple[Any, Any, str, str | None]:
    """(converted model, reference module, how the reference was chosen, source sha256)."""
    sha = None
    if hasattr(model, "model") and hasattr(model, "source"):  # a LoadedModel
        sha = getattr(model, "sha256", None)
        converted, original = model.model, getattr(model, "original", None)
        if reference is None:
            if original is not None:
                reference, how = original, "torch's built-in layers (the original model)"
            else:
                reference, how = converted, "the loaded model (nothing needed conversion)"
        else:
            how = "the given reference model"
        return converted, reference, how, sha
    if reference is None:
        return model, model, "the given model", sha
    return model, reference, "the given reference model", sha


def _reference_runner(reference: Any, spec: GraphSpec, dtype: str) -> Any:
    from torch import nn

    from birnn_export.runners import TorchRunner

    module = copy.deepcopy(reference)
    if isinstance(module, nn.RNNBase) and spec.lengths_input is not None:
        module = _packed_reference(module, spec.padding_value)
    return TorchRunner(
        module,
        [t.name for t in spec.inputs],
        [t.name for t in spec.outputs],
        dtype=dtype,
    )


def trt_profile(
    cases: Sequence[Case],
    *,
    batch_invariance: bool = True,
    declared: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(min, opt, max) batch sizes and sequence lengths for the TensorRT engines' optimisation
    profile: the graph's ``declared`` ranges (so the engine verified is the one that would be
    served), widened to cover every run of the sweep. Without ``declared``: the sweep's bounds,
    with ``opt`` the largest shape.

    The batch-invariance runs feed each row alone (batch 1, T = its own length, down to 1), so
    with them the minimum batch and length are 1.

    Example:
        >>> trt_profile([Case(64, 300, "ragged", 1.0, 0), Case(4, 8, "ragged", 1.0, 1)])
        ((1, 64, 64), (1, 300, 300))
        >>> trt_profile([Case(3, 9, "ragged", 1.0, 0)], declared=((1, 8, 32), (1, 64, 256)))
        ((1, 8, 32), (1, 64, 256))
    """
    batches = [c.batch for c in cases] + ([1] if batch_invariance else [])
    seqs = [c.seq for c in cases] + ([1] if batch_invariance else [])
    if declared is not None:
        return covering_range(declared[0], batches), covering_range(declared[1], seqs)
    return (min(batches), max(batches), max(batches)), (min(seqs), max(seqs), max(seqs))


def _engine_runner(
    engine: str,
    onnx_path: str,
    converted: Any,
    spec: GraphSpec,
    profile: tuple[tuple[int, int, int], tuple[int, int, int]],
) -> Any:
    from birnn_export import runners
    from birnn_export.errors import EngineUnavailableError

    reason = runners.availability(engine)
    if reason:  # refuse before the sweep starts, not once per case
        raise EngineUnavailableError(reason)
    return runners.make_runner(
        engine,
        onnx_path,
        model=copy.deepcopy(converted) if engine == "torch" else None,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        profile_batch=profile[0],
        profile_seq=profile[1],
    )


# -- progress --------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar that appears only once the sweep has run for more than a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    def advance(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is None and time.perf_counter() - self.start > 1.0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("verify"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, completed=self.done)
        elif self._bar is not None:
            self._bar.update(self._task, advance=1, description=label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- the entry point -------------------------------------------------------------------------


def verify(
    onnx_path: str | os.PathLike[str],
    model: Any,
    *,
    engines: Sequence[str] = ("ort-cpu",),
    batch_sizes: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    seed: int = 0,
    atol: ToleranceOverride = None,
    rtol: ToleranceOverride = None,
    fp64_reference: bool = False,
    reference: Any = None,
    progress: bool = False,
    batch_invariance: bool = True,
    large_scale: float | None = LARGE_SCALE,
    save_inputs: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Compare engines running ``onnx_path`` with eager PyTorch across a sweep of shapes.

    Args:
        onnx_path: A graph written by :func:`birnn_export.export_onnx` (its metadata drives the
            inputs).
        model: The model that was exported: a :class:`~birnn_export.checkpoint.LoadedModel`
            (then the reference is its ``original``, before conversion, where there is one) or
            an ``nn.Module`` (called with the graph's inputs, positionally, in order).
        engines: Engines to check, from :data:`birnn_export.runners.ENGINES`. ``"torch"`` runs
            the converted model eagerly (a check of the conversion itself).
        batch_sizes: Batch sizes of the sweep; default (1, 3, 16).
        seq_lens: Lengths of the sweep; default {1, 2, example_seq, 4 x
            example_seq, seq_range[2]}.
        seed: Seed of the first case; case ``i`` uses ``seed + i``.
        atol: Absolute tolerance override: a number, or ``{output name: number}`` (key ``"*"``
            for the rest). Defaults per dtype and engine: :func:`default_tolerance`.
        rtol: Relative tolerance override, like ``atol``.
        fp64_reference: Run the reference in float64 (a copy, inputs cast) as an oracle.
        reference: A module to use as the reference instead of the one derived from ``model``.
        progress: Show a progress bar on stderr if the sweep runs longer than a second.
        batch_invariance: Also run every row of each ragged case alone and compare.
        large_scale: Scale of the extra large-magnitude case; ``None`` skips it.
        save_inputs: Write the inputs of the failing cases (all cases if none failed) to this
            ``.npz`` (keys ``case<i>/<input name>``; ``cases`` holds each case as JSON).

    Returns:
        A :class:`VerifyReport`; call :meth:`VerifyReport.raise_for_failure` to turn a mismatch
        into :class:`~birnn_export.errors.VerificationError`.

    Raises:
        BiRNNExportError: unusable input (no birnn-export metadata, bad sweep or tolerance
            options, a reference model that does not accept the graph's inputs).
        EngineUnavailableError: a requested engine cannot run here (the message says why).

    Example:
        >>> report = verify("tagger.onnx", loaded, batch_sizes=(1, 4))  # doctest: +SKIP
        >>> report.raise_for_failure()  # doctest: +SKIP
    """
    start = time.perf_counter()
    onnx_path = str(onnx_path)
    if not Path(onnx_path).is_file():
        raise BiRNNExportError(f"{onnx_path}: no such ONNX file")

    proto = load_onnx(onnx_path)
    spec = GraphSpec.from_onnx(proto)
    engines = tuple(dict.fromkeys(engines))
    if not engines:
        raise BiRNNExportError("engines: name at least one engine")
    _check_overrides(spec, atol=atol, rtol=rtol)
    if save_inputs is not None and not Path(save_inputs).resolve().parent.is_dir():
        raise BiRNNExportError(f"save_inputs: directory {Path(save_inputs).parent} does not exist")
    cases = plan_cases(
        spec, batch_sizes=batch_sizes, seq_lens=seq_lens, seed=seed, large_scale=large_scale
    )
    converted, ref_module, how, sha = _resolve_models(model, reference)
    ref_dtype = (
        "float64" if fp64_reference else ("float64" if spec.dtype == "float64" else "float32")
    )
    problems = tuple(_graph_problems(proto, spec))
    notes = []
    if sha and spec.source_sha256 and sha != spec.source_sha256:
        notes.append(
            f"the graph was exported from a file with sha256 {spec.source_sha256[:12]}..., the "
            f"model given has {sha[:12]}...: they may not be the same weights"
        )
    hidden = _root_bidirectional_hidden(converted, ref_module)
    probe = None
    if hidden is None:
        probe = LayerProbe(proto, spec, (ref_module, converted), ref_dtype)
    profile = trt_profile(
        cases, batch_invariance=batch_invariance, declared=(spec.batch_range, spec.seq_range)
    )
    runners_ = {
        engine: _engine_runner(engine, onnx_path, converted, spec, profile) for engine in engines
    }
    lengths_name = spec.lengths_input.name if spec.lengths_input is not None else None

    results: list[CaseResult] = []
    saved: list[tuple[Case, dict[str, np.ndarray], bool]] = []
    providers: dict[str, tuple[str, ...]] = {}
    total = len(cases) * (1 + len(engines))
    bar = _Progress(total, progress)
    with contextlib.ExitStack() as stack:
        ref_runner = stack.enter_context(_reference_runner(ref_module, spec, ref_dtype))
        active = {e: stack.enter_context(r) for e, r in runners_.items()}
        providers = {e: tuple(r.providers()) for e, r in active.items()}
        try:
            for case in cases:
                feed = case_feed(spec, case)
                lengths = feed[lengths_name].astype(np.int64) if lengths_name else None
                expected = _run_reference(ref_runner, feed, case)
                bar.advance(f"B={case.batch} T={case.seq} reference")
                case_ok = True
                for engine, runner in active.items():
                    result = _run_case(
                        engine,
                        runner,
                        spec,
                        case,
                        feed,
                        expected,
                        lengths,
                        hidden,
                        {t.name: resolve_tolerance(t, engine, atol, rtol) for t in spec.outputs},
                        batch_invariance,
                        probe,
                    )
                    results.append(result)
                    case_ok = case_ok and result.passed
                    bar.advance(f"B={case.batch} T={case.seq} {engine}")
                saved.append((case, feed, case_ok))
        finally:
            bar.close()

    saved_path = _save_inputs(save_inputs, saved) if save_inputs is not None else None
    return VerifyReport(
        onnx_path=onnx_path,
        reference=how,
        reference_dtype=ref_dtype,
        engines=engines,
        providers=providers,
        cases=tuple(results),
        problems=problems,
        notes=tuple(notes),
        environment=environment(onnx_path),
        elapsed_s=time.perf_counter() - start,
        saved_inputs=saved_path,
    )


def quick_verify(
    onnx_path: str | os.PathLike[str],
    model: Any,
    *,
    engines: Sequence[str] = ("ort-cpu",),
    seed: int = 0,
    progress: bool = False,
) -> VerifyReport:
    """A short sweep for right after export: batch {1, 3} x T {1, example_seq, 4 x example_seq},
    ragged and equal lengths, large-magnitude features and batch invariance included."""
    spec = GraphSpec.from_onnx(str(onnx_path))
    seqs = sorted({1, spec.example_seq, 4 * spec.example_seq})
    return verify(
        onnx_path,
        model,
        engines=engines,
        batch_sizes=QUICK_BATCH_SIZES,
        seq_lens=seqs,
        seed=seed,
        progress=progress,
    )


def _run_reference(
    runner: Any, feed: Mapping[str, np.ndarray], case: Case
) -> dict[str, np.ndarray]:
    try:
        return runner.infer(feed)
    except Exception as exc:  # the user's model: any failure means it does not fit this graph
        raise BiRNNExportError(
            f"the reference model failed on the graph's inputs (batch {case.batch}, seq "
            f"{case.seq}): {_one_line(exc)}; is it the model this graph was exported from?"
        ) from None


def _run_case(
    engine: str,
    runner: Any,
    spec: GraphSpec,
    case: Case,
    feed: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    hidden: int | None,
    tolerances: Mapping[str, Tolerance],
    batch_invariance: bool,
    probe: Any = None,
) -> CaseResult:
    common = dict(
        engine=engine,
        batch=case.batch,
        seq=case.seq,
        lengths_mode=case.lengths_mode,
        scale=case.scale,
        seed=case.seed,
        lengths=tuple(int(v) for v in lengths) if lengths is not None else None,
    )
    try:
        actual = runner.infer(feed)
    except Exception as exc:  # an engine rejecting valid input is a verification failure
        return CaseResult(**common, outputs=(), error=_one_line(exc))
    outputs = compare_outputs(spec, actual, expected, lengths, tolerances)
    error = None
    if batch_invariance and case.scale == 1.0 and case.lengths_mode in ("ragged", "full"):
        try:
            outputs += _batch_invariance(runner, spec, feed, actual, lengths, case, tolerances)
        except Exception as exc:
            error = f"running single rows: {_one_line(exc)}"
    diagnosis = None
    failing = [o for o in outputs if not o.passed and o.check == "values"]
    if failing:
        ref_lengths = lengths if lengths is not None else np.full(case.batch, case.seq)
        sequence_ok = not any(o.role == "sequence" for o in failing)
        texts = []
        why = None
        if hidden is None and probe is not None:
            layer_text, why = diagnose_layer(
                probe, engine, feed, ref_lengths, case.seq, tolerances[failing[0].name]
            )
            if layer_text is not None:
                failing, texts = [], [layer_text]
        for result in failing:
            tensor = next(t for t in spec.outputs if t.name == result.name)
            if tensor.name in actual and np.shape(actual[tensor.name]) == np.shape(
                expected[tensor.name]
            ):
                texts.append(
                    diagnose_directions(
                        tensor,
                        np.asarray(actual[tensor.name]),
                        np.asarray(expected[tensor.name]),
                        ref_lengths,
                        hidden,
                        tolerances[tensor.name],
                        steps=case.seq,
                        sequence_ok=sequence_ok,
                        why=why,
                    )
                )
        diagnosis = "\n".join(texts) or None
    return CaseResult(**common, outputs=tuple(outputs), error=error, diagnosis=diagnosis)


def _batch_invariance(
    runner: Any,
    spec: GraphSpec,
    feed: Mapping[str, np.ndarray],
    batched: Mapping[str, np.ndarray],
    lengths: np.ndarray | None,
    case: Case,
    tolerances: Mapping[str, Tolerance],
) -> list[OutputResult]:
    """Each row alone (batch 1, T = its length) vs its row of the batched run (valid part)."""
    if case.batch == 1 and (lengths is None or int(lengths[0]) == case.seq):
        return []  # the single row is the batch
    outs = [t for t in spec.outputs if t.batch_axis is not None and t.name in batched]
    got: dict[str, list[np.ndarray]] = {t.name: [] for t in outs}
    want: dict[str, list[np.ndarray]] = {t.name: [] for t in outs}
    for row in range(case.batch):
        length = int(lengths[row]) if lengths is not None else case.seq
        single = runner.infer(row_feed(spec, feed, row, length))
        for tensor in outs:
            whole = np.take(np.asarray(batched[tensor.name]), [row], axis=tensor.batch_axis)
            alone = np.asarray(single[tensor.name])
            if tensor.time_axis is not None:
                whole = np.take(whole, np.arange(length), axis=tensor.time_axis)
            if whole.shape != alone.shape:
                raise RuntimeError(
                    f"output {tensor.name}: row {row} alone has shape {list(alone.shape)}, "
                    f"in the batch {list(whole.shape)}"
                )
            got[tensor.name].append(alone.ravel())
            want[tensor.name].append(whole.ravel())
    results = []
    for tensor in outs:
        tol = tolerances[tensor.name]
        stats = _stats(np.concatenate(got[tensor.name]), np.concatenate(want[tensor.name]), tol)
        results.append(
            _result(tensor, "batch-invariance", stats, tol, "each row alone vs in the batch")
        )
    return results


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _graph_problems(proto: Any, spec: GraphSpec) -> list[str]:
    """Inputs and outputs of the spec that the graph lacks or declares with a static batch/seq."""
    problems = []
    infos = {i.name: i for i in [*proto.graph.input, *proto.graph.output]}
    for tensor in (*spec.inputs, *spec.outputs):
        info = infos.get(tensor.name)
        if info is None:
            problems.append(f"{tensor.name}: in the metadata but not a graph input or output")
            continue
        dims = info.type.tensor_type.shape.dim
        for axis in (tensor.batch_axis, tensor.time_axis):
            if axis is None:
                continue
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                problems.append(
                    f"{tensor.name}: dim {axis} should be symbolic '{tensor.dims[axis]}', the "
                    f"graph declares {dims[axis].dim_value} (a size baked in at export)"
                )
    return problems


def _save_inputs(
    path: str | os.PathLike[str], saved: list[tuple[Case, dict[str, np.ndarray], bool]]
) -> str:
    """Write failing cases' inputs (all cases if none failed) atomically to an ``.npz``."""
    chosen = [(i, c, f) for i, (c, f, ok) in enumerate(saved) if not ok] or [
        (i, c, f) for i, (c, f, _) in enumerate(saved)
    ]
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for index, case, feed in chosen:
        for name, value in feed.items():
            arrays[f"case{index}/{name}"] = value
        meta.append({"case": index, **dataclasses.asdict(case)})
    arrays["cases"] = np.array(json.dumps(meta))
    with atomic_path(path) as temp:
        np.savez(temp, **arrays)
    return str(path)
