"""Every recurrent layer's own output, inside the graph and in torch's own layers.

Like Polygraphy's ``--onnx-outputs mark all``, but for the layers that matter here: the graph side
adds each recurrent node's ``Y`` output to an in-memory copy of the graph and runs it on ONNX
Runtime CPU (:class:`GraphLayers`); the reference side captures what each recurrent module of
the reference model received (a forward pre-hook) and recomputes its layers one at a time with
torch's own single-layer ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` on a ``PackedSequence``
(:class:`ReferenceLayers`). Both give ``[batch, time, directions * hidden]`` per layer, forward
half first, in original time order, so every layer can be judged like an output and a defect in
a lower layer is located where it is.

A CRF's decode is probed alike: its best path's score inside the graph against the path the
reference decoded, scored on the emissions it was given (:func:`~birnn_export.crf.path_scores`).
Decoded tags only change where another path overtakes the best one, which a small defect in
the CRF's parameters does in about 1% of rows (users36); the score moves in every row.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from birnn_export._files import LAYER_PROBE_MARK
from birnn_export._packed import is_packed_layer, packed_info
from birnn_export._scan import is_rnn_scan, rnn_scan_info
from birnn_export.errors import one_line
from birnn_export.spec import RECURRENT_OPS, GraphSpec, takes_lengths


class LayersUnavailable(Exception):
    """Layer outputs cannot be had; the message says why (shown in the report)."""


@dataclass(frozen=True)
class GraphLayer:
    """One recurrent layer of the graph: ``name`` is ``<module path>/l<k>``."""

    name: str
    path: str
    index: int
    hidden: int
    directions: int
    #: ``Y`` of the fused (or unidirectional) node, or of the forward and backward nodes.
    y_names: tuple[str, ...]
    #: Names of the layer's nodes, and those among them fed no ``sequence_lens``.
    nodes: tuple[str, ...]
    without_lengths: tuple[str, ...]
    #: Backward nodes of a split layer whose ``Y`` reaches no ``ReverseSequence`` (through
    #: reshaping ops) on its way back into time order.
    unreversed: tuple[str, ...] = ()
    #: The layer's input ``[T, B, I]`` as the graph feeds it (its forward node's ``X``), where
    #: known (Scan loops record it in graphs written after 0.5.0).
    x_name: str | None = None


def graph_layers(proto: Any, spec: GraphSpec) -> list[GraphLayer]:
    """The graph's recurrent layers in run order, from the spec and the node names.

    Raises:
        LayersUnavailable: the metadata lists no layers, or a node is missing.
    """
    if not spec.recurrent_layers:
        raise LayersUnavailable("the graph's metadata lists no recurrent layers")
    nodes = {n.name: n for n in proto.graph.node if is_recurrent(n)}
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for info in spec.recurrent_layers:
        path = str(info.get("path", ""))
        directions = 2 if info.get("bidirectional", False) else 1
        call = 1
        while call == 1 or f"{path}/l0/forward#{call}" in nodes or f"{path}/l0#{call}" in nodes:
            suffix, key = ("", path) if call == 1 else (f"#{call}", call_key(path, call))
            for index in range(int(info.get("num_layers", 1))):
                name = f"{path}/l{index}"
                found = [nodes.get(f"{name}/{d}{suffix}") for d in ("forward", "backward")]
                if directions == 1 or None in found:
                    found = [nodes.get(name + suffix)]
                if None in found:
                    raise LayersUnavailable(
                        f"the graph has no recurrent node named {name + suffix!r}"
                    )
                layers.append(
                    GraphLayer(
                        name=f"{key}/l{index}",
                        path=key,
                        index=index,
                        hidden=int(info.get("proj_size") or info["hidden_size"]),
                        directions=directions,
                        y_names=tuple(_y_output(n) for n in found),
                        nodes=tuple(n.name for n in found),
                        without_lengths=tuple(n.name for n in found if not has_lengths(n)),
                        unreversed=tuple(
                            n.name
                            for n in found[1:]
                            if spec.layout == "split" and not _reversed(n, consumers)
                        ),
                        x_name=_x_input(found[0]),
                    )
                )
            call += 1
    return layers


def call_key(path: str, call: int) -> str:
    """The key of a recurrent module's ``call``-th run in one forward pass (from 1): ``path``,
    then ``path#2``, ... (its nodes are named likewise: ``rnn/l0/forward#2``). A layer that
    runs twice (a sentence pair's shared encoder) is compared at each run."""
    return path if call == 1 else f"{path}#{call}"


def module_path(key: str) -> str:
    """The module path of a :func:`call_key`."""
    return key.split("#", 1)[0]


def input_key(name: str) -> str:
    """The key of layer ``name``'s input among :meth:`GraphLayers.run`'s."""
    return f"{name}/input"


def _x_input(node: Any) -> str | None:
    if is_rnn_scan(node):
        return rnn_scan_info(node).get("x") or None
    if is_packed_layer(node):
        return packed_info(node).get("inputs", [""])[0] or None
    return str(node.input[0]) if node.input and node.input[0] else None


def _y_output(node: Any) -> str:
    if is_rnn_scan(node):  # the Scan's own outputs are [h_last, Y in scan order]
        return str(rnn_scan_info(node)["y"])
    if not node.output or not node.output[0]:
        raise LayersUnavailable(f"the recurrent node {node.name!r} does not output Y")
    return str(node.output[0])


def _reversed(node: Any, consumers: Mapping[str, list[Any]]) -> bool:
    """Whether a backward node's ``Y`` reaches a ``ReverseSequence`` through ops that only
    reshape or cast it (as the split layout reverses it back into time order), or is not read
    at all."""
    name = str(node.output[0]) if node.output else ""
    if not consumers.get(name):
        return True  # Y unread (a model that reads only h_n): nothing to put back in order
    for _ in range(8):
        users = consumers.get(name, [])
        if any(u.op_type == "ReverseSequence" and u.input[0] == name for u in users):
            return True
        passing = [u for u in users if u.op_type in ("Squeeze", "Cast", "Transpose", "Reshape")]
        if len(passing) != 1:
            return False
        name = str(passing[0].output[0])
    return False


#: Initializers up to this size keep their values in the graph shape inference reads (small
#: constants, indices and shapes, that it evaluates); bigger ones are declared as inputs.
_INFERRED_WITH_VALUES = 1 << 20


def _inferred_types(proto: Any) -> dict[str, int]:
    """Each tensor's element type by ONNX shape inference, run on the graph without its
    weights' data (types need only their declarations); empty where inference fails."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    graph = proto.graph
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    light.graph.output.extend(graph.output)
    for tensor in graph.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if not external and tensor.ByteSize() <= _INFERRED_WITH_VALUES:
            light.graph.initializer.append(tensor)
        else:
            declared = helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            light.graph.input.append(declared)
    try:
        inferred = onnx.shape_inference.infer_shapes(light).graph.value_info
    except Exception:  # inference is best effort; the graph's dtype is the fallback
        return {}
    return {v.name: v.type.tensor_type.elem_type for v in inferred}


def _external_files(proto: Any) -> list[str]:
    """The external data files ``proto``'s tensors name (relative to the graph's folder)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    return list(
        dict.fromkeys(
            entry.value
            for tensor in _get_all_tensors(proto)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        )
    )


def is_recurrent(node: Any) -> bool:
    """Whether ``node`` computes a recurrent layer: an LSTM/GRU/RNN node, or the loop the scan
    or packed layout writes for one."""
    return node.op_type in RECURRENT_OPS or is_rnn_scan(node) or is_packed_layer(node)


def has_lengths(node: Any) -> bool:
    """Whether a recurrent node (:func:`is_recurrent`) stops each row at its length."""
    if is_packed_layer(node):  # only nodes that take lengths are packed
        return True
    if is_rnn_scan(node):
        return bool(rnn_scan_info(node)["lengths"])
    return takes_lengths(node)


class GraphLayers:
    """The graph on ONNX Runtime CPU with every recurrent layer's ``Y`` added as an output.

    The copy of the graph (the original is not modified) is written to a temporary folder and
    run in a child process (:class:`~birnn_export._isolation.IsolatedRunner`) on the first
    :meth:`run`, so a crash inside ONNX Runtime ends the probe, not the verification. Call
    :meth:`close` when done.
    """

    def __init__(
        self,
        proto: Any,
        layers: Sequence[GraphLayer],
        dtype: str,
        folder: str | os.PathLike[str] | None = None,
        scores: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.proto, self.layers, self.dtype = proto, tuple(layers), dtype
        self.folder = folder  # where the graph's external data files lie
        #: ``(CRF path, tensor)`` of each decode's best-path score (crf.viterbi_score_tensors).
        self.scores = tuple(scores)
        self._runner: Any = None
        self._folder: Any = None
        self._beside: str | None = None

    def _build(self) -> Any:
        import functools
        import tempfile

        import onnx
        from onnx import helper

        from birnn_export._isolation import IsolatedRunner
        from birnn_export.runners import OrtRunner

        graph = self.proto.graph
        declared = {o.name for o in graph.output}
        # The graph's dtype, unless inference says otherwise: an fp16 graph's ragged
        # recurrent nodes compute in float32 (modules.recurrent_dtype).
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        types = _inferred_types(self.proto)
        given = {i.name for i in graph.input} | {i.name for i in graph.initializer}
        inputs = [
            layer.x_name for layer in self.layers if layer.x_name and layer.x_name not in given
        ]
        added = [
            helper.make_tensor_value_info(name, types.get(name) or elem, None)
            for name in dict.fromkeys(
                [
                    *(y for layer in self.layers for y in layer.y_names),
                    *(t for _, t in self.scores),
                    *inputs,
                ]
            )
            if name not in declared
        ]
        self._folder = tempfile.TemporaryDirectory(prefix="birnn-export-layers-")
        # The layers' outputs are added to the graph while it is saved (a copy of a big
        # graph's weights, twice more for shape inference, was most of verify's memory).
        graph.output.extend(added)
        try:
            path = self._probe_path()
            onnx.save_model(self.proto, path)
            runner = IsolatedRunner("ort-cpu", functools.partial(OrtRunner, path, spinning=False))
            runner.activate()
        except Exception as exc:
            raise LayersUnavailable(
                "ONNX Runtime CPU could not load the graph with the layer outputs added: "
                f"{one_line(exc)}"
            ) from None
        finally:
            del graph.output[len(graph.output) - len(added) :]
        return runner

    def _probe_path(self) -> str:
        """Where the graph with the layers' outputs goes: in the temporary folder, its
        external data files hard-linked beside it (ONNX Runtime refuses a symbolic link that
        leads out of the graph's folder); on another filesystem, beside the graph itself under
        a hidden name, removed by :meth:`close`."""
        import tempfile

        folder = self.folder or "."
        try:
            for location in _external_files(self.proto):
                source = os.path.realpath(os.path.join(folder, location))  # not the link itself
                os.link(source, os.path.join(self._folder.name, location))
        except OSError:
            handle, path = tempfile.mkstemp(prefix=LAYER_PROBE_MARK, suffix=".onnx", dir=folder)
            os.close(handle)
            self._beside = path
            return path
        return os.path.join(self._folder.name, "layers.onnx")

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        if self._beside is not None:
            os.unlink(self._beside)
            self._beside = None

    def run(
        self, feed: Mapping[str, np.ndarray], lengths: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``{layer name: [batch, time, directions * hidden]}`` in float64, each CRF's
        best-path score ``[batch]`` under :func:`score_key` of its path, and each layer's input
        ``[batch, time, features]`` as the graph fed it under :func:`input_key` of its name
        (where the graph tells it).

        ``lengths`` maps each module path to the lengths its layers saw (to put a split
        backward node's output, computed on reversed rows, back in time order).
        """
        if self._runner is None:
            self._runner = self._build()
        names = {i.name for i in self.proto.graph.input}
        try:
            by_name = self._runner.infer({k: v for k, v in feed.items() if k in names})
        except Exception as exc:
            raise LayersUnavailable(f"ONNX Runtime CPU failed: {one_line(exc)}") from None
        out = {}
        for layer in self.layers:
            ys = [np.asarray(by_name[y], dtype=np.float64) for y in layer.y_names]
            for y in ys:
                if y.ndim != 4 or y.shape[3] != layer.hidden:
                    raise LayersUnavailable(
                        f"{layer.name}: Y has shape {list(y.shape)}, not [T, D, B, H]"
                    )
            if len(ys) == 1:
                halves = [ys[0][:, d] for d in range(ys[0].shape[1])]
            else:
                steps = ys[1].shape[0]
                rows = np.clip(np.asarray(lengths[layer.path], dtype=np.int64), 1, steps)
                halves = [ys[0][:, 0], unreverse(ys[1][:, 0], rows)]
            out[layer.name] = np.concatenate([np.swapaxes(h, 0, 1) for h in halves], axis=-1)
            x = None
            if layer.x_name:
                x = feed.get(layer.x_name) if layer.x_name in names else by_name.get(layer.x_name)
            if x is not None and np.ndim(x) == 3:
                out[input_key(layer.name)] = np.swapaxes(np.asarray(x, dtype=np.float64), 0, 1)
        for path, tensor in self.scores:
            out[score_key(path)] = np.asarray(by_name[tensor], dtype=np.float64).reshape(-1)
        return out


def score_key(path: str) -> str:
    """The key of the CRF at ``path``'s best-path score among :meth:`GraphLayers.run`'s."""
    return f"{path}/viterbi"


def in_reference_order(
    graph: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    lengths: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The graph's layer outputs with rows of equal length in the reference's order.

    A model that sorts its rows by length itself before packing (NCRF++ sorts each word by its
    characters; older code sorts sentences for ``enforce_sorted=True``) and restores the order
    after the layer runs the layer on rows that ``torch.sort`` and ONNX's ``TopK`` order
    differently where lengths tie. Each reference row takes the graph row of its length nearest
    to it (by each row's mean over its valid steps); rows of different lengths are never
    exchanged, so a reversal or masking defect still shows."""
    out = dict(graph)
    for name, want in reference.items():
        rows = lengths[name.rsplit("/", 1)[0]]
        got = graph[name]
        if got[:, : want.shape[1]].shape != want.shape:
            continue  # the layer ran on other steps: the layer check says so
        order = tie_order(got[:, : want.shape[1]], want, rows)
        if order is not None:
            out[name] = got[order]
    return out


#: How much nearer the reference rows of equal length must be in another order to be taken in it.
_REORDERED_GAIN = 100.0


def tie_order(got: np.ndarray, want: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Indices that put ``got``'s rows in ``want``'s order among rows of equal length; ``None``
    where each row is already nearest its own."""
    valid = (np.arange(want.shape[1])[None, :] < rows[:, None])[..., None]
    count = np.maximum(rows, 1)[:, None]
    mean_got = np.where(valid, got, 0).sum(1) / count  # [B, F]
    mean_want = np.where(valid, want, 0).sum(1) / count
    order = np.arange(len(rows))
    for length in np.unique(rows):
        group = np.flatnonzero(rows == length)
        if len(group) < 2:
            continue
        distance = np.abs(mean_want[group][:, None] - mean_got[group][None, :]).max(-1)
        if np.all(np.diag(distance) <= distance.min(axis=1)):
            continue
        taken: set[int] = set()
        matched = group.copy()
        for i in np.argsort(distance.min(axis=1)):  # the surest pairs first
            j = next(int(j) for j in np.argsort(distance[i]) if int(j) not in taken)
            taken.add(j)
            matched[i] = group[j]
        # Rows another sort put in another order match almost exactly once put back; a graph
        # wrong in every row only finds other wrong rows nearer by chance: left as it is.
        steps = slice(0, int(length))
        before = np.abs(got[group, steps] - want[group, steps]).max()
        after = np.abs(got[matched, steps] - want[group, steps]).max()
        if after * _REORDERED_GAIN <= before:
            order[group] = matched
    return None if np.array_equal(order, np.arange(len(rows))) else order


def unreverse(y: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``y`` ``[T, B, H]`` computed on each row's reversed valid prefix, back in time order
    (each row's first ``lengths[b]`` steps reversed; past them zeros)."""
    out = np.zeros_like(y)
    for row, length in enumerate(lengths):
        n = int(length)
        out[:n, row] = y[:n, row][::-1]
    return out


@dataclass
class _Call:
    x: Any  # padded [B, T, F] batch-first
    lengths: Any  # int64 [B] or None
    #: The initial states given ((h0,) or (h0, c0), each [layers * directions, B, H]), or None.
    hx: tuple[Any, ...] | None = None


class ReferenceLayers:
    """Captures the input of the recurrent modules at ``paths`` of ``model`` on each forward
    pass, and recomputes their layers with torch's own single-layer modules.

    ``model`` is used as given (already in the precision wanted); the hooks stay on it until
    :meth:`close`.

    Raises:
        LayersUnavailable: a path holds no recurrent module.
    """

    def __init__(self, model: Any, paths: Sequence[str]) -> None:
        from torch import nn

        from birnn_export.modules import BiRNN

        self.model = model
        self.modules: dict[str, Any] = {}
        self.calls: dict[str, list[_Call | str]] = {}
        self._handles = []
        self._stacks: dict[str, list[Any]] = {}
        for path in dict.fromkeys(paths):
            try:
                module = model.get_submodule(path)
            except (AttributeError, TypeError):
                module = None
            if not isinstance(module, (BiRNN, nn.RNNBase)):
                self.close()
                raise LayersUnavailable(
                    f"the reference has no recurrent layer (nn.RNN/LSTM/GRU or BiRNN) at {path!r}"
                )
            self.modules[path] = module
            self._handles.append(
                module.register_forward_pre_hook(self._capture(path), with_kwargs=True)
            )

    def _capture(self, path: str) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            self.calls.setdefault(path, []).append(_input_of(module, args, kwargs))

        return hook

    def clear(self) -> None:
        self.calls.clear()

    def decodes(self) -> contextlib.AbstractContextManager[list[tuple[np.ndarray, np.ndarray]]]:
        """A block whose CRF decodes in the model are recorded: each one's best-path scores
        and rows' lengths (:func:`birnn_export.crf.recorded_decodes`)."""
        from birnn_export.crf import recorded_decodes

        return recorded_decodes(self.model)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def layers(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """After one forward pass: ``({layer name: [B, T, D * H] float64}, {module path:
        lengths})``.

        A module that ran more than once has its later runs under ``path#2``, ... (see
        :func:`call_key`).

        Raises:
            LayersUnavailable: a module did not run, or ran on input it cannot recompute.
        """
        import torch

        outputs, lengths = {}, {}
        for path, module in self.modules.items():
            calls = self.calls.get(path, [])
            if not calls:
                raise LayersUnavailable(f"the recurrent layer at {path!r} did not run")
            for number, call in enumerate(calls, start=1):
                if isinstance(call, str):
                    raise LayersUnavailable(f"the recurrent layer at {path!r}: {call}")
                key = call_key(path, number)
                x, rows = call.x, call.lengths
                batch, steps = x.shape[0], x.shape[1]
                rows = torch.full((batch,), steps) if rows is None else rows
                lengths[key] = rows.numpy()
                directions = 2 if module.bidirectional else 1
                with torch.inference_mode():
                    for index, layer in enumerate(self._stack(path, module)):
                        at = slice(index * directions, (index + 1) * directions)
                        states = None if call.hx is None else tuple(s[at] for s in call.hx)
                        x = _run_layer(layer, x, rows, states)
                        outputs[f"{key}/l{index}"] = x.to(torch.float64).numpy()
        return outputs, lengths

    def snapshot(self) -> Rerun:
        """After one forward pass: its layers to run again on other inputs (:class:`Rerun`),
        as this pass captured them; later passes do not change it."""
        return Rerun(self, {path: list(runs) for path, runs in self.calls.items()})

    def _stack(self, path: str, module: Any) -> list[Any]:
        if path not in self._stacks:
            self._stacks[path] = single_layers(module)
        return self._stacks[path]


class Rerun:
    """One forward pass's recurrent layers (:meth:`ReferenceLayers.snapshot`), to run again."""

    def __init__(self, layers: ReferenceLayers, calls: Mapping[str, list[_Call | str]]) -> None:
        self.layers, self.calls = layers, calls

    def _call(self, key: str) -> _Call | None:
        number = int(key.split("#", 1)[1]) if "#" in key else 1
        runs = self.calls.get(module_path(key), [])[number - 1 : number]
        return runs[0] if runs and isinstance(runs[0], _Call) else None

    def input_of(self, key: str) -> np.ndarray | None:
        """The input ``[B, T, F]`` the module run ``key`` (:func:`call_key`) had, in float64."""
        import torch

        call = self._call(key)
        return None if call is None else call.x.to(torch.float64).numpy()

    def run(self, key: str, index: int, x: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
        """Layer ``index`` of the module run ``key`` on ``x`` ``[B, T, F]`` (float64, run in
        the model's precision) from that run's initial states, as ``[B, T, D * H]`` float64."""
        import torch

        call = self._call(key)
        if call is None:
            return None
        path = module_path(key)
        module = self.layers.modules[path]
        layer = self.layers._stack(path, module)[index]
        directions = 2 if module.bidirectional else 1
        at = slice(index * directions, (index + 1) * directions)
        states = None if call.hx is None else tuple(s[at] for s in call.hx)
        with torch.inference_mode():
            x_in = torch.from_numpy(x).to(layer.weight_ih_l0.dtype)
            y = _run_layer(layer, x_in, torch.as_tensor(lengths), states)
        return y.to(torch.float64).numpy()


def _input_of(module: Any, args: tuple, kwargs: dict) -> _Call | str:
    """The padded batch-first input and lengths a recurrent module received."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    from birnn_export.modules import BiRNN, _is_state

    names = ("x", "lengths", "hx") if isinstance(module, BiRNN) else ("x", "hx")
    given = dict(zip(names, args, strict=False)) | kwargs
    x = given.get("x", given.get("input"))
    lengths, hx = given.get("lengths"), given.get("hx")
    if hx is None and (isinstance(lengths, tuple) or _is_state(lengths)):
        lengths, hx = None, lengths  # layer(x, hx) on a converted layer: torch's signature
    states = None
    if hx is not None:
        states = tuple(s.detach() for s in (hx if isinstance(hx, (tuple, list)) else (hx,)))
    if isinstance(x, PackedSequence):
        x, lengths = pad_packed_sequence(x, batch_first=True)
    elif isinstance(x, torch.Tensor) and x.dim() == 3:
        if not module.batch_first:
            x = x.transpose(0, 1)
    else:
        return f"its input is a {type(x).__name__}, not a padded tensor or PackedSequence"
    if lengths is not None:
        lengths = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
        lengths = lengths.clamp(1, x.shape[1])
    return _Call(x.detach(), lengths, states)


def single_layers(module: Any) -> list[Any]:
    """One batch-first single-layer ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` per layer of
    ``module`` (an ``nn.RNNBase`` or a ``BiRNN``), with its weights."""
    from torch import nn

    from birnn_export.modules import BiRNN

    if isinstance(module, BiRNN):
        module = module.to_torch()
    weight = module.weight_ih_l0
    directions = 2 if module.bidirectional else 1
    # by name, not from the state_dict: a parametrized weight (weight_norm) is computed there
    weights = {name: getattr(module, name) for name in module._flat_weights_names}
    builtin = next(c for c in type(module).__mro__ if c in (nn.LSTM, nn.GRU, nn.RNN))
    stack = []
    for index in range(module.num_layers):
        units = getattr(module, "proj_size", 0) or module.hidden_size
        inputs = module.input_size if index == 0 else units * directions
        kwargs = dict(
            bias=module.bias,
            batch_first=True,
            bidirectional=module.bidirectional,
            dtype=weight.dtype,
            device=weight.device,
        )
        if isinstance(module, nn.RNN):
            kwargs["nonlinearity"] = module.nonlinearity
        if getattr(module, "proj_size", 0):
            kwargs["proj_size"] = module.proj_size
        layer = builtin(inputs, module.hidden_size, **kwargs)
        state = {}
        for key, value in weights.items():
            stem, _, rest = key.rpartition(f"_l{index}")
            if stem and rest in ("", "_reverse"):
                state[f"{stem}_l0{rest}"] = value
        layer.load_state_dict(state)
        stack.append(layer.eval())
    return stack


def _run_layer(layer: Any, x: Any, lengths: Any, states: tuple[Any, ...] | None = None) -> Any:
    """One single-layer torch module on the padded batch, packed when rows are ragged, from
    ``states`` (this layer's slice of the initial states) where given."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    hx = None if states is None else states if len(states) == 2 else states[0]
    steps = x.shape[1]
    if bool((lengths == steps).all()):
        return layer(x, hx)[0]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(layer(packed, hx)[0], batch_first=True, total_length=steps)[0]
