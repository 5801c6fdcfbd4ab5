"""The last recurrent layer's own output, from the graph and from the reference, for the
direction-split diagnosis of models with a head.

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

from birnn_export.spec import GraphSpec

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
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.spec.dtype))
            for name in self.y_names:
                if name not in declared:
                    probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
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
