"""Why a verification failed: the direction-split diagnosis.

:func:`diagnose_directions` splits a bidirectional layer's output into its forward and backward
halves and says which one diverges, from which step, and whether that is a reversal bug.
:func:`diagnose_layer` does the same for models with a head, from the last recurrent layer's
own output, which the classes below obtain from the graph and from the reference.

A model's final output has passed through later layers (e.g. a linear head), so its halves are
not the two directions. :class:`LayerProbe` instead reads the output of the graph's last
recurrent layer (its ONNX ``Y`` outputs, added as extra graph outputs to an in-memory copy run
on ONNX Runtime CPU) and the same layer's output in the reference (a forward hook on the
submodule at the layer's path), both as ``[batch, time, 2 * hidden]`` with the forward half
first, in original time order.

Used by :mod:`birnn_export.verification` on failure only; nothing here runs for a passing graph.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export._report import abs_errors, outside_tolerance
from birnn_export.spec import GraphSpec, TensorSpec, Tolerance

_RECURRENT_OPS = ("LSTM", "GRU", "RNN")


class ProbeUnavailable(Exception):
    """The layer outputs cannot be had; the message says why (shown in the diagnosis)."""


@dataclass(frozen=True)
class LayerOutputs:
    """One case's last recurrent layer output: ``actual`` (graph) and ``expected`` (reference),
    both ``[batch, time, 2 * hidden]``, forward half first, in original time order."""

    name: str
    hidden: int
    actual: np.ndarray
    expected: np.ndarray
    hooked: str


class LayerProbe:
    """Runs the graph and the reference once more on a case's inputs and returns the last
    recurrent layer's output from both.

    Construction only reads the graph spec and looks the nodes up (cheap); the ONNX Runtime
    session and the hooked copy of the reference are built on the first :meth:`outputs` call.

    Args:
        proto: The loaded ``onnx.ModelProto`` (not modified; a copy is made).
        spec: The graph's spec.
        modules: Candidate modules to hook, in order (the reference first); the first that has a
            recurrent submodule at the layer's path is used.
        dtype: Torch dtype name the reference runs in (``"float32"``, ``"float64"``).
    """

    def __init__(self, proto: Any, spec: GraphSpec, modules: Sequence[Any], dtype: str) -> None:
        self.proto, self.spec, self.modules, self.dtype = proto, spec, tuple(modules), dtype
        self.reason: str | None = None
        self._session: Any = None
        self._module: Any = None
        self._hooked = ""
        self._captured: list[Any] = []
        try:
            self._locate()
        except ProbeUnavailable as exc:
            self.reason = str(exc)

    # -- the graph side --------------------------------------------------------------------

    def _locate(self) -> None:
        if not self.spec.recurrent_layers:
            raise ProbeUnavailable("the graph's metadata lists no recurrent layers")
        layer = self.spec.recurrent_layers[-1]
        self.path = str(layer.get("path", ""))
        if not layer.get("bidirectional", False):
            raise ProbeUnavailable(
                f"the last recurrent layer {self.path!r} is unidirectional: no halves to split"
            )
        self.hidden = int(layer["hidden_size"])
        self.name = f"{self.path}/l{int(layer.get('num_layers', 1)) - 1}"
        nodes = {n.name: n for n in self.proto.graph.node if n.op_type in _RECURRENT_OPS}
        forward, backward = nodes.get(f"{self.name}/forward"), nodes.get(f"{self.name}/backward")
        fused = nodes.get(self.name)
        if forward is not None and backward is not None:
            self.fused = False
            self.y_names = (_y_output(forward), _y_output(backward))
        elif fused is not None:
            self.fused = True
            self.y_names = (_y_output(fused),)
        else:
            raise ProbeUnavailable(
                f"the graph has no recurrent node named {self.name!r} (nor "
                f"{self.name + '/forward'!r} and {self.name + '/backward'!r})"
            )

    def _graph_session(self) -> Any:
        if self._session is None:
            import onnx
            import onnxruntime
            from onnx import helper

            probe = onnx.ModelProto()
            probe.CopyFrom(self.proto)
            declared = {o.name for o in probe.graph.output}
            # The graph's dtype, unless inference says otherwise: an fp16 graph's ragged
            # recurrent nodes compute in float32 (modules.recurrent_dtype).
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.spec.dtype))
            try:
                inferred = onnx.shape_inference.infer_shapes(probe).graph.value_info
                types = {v.name: v.type.tensor_type.elem_type for v in inferred}
            except Exception:  # inference is best effort; the graph's dtype is the fallback
                types = {}
            for name in self.y_names:
                if name not in declared:
                    probe.graph.output.append(
                        helper.make_tensor_value_info(name, types.get(name) or elem, None)
                    )
            try:
                self._session = onnxruntime.InferenceSession(
                    probe.SerializeToString(), providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # e.g. a >2 GB graph cannot be serialised in memory
                raise ProbeUnavailable(
                    f"ONNX Runtime CPU could not load the graph with the layer outputs added: "
                    f"{_one_line(exc)}"
                ) from None
        return self._session

    def _graph_layer(self, feed: Mapping[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        session = self._graph_session()
        names = {i.name for i in session.get_inputs()}
        try:
            ys = session.run(list(self.y_names), {k: v for k, v in feed.items() if k in names})
        except Exception as exc:
            raise ProbeUnavailable(f"ONNX Runtime CPU failed: {_one_line(exc)}") from None
        ys = [np.asarray(y, dtype=np.float64) for y in ys]
        if self.fused:
            (y,) = ys
            if y.ndim != 4 or y.shape[1] != 2 or y.shape[3] != self.hidden:
                raise ProbeUnavailable(
                    f"{self.name}: Y has shape {list(y.shape)}, not [T, 2, B, H]"
                )
            halves = [y[:, 0], y[:, 1]]
        else:
            for y in ys:
                if y.ndim != 4 or y.shape[1] != 1 or y.shape[3] != self.hidden:
                    raise ProbeUnavailable(
                        f"{self.name}: Y has shape {list(y.shape)}, not [T, 1, B, H]"
                    )
            halves = [ys[0][:, 0], _unreverse(ys[1][:, 0], lengths)]
        # [T, B, H] each -> [B, T, 2H]
        return np.concatenate([np.swapaxes(h, 0, 1) for h in halves], axis=-1)

    # -- the reference side ----------------------------------------------------------------

    def _hooked_module(self) -> Any:
        if self._module is None:
            from torch import nn

            from birnn_export.modules import BiRNN

            for index, module in enumerate(self.modules):
                try:
                    sub = module.get_submodule(self.path)
                except (AttributeError, TypeError):
                    continue
                if not isinstance(sub, (BiRNN, nn.RNNBase)):
                    continue
                import torch

                copied = copy.deepcopy(module).eval().to(getattr(torch, self.dtype))
                target = copied.get_submodule(self.path)
                target.register_forward_hook(self._hook)
                self._module, self._target = copied, target
                self._hooked = f"{type(sub).__name__} at {self.path!r}" + (
                    " of the converted model" if index else ""
                )
                break
            else:
                raise ProbeUnavailable(
                    f"the reference has no recurrent layer (BiRNN or nn.RNN/LSTM/GRU) at "
                    f"{self.path!r} to hook"
                )
        return self._module

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    def _reference_layer(self, feed: Mapping[str, np.ndarray], steps: int) -> np.ndarray:
        import torch
        from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

        module = self._hooked_module()
        args = []
        for tensor in self.spec.inputs:
            value = torch.from_numpy(np.ascontiguousarray(feed[tensor.name]))
            if value.is_floating_point():
                value = value.to(getattr(torch, self.dtype))
            args.append(value)
        self._captured.clear()
        try:
            with torch.inference_mode():
                module(*args)
        except Exception as exc:
            raise ProbeUnavailable(f"the reference failed: {_one_line(exc)}") from None
        if len(self._captured) != 1:
            raise ProbeUnavailable(
                f"the hooked layer {self.path!r} ran {len(self._captured)} times, not once"
            )
        out = self._captured.pop()
        first = bool(getattr(self._target, "batch_first", True))
        if isinstance(out, PackedSequence):
            out, _ = pad_packed_sequence(out, batch_first=first, total_length=steps)
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise ProbeUnavailable(
                f"the hooked layer {self.path!r} did not return a 3-d output tensor"
            )
        out = out.detach().to(torch.float64).cpu().numpy()
        return out if first else np.swapaxes(out, 0, 1)

    # -- both ------------------------------------------------------------------------------

    def outputs(
        self, feed: Mapping[str, np.ndarray], lengths: np.ndarray, steps: int
    ) -> LayerOutputs:
        """The layer's output on ``feed`` from the graph and the reference.

        Raises:
            ProbeUnavailable: what was needed was not found or did not run (the message says).
        """
        if self.reason is not None:
            raise ProbeUnavailable(self.reason)
        lengths = np.clip(np.asarray(lengths, dtype=np.int64), 1, steps)
        expected = self._reference_layer(feed, steps)
        actual = self._graph_layer(feed, lengths)
        if actual.shape != expected.shape:
            raise ProbeUnavailable(
                f"{self.name}: the graph's layer output has shape {list(actual.shape)}, the "
                f"reference's {list(expected.shape)}"
            )
        return LayerOutputs(self.name, self.hidden, actual, expected, self._hooked)


def _y_output(node: Any) -> str:
    if not node.output or not node.output[0]:
        raise ProbeUnavailable(f"the recurrent node {node.name!r} does not output Y")
    return str(node.output[0])


def _unreverse(y: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``y`` ``[T, B, H]`` computed on each row's reversed valid prefix, back in time order
    (each row's first ``lengths[b]`` steps reversed; past them zeros)."""
    out = np.zeros_like(y)
    for row, length in enumerate(lengths):
        n = int(length)
        out[:n, row] = y[:n, row][::-1]
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- direction-split diagnosis ---------------------------------------------------------------


def _outside(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Element-wise: outside ``atol + rtol * |expected|``."""
    return outside_tolerance(actual, expected, tol.atol, tol.rtol)


def _first_bad_steps(bad_bt: np.ndarray, lengths: np.ndarray) -> list[int | None]:
    """Per row, the first valid step with any bad element (``None`` if the row matches)."""
    firsts: list[int | None] = []
    for row, length in enumerate(lengths):
        hits = np.flatnonzero(bad_bt[row, : int(length)])
        firsts.append(int(hits[0]) if hits.size else None)
    return firsts


def _describe_half(
    label: str, firsts: list[int | None], lengths: np.ndarray, max_abs: float
) -> str:
    rows = [r for r, f in enumerate(firsts) if f is not None]
    if not rows:
        return f"{label} half matches (max abs {max_abs:.3g})"
    shown = ", ".join(f"row {r} (len {int(lengths[r])}): t={firsts[r]}" for r in rows[:8])
    more = f", ... {len(rows) - 8} more" if len(rows) > 8 else ""
    return (
        f"{label} half differs (max abs {max_abs:.3g}) in {len(rows)}/{len(firsts)} rows; "
        f"first diverging step: {shown}{more}"
    )


def diagnose_directions(
    tensor: TensorSpec,
    actual: np.ndarray,
    expected: np.ndarray,
    lengths: np.ndarray,
    hidden: int | None,
    tol: Tolerance,
    *,
    steps: int | None = None,
    sequence_ok: bool = True,
    why: str | None = None,
) -> str:
    """Explain a mismatch of a bidirectional layer's output by direction.

    For a sequence output ``[..., 2 * hidden]`` the forward half (``[..., :hidden]``) and the
    backward half are compared separately, with the first diverging valid step per row; for a
    final state ``[layers * 2, batch, hidden]`` the even (forward) and odd (backward) entries.
    ``steps`` is the padded length T; ``sequence_ok`` says whether the sequence outputs matched
    in the same case (a state is only blamed on its own when they did). ``why`` (with
    ``hidden`` None) says why the last recurrent layer's own output could not be compared
    instead (see :func:`diagnose_layer`).
    """
    if hidden is None:
        return (
            f"{tensor.name}: direction split does not apply: the model is not a bare "
            "bidirectional layer, so this output has passed through later layers (e.g. a head) "
            "and its halves are not the two directions"
            + (f"; nor to the last recurrent layer's own output: {why}" if why else "")
        )
    if tensor.role == "state":
        if actual.ndim != 3 or actual.shape[0] % 2 or tensor.batch_axis is None:
            return f"{tensor.name}: direction split does not apply to this state's shape"
        return _diagnose_state(tensor, actual, expected, lengths, tol, steps, sequence_ok)
    t_axis, b_axis = tensor.time_axis, tensor.batch_axis
    if t_axis is None or b_axis is None or actual.shape[-1] != 2 * hidden:
        return (
            f"{tensor.name}: direction split does not apply: last dim {actual.shape[-1]} is not "
            f"2 x hidden_size ({2 * hidden})"
        )
    got = np.moveaxis(actual, (b_axis, t_axis), (0, 1))
    want = np.moveaxis(expected, (b_axis, t_axis), (0, 1))
    batch, steps = got.shape[0], got.shape[1]
    valid = np.arange(steps)[None, :] < lengths[:, None]
    lines, halves = [], []
    for label, sl in (("forward", slice(0, hidden)), ("backward", slice(hidden, None))):
        g, w = got[..., sl], want[..., sl]
        bad_bt = _outside(g, w, tol).reshape(batch, steps, -1).any(-1)
        err = abs_errors(g, w).reshape(batch, steps, -1).max(-1)
        max_abs = float(err[valid].max(initial=0.0))
        firsts = _first_bad_steps(bad_bt & valid, lengths)
        lines.append(_describe_half(label, firsts, lengths, max_abs))
        halves.append((label, firsts, max_abs))
    return f"{tensor.name}: " + "; ".join(lines) + " " + _verdict(halves, lengths, steps, tol)


def diagnose_layer(
    probe: Any,
    engine: str,
    feed: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    steps: int,
    tol: Tolerance,
) -> tuple[str | None, str | None]:
    """(diagnosis, None) from the last recurrent layer's own output, or (None, why not).

    For a model with a head: the graph's last recurrent layer output (its ONNX ``Y``, run on
    ONNX Runtime CPU) against the same layer's output in the reference (a forward hook), split
    into the forward and backward halves as in :func:`diagnose_directions`.
    """
    try:
        layer = probe.outputs(feed, lengths, steps)
    except ProbeUnavailable as exc:
        return None, str(exc)
    hidden = layer.hidden
    tensor = TensorSpec(f"layer {layer.name}", "float64", ("batch", "seq", 2 * hidden), "sequence")
    text = diagnose_directions(
        tensor, layer.actual, layer.expected, np.asarray(lengths), hidden, tol, steps=steps
    )
    if text.endswith("the difference is elsewhere"):
        text += " (after this layer, e.g. the head)"
    source = "ONNX Runtime CPU" + (f", not {engine}," if engine != "ort-cpu" else "")
    return (
        f"{text} [the last recurrent layer's output: graph on {source} vs a hook on the "
        f"reference's {layer.hooked}]",
        None,
    )


def _diagnose_state(
    tensor: TensorSpec,
    actual: np.ndarray,
    expected: np.ndarray,
    lengths: np.ndarray,
    tol: Tolerance,
    steps: int | None,
    sequence_ok: bool,
) -> str:
    bad = _outside(actual, expected, tol)
    b_axis = tensor.batch_axis
    parts, wrong_rows = [], {}
    for label, sl in (("forward", slice(0, None, 2)), ("backward", slice(1, None, 2))):
        part = np.moveaxis(bad[sl], b_axis, 0)
        rows = np.flatnonzero(part.reshape(part.shape[0], -1).any(1)).tolist()
        err = float(abs_errors(actual[sl], expected[sl]).max(initial=0.0))
        wrong_rows[label] = rows
        if rows:
            shown = ", ".join(f"{r} (len {int(lengths[r])})" for r in rows[:8])
            parts.append(f"{label} entries differ (max abs {err:.3g}) in rows {shown}")
        else:
            parts.append(f"{label} entries match (max abs {err:.3g})")
    text = f"{tensor.name}: " + "; ".join(parts)
    forward, backward = wrong_rows["forward"], wrong_rows["backward"]
    if not sequence_ok:
        return text + " -> see the sequence output: the state follows from that mismatch"
    short = steps is not None and all(int(lengths[r]) < steps for r in forward)
    if forward and not backward and short:
        return text + (
            " -> the sequence output matches but the forward final state is wrong only in rows "
            "shorter than T: it is taken at step T - 1 instead of each row's last valid step "
            "(lengths[b] - 1)"
        )
    if backward and not forward:
        return text + (
            " -> the sequence output matches but the backward final state is wrong: it must "
            "be the backward pass's state after step 0"
        )
    return text + " -> the sequence output matches: the final states are gathered wrongly"


def _verdict(
    halves: list[tuple[str, list[int | None], float]],
    lengths: np.ndarray,
    steps: int,
    tol: Tolerance,
) -> str:
    bad = [
        (label, firsts, err) for label, firsts, err in halves if any(f is not None for f in firsts)
    ]
    if not bad:
        return "-> both halves match at valid steps: the difference is elsewhere"
    if len(bad) == 1:
        label, firsts, _ = bad[0]
        other = "forward" if label == "backward" else "backward"
        full_rows = [r for r, n in enumerate(lengths) if int(n) == steps]
        full_ok = bool(full_rows) and all(firsts[r] is None for r in full_rows)
        if label == "backward" and full_ok:
            return (
                "-> only the backward direction is wrong, and only in rows shorter than T (the "
                "full-length rows match): a reversal bug (the padded tensor flipped as a whole "
                "instead of each row's valid prefix, so the backward pass starts on padding)"
            )
        if label == "backward" and not full_rows:
            return (
                "-> only the backward direction is wrong; no row here has the full length T, so "
                "this case cannot tell a reversal bug from wrong backward weights (see a ragged "
                "case)"
            )
        which = ", full-length rows included" if full_rows else ""
        return (
            f"-> only the {label} direction is wrong{which} ({other} matches, so it is not the "
            f"reversal): check the {label} weights, their gate order and bias"
        )
    worst = max(err for _, _, err in bad)
    if worst <= 100 * max(tol.atol, 1e-12):
        return (
            "-> both directions differ by small amounts: numeric drift (precision or "
            "accumulation order), not a structural bug; loosen --atol/--rtol if acceptable"
        )
    return (
        "-> both directions differ: a shared cause (input handling, weights, gate order or "
        "masking) rather than the reversal"
    )
